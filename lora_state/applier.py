"""The applier: carry out a plan on the live weights, in place, all or nothing.

Every write goes into the existing tensor (same storage, dtype and shape), so references held elsewhere and
compiled graphs stay valid. If anything fails or is interrupted part-way (an exception from the math, a
KeyboardInterrupt, the progress callback raising for a UI interrupt), every key already written is put back to
its previous stack: recomputed from its clean backup where one exists (bit-exact for keys that carried no drift;
keys that did come back at the exact value, with less drift), else from an undo copy taken just before. So undo
copies are taken only for keys without a clean copy (delta mode), never on the common path.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .backups import BackupStore
from .drift import step_bounds, ulp_of
from .hosts import Host
from .planner import KeyPlan, Plan

PatchOf = Callable[[str, str], object]   # (sha256, key) -> the host's patch object


@dataclass
class ApplyStats:
    keys_written: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    # key -> (drift bound, ulp at the key's largest magnitude, error bound or None, magnitude bound or 0.0)
    drift: dict = field(default_factory=dict)


def max_magnitude(tensor: torch.Tensor) -> float:
    if tensor.numel() == 0:
        return 0.0
    low, high = torch.aminmax(tensor.detach())
    return max(abs(float(low)), abs(float(high)))


def ulp_at_max(tensor: torch.Tensor) -> float:
    """One ulp of the tensor's dtype at its largest magnitude: the unit drift is reported in."""
    return ulp_of(max_magnitude(tensor), tensor.dtype) if tensor.numel() else 0.0


def apply_plan(host: Host, plan: Plan, backups: BackupStore, patch_of: PatchOf,
               progress: Callable[[int, int], None] | None = None) -> ApplyStats:
    started = time.perf_counter()
    total = len(plan.work)
    done: list[tuple[KeyPlan, torch.Tensor | None, bool]] = []
    stats = ApplyStats()
    with torch.no_grad():
        try:
            for key_plan in plan.keys:
                live = host.parameter(key_plan.key)
                # A step that does not start from the clean copy starts from the key's error bound, at its
                # magnitude (kept from the last delta step, else measured once).
                rounds_from_live = key_plan.path in ("delta", "relabel") or key_plan.unwind
                before = (key_plan.base_magnitude or max_magnitude(live)) if rounds_from_live else 0.0
                if key_plan.path == "relabel":
                    stats.drift[key_plan.key] = _step_drift(host, key_plan, live, patch_of, before, backups)
                    continue
                # With the true clean weight at hand, a rollback recomputes the old stack from it: no undo copy.
                clean_at_hand = backups.drift(key_plan.key) == 0.0 or (key_plan.needs_backup and not key_plan.unwind)
                undo = None if key_plan.reproducible or clean_at_hand else live.detach().clone()
                took_backup = False
                if key_plan.needs_backup:
                    if key_plan.unwind:
                        clean = _unwound(host, key_plan, live, patch_of)
                        backups.put(key_plan.key, clean, drift=_unwound_drift(host, key_plan, clean, patch_of, before))
                    else:
                        backups.put(key_plan.key, live)
                    took_backup = True
                done.append((key_plan, undo, took_backup))   # before the write: a half-written key is undone too
                write_key(host, key_plan, live, backups, patch_of)
                if key_plan.path == "delta":
                    stats.drift[key_plan.key] = _step_drift(host, key_plan, live, patch_of, before, backups)
                else:
                    backup_drift = backups.drift(key_plan.key)
                    if backup_drift and key_plan.path == "exact":
                        backup_drift = _propagated(host, key_plan, backups, patch_of, backup_drift)
                    stats.drift[key_plan.key] = _from_clean_drift(live, backup_drift)
                stats.keys_written += 1
                stats.bytes_written += live.numel() * live.element_size()
                if progress is not None:
                    progress(stats.keys_written, total)
        except BaseException as exc:
            exc.lora_state_recomputed = _rollback(host, done, backups, patch_of)
            raise
    stats.seconds = time.perf_counter() - started
    return stats


def _terms(host: Host, key: str, patch_of: PatchOf, pairs) -> list:
    return [(host.change_bound(patch_of(sha, key)), strength) for sha, strength in pairs]


def _step_drift(host: Host, key_plan: KeyPlan, tensor: torch.Tensor, patch_of: PatchOf, before: float,
                backups: BackupStore) -> tuple:
    """(drift, ulp, error, magnitude) after a delta or relabel step (see drift.step_bounds)."""
    key = key_plan.key
    drift, error, magnitude, _ = step_bounds(
        tensor.dtype, host.work_dtype(), base_drift=key_plan.base_drift, base_error=key_plan.base_error,
        before=before, clean_magnitude=backups.magnitude(key), measure_after=lambda: max_magnitude(tensor),
        old_terms=_terms(host, key, patch_of, [(c.sha256, c.strength) for c in key_plan.old]),
        new_terms=_terms(host, key, patch_of, [(c.sha256, c.strength) for c in key_plan.new]),
        step_terms=_terms(host, key, patch_of, key_plan.delta_terms) if key_plan.path == "delta" else [])
    return (drift, ulp_of(magnitude, tensor.dtype), error, magnitude)


