"""Switching benchmark and precision check: ``python -m lora_state bench``.

Builds models with the real shapes of the layers LoRAs target (SD1.5 / SDXL UNets: every Linear/Conv2d inside
their Transformer2DModels, listed from diffusers' UNet2DConditionModel instantiated on the meta device and filled
with random weights), writes kohya-named LoRA files into a temporary folder, and times, side by side in one
process, LoRA State's modes (exact, delta, auto) against the baselines users have today:

- full re-patch: restore every touched key from a clean copy and recompute every LoRA of the stack on it, with
  the library's own math (what ComfyUI, Forge and stable-diffusion.cpp do on any change);
- PEFT fuse/unfuse (what diffusers' fuse_lora/unfuse_lora do): unmerge every adapter, merge the new stack.

Errors are measured against the exact oracle: a fresh clean copy reconciled in exact mode to the same stack.
Two units, both in ulps of the weight's dtype:
- key ulps: |live - oracle| / ulp at the key's largest magnitude (LoRA State's drift unit; max over keys, and
  the mean over all elements),
- element ulps: |live - oracle| / ulp at each element's own magnitude (stricter, for information).

Timings are medians of several runs; every ratio is taken between runs in the same process, interleaved.
A benchmark prints figures, it is not a test: targets are reported as met or missed, never asserted.

    python -m lora_state bench                 # default run, a few minutes
    python -m lora_state bench --quick         # under a minute
    python -m lora_state bench --json docs/bench/results.json --plots docs/bench/
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import cache

import torch

from .applier import ulp_at_max, write_exact
from .files import LoraFileCache
from .hosts import TorchModuleHost
from .manager import LoraStateManager

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MANTISSA_BITS = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}
MODES = ("exact", "delta", "auto")
BASELINES = ("full", "peft")
RUNNER_LABELS = {"exact": "exact", "delta": "delta", "auto": "auto", "full": "full re-patch",
                 "peft": "PEFT fuse/unfuse"}

# diffusers UNet2DConditionModel configs (only the fields that differ from its defaults, which are SD1.5's).
UNET_CONFIGS = {
    "sd15": {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8},
    "sdxl": {"sample_size": 128, "block_out_channels": (320, 640, 1280),
             "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
             "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
             "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20),
             "cross_attention_dim": 2048, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
             "projection_class_embeddings_input_dim": 2816, "use_linear_projection": True},
}

CYCLE_KEYS = ("down_blocks.0.attentions.0.proj_in.weight",
              "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
              "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight")

# name -> (architecture, key filter, description)
MODEL_SPECS = {
    "sd15": ("sd15", lambda key: True,
             "SD1.5 UNet: every Linear/Conv2d weight inside its 16 Transformer2DModels (kohya's default LoRA target)"),
    "sd15-level0": ("sd15", lambda key: key.startswith("down_blocks.0.attentions.0."),
                    "SD1.5 UNet: the Linear/Conv2d weights of down_blocks.0.attentions.0 (320 wide)"),
    "sd15-level1": ("sd15", lambda key: key.startswith("down_blocks.1.attentions.0."),
                    "SD1.5 UNet: the Linear/Conv2d weights of down_blocks.1.attentions.0 (640 wide)"),
    "sdxl-first": ("sdxl", lambda key: ".transformer_blocks." not in key or ".transformer_blocks.0." in key,
                   ("SDXL UNet: proj_in/proj_out and the first BasicTransformerBlock of each of its 11 "
                    "Transformer2DModels (every distinct SDXL attention-layer shape)")),
    "sdxl": ("sdxl", lambda key: True,
             "SDXL UNet: every Linear/Conv2d weight inside its 11 Transformer2DModels (70 transformer blocks)"),
    "cycle": ("sd15", lambda key: key in CYCLE_KEYS,
              ("SD1.5 shapes, reduced for 1,000 switches: proj_in (1x1 conv 320x320), attn1.to_q (320x320), "
               "attn2.to_k (320x768) of down_blocks.0.attentions.0")),
}


@dataclass
class Profile:
    name: str
    switch_models: tuple[tuple[str, tuple[str, ...]], ...]   # (model, dtypes) for scenarios 1-3, 5, 6
    mixed: tuple[tuple[str, str], ...]                        # (model, dtype) for the mixed-rank stack
    peft: tuple[tuple[str, str], ...]                         # (model, dtype) where PEFT is timed too
    reps: int
    cycles: int
    cycle_dtypes: tuple[str, ...]
    noop: tuple[str, str, int]                                # (model, dtype, rank): no-op measurement
    noop_runs: int


PROFILES = {
    "default": Profile("default", (("sd15", ("fp16", "bf16", "fp32")), ("sdxl-first", ("fp16",))),
                       mixed=(("sd15", "fp16"),), peft=(("sd15", "fp16"),), reps=3, cycles=1000,
                       cycle_dtypes=("fp16", "bf16", "fp32"), noop=("sdxl", "bf16", 8), noop_runs=300),
    # --quick: the 640-wide block of SD1.5 for the switches, and the no-op on SD1.5's full key set (setting up
    # the SDXL key set alone, 2.2 G parameters, takes minutes on a small CPU machine).
    "quick": Profile("quick", (("sd15-level1", ("fp16",)),), mixed=(),
                     peft=(("sd15-level1", "fp16"),), reps=3, cycles=100, cycle_dtypes=("fp16", "bf16", "fp32"),
                     noop=("sd15", "fp16", 8), noop_runs=200),
    "tiny": Profile("tiny", (("cycle", ("fp16", "fp32")),), mixed=(("cycle", "fp16"),), peft=(("cycle", "fp16"),),
                    reps=2, cycles=5, cycle_dtypes=("fp16", "bf16"), noop=("cycle", "fp16", 4), noop_runs=20),
}


# ---------------------------------------------------------------------------------------------------- machine

def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_at_start": _load(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "memory_bytes": memory, "device": "cpu"}


def _load():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _best_of(fn, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure_machine(quick: bool) -> dict:
    """fp32 GEMM rate and memory bandwidth (bytes read + written by a large copy), best of a few runs."""
    n = 1024 if quick else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm = _best_of(lambda: torch.mm(a, b), 5)
    size = (64 if quick else 256) << 20
    src = torch.ones(size // 4)
    dst = torch.empty_like(src)
    copy = _best_of(lambda: dst.copy_(src), 5)
    return {"matmul_flops_per_s": 2 * n ** 3 / gemm, "matmul_size": n,
            "bandwidth_bytes_per_s": 2 * size / copy, "bandwidth_copy_bytes": size}


# ---------------------------------------------------------------------------------------------------- models

@cache
def unet_layers(arch: str) -> dict[str, tuple[int, ...]]:
    """Every Linear/Conv2d weight inside the UNet's Transformer2DModels: parameter key -> shape."""
    try:
        from diffusers import UNet2DConditionModel
    except ImportError as exc:   # a dev/bench dependency, as PEFT: pip install -e .[test,bench]
        raise SystemExit(f"the benchmark needs diffusers to list the UNet layer shapes ({exc}); install the test "
                         f"extras with the torch constraint: pip install -c constraints.txt -e .[test,bench]")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_CONFIGS[arch])
    layers = {}
    for name, module in unet.named_modules():
        if ".attentions." in f".{name}" and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            layers[f"{name}.weight"] = tuple(module.weight.shape)
    return layers


