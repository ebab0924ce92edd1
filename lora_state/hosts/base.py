"""The host interface, with the plain-PyTorch math as its default."""
from __future__ import annotations

from typing import Iterable

import torch

from ..files import LoraFile
from ..naming import ResolvedLora, resolve_file
from ..native_steps import splits
from .storage import MemoryMap, storage_problem


class Host:
    """Subclasses implement parameter access and key resolution; the math defaults to lora_state's adapters."""

    #: A short name used in reports and ledgers.
    label = "module"

    def parameter(self, key: str) -> torch.Tensor:
        """The live tensor for ``key``; the manager writes it in place."""
        raise NotImplementedError

    def has_parameter(self, key: str) -> bool:
        raise NotImplementedError

    def resolve_prefix(self, prefix: str) -> str | None:
        """Module key (without ``.weight``) named by a LoRA file's key prefix, or None."""
        raise NotImplementedError

    def param_shape(self, key: str):
        return tuple(self.parameter(key).shape) if self.has_parameter(key) else None

    def read(self, lora_file: LoraFile) -> ResolvedLora:
        return resolve_file(lora_file, self.resolve_prefix, self.param_shape)

    def is_linear(self, patch) -> bool:
        return bool(patch.linear)

    def patch_flops(self, patch) -> int:
        return int(patch.flops)

    def error_gain(self, patch, weight: torch.Tensor, strength: float) -> float:
        """How much an error already in `weight` can grow through `patch` (1.0 for linear patches)."""
        return patch.error_gain(weight, strength) if hasattr(patch, "error_gain") else (
            1.0 if self.is_linear(patch) else float("inf"))

    def change_bound(self, patch) -> tuple[float, int] | None:
        """(limit, rank): max |delta| <= limit for unit strength, and `rank` the inner dimension of the fp32 product
        whose rounding may differ between the exact path and a delta step (0 where both compute the same product);
        None where unknown (drift accounting then charges the term at the weight's magnitude, see drift.py)."""
        bound = getattr(patch, "change_bound", None)
        return bound() if callable(bound) else None

    def work_dtype(self) -> torch.dtype:
        """The dtype the LoRA terms are added in (combine's working precision)."""
        return torch.float32

    def strength(self, entry) -> float:
        """Which of an entry's strengths applies to this host's weights."""
        return entry.strength_model

    def combine(self, key: str, weight: torch.Tensor, contributions: Iterable[tuple[object, float]]) -> torch.Tensor:
        """Apply (patch, strength) pairs in order to an fp32 weight; may work in place; returns the result."""
        for patch, strength in contributions:
            weight = patch.apply(weight, strength)
        return weight

    def add_terms(self, key: str, weight: torch.Tensor, terms: Iterable[tuple[object, float]]) -> torch.Tensor:
        """A delta step: add (patch, strength change) terms of linear patches to the current weight. Same math as
        combine; a host may do it faster where bit-identity with its own patcher is not at stake."""
        return self.combine(key, weight, terms)

    def row_updates(self, key: str, weight: torch.Tensor, contributions, delta_step: bool):
        """The (patch, strength) pairs as functions update(block, first, last) that add their change to rows
        [first, last) of the weight viewed as (rows, -1) in the work dtype, or None where some patch cannot be
        split by rows (the applier then combines the whole weight at once). Splitting lets the applier convert,
        add and round a key in one pass, a cache-sized block at a time; an update with a `min_block_rows`
        attribute gets blocks of at least that many rows."""
        updates = []
        for patch, strength in contributions:
            split = getattr(patch, "row_update", None)
            update = split(strength, tuple(weight.shape)) if split is not None else None
            if update is None:
                return None
            updates.append(update)
        return updates

    def rebase_updates(self, key: str, weight: torch.Tensor, contributions):
        """Row updates (as row_updates) for an auto re-base that may add the contributions in another order than
        the host's own patcher, where that is faster; None where the exact path is already as fast. Here: a bf16
        CPU weight large enough for the applier's bf16 products (native_steps.splits), else None (the same order)."""
        if not splits(weight):
            return None
        return self.row_updates(key, weight, contributions, False)

    def rebase_bound(self, patch) -> tuple[float, int] | None:
        """change_bound for the rebase_updates order: (limit, rank of the products whose rounding may differ from
        the exact path's)."""
        return self.change_bound(patch)

    def step_bound(self, patch, weight: torch.Tensor) -> tuple[float, int] | None:
        """change_bound for a delta step's term on `weight`: a host whose delta steps compute the product in
        another order than its exact path (rebase_updates' order) counts both products' roundings."""
        return self.change_bound(patch)

    def pin_host_copy(self, copy: torch.Tensor, device: torch.device) -> bool:
        """Page-lock `copy`, a new CPU clean copy of a weight that lives on `device` now, where copies back to the
        device the host computes on (a GPU) gain from it and the host allows it (its budget of page-locked memory);
        False leaves it pageable."""
        return False

    def unpin_host_copy(self, copy: torch.Tensor) -> None:
        """Undo pin_host_copy before the copy is freed (no copy from it is in flight any more)."""

    def write_rounded(self, key: str, target: torch.Tensor, value: torch.Tensor) -> None:
        """target := fp32 `value` rounded to target's dtype (round to nearest even). Casting inside copy_ gives
        the same bits as value.to(dtype) without a temporary: one pass over the weight instead of two."""
        target.copy_(value)

    def write_problem(self, key: str, tensor: torch.Tensor, memory: MemoryMap | None) -> str | None:
        """Why `tensor` must not be written in place (memory LoRA State does not own), or None."""
        return storage_problem(tensor, memory)

    def fingerprint(self, tensor: torch.Tensor) -> tuple:
        """What must stay equal between our last write and the next reconcile; () disables the check."""
        return (id(tensor), tensor.data_ptr(), tensor._version)

    def identity_rounding(self, dtype: torch.dtype) -> bool:
        """True when round() is the identity for this dtype, so fp32 weights can be updated in place."""
        return dtype == torch.float32