def _unwound_drift(host: Host, key_plan: KeyPlan, clean: torch.Tensor, patch_of: PatchOf, before: float) -> float:
    """How far a clean copy recovered by subtracting the old contributors is from the true clean weight."""
    old = [(c.sha256, c.strength) for c in key_plan.old]
    _, error, _, _ = step_bounds(
        clean.dtype, host.work_dtype(), base_drift=key_plan.base_drift, base_error=key_plan.base_error,
        before=before, clean_magnitude=None, measure_after=lambda: max_magnitude(clean),
        old_terms=_terms(host, key_plan.key, patch_of, old), new_terms=[],
        step_terms=_terms(host, key_plan.key, patch_of, [(sha, -strength) for sha, strength in old]))
    return error


def _propagated(host: Host, key_plan: KeyPlan, backups: BackupStore, patch_of: PatchOf, drift: float) -> float:
    """An approximate clean copy's error after the new contributors (rare: exact work after delta work), plus
    the two roundings (ours and the exact result's) that now separate the key from the true result."""
    weight = backups.get(key_plan.key, "cpu").to(torch.float32, copy=True)
    for contribution in key_plan.new:
        patch = patch_of(contribution.sha256, key_plan.key)
        drift *= host.error_gain(patch, weight, contribution.strength)
        weight = host.combine(key_plan.key, weight, [(patch, contribution.strength)])
    magnitude = max_magnitude(weight)
    unit = ulp_of(magnitude, backups.get(key_plan.key, "cpu").dtype)
    return drift + unit + (len(key_plan.new) + 2) * 2.0 ** -23 * magnitude


def _from_clean_drift(tensor: torch.Tensor, backup_drift: float | None) -> tuple:
    """Computed from the clean copy: exactly as far off as that copy (0 unless it was recovered by unwinding)."""
    return (backup_drift, ulp_at_max(tensor), None, 0.0) if backup_drift else (0.0, 0.0, None, 0.0)


def write_key(host: Host, key_plan: KeyPlan, live: torch.Tensor, backups: BackupStore, patch_of: PatchOf) -> None:
    key = key_plan.key
    if key_plan.path == "restore":
        live.copy_(backups.get(key, live.device))
    elif key_plan.path == "exact":
        contributions = [(patch_of(c.sha256, key), c.strength) for c in key_plan.new]
        write_exact(host, key, live, backups.get(key, live.device), contributions)
    elif key_plan.path == "delta":
        terms = [(patch_of(sha, key), change) for sha, change in key_plan.delta_terms]
        _write_combined(host, key, live, live, terms, combine=host.add_terms)
    else:
        raise ValueError(f"unknown path {key_plan.path!r} for {key}")


def write_exact(host: Host, key: str, live: torch.Tensor, clean: torch.Tensor, contributions) -> None:
    """live := round(combine(clean in fp32, contributions)): the same bits whatever live held before."""
    _write_combined(host, key, live, clean, contributions)


def exact_value(host: Host, key: str, clean: torch.Tensor, contributions) -> torch.Tensor:
    """What write_exact would write, computed out of place (verify() and tests use it)."""
    out = torch.empty_like(clean)
    _write_combined(host, key, out, clean, contributions)
    return out


def _write_combined(host: Host, key: str, live: torch.Tensor, start: torch.Tensor, contributions,
                    combine=None) -> None:
    combine = combine or host.combine
    if host.identity_rounding(live.dtype) and live.is_contiguous():
        # fp32 weights: work directly in the live tensor, no temporary copy.
        if start is not live:
            live.copy_(start)
        out = combine(key, live, contributions)
        if out is not live:
            live.copy_(out)
        return
    out = combine(key, _fp32_scratch(start).copy_(start), contributions)
    host.write_rounded(key, live, out)


_scratch = threading.local()


def _fp32_scratch(like: torch.Tensor) -> torch.Tensor:
    """A reused fp32 work buffer shaped like `like`. A fresh multi-MB allocation per key costs page faults that
    take as long as the arithmetic itself on CPU; the buffer grows to the largest key and stays (per thread)."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.numel() < like.numel() or buffer.device != like.device:
        buffer = torch.empty(like.numel(), dtype=torch.float32, device=like.device)
        _scratch.buffer = buffer
    return buffer[: like.numel()].view(like.shape)


def _unwound(host: Host, key_plan: KeyPlan, live: torch.Tensor, patch_of: PatchOf) -> torch.Tensor:
    """A clean copy recovered by subtracting the old (linear) contributions: needed only after delta-mode work."""
    terms = [(patch_of(c.sha256, key_plan.key), -c.strength) for c in key_plan.old]
    out = host.combine(key_plan.key, live.to(torch.float32, copy=True), terms)
    clean = torch.empty_like(live)
    host.write_rounded(key_plan.key, clean, out)
    return clean


def _rollback(host: Host, done, backups: BackupStore, patch_of: PatchOf) -> dict:
    """Put every written key back at its previous stack. Returns {key: 0.0} for keys recomputed from their true
    clean copy whose previous bits carried drift: they are now at the exact value of that stack."""
    recomputed = {}
    for key_plan, undo, took_backup in reversed(done):
        live = host.parameter(key_plan.key)
        if undo is not None:
            live.copy_(undo)
        else:
            if key_plan.old:
                contributions = [(patch_of(c.sha256, key_plan.key), c.strength) for c in key_plan.old]
                write_exact(host, key_plan.key, live, backups.get(key_plan.key, live.device), contributions)
            else:
                live.copy_(backups.get(key_plan.key, live.device))
            if not key_plan.reproducible:
                recomputed[key_plan.key] = 0.0     # the exact value of the old stack, from the true clean weight
        if took_backup:
            backups.drop(key_plan.key)
    return recomputed