def model_shapes(model: str) -> dict[str, tuple[int, ...]]:
    arch, keep, _ = MODEL_SPECS[model]
    return {key: shape for key, shape in unet_layers(arch).items() if keep(key)}


def _numel(shape) -> int:
    return math.prod(int(s) for s in shape)


_POOL: dict[str, torch.Tensor] = {}


def _random_pool() -> torch.Tensor:
    if "pool" not in _POOL:
        generator = torch.Generator().manual_seed(1234)
        _POOL["pool"] = torch.randn((1 << 22) + 4099, generator=generator)
    return _POOL["pool"]


def clean_weights(shapes: dict, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of std 1/sqrt(fan_in) (values cycled from a random pool: filling GBs with randn is slow)."""
    pool = _random_pool()
    offset = seed * 7919
    out = {}
    for key, shape in shapes.items():
        flat = torch.empty(_numel(shape), dtype=dtype)
        position = 0
        offset %= pool.numel()
        while position < flat.numel():
            take = min(flat.numel() - position, pool.numel() - offset)
            flat[position:position + take].copy_(pool[offset:offset + take])
            position += take
            offset = (offset + take) % pool.numel()
        offset += 104729
        flat.mul_(1.0 / math.sqrt(_numel(shape[1:])))
        out[key] = flat.view(shape)
    return out


def build_module(weights: dict[str, torch.Tensor], copy: bool = True) -> torch.nn.Module:
    """A plain module with diffusers' parameter names, made of nn.Linear / nn.Conv2d (so PEFT can inject)."""
    root = torch.nn.Module()
    for key, tensor in weights.items():
        *parents, leaf, _ = key.split(".")
        parent = root
        for name in parents:
            child = parent._modules.get(name)
            if child is None:
                child = torch.nn.Module()
                parent.add_module(name, child)
            parent = child
        shape = tuple(tensor.shape)
        if len(shape) == 2:
            layer = torch.nn.Linear(shape[1], shape[0], bias=False, device="meta")
        else:
            layer = torch.nn.Conv2d(shape[1], shape[0], tuple(shape[2:]), bias=False, device="meta")
        layer.weight = torch.nn.Parameter(tensor.clone() if copy else tensor, requires_grad=False)
        parent.add_module(leaf, layer)
    return root


def module_weights(module: torch.nn.Module, keys) -> dict[str, torch.Tensor]:
    host = TorchModuleHost(module)
    return {key: host.parameter(key) for key in keys}


# ---------------------------------------------------------------------------------------------------- LoRA files

@dataclass
class LoraSpec:
    name: str
    rank: int
    keys: tuple[str, ...]
    seed: int
    path: str = ""

    @property
    def alpha(self) -> float:
        return self.rank / 2


def kohya_prefix(key: str) -> str:
    return "lora_unet_" + key[: -len(".weight")].replace(".", "_")


def write_lora(spec: LoraSpec, shapes: dict, directory: str) -> LoraSpec:
    """kohya-named LoRA (lora_down/lora_up/alpha, fp16 as published LoRAs are): each delta about 10% of the
    weight's std at strength 1."""
    generator = torch.Generator().manual_seed(spec.seed)
    rank = spec.rank
    tensors = {}
    for key in spec.keys:
        shape = shapes[key]
        fan_in = _numel(shape[1:])
        prefix = kohya_prefix(key)
        down = torch.randn(rank, *shape[1:], generator=generator) / math.sqrt(fan_in)
        up = torch.randn(shape[0], rank, *([1, 1] if len(shape) == 4 else []), generator=generator)
        up *= 0.1 * math.sqrt(rank) / spec.alpha
        tensors[f"{prefix}.lora_down.weight"] = down.half().contiguous()
        tensors[f"{prefix}.lora_up.weight"] = up.half().contiguous()
        tensors[f"{prefix}.alpha"] = torch.tensor(spec.alpha)
    from safetensors.torch import save_file
    path = os.path.join(directory, f"{spec.name}.safetensors")
    save_file(tensors, path, metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                                        "ss_network_alpha": str(spec.alpha)})
    spec.path = path
    return spec


def lora_flops(spec: LoraSpec, shapes: dict, key: str) -> int:
    shape = shapes[key]
    return 2 * spec.rank * shape[0] * _numel(shape[1:])


@dataclass
class StackSet:
    """LoRA files for one model and the stacks the scenarios switch between."""
    kind: str
    loras: dict[str, LoraSpec]
    base: list[tuple[str, float]]                   # (lora name, strength)
    scenarios: dict[str, list[tuple[str, float]]]   # scenario -> target stack
    description: str = ""

    def stack(self, named) -> list[tuple[str, float]]:
        return [(self.loras[name].path, strength) for name, strength in named]


def make_stacks(kind: str, shapes: dict, directory: str, seed: int = 0, uniform_rank: int = 32) -> StackSet:
    os.makedirs(directory, exist_ok=True)
    keys = tuple(shapes)
    half = keys[::2]
    attn1 = tuple(k for k in keys if ".attn1." in k)
    attn2 = tuple(k for k in keys if ".attn2." in k)
    ff = tuple(k for k in keys if ".ff." in k)
    if kind == "r32":
        plan = [("L0", uniform_rank, keys), ("L1", uniform_rank, keys), ("L2", uniform_rank, keys),
                ("L3", uniform_rank, keys), ("L4", uniform_rank, half), ("L5", uniform_rank, keys)]
        description = (f"5 LoRAs of rank {uniform_rank}: L0-L3 on every key, L4 on every other key (half); "
                       f"L5 (every key) is the one added")
    elif kind == "mixed":
        plan = [("M0", 8, keys), ("M1", 16, attn1 or keys), ("M2", 32, attn2 or half), ("M3", 64, ff or half),
                ("M4", 128, half), ("M5", 32, keys)]
        description = ("5 LoRAs of ranks 8-128 on different subsets: M0 r8 every key, M1 r16 attn1 only, M2 r32 "
                       "attn2 only, M3 r64 feed-forward only, M4 r128 every other key; M5 (r32, every key) is added")
    elif kind == "noop":
        plan = [(f"N{i}", uniform_rank, keys) for i in range(5)]
        description = f"5 LoRAs of rank {uniform_rank}, every key"
    else:
        raise ValueError(kind)
    loras = {}
    for index, (name, rank, covered) in enumerate(plan):
        spec = LoraSpec(f"{kind}_{name}", rank, tuple(covered), seed * 1000 + index * 17 + 3)
        loras[name] = write_lora(spec, shapes, directory)
    if kind == "noop":
        return StackSet(kind, loras, [(f"N{i}", 1.0 - 0.1 * i) for i in range(5)], {}, description)
    names = [name for name, _, _ in plan]
    base = [(names[0], 0.8), (names[1], 0.7), (names[2], 0.6), (names[3], 0.5), (names[4], 0.9)]
    scenarios = {
        "strength": [(names[0], 0.55)] + base[1:],                      # a LoRA that covers every key
        "strength-half": base[:4] + [(names[4], 0.4)],                 # a LoRA that covers half the keys
        "remove": base[:2] + base[3:],
        "add": base + [(names[5], 0.6)],
    }
    return StackSet(kind, loras, base, scenarios, description)


# ---------------------------------------------------------------------------------------------------- runners

