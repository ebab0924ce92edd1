"""Clean copies of the weights some applied LoRA touches, on the weight's device, on CPU, or spilled to disk.

CPU copies of weights on a GPU are page-locked where the host allows it (Host.pin_host_copy):
copying them back then runs at the bus's full speed without making the CPU wait for the GPU before each copy, so
the GPU works through a whole reconcile while the CPU queues it. They are unpinned before they are freed."""
from __future__ import annotations

import os
import tempfile
import weakref
from typing import Callable

import numpy as np
import torch

from .drift import max_magnitude
from .errors import BackupBudgetError

LOCATIONS = ("device", "cpu", "disk")


class BackupStore:
    def __init__(self, location: str = "device", budget_bytes: int | None = None, spill_dir: str | None = None,
                 pin: Callable[[torch.Tensor, torch.device], bool] | None = None,
                 unpin: Callable[[torch.Tensor], None] | None = None):
        if location not in LOCATIONS:
            raise ValueError(f"backup location must be one of {LOCATIONS}, got {location!r}")
        self.location = location
        self._pin, self._unpin = pin, unpin
        self.budget_bytes = budget_bytes
        self._spill_dir = spill_dir
        self._tmp = None
        self._entries: dict[str, object] = {}
        self._meta: dict[str, tuple] = {}   # key -> (shape, dtype, nbytes)
        self._drift: dict[str, float] = {}  # key -> drift bound of the copy (0.0: the true clean weight)
        self._magnitude: dict[str, float] = {}  # key -> largest |value| of the clean weight (measured once)
        self.nbytes = 0
        self._written = 0
        # key -> (page-locked CPU copy, the device the last copy from it went to without waiting, or None)
        self._pinned: dict[str, tuple[torch.Tensor, torch.device | None]] = {}
        # A store dropped without clear() still unpins (not at exit: the process hands everything back then).
        weakref.finalize(self, _unpin_all, self._pinned, unpin).atexit = False

    @property
    def pinned_bytes(self) -> int:
        return sum(copy.numel() * copy.element_size() for copy, _ in self._pinned.values())

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def keys(self):
        return self._entries.keys()

    def fits(self, extra_bytes: int) -> bool:
        return self.budget_bytes is None or self.nbytes + extra_bytes <= self.budget_bytes

    def drift(self, key: str) -> float | None:
        """None without a backup; else how far (absolute) the copy may be from the true clean weight."""
        return self._drift.get(key) if key in self._entries else None

    def magnitude(self, key: str) -> float | None:
        """An upper bound of the clean weight's largest magnitude (the copy's, plus its drift), or None."""
        if key not in self._entries:
            return None
        if key not in self._magnitude:
            copy = self.get(key, "cpu")
            self._magnitude[key] = max_magnitude(copy)
        return self._magnitude[key] + self._drift[key]

    def put(self, key: str, tensor: torch.Tensor, drift: float = 0.0) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if not self.fits(nbytes):
            raise BackupBudgetError(
                f"backing up '{key}' needs {nbytes} bytes but the backup budget is {self.budget_bytes} bytes "
                f"({self.nbytes} in use). Raise backup_budget_bytes, spill backups to disk (backup='disk'), "
                f"or use mode='delta' (no backups, small drift).")
        tensor = tensor.detach()
        if self.location == "device":
            stored = tensor.clone()
        elif self.location == "cpu":
            stored = self._cpu_copy(key, tensor)
        else:
            self._written += 1
            path = os.path.join(self._dir(), f"{self._written}.bin")
            tensor.contiguous().cpu().view(torch.uint8).numpy().tofile(path)
            stored = path
        self._entries[key] = stored
        self._meta[key] = (tuple(tensor.shape), tensor.dtype, nbytes)
        self._drift[key] = drift
        self.nbytes += nbytes

    def get(self, key: str, device) -> torch.Tensor:
        stored = self._entries[key]
        if isinstance(stored, str):
            shape, dtype, _ = self._meta[key]
            raw = torch.from_numpy(np.fromfile(stored, dtype=np.uint8))
            stored = raw.view(dtype).reshape(shape)
        pinned = self._pinned.get(key)
        if pinned is None:
            return stored.to(device)
        device = torch.device(device)
        if device.type == "cuda":
            self._pinned[key] = (pinned[0], device)
        return stored.to(device, non_blocking=True)

    def drop(self, key: str) -> None:
        stored = self._entries.pop(key, None)
        if stored is None:
            return
        pinned = self._pinned.pop(key, None)
        if pinned is not None:
            _unpin_after_copies(pinned, self._unpin)
        self.nbytes -= self._meta.pop(key)[2]
        self._drift.pop(key, None)
        self._magnitude.pop(key, None)
        if isinstance(stored, str):
            os.unlink(stored)

    def clear(self) -> None:
        for key in list(self._entries):
            self.drop(key)

    def _cpu_copy(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        if self._pin is None:
            return tensor.to("cpu", copy=True)
        copy = torch.empty(tensor.shape, dtype=tensor.dtype)     # page-locked before it is filled: a faster copy
        if self._pin(copy, tensor.device):
            self._pinned[key] = (copy, None)
        return copy.copy_(tensor)

    def _dir(self) -> str:
        if self._spill_dir:
            os.makedirs(self._spill_dir, exist_ok=True)
            return self._spill_dir
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lora_state_backups_")
        return self._tmp.name


def _unpin_after_copies(pinned: tuple[torch.Tensor, torch.device | None], unpin) -> None:
    """Unpin a CPU copy once the copies queued from it are done (they were queued without waiting)."""
    copy, device = pinned
    if device is not None:
        torch.cuda.synchronize(device)
    unpin(copy)


def _unpin_all(pinned: dict, unpin) -> None:
    for key in list(pinned):
        _unpin_after_copies(pinned.pop(key), unpin)
