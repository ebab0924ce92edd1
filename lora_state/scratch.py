"""Reused work buffers. A fresh multi-MB allocation per key costs page faults (memory handed back to the system
by the last free and mapped again) that take as long as the arithmetic itself on CPU, and more when another
model's patching churns memory in the same process; a buffer per purpose grows to the largest need and stays."""
from __future__ import annotations

import threading

import torch

_local = threading.local()


def work_buffer(purpose: str, numel: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A flat tensor of `numel` elements, the same storage on every call with the same purpose, dtype and device
    (per thread): its contents are the caller's until the next call with that purpose."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    slot = (purpose, dtype, torch.device(device))
    buffer = buffers.get(slot)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[slot] = torch.empty(numel, dtype=dtype, device=device)
    return buffer[:numel]