class ManagerRunner:
    """LoRA State in one mode."""

    def __init__(self, mode: str, module: torch.nn.Module, cache: LoraFileCache):
        self.name = mode
        self.module = module
        self.manager = LoraStateManager(module, mode=mode, file_cache=cache)
        self.last_paths: dict = {}

    def weights(self, keys) -> dict[str, torch.Tensor]:
        return module_weights(self.module, keys)

    def switch(self, stack) -> None:
        report = self.manager.reconcile(stack)
        self.last_paths = dict(report.paths)

    def reset(self) -> None:
        report = self.manager.reset()
        self.last_paths = dict(report.paths)

    @property
    def extra_bytes(self) -> int:
        return self.manager.backup_bytes

    def touched_bytes(self) -> int:
        host = self.manager.host
        return sum(host.parameter(k).numel() * host.parameter(k).element_size()
                   for k, state in self.manager.ledger.keys.items() if state.contributors)


class FullRepatchRunner:
    """Restore every touched key from its clean copy and recompute every LoRA of the stack on it, as ComfyUI,
    Forge and stable-diffusion.cpp do on any change, with the library's own math (applier.write_exact)."""

    name = "full"

    def __init__(self, module: torch.nn.Module, clean: dict, cache: LoraFileCache):
        self.module = module
        self.host = TorchModuleHost(module)
        self.clean = clean            # the clean copies a host keeps (ComfyUI's backup): counted in extra_bytes
        self.cache = cache
        self.patches: dict[str, dict] = {}
        self.touched: set[str] = set()
        self.last_paths: dict = {}

    def weights(self, keys) -> dict[str, torch.Tensor]:
        return module_weights(self.module, keys)

    def _patches(self, path: str) -> dict:
        if path not in self.patches:
            self.patches[path] = self.host.read(self.cache.load(path)).patches
        return self.patches[path]

    def switch(self, stack) -> None:
        per_key: dict[str, list] = {}
        for path, strength in stack:
            if strength == 0.0:
                continue
            for key, patch in self._patches(path).items():
                per_key.setdefault(key, []).append((patch, strength))
        with torch.no_grad():
            for key in self.touched | set(per_key):
                live = self.host.parameter(key)
                if key in per_key:
                    write_exact(self.host, key, live, self.clean[key], per_key[key])
                else:
                    live.copy_(self.clean[key])
        self.last_paths = {"recomputed": len(per_key), "restored": len(self.touched - set(per_key))}
        self.touched = set(per_key)

    def reset(self) -> None:
        self.switch([])

    @property
    def extra_bytes(self) -> int:
        return sum(self.clean[k].numel() * self.clean[k].element_size() for k in self.touched)


class PeftRunner:
    """diffusers' fuse_lora/unfuse_lora through PEFT: every LoRA is an adapter (fp32 copies of the file tensors,
    so only the fusing arithmetic differs), a switch unmerges every merged adapter (PEFT's unmerge() takes them
    all out, newest first) and merges the new stack, each merge/unmerge rounding to the weight's dtype."""

    name = "peft"

    def __init__(self, module: torch.nn.Module, loras: dict[str, LoraSpec], cache: LoraFileCache):
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora import LoraLayer
        self.module = module
        self.by_path = {}
        for spec in loras.values():
            adapter = spec.name
            targets = [key[: -len(".weight")] for key in spec.keys]
            config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=targets, lora_dropout=0.0,
                                bias="none")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # "Already found a `peft_config` attribute": intended here
                inject_adapter_in_model(config, module, adapter_name=adapter)
            self.by_path[spec.path] = spec
        tensors = {}
        for spec in loras.values():
            tensors[spec.name] = cache.load(spec.path).tensors
        self.layers: dict[str, LoraLayer] = {}
        with torch.no_grad():
            for name, layer in module.named_modules():
                if not isinstance(layer, LoraLayer):
                    continue
                self.layers[name] = layer
                prefix = kohya_prefix(f"{name}.weight")
                for adapter in list(layer.lora_A.keys()):
                    file_tensors = tensors[adapter]
                    layer.lora_A[adapter].float().weight.copy_(file_tensors[f"{prefix}.lora_down.weight"])
                    layer.lora_B[adapter].float().weight.copy_(file_tensors[f"{prefix}.lora_up.weight"])
                layer.set_adapter(list(layer.lora_A.keys()))
        self.last_paths: dict = {}

    def switch(self, stack) -> None:
        with torch.no_grad():
            for layer in self.layers.values():
                if layer.merged:
                    layer.unmerge()
            for layer in self.layers.values():
                names = []
                for path, strength in stack:
                    adapter = self.by_path[path].name
                    if strength == 0.0 or adapter not in layer.lora_A:
                        continue
                    layer.set_scale(adapter, strength)
                    names.append(adapter)
                if names:
                    layer.merge(adapter_names=names)
        self.last_paths = {}

    def reset(self) -> None:
        self.switch([])

    def weights(self, keys) -> dict[str, torch.Tensor]:
        out = {}
        for key in keys:
            name = key[: -len(".weight")]
            layer = self.layers.get(name)
            out[key] = layer.get_base_layer().weight if layer is not None else \
                self.module.get_submodule(name).weight
        return out

    @property
    def extra_bytes(self) -> int:
        return 0

    @property
    def adapter_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for n, p in self.module.named_parameters() if "lora_" in n)


# ---------------------------------------------------------------------------------------------------- errors

def element_ulps(reference: torch.Tensor) -> torch.Tensor:
    """One ulp of the reference's dtype at each element's own magnitude (subnormal spacing below tiny)."""
    bits = MANTISSA_BITS[reference.dtype]
    finfo = torch.finfo(reference.dtype)
    magnitude = reference.float().abs()
    _, exponent = torch.frexp(magnitude)
    ulps = torch.ldexp(torch.ones_like(magnitude), exponent - 1 - bits)
    return ulps.clamp_min_(finfo.tiny * 2.0 ** -bits)


_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def compare(live: dict[str, torch.Tensor], oracle: dict[str, torch.Tensor]) -> dict:
    """Bitwise identity and the two ulp measures of live against the oracle, over every key."""
    identical = True
    key_max = key_sum = elem_max = elem_sum = 0.0
    count = differing_keys = 0
    with torch.no_grad():
        for key, expected in oracle.items():
            actual = live[key]
            count += expected.numel()
            if torch.equal(actual.view(_INT_VIEW[actual.dtype]), expected.view(_INT_VIEW[expected.dtype])):
                continue
            identical = False
            differing_keys += 1
            diff = (actual.float() - expected.float()).abs_()
            unit = ulp_at_max(expected)
            key_max = max(key_max, float(diff.max()) / unit)
            key_sum += float(diff.sum(dtype=torch.float64)) / unit
            diff.div_(element_ulps(expected))
            elem_max = max(elem_max, float(diff.max()))
            elem_sum += float(diff.sum(dtype=torch.float64))
    return {"bit_identical": identical, "keys_differing": differing_keys,
            "key_ulps_max": key_max, "key_ulps_mean": key_sum / max(count, 1),
            "element_ulps_max": elem_max, "element_ulps_mean": elem_sum / max(count, 1)}


