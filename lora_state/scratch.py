"""Reused work buffers. A fresh multi-MB allocation per key costs page faults (memory handed back to the system
by the last free and mapped again) that take as long as the arithmetic itself on CPU, and more when another
model's patching churns memory in the same process; a buffer per purpose grows to the largest need and stays
until the end of the outermost `kept_buffers()` scope (one reconcile), so nothing stays allocated between runs."""
from __future__ import annotations

import contextlib
import threading

import torch

_local = threading.local()


@contextlib.contextmanager
def kept_buffers():
    """Within this scope (nestable, per thread) work_buffer reuses its buffers; leaving the outermost scope frees
    them."""
    depth = getattr(_local, "depth", 0)
    if depth == 0:
        _local.buffers = {}
    _local.depth = depth + 1
    try:
        yield
    finally:
        _local.depth = depth
        if depth == 0:
            _local.buffers = None


def work_buffer(purpose: str, numel: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A flat tensor of `numel` elements: inside kept_buffers(), the same storage on every call with the same
    purpose, dtype and device (its contents are the caller's until the next such call); outside, a fresh one."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        return torch.empty(numel, dtype=dtype, device=device)
    slot = (purpose, dtype, torch.device(device))
    buffer = buffers.get(slot)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[slot] = torch.empty(numel, dtype=dtype, device=device)
    return buffer[:numel]
