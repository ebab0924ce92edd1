"""The ledger: what is applied to one managed module, key by key.

It is only ever replaced whole at the end of a successful reconcile/reset, so after any failure it still
describes the weights exactly (see applier.py for how the weights are rolled back to match it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace



@dataclass(frozen=True)
class StackEntry:
    """One requested LoRA: a file path, its strengths, and an optional display name."""

    path: str
    strength_model: float = 1.0
    strength_clip: float = 1.0
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or self.path.replace("\\", "/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class AppliedLora:
    sha256: str
    name: str
    path: str
    strength_model: float
    strength_clip: float
    strength: float  # the one of the two this module's host uses


@dataclass(frozen=True)
class Contribution:
    """One LoRA's patch on one key, at the strength the host uses."""

    sha256: str
    strength: float


@dataclass
class KeyState:
    contributors: tuple[Contribution, ...]
    drift: float = 0.0               # bound of max |weight - exact result| (absolute), grown by each delta step
    ulp: float = 0.0                 # one ulp of the dtype at the key's largest magnitude: drift's reporting unit
    fingerprint: tuple = ()          # (id, data_ptr, _version) of the tensor after our last write
    error: float | None = None       # bound of max |weight - real result| after delta steps (None: derive, drift.py)
    magnitude: float = 0.0           # bound of the weight's largest magnitude after delta steps (0: measure)

    @property
    def drift_ulps(self) -> float:
        return self.drift / self.ulp if self.ulp else 0.0


@dataclass
class Ledger:
    stack: tuple[AppliedLora, ...] = ()
    keys: dict[str, KeyState] = field(default_factory=dict)
    # Keys the host's own patching applies for us (LoRA State writes nothing there): key -> contributors.
    patch_keys: dict[str, tuple[Contribution, ...]] = field(default_factory=dict)
    status: str = "clean"            # clean | applied
    last_error: str = ""             # set when the last operation failed and was rolled back
    mode: str = "auto"
    last_change: dict = field(default_factory=dict)
    changed_at: float = 0.0

    def with_changes(self, **changes) -> "Ledger":
        return replace(self, changed_at=time.time(), **changes)

    @property
    def backend(self) -> str:
        """Where the applied LoRAs live: "in place" (written by LoRA State), "patches" (carried as the host's own
        patches), "mixed", or "none"."""
        in_place = any(k.contributors for k in self.keys.values())
        if in_place and self.patch_keys:
            return "mixed"
        return "in place" if in_place else "patches" if self.patch_keys else "none"

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "mode": self.mode,
            "stack": [{"name": a.name, "path": a.path, "sha256": a.sha256, "strength": a.strength,
                       "strength_model": a.strength_model, "strength_clip": a.strength_clip} for a in self.stack],
            "backend": self.backend,
            "keys_touched": sum(1 for k in self.keys.values() if k.contributors) + len(self.patch_keys),
            "keys_in_place": sum(1 for k in self.keys.values() if k.contributors),
            "keys_as_patches": len(self.patch_keys),
            "keys_by_lora": {a.sha256: sum(1 for k in self.keys.values()
                                           if any(c.sha256 == a.sha256 for c in k.contributors))
                             + sum(1 for contributors in self.patch_keys.values()
                                   if any(c.sha256 == a.sha256 for c in contributors))
                             for a in self.stack},
            "max_drift_ulps": max((k.drift_ulps for k in self.keys.values()), default=0.0),
            "last_change": self.last_change,
            "last_error": self.last_error,
            "changed_at": self.changed_at,
        }