class Oracles:
    """Exact results: a fresh clean copy reconciled in exact mode to the stack (LoRA State's exact claim)."""

    def __init__(self, clean: dict, cache: LoraFileCache, keep: int = 2):
        self.clean = clean
        self.cache = cache
        self.keep = keep
        self.store: dict[tuple, dict] = {}

    def get(self, stack) -> dict:
        signature = tuple(stack)
        if signature not in self.store:
            if len(self.store) >= self.keep:
                self.store.pop(next(iter(self.store)))
            module = build_module(self.clean)
            LoraStateManager(module, mode="exact", file_cache=self.cache).reconcile(stack)
            self.store[signature] = module_weights(module, self.clean)
        return self.store[signature]


# ---------------------------------------------------------------------------------------------------- bound

def lower_bound(stacks: StackSet, shapes: dict, dtype: torch.dtype, old, new, machine: dict) -> dict:
    """FLOPs of the deltas that must change / matmul rate + bytes that must be read and written / bandwidth."""
    def per_key(stack):
        out: dict[str, dict[str, float]] = {}
        for name, strength in stack:
            if strength == 0.0:
                continue
            for key in stacks.loras[name].keys:
                out.setdefault(key, {})
                out[key][name] = out[key].get(name, 0.0) + strength
        return out
    before, after = per_key(old), per_key(new)
    size = torch.tensor([], dtype=dtype).element_size()
    flops = nbytes = keys = 0
    for key in set(before) | set(after):
        changed = {name for name in set(before.get(key, {})) | set(after.get(key, {}))
                   if before.get(key, {}).get(name, 0.0) != after.get(key, {}).get(name, 0.0)}
        if not changed:
            continue
        keys += 1
        nbytes += 2 * _numel(shapes[key]) * size       # read the weight (or its clean copy) and write it once
        if after.get(key):                               # restoring to clean needs no delta at all
            flops += sum(lora_flops(stacks.loras[name], shapes, key) for name in changed)
    seconds = flops / machine["matmul_flops_per_s"] + nbytes / machine["bandwidth_bytes_per_s"]
    return {"seconds": seconds, "flops": flops, "bytes": nbytes, "keys": keys}


# ---------------------------------------------------------------------------------------------------- scenarios

def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _median(values):
    return statistics.median(values) if values else None


class Log:
    def __init__(self, verbose: bool = True):
        self.verbose = verbose
        self.started = time.perf_counter()

    def __call__(self, text: str) -> None:
        if self.verbose:
            print(f"[{time.perf_counter() - self.started:7.1f}s] {text}", flush=True)


def run_switching(model: str, dtype_name: str, stack_kind: str, use_peft: bool, reps: int, machine: dict,
                  directory: str, cache: LoraFileCache, log: Log) -> list[dict]:
    """Scenarios 1-3 (strength, strength of a half-coverage LoRA, remove, add), 5 (no-op) and 6 (reset) for
    every mode and baseline, interleaved and in rotating order so that drifts of the machine hit all alike."""
    dtype = DTYPES[dtype_name]
    shapes = model_shapes(model)
    stacks = make_stacks(stack_kind, shapes, os.path.join(directory, f"{model}-{stack_kind}"), seed=1)
    clean = clean_weights(shapes, dtype)
    keys = list(shapes)
    params = sum(_numel(s) for s in shapes.values())
    log(f"{model} {dtype_name} {stack_kind}: {len(keys)} keys, {params / 1e6:.1f} M parameters "
        f"({params * clean[keys[0]].element_size() / 2**30:.2f} GiB)")

    runners = [ManagerRunner(mode, build_module(clean), cache) for mode in MODES]
    runners.append(FullRepatchRunner(build_module(clean), clean, cache))
    if use_peft:
        runners.append(PeftRunner(build_module(clean), stacks.loras, cache))
    oracles = Oracles(clean, cache)
    base = stacks.stack(stacks.base)
    for runner in runners:
        runner.switch(base)
    results = []

    def row(scenario, runner, samples, back, error, bound, extra):
        return {"model": model, "dtype": dtype_name, "stack": stack_kind, "scenario": scenario,
                "runner": runner.name, "label": RUNNER_LABELS[runner.name], "seconds": _median(samples),
                "samples": samples, "seconds_back": _median(back), "error": error, "extra_bytes": extra,
                "paths": runner.last_paths, "lower_bound": bound}

    for scenario, named in stacks.scenarios.items():
        target = stacks.stack(named)
        bound = lower_bound(stacks, shapes, dtype, stacks.base, named, machine)
        samples = {r.name: [] for r in runners}
        back = {r.name: [] for r in runners}
        errors, extras, paths = {}, {}, {}
        for rep in range(reps):
            order = runners[rep % len(runners):] + runners[:rep % len(runners)]
            for runner in order:
                samples[runner.name].append(_timed(lambda r=runner, t=target: r.switch(t)))
            if rep == reps - 1:
                oracle = oracles.get(target)
                for runner in runners:
                    errors[runner.name] = compare(runner.weights(keys), oracle)
                    extras[runner.name] = runner.extra_bytes
                    paths[runner.name] = runner.last_paths
                    if isinstance(runner, ManagerRunner):
                        extras[runner.name + "_touched"] = runner.touched_bytes()
            for runner in order:
                back[runner.name].append(_timed(lambda r=runner: r.switch(base)))
        oracle = oracles.get(base)
        for runner in runners:
            after_back = compare(runner.weights(keys), oracle)
            runner.last_paths = paths[runner.name]
            entry = row(scenario, runner, samples[runner.name], back[runner.name], errors[runner.name], bound,
                        extras[runner.name])
            entry["error_after_back"] = after_back
            if runner.name + "_touched" in extras:
                entry["touched_bytes"] = extras[runner.name + "_touched"]
            results.append(entry)
        _log_scenario(log, results[-len(runners):])

    # 5. no-op: the same stack again.
    noop_runs = max(20, reps * 10)
    noop = {}
    for runner in runners:
        if isinstance(runner, ManagerRunner):
            noop[runner.name] = [_timed(lambda r=runner: r.switch(base)) for _ in range(noop_runs)]
    oracle = oracles.get(base)
    for runner in runners:
        if isinstance(runner, ManagerRunner):
            entry = row("no-op", runner, noop[runner.name], [], compare(runner.weights(keys), oracle),
                        {"seconds": 0.0, "flops": 0, "bytes": 0, "keys": 0}, runner.extra_bytes)
        else:   # hosts compare the stack and skip an unchanged one: nothing to time
            entry = row("no-op", runner, [], [], None, {"seconds": 0.0, "flops": 0, "bytes": 0, "keys": 0},
                        runner.extra_bytes)
            entry["note"] = "hosts skip an unchanged stack by comparing it; not timed"
        results.append(entry)

    # 6. reset: back to clean.
    bound = lower_bound(stacks, shapes, dtype, stacks.base, [], machine)
    clean_view = clean
    resets = {}
    for runner in runners:
        resets[runner.name] = [_timed(runner.reset)]
    for runner in runners:
        results.append(row("reset", runner, resets[runner.name], [],
                           compare(runner.weights(keys), clean_view), bound, runner.extra_bytes))
    _log_scenario(log, results[-2 * len(runners):])
    del runners, oracles
    gc.collect()
    return results


def _log_scenario(log: Log, rows: list[dict]) -> None:
    for entry in rows:
        error = entry["error"]
        text = "n/a" if error is None else ("bit-identical" if error["bit_identical"] else
                                           f"{error['key_ulps_max']:.3g} key-ulp, {error['element_ulps_max']:.3g} "
                                           f"elem-ulp")
        seconds = entry["seconds"]
        log(f"  {entry['scenario']:14s} {entry['label']:17s} "
            f"{'-' if seconds is None else f'{seconds * 1000:10.2f} ms'}  {text}  paths={entry['paths']}")


