"""What is timed: LoRA State's manager in each mode, and the two baselines users have today (a full re-patch,
as ComfyUI / Forge / sd.cpp do on any change, and PEFT's fuse/unfuse). Each runner has ``switch(stack)``,
``reset()``, ``weights(keys)``, ``extra_bytes`` and ``last_paths``."""
from __future__ import annotations

import warnings

import torch

from lora_state.applier import write_exact
from lora_state.files import LoraFileCache
from lora_state.hosts import TorchModuleHost
from lora_state.manager import LoraStateManager

from .workload import LoraSpec, build_module, kohya_prefix, module_weights

MODES = ("exact", "delta", "auto")
BASELINES = ("full", "peft")
RUNNER_LABELS = {"exact": "exact", "delta": "delta", "auto": "auto", "full": "full re-patch",
                 "peft": "PEFT fuse/unfuse"}


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


def make_runners(clean: dict, stacks, cache: LoraFileCache, use_peft: bool) -> list:
    """One ManagerRunner per mode, a full re-patch and (if asked) PEFT, each on its own copy of `clean`."""
    runners = [ManagerRunner(mode, build_module(clean), cache) for mode in MODES]
    runners.append(FullRepatchRunner(build_module(clean), clean, cache))
    if use_peft:
        runners.append(PeftRunner(build_module(clean), stacks.loras, cache))
    return runners
