"""Host for any plain torch.nn.Module: LoRA keys resolve against the module's own parameter names."""
from __future__ import annotations

import torch

from ..naming import PEFT_PREFIXES
from ..transfers import to_device
from .base import Host

KOHYA_PREFIXES = ("lora_unet_", "lora_te1_", "lora_te2_", "lora_te3_", "lora_te_", "lora_transformer_", "lycoris_")


class TorchModuleHost(Host):
    label = "torch.nn.Module"

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self._modules = None
        self._by_underscore = None
        self._owners: dict[str, tuple] = {}   # key -> (owning module, attribute): no tree walk per lookup

    def _index(self):
        if self._modules is None:
            params = dict(self.module.named_parameters())
            modules = {key.rsplit(".", 1)[0] for key in params if "." in key}
            underscore: dict[str, str | None] = {}
            for path in modules:
                alias = path.replace(".", "_")
                # Two paths with the same underscore form (a.b_c vs a_b.c) are ambiguous: match neither.
                underscore[alias] = None if alias in underscore else path
            self._params, self._modules, self._by_underscore = params, modules, underscore
        return self._params

    def parameter(self, key):
        owner = self._owners.get(key)
        if owner is None:
            self._index()[key]   # KeyError for unknown keys
            path, _, leaf = key.rpartition(".")
            owner = self._owners[key] = (self.module.get_submodule(path) if path else self.module, leaf)
        module, leaf = owner
        # Read through the owning module each time, so a Parameter replaced by someone else is seen as such.
        tensor = module._parameters.get(leaf)
        return tensor if tensor is not None else getattr(module, leaf)

    def has_parameter(self, key):
        return key in self._index()

    def read(self, lora_file):
        # The adapters' tensors go where their parameter lives (a module on a GPU keeps its LoRAs there, as
        # diffusers and PEFT do), all of one device in one copy.
        resolved = super().read(lora_file)
        by_device: dict = {}
        for key, adapter in resolved.patches.items():
            device = self.parameter(key).device
            if device.type != "cpu":
                # Bounded (and cached) here, from the CPU tensors: on the GPU each bound would wait for it.
                getattr(adapter, "change_bound", lambda: None)()
                by_device.setdefault(device, []).extend(
                    (adapter, name) for name, value in vars(adapter).items() if isinstance(value, torch.Tensor))
        for device, fields in by_device.items():
            for (adapter, name), moved in zip(fields, to_device([getattr(a, n) for a, n in fields], device)):
                setattr(adapter, name, moved)
        return resolved

    def resolve_prefix(self, prefix):
        self._index()
        for kohya in KOHYA_PREFIXES:
            if prefix.startswith(kohya):
                return self._by_underscore.get(prefix[len(kohya):])
        candidate = prefix
        while True:
            if candidate in self._modules:
                return candidate
            stripped = next((candidate[len(p):] for p in PEFT_PREFIXES if candidate.startswith(p)), None)
            if stripped is None:
                return None
            candidate = stripped