def run_cycles(dtype_name: str, cycles: int, machine: dict, directory: str, cache: LoraFileCache, log: Log,
               use_peft: bool = True) -> dict:
    """Scenario 4: A -> B -> A, `cycles` times, on the reduced model; error against the exact oracle of A at
    checkpoints. B changes one strength and swaps one LoRA for another."""
    dtype = DTYPES[dtype_name]
    shapes = model_shapes("cycle")
    stacks = make_stacks("r32", shapes, os.path.join(directory, "cycle"), seed=2)
    clean = clean_weights(shapes, dtype, seed=5)
    keys = list(shapes)
    a_named = stacks.base
    b_named = [("L0", 0.55), ("L1", 0.7), ("L5", 0.6), ("L3", 0.5), ("L4", 0.9)]
    a, b = stacks.stack(a_named), stacks.stack(b_named)
    runners = [ManagerRunner(mode, build_module(clean), cache) for mode in MODES]
    runners.append(FullRepatchRunner(build_module(clean), clean, cache))
    if use_peft:
        runners.append(PeftRunner(build_module(clean), stacks.loras, cache))
    oracles = Oracles(clean, cache)
    oracle_a = oracles.get(a)
    for runner in runners:
        runner.switch(a)
    checkpoints = sorted({c for c in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, cycles) if c <= cycles})
    series = {r.name: {"cycles": [], "key_ulps_max": [], "element_ulps_max": [], "key_ulps_mean": [],
                       "bit_identical": []} for r in runners}
    seconds = {r.name: 0.0 for r in runners}
    paths = {r.name: {} for r in runners}
    for cycle in range(1, cycles + 1):
        for runner in runners:
            started = time.perf_counter()
            runner.switch(b)
            runner.switch(a)
            seconds[runner.name] += time.perf_counter() - started
            if isinstance(runner, ManagerRunner):
                for path, count in runner.last_paths.items():
                    paths[runner.name][path] = paths[runner.name].get(path, 0) + count
        if cycle in checkpoints:
            for runner in runners:
                error = compare(runner.weights(keys), oracle_a)
                entry = series[runner.name]
                entry["cycles"].append(cycle)
                for name in ("key_ulps_max", "element_ulps_max", "key_ulps_mean", "bit_identical"):
                    entry[name].append(error[name])
    out = {"dtype": dtype_name, "cycles": cycles, "keys": keys, "parameters": sum(_numel(s) for s in shapes.values()),
           "stack_a": a_named, "stack_b": b_named, "runners": {}}
    for runner in runners:
        out["runners"][runner.name] = {"label": RUNNER_LABELS[runner.name], **series[runner.name],
                                       "seconds_per_switch": seconds[runner.name] / (2 * cycles),
                                       "paths_on_return_to_a": paths[runner.name] if paths[runner.name] else None,
                                       "extra_bytes": runner.extra_bytes}
        final = series[runner.name]
        log(f"  cycles {dtype_name} {RUNNER_LABELS[runner.name]:17s} {seconds[runner.name] / (2 * cycles) * 1000:8.2f}"
            f" ms/switch; after {cycles}: {final['key_ulps_max'][-1]:.3g} key-ulp, "
            f"{final['element_ulps_max'][-1]:.3g} elem-ulp, bit-identical {final['bit_identical'][-1]}")
    del runners
    gc.collect()
    return out


def run_noop(model: str, dtype_name: str, rank: int, runs: int, directory: str, cache: LoraFileCache,
             log: Log) -> dict:
    """Scenario 5 on the full key set: reconcile the applied 5-LoRA stack again (touches no weight)."""
    dtype = DTYPES[dtype_name]
    shapes = model_shapes(model)
    stacks = make_stacks("noop", shapes, os.path.join(directory, f"noop-{model}"), seed=3, uniform_rank=rank)
    params = sum(_numel(s) for s in shapes.values())
    log(f"no-op on {model} {dtype_name}: {len(shapes)} keys, {params / 1e9:.2f} G parameters, 5 LoRAs of rank "
        f"{rank} on every key; applying the stack once (delta mode, no backups)...")
    weights = clean_weights(shapes, dtype, seed=7)
    module = build_module(weights, copy=False)
    del weights
    manager = LoraStateManager(module, mode="delta", file_cache=cache)
    stack = stacks.stack(stacks.base)
    apply_seconds = _timed(lambda: manager.reconcile(stack))
    out = {"model": model, "dtype": dtype_name, "keys": len(shapes), "parameters": params, "rank": rank,
           "apply_seconds": apply_seconds, "runs": runs, "modes": {}}
    for mode in MODES:
        manager.reconcile(stack, mode=mode)   # a mode change re-plans: every key is skipped, nothing written
        samples = [_timed(lambda m=mode: manager.reconcile(stack, mode=m)) for _ in range(runs)]
        report = manager.reconcile(stack, mode=mode)
        out["modes"][mode] = {"median_seconds": _median(samples), "min_seconds": min(samples),
                              "p90_seconds": sorted(samples)[int(0.9 * (len(samples) - 1))],
                              "noop_reported": report.noop}
        log(f"  no-op {mode:5s}: median {out['modes'][mode]['median_seconds'] * 1000:.3f} ms "
            f"(min {min(samples) * 1000:.3f} ms) over {runs} runs")
    return out


# ---------------------------------------------------------------------------------------------------- targets

ONE_CHANGE = ("strength", "strength-half", "remove", "add")


