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


def keys_as_patches(patcher, keys, weight_of, foreign_keys) -> dict[str, str]:
    """{key: reason} for every key of `keys` that must be carried as patches on `patcher`.

    `weight_of(key)` gives the clean base tensor; `foreign_keys` are keys that other nodes' patches touch."""
    keys = list(keys)
    reason = model_reason(patcher)
    if reason is not None:
        return {key: reason for key in keys}
    memory = MemoryMap.snapshot() if keys else None
    out = {}
    for key in keys:
        why = FOREIGN_PATCHES if key in foreign_keys else in_place_problem(patcher.model, key, weight_of(key), memory)
        if why is not None:
            out[key] = why
    return out
