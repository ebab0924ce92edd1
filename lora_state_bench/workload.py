"""The workload: the layer shapes LoRAs target in real UNets, random clean weights, and kohya LoRA files.

Shapes come from diffusers' UNet2DConditionModel instantiated on the meta device (no weights): every Linear/Conv2d
inside its Transformer2DModels (kohya's default LoRA target). Weights are random (std 1/sqrt(fan_in)); LoRAs are
written as kohya-named fp16 safetensors files, as published LoRAs are.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cache

import torch

from lora_state.hosts import TorchModuleHost

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MANTISSA_BITS = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}

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


def numel(shape) -> int:
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
        flat = torch.empty(numel(shape), dtype=dtype)
        position = 0
        offset %= pool.numel()
        while position < flat.numel():
            take = min(flat.numel() - position, pool.numel() - offset)
            flat[position:position + take].copy_(pool[offset:offset + take])
            position += take
            offset = (offset + take) % pool.numel()
        offset += 104729
        flat.mul_(1.0 / math.sqrt(numel(shape[1:])))
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
        fan_in = numel(shape[1:])
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
    return 2 * spec.rank * shape[0] * numel(shape[1:])


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