def evaluate_targets(results: list[dict], cycles: list[dict], noop: dict) -> list[dict]:
    targets = []
    by = {}
    for entry in results:
        by[(entry["model"], entry["dtype"], entry["stack"], entry["scenario"], entry["runner"])] = entry

    def ratio(entry):
        full = by.get((entry["model"], entry["dtype"], entry["stack"], entry["scenario"], "full"))
        if not full or not full["seconds"] or not entry["seconds"]:
            return None
        return full["seconds"] / entry["seconds"]

    for mode in ("delta", "auto"):
        values = [(ratio(e), e) for e in results if e["runner"] == mode and e["scenario"] in ONE_CHANGE]
        values = [(r, e) for r, e in values if r is not None]
        worst = min(values, key=lambda v: v[0]) if values else (None, None)
        targets.append({"target": f"one change in a 5-LoRA stack: {mode} >= 4x faster than full re-patch",
                        "met": bool(values) and worst[0] >= 4.0, "worst": worst[0],
                        "worst_case": _case(worst[1]), "threshold": 4.0,
                        "all": {_case(e): r for r, e in values}})
    values = [(ratio(e), e) for e in results if e["runner"] == "exact" and e["scenario"] in ONE_CHANGE]
    values = [(r, e) for r, e in values if r is not None]
    worst = min(values, key=lambda v: v[0]) if values else (None, None)
    targets.append({"target": "exact never slower than full re-patch (ratio >= 1.0)",
                    "met": bool(values) and worst[0] >= 1.0, "worst": worst[0], "worst_case": _case(worst[1]),
                    "threshold": 1.0, "all": {_case(e): r for r, e in values}})
    values = [(ratio(e), e) for e in results if e["runner"] == "exact" and e["scenario"] == "strength-half"
              and e["stack"] == "r32"]
    worst = min(values, key=lambda v: v[0]) if values else (None, None)
    targets.append({"target": "exact >= 1.5x faster than full re-patch when the changed LoRA covers half the keys",
                    "met": bool(values) and worst[0] >= 1.5, "worst": worst[0], "worst_case": _case(worst[1]),
                    "threshold": 1.5, "all": {_case(e): r for r, e in values}})

    exact_rows = [e for e in results if e["runner"] == "exact" and e["error"] is not None]
    bad = [_case(e) for e in exact_rows if not e["error"]["bit_identical"] or
           not e.get("error_after_back", {"bit_identical": True})["bit_identical"]]
    cycle_bad = [c["dtype"] for c in cycles if not all(c["runners"]["exact"]["bit_identical"])]
    targets.append({"target": "exact bit-identical to the oracle after every scenario, including the A->B->A cycles",
                    "met": not bad and not cycle_bad and bool(exact_rows),
                    "checked": len(exact_rows) * 2 + sum(len(c["runners"]["exact"]["bit_identical"]) for c in cycles),
                    "failures": bad + [f"cycles {d}" for d in cycle_bad]})

    auto = {c["dtype"]: c["runners"]["auto"] for c in cycles if c["dtype"] in ("fp16", "bf16")}
    worst_key = max((max(r["key_ulps_max"]) for r in auto.values()), default=None)
    worst_elem = max((max(r["element_ulps_max"]) for r in auto.values()), default=None)
    targets.append({"target": "auto within 1 ulp of exact on every key after the A->B->A cycles (fp16, bf16), "
                              "in ulps at the key's largest magnitude",
                    "met": worst_key is not None and worst_key <= 1.0 and set(auto) == {"fp16", "bf16"},
                    "worst": worst_key, "threshold": 1.0,
                    "per_dtype": {d: {"key_ulps_max": max(r["key_ulps_max"]),
                                      "element_ulps_max": max(r["element_ulps_max"])} for d, r in auto.items()},
                    "element_ulps_worst": worst_elem,
                    "note": "element ulps (each element's own magnitude) are stricter and reported for information"})

    if noop:
        worst = max(m["median_seconds"] for m in noop["modes"].values())
        targets.append({"target": f"no-op re-run of a 5-LoRA stack on {noop['model']} shapes ({noop['keys']} keys) "
                                  f"under 1 ms", "met": worst < 1e-3, "worst": worst, "threshold": 1e-3,
                        "is_full_sdxl_key_set": noop["model"] == "sdxl"})

    exact_mem = [e for e in results if e["runner"] == "exact" and "touched_bytes" in e]
    over = [_case(e) for e in exact_mem if e["extra_bytes"] > e["touched_bytes"]]
    delta_mem = [e for e in results if e["runner"] == "delta"]
    delta_over = [_case(e) for e in delta_mem if e["extra_bytes"]]
    targets.append({"target": "exact backups <= bytes of the keys touched; delta holds none",
                    "met": bool(exact_mem) and not over and not delta_over, "exact_over": over,
                    "delta_with_backups": delta_over,
                    "exact_ratio_max": max((e["extra_bytes"] / e["touched_bytes"] for e in exact_mem
                                            if e["touched_bytes"]), default=None)})

    for mode in ("delta", "auto"):
        values = [(e["seconds"] / e["lower_bound"]["seconds"], e) for e in results
                  if e["runner"] == mode and e["scenario"] in ONE_CHANGE and e["seconds"]
                  and e["lower_bound"]["seconds"]]
        worst = max(values, key=lambda v: v[0]) if values else (None, None)
        best = min(values, key=lambda v: v[0]) if values else (None, None)
        targets.append({"target": f"{mode} switch time within 2x of the lower bound (FLOPs/matmul rate + "
                                  f"bytes/bandwidth)", "met": bool(values) and worst[0] <= 2.0, "worst": worst[0],
                        "worst_case": _case(worst[1]), "best": best[0], "best_case": _case(best[1]),
                        "threshold": 2.0, "all": {_case(e): r for r, e in values}})
    return targets


def _case(entry) -> str:
    if entry is None:
        return ""
    return f"{entry['model']}/{entry['dtype']}/{entry['stack']}/{entry['scenario']}/{entry['runner']}"


# ---------------------------------------------------------------------------------------------------- output

def format_table(results: list[dict]) -> str:
    header = (f"{'model':11s} {'dtype':5s} {'stack':5s} {'scenario':13s} {'runner':17s} {'seconds':>10s} "
              f"{'x full':>7s} {'key-ulp':>8s} {'mean':>8s} {'elem-ulp':>9s} {'exact?':>6s} {'extra MiB':>9s} "
              f"{'bound s':>9s} {'x bound':>8s}")
    lines = [header, "-" * len(header)]
    fulls = {(e["model"], e["dtype"], e["stack"], e["scenario"]): e for e in results if e["runner"] == "full"}
    for e in results:
        full = fulls.get((e["model"], e["dtype"], e["stack"], e["scenario"]))
        ratio = (f"{full['seconds'] / e['seconds']:7.2f}" if full and full["seconds"] and e["seconds"]
                 else f"{'-':>7s}")
        err = e["error"]
        bound = e["lower_bound"]["seconds"]
        seconds = f"{e['seconds']:10.5f}" if e["seconds"] is not None else f"{'-':>10s}"
        xbound = f"{e['seconds'] / bound:8.1f}" if bound and e["seconds"] else f"{'-':>8s}"
        if err is None:
            errs = f"{'-':>8s} {'-':>8s} {'-':>9s} {'-':>6s}"
        else:
            errs = (f"{err['key_ulps_max']:8.3g} {err['key_ulps_mean']:8.2g} {err['element_ulps_max']:9.3g} "
                    f"{'yes' if err['bit_identical'] else 'no':>6s}")
        lines.append(f"{e['model']:11s} {e['dtype']:5s} {e['stack']:5s} {e['scenario']:13s} {e['label']:17s} "
                     f"{seconds} {ratio} {errs} {e['extra_bytes'] / 2**20:9.1f} {bound:9.4f} {xbound}")
    return "\n".join(lines)


def format_cycles(cycles: list[dict]) -> str:
    lines = [(f"{'dtype':5s} {'runner':17s} {'ms/switch':>10s} {'key-ulp max':>12s} {'elem-ulp max':>13s} "
              f"{'bit-identical':>14s}  (after N cycles of A->B->A)")]
    for block in cycles:
        for r in block["runners"].values():
            lines.append(f"{block['dtype']:5s} {r['label']:17s} {r['seconds_per_switch'] * 1000:10.3f} "
                         f"{r['key_ulps_max'][-1]:12.3g} {r['element_ulps_max'][-1]:13.3g} "
                         f"{r['bit_identical'][-1]!s:>14s}  N={r['cycles'][-1]}")
    return "\n".join(lines)


def format_targets(targets: list[dict]) -> str:
    lines = []
    for t in targets:
        detail = ""
        if t.get("worst") is not None:
            detail = f" (worst {t['worst']:.4g}"
            if t.get("threshold") is not None:
                detail += f" vs {t['threshold']:g}"
            if t.get("worst_case"):
                detail += f", {t['worst_case']}"
            detail += ")"
        if t.get("failures"):
            detail += f" failures: {t['failures'][:3]}"
        lines.append(f"[{'MET ' if t['met'] else 'MISS'}] {t['target']}{detail}")
    return "\n".join(lines)


