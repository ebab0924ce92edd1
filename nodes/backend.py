"""The one place that decides, per model and per key, which backend carries a LoRA State stack.

- in place (runtime.py + comfy_host.py): LoRA State writes the weights itself, incrementally, from its own clean
  copies. Only where it owns the memory: a non-dynamic patcher, a plain float dtype, writable storage that no file
  backs, and no ComfyUI patch of another node on the same key of the patcher being used.
- patches (patches_backend.py): the stack is carried by the patcher as ComfyUI's own patches, so ComfyUI applies
  it by its own rules (lazily per layer under Dynamic VRAM, dequantize/requantize for quantized weights, in order
  with a native LoraLoader's patches). LoRA State writes nothing there.
"""
from __future__ import annotations

import torch

import comfy.model_patcher

from ..lora_state.hosts.storage import MemoryMap, storage_problem

PLAIN_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def is_dynamic(patcher) -> bool:
    """ComfyUI's Dynamic VRAM patcher (2026): weights are views of the file, LoRAs applied per layer on load."""
    check = getattr(patcher, "is_dynamic", None)
    return bool(check()) if callable(check) else False


def model_reason(patcher) -> str | None:
    """Why no key of this patcher's model may be written in place, or None."""
    if is_dynamic(patcher):
        return "Dynamic VRAM model (ComfyUI applies LoRAs per layer as it loads them)"
    return None


FOREIGN_PATCHES = "another node's ComfyUI patches are on this key (applied in order with them)"


def in_place_problem(module, key: str, weight: torch.Tensor, memory: MemoryMap | None) -> str | None:
    """Why LoRA State must not write `key` of `module` itself, or None. `weight` is the clean base tensor
    (ComfyUI's backup while its patches are applied). Also the host's last guard before any write."""
    _, set_func, convert_func = comfy.model_patcher.get_key_weight(module, key)
    if set_func is not None or convert_func is not None:
        return "quantized / mixed-precision weight (ComfyUI dequantizes, patches and requantizes it)"
    if weight.dtype not in PLAIN_FLOATS:
        return f"{weight.dtype} weight (not a plain float type)"
    return storage_problem(weight, memory)


class Ownership:
    """Per model: why each key must not be written in place, judged again only for a tensor not seen before.

    What a key's op is (quantized or not) does not change; its storage changes only when ComfyUI swaps or moves the
    tensor, which gives it a new data pointer. So re-running an unchanged stack costs a pointer read per key, not a
    read of /proc/self/maps. (The manager's last guard still reads it, fresh, before any write.)"""

    def __init__(self):
        self._op_reason: dict[str, str | None] = {}
        self._by_storage: dict[str, tuple] = {}     # key -> ((data_ptr, dtype, device), reason)

    def problem(self, module, key: str, weight: torch.Tensor, memory_of) -> str | None:
        if key not in self._op_reason:
            _, set_func, convert_func = comfy.model_patcher.get_key_weight(module, key)
            self._op_reason[key] = "quantized / mixed-precision weight (ComfyUI dequantizes, patches and " \
                "requantizes it)" if set_func is not None or convert_func is not None else None
        if self._op_reason[key] is not None:
            return self._op_reason[key]
        seen = (weight.data_ptr(), weight.dtype, weight.device)
        cached = self._by_storage.get(key)
        if cached is not None and cached[0] == seen:
            return cached[1]
        reason = f"{weight.dtype} weight (not a plain float type)" if weight.dtype not in PLAIN_FLOATS else \
            storage_problem(weight, memory_of())
        self._by_storage[key] = (seen, reason)
        return reason


def keys_as_patches(patcher, keys, weight_of, foreign_keys, ownership: Ownership) -> dict[str, str]:
    """{key: reason} for every key of `keys` that must be carried as patches on `patcher`.

    `weight_of(key)` gives the clean base tensor; `foreign_keys` are keys that other nodes' patches touch."""
    keys = list(keys)
    reason = model_reason(patcher)
    if reason is not None:
        return {key: reason for key in keys}
    memory = []

    def memory_of():        # read /proc/self/maps once, and only if some tensor is new
        if not memory:
            memory.append(MemoryMap.snapshot())
        return memory[0]

    out = {}
    for key in keys:
        why = FOREIGN_PATCHES if key in foreign_keys else \
            ownership.problem(patcher.model, key, weight_of(key), memory_of)
        if why is not None:
            out[key] = why
    return out
