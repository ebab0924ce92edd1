"""Whose memory is a tensor in? LoRA State writes only into storage that no file backs and that can be written.

Writing into a read-only mapping kills the process (SIGSEGV), and writing into a file-backed one is lost or goes
stale where the owner re-reads the file (ComfyUI's Dynamic VRAM loads weights as `torch.frombuffer` views of a
read-only mmap of the checkpoint). torch keeps no read-only flag on a storage, so the storage itself is judged:
- storages that ComfyUI tags as file slices (`_comfy_tensor_mmap_refs`, `_comfy_tensor_file_slice`);
- on Linux, the memory mapping that holds the tensor's data, read from /proc/self/maps: a mapping without write
  permission, or one backed by a file, is not ours to write.
Where neither can be read (other OSes), a CPU tensor is treated as owned unless tagged.
"""
from __future__ import annotations

import bisect
import os
import sys

import torch

#: Attributes ComfyUI sets on storages that are slices of a model file.
FILE_STORAGE_TAGS = ("_comfy_tensor_mmap_refs", "_comfy_tensor_file_slice")

_MAPS = "/proc/self/maps"


class MemoryMap:
    """A snapshot of the process's memory mappings (Linux), for many lookups in one operation."""

    def __init__(self, regions: list[tuple[int, int, bool, str]]):
        self._regions = sorted(regions)
        self._starts = [r[0] for r in self._regions]

    @classmethod
    def snapshot(cls) -> "MemoryMap | None":
        if not sys.platform.startswith("linux") or not os.path.exists(_MAPS):
            return None
        regions = []
        with open(_MAPS) as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) < 5:
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                path = fields[5].strip() if len(fields) > 5 else ""
                regions.append((start, end, "w" in fields[1], path))
        return cls(regions)

    def region(self, address: int) -> tuple[int, int, bool, str] | None:
        index = bisect.bisect_right(self._starts, address) - 1
        if index >= 0:
            region = self._regions[index]
            if region[0] <= address < region[1]:
                return region
        return None


def _anonymous(path: str) -> bool:
    # Pseudo-paths of memory that no file backs: heap, stack, anonymous mappings, shared anonymous memory.
    return not path or path.startswith("[") or path.startswith("/dev/zero") or path.startswith("/memfd:") \
        or path.startswith("/SYSV") or path.startswith("/dev/shm/torch_") or path.startswith("/anon_hugepage")


def storage_problem(tensor: torch.Tensor, memory: MemoryMap | None = None) -> str | None:
    """Why LoRA State must not write into `tensor`'s storage, or None when it owns it."""
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return "it has no plain storage (a tensor subclass or a quantized tensor)"
    for tag in FILE_STORAGE_TAGS:
        if getattr(storage, tag, None) is not None:
            return "it is a view of the model file (read-only, loaded without a copy)"
    if tensor.device.type != "cpu" or storage.nbytes() == 0:
        return None
    memory = memory if memory is not None else MemoryMap.snapshot()
    if memory is None:
        return None
    region = memory.region(storage.data_ptr())
    if region is None:
        return None
    _, _, writable, path = region
    if not writable:
        return "its memory is read-only (a read-only mapping, e.g. of the model file)"
    if not _anonymous(path):
        return f"its memory is a mapping of the file {os.path.basename(path)!r}"
    return None