def format_markdown(data: dict) -> str:
    """The tables of docs/mechanism.md: switching (r32 stack), cycles, no-op, targets."""
    machine = data["machine"]
    lines = [(f"Measured on {machine['cpu']} ({machine['cores']} cores, {machine['torch_threads']} torch threads), "
              f"torch {machine['torch']}, fp32 GEMM {machine['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s, copy "
              f"bandwidth {machine['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s; `{data['profile']}` profile, "
              f"{data['reps']} timed runs per scenario (median), {data['created']}."), ""]
    fulls = {(e["model"], e["dtype"], e["stack"], e["scenario"]): e for e in data["results"] if e["runner"] == "full"}
    lines += [("| model | dtype | stack | scenario | runner | seconds | x full re-patch | key-ulp max | elem-ulp max "
               "| bit-identical | extra MiB | lower bound s | x bound |"), "|" + "---|" * 13]
    for e in data["results"]:
        full = fulls.get((e["model"], e["dtype"], e["stack"], e["scenario"]))
        ratio = f"{full['seconds'] / e['seconds']:.2f}" if full and full["seconds"] and e["seconds"] else "-"
        err = e["error"]
        bound = e["lower_bound"]["seconds"]
        lines.append(
            f"| {e['model']} | {e['dtype']} | {e['stack']} | {e['scenario']} | {e['label']} | "
            f"{e['seconds']:.4g} | {ratio} | " if e["seconds"] is not None else
            f"| {e['model']} | {e['dtype']} | {e['stack']} | {e['scenario']} | {e['label']} | - | - | ")
        lines[-1] += ("- | - | - | " if err is None else
                      f"{err['key_ulps_max']:.3g} | {err['element_ulps_max']:.3g} | "
                      f"{'yes' if err['bit_identical'] else 'no'} | ")
        lines[-1] += (f"{e['extra_bytes'] / 2**20:.0f} | {bound:.3g} | "
                      f"{e['seconds'] / bound:.1f} |" if bound and e["seconds"] else
                      f"{e['extra_bytes'] / 2**20:.0f} | {bound:.3g} | - |")
    if data.get("cycles"):
        lines += ["", "| dtype | runner | ms per switch | key-ulp max | elem-ulp max | bit-identical | after cycles |",
                  "|---|---|---|---|---|---|---|"]
        for block in data["cycles"]:
            for r in block["runners"].values():
                lines.append(f"| {block['dtype']} | {r['label']} | {r['seconds_per_switch'] * 1000:.2f} | "
                             f"{r['key_ulps_max'][-1]:.3g} | {r['element_ulps_max'][-1]:.3g} | "
                             f"{'yes' if r['bit_identical'][-1] else 'no'} | {r['cycles'][-1]} |")
    noop = data.get("noop")
    if noop:
        lines += ["", f"No-op on {noop['model']} {noop['dtype']} ({noop['keys']} keys, {noop['parameters'] / 1e9:.2f} "
                      f"G parameters, 5 LoRAs of rank {noop['rank']}): " +
                  ", ".join(f"{m} {v['median_seconds'] * 1000:.2f} ms" for m, v in noop["modes"].items()) +
                  " (median)."]
    lines += ["", "| target | met | worst |", "|---|---|---|"]
    for t in data["targets"]:
        worst = t.get("worst")
        lines.append(f"| {t['target']} | {'yes' if t['met'] else '**no**'} | "
                     f"{'' if worst is None else f'{worst:.4g}'} {t.get('worst_case', '')} |")
    return "\n".join(lines)


