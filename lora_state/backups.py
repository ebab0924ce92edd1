"""Clean copies of the weights some applied LoRA touches, on the weight's device, on CPU, or spilled to disk."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from .drift import max_magnitude
from .errors import BackupBudgetError

LOCATIONS = ("device", "cpu", "disk")


class BackupStore:
    def __init__(self, location: str = "device", budget_bytes: int | None = None, spill_dir: str | None = None):
        if location not in LOCATIONS:
            raise ValueError(f"backup location must be one of {LOCATIONS}, got {location!r}")
        self.location = location
        self.budget_bytes = budget_bytes
        self._spill_dir = spill_dir
        self._tmp = None
        self._entries: dict[str, object] = {}
        self._meta: dict[str, tuple] = {}   # key -> (shape, dtype, nbytes)
        self._drift: dict[str, float] = {}  # key -> drift bound of the copy (0.0: the true clean weight)
        self._magnitude: dict[str, float] = {}  # key -> largest |value| of the clean weight (measured once)
        self.nbytes = 0
        self._written = 0

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
            stored = tensor.to("cpu", copy=True)
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
        return stored.to(device)

    def drop(self, key: str) -> None:
        stored = self._entries.pop(key, None)
        if stored is None:
            return
        self.nbytes -= self._meta.pop(key)[2]
        self._drift.pop(key, None)
        self._magnitude.pop(key, None)
        if isinstance(stored, str):
            os.unlink(stored)

    def clear(self) -> None:
        for key in list(self._entries):
            self.drop(key)

    def _dir(self) -> str:
        if self._spill_dir:
            os.makedirs(self._spill_dir, exist_ok=True)
            return self._spill_dir
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lora_state_backups_")
        return self._tmp.name