def make_plots(data: dict, directory: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    written = []
    colors = {"exact": "tab:green", "delta": "tab:orange", "auto": "tab:blue", "full": "tab:gray",
              "peft": "tab:red"}
    cycles = data.get("cycles") or []
    if cycles:
        fig, axes = plt.subplots(1, len(cycles), figsize=(5 * len(cycles), 4.2), squeeze=False)
        for ax, block in zip(axes[0], cycles):
            for name, r in block["runners"].items():
                ax.plot(r["cycles"], r["key_ulps_max"], marker="o", ms=3, color=colors[name],
                        label=f"{r['label']} (key ulps)")
                ax.plot(r["cycles"], r["element_ulps_max"], ls=":", color=colors[name], alpha=0.7)
            ax.set_xscale("log")
            ax.set_yscale("symlog", linthresh=0.5)
            ax.set_ylim(bottom=0)
            ax.set_xlabel("A -> B -> A cycles")
            ax.set_title(f"{block['dtype']}: max error vs exact oracle")
            ax.set_ylabel("ulps (solid: key scale, dotted: per element)")
            ax.axhline(1.0, color="k", lw=0.5, ls="--")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7, loc="upper left")
        fig.suptitle("Error vs number of switches (exact and full re-patch stay at 0: bit-identical)", fontsize=10)
        fig.tight_layout()
        path = os.path.join(directory, "error_vs_switches.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    results = [e for e in data.get("results", []) if e["stack"] == "r32" and e["scenario"] in ONE_CHANGE + ("reset",)]
    groups = sorted({(e["model"], e["dtype"]) for e in results}, key=lambda g: (g[0], ["fp16", "bf16", "fp32"].index(g[1])))
    if groups:
        fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 4.4), squeeze=False)
        for ax, (model, dtype) in zip(axes[0], groups):
            rows = [e for e in results if e["model"] == model and e["dtype"] == dtype]
            scenarios = [s for s in ONE_CHANGE + ("reset",) if any(e["scenario"] == s for e in rows)]
            runners = [r for r in ("exact", "delta", "auto", "full", "peft") if any(e["runner"] == r for e in rows)]
            width = 0.8 / len(runners)
            for i, runner in enumerate(runners):
                values = []
                for s in scenarios:
                    match = [e for e in rows if e["scenario"] == s and e["runner"] == runner]
                    values.append(match[0]["seconds"] if match and match[0]["seconds"] else float("nan"))
                ax.bar([j + i * width for j in range(len(scenarios))], values, width, color=colors[runner],
                       label=RUNNER_LABELS[runner])
            bounds = []
            for s in scenarios:
                match = [e for e in rows if e["scenario"] == s]
                bounds.append(match[0]["lower_bound"]["seconds"] if match else float("nan"))
            ax.scatter([j + 0.4 - width / 2 for j in range(len(scenarios))], bounds, marker="_", s=400,
                       color="k", zorder=5, label="lower bound")
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(scenarios))])
            ax.set_xticklabels(scenarios, rotation=20, fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("seconds per switch (median)")
            ax.set_title(f"{model} {dtype}", fontsize=10)
            ax.grid(alpha=0.3, axis="y")
        axes[0][0].legend(fontsize=7)
        machine = data.get("machine", {})
        fig.suptitle(f"Switch time, 5-LoRA stack (rank 32), {machine.get('cpu', '')}, "
                     f"{machine.get('torch_threads')} threads", fontsize=10)
        fig.tight_layout()
        path = os.path.join(directory, "switch_time.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------------- main

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a run under a minute (smaller models, 100 cycles)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="write the results as JSON (default: bench.json in --plots's folder, if given)")
    parser.add_argument("--plots", metavar="DIR", default=None,
                        help="write error_vs_switches.png and switch_time.png (needs matplotlib) and results JSON")
    parser.add_argument("--from-json", metavar="PATH", default=None,
                        help="only redraw the plots (and tables) from an earlier JSON result")
    parser.add_argument("--markdown", metavar="PATH", default=None, help="also write the tables as Markdown")
    parser.add_argument("--reps", type=int, default=None, help="timed runs per scenario (median)")
    parser.add_argument("--cycles", type=int, default=None, help="A -> B -> A cycles (default 1000; --quick 100)")
    parser.add_argument("--no-peft", action="store_true", help="skip the PEFT fuse/unfuse baseline")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true")


def run(profile: Profile, *, reps: int | None = None, cycles: int | None = None, use_peft: bool = True,
        verbose: bool = True) -> dict:
    log = Log(verbose)
    started = time.perf_counter()
    machine = machine_info()
    machine.update(measure_machine(profile.name != "default"))
    log(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads, torch "
        f"{machine['torch']}; fp32 GEMM {machine['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s, copy bandwidth "
        f"{machine['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s (read + write)")
    if use_peft:
        try:
            import peft  # noqa: F401
        except ImportError:
            log("peft is not installed: the PEFT fuse/unfuse baseline is skipped")
            use_peft = False
    reps = reps or profile.reps
    cycles = cycles if cycles is not None else profile.cycles
    cache = LoraFileCache(max_bytes=8 << 30)
    results, cycle_results, noop = [], [], {}
    models = {}
    with tempfile.TemporaryDirectory(prefix="lora_state_bench_") as directory:
        runs = [(model, dtype, "r32") for model, dtypes in profile.switch_models for dtype in dtypes]
        runs += [(model, dtype, "mixed") for model, dtype in profile.mixed]
        for model, dtype, kind in runs:
            shapes = model_shapes(model)
            models[model] = {"description": MODEL_SPECS[model][2], "keys": len(shapes),
                             "parameters": sum(_numel(s) for s in shapes.values())}
            peft_here = use_peft and kind == "r32" and (model, dtype) in profile.peft
            results += run_switching(model, dtype, kind, peft_here, reps, machine,
                                     directory, cache, log)
            cache.clear()
        shapes = model_shapes("cycle")
        models["cycle"] = {"description": MODEL_SPECS["cycle"][2], "keys": len(shapes),
                           "parameters": sum(_numel(s) for s in shapes.values())}
        if cycles:
            log(f"scenario 4: A -> B -> A x {cycles} on the reduced model ({len(shapes)} keys)")
            for dtype in profile.cycle_dtypes:
                cycle_results.append(run_cycles(dtype, cycles, machine, directory, cache, log, use_peft))
            cache.clear()
        model, dtype, rank = profile.noop
        shapes = model_shapes(model)
        models[model] = {"description": MODEL_SPECS[model][2], "keys": len(shapes),
                         "parameters": sum(_numel(s) for s in shapes.values())}
        noop = run_noop(model, dtype, rank, profile.noop_runs, directory, cache, log)
        cache.clear()
    stacks_doc = {
        "r32": "5 LoRAs of rank 32 (alpha 16), fp16 files: L0-L3 on every key, L4 on every other key; base stack "
               "L0 0.8, L1 0.7, L2 0.6, L3 0.5, L4 0.9. strength: L0 -> 0.55; strength-half: L4 -> 0.4; remove: "
               "drop L2; add: append L5 (rank 32, every key) at 0.6",
        "mixed": "ranks 8-128 on different subsets: M0 r8 every key, M1 r16 attn1, M2 r32 attn2, M3 r64 ff, M4 r128 "
                 "every other key; same scenarios, M5 r32 every key is added",
        "cycles": "A = the r32 base stack; B = L0 at 0.55 and L2 swapped for L5",
    }
    data = {
        "version": 1, "profile": profile.name, "reps": reps, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds_total": time.perf_counter() - started, "machine": machine, "models": models, "stacks": stacks_doc,
        "units": {
            "seconds": "median wall time of one switch (reconcile) over the timed runs",
            "key_ulps": "|live - oracle| in ulps of the dtype at the key's largest magnitude (LoRA State's drift "
                        "unit); _max is the max over keys and elements, _mean the mean over all elements",
            "element_ulps": "|live - oracle| in ulps at each element's own magnitude (stricter)",
            "oracle": "a fresh clean copy reconciled in exact mode to the same stack; reset is compared to clean",
            "extra_bytes": "clean copies held (LoRA State backups; the full re-patch host's backup of every touched "
                           "key); PEFT holds no copy but keeps fp32 adapters",
            "lower_bound": "FLOPs of the deltas that must change / measured fp32 GEMM rate + 2 x bytes of every "
                           "key that must change (read once, written once) / measured copy bandwidth",
            "x full": "full re-patch seconds / this runner's seconds (same scenario, same run)",
        },
        "results": results, "cycles": cycle_results, "noop": noop,
    }
    data["machine"]["load_average_at_end"] = _load()
    data["targets"] = evaluate_targets(results, cycle_results, noop)
    data["seconds_total"] = time.perf_counter() - started
    return data


def print_report(data: dict, out=print) -> None:
    out("")
    out(format_table(data["results"]))
    if data.get("cycles"):
        out("")
        out(format_cycles(data["cycles"]))
    noop = data.get("noop")
    if noop:
        out("")
        out(f"no-op on {noop['model']} {noop['dtype']} ({noop['keys']} keys, {noop['parameters'] / 1e9:.2f} G "
            f"parameters, 5 LoRAs): " + ", ".join(f"{m} {v['median_seconds'] * 1000:.3f} ms"
                                                  for m, v in noop["modes"].items()))
    out("")
    out("Targets:")
    out(format_targets(data["targets"]))
    machine = data["machine"]
    out(f"\n{data['profile']} run, {data['seconds_total']:.0f} s total, on {machine['cpu']} "
        f"({machine['cores']} cores, {machine['torch_threads']} torch threads, torch {machine['torch']}); load "
        f"average {machine.get('load_average_at_start')} at start, {machine.get('load_average_at_end')} at end")
    loads = [x for x in (machine.get("load_average_at_start") or [])[:1] + (machine.get("load_average_at_end")
                                                                            or [])[:1]]
    if any(load > (machine.get("cores") or 1) for load in loads):
        out("note: other processes were competing for the CPU during this run: absolute times are inflated; the "
            "ratios come from interleaved runs and are less affected")


def main(args=None) -> int:
    if args is None or isinstance(args, (list, tuple)):
        parser = argparse.ArgumentParser(prog="python -m lora_state bench", description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(parser)
        args = parser.parse_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as handle:
            data = json.load(handle)
    else:
        profile = PROFILES[args.profile or ("quick" if args.quick else "default")]
        data = run(profile, reps=args.reps, cycles=args.cycles, use_peft=not args.no_peft, verbose=not args.quiet)
    print_report(data)
    json_path = args.json or (os.path.join(args.plots, "bench.json") if args.plots and not args.from_json else None)
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, default=str)
        print(f"wrote {json_path}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(format_markdown(data) + "\n")
        print(f"wrote {args.markdown}")
    if args.plots:
        for path in make_plots(data, args.plots):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":   # python -m lora_state.bench
    sys.exit(main(sys.argv[1:]))
