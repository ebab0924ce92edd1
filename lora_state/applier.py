"""The applier: carry out a plan on the live weights, in place, all or nothing.

Every write goes into the existing tensor (same storage, dtype and shape), so references held elsewhere and
compiled graphs stay valid. If anything fails or is interrupted part-way (an exception from the math, a
KeyboardInterrupt, the progress callback raising for a UI interrupt), every key already written is put back:
recomputed from its clean backup when its old bits are reproducible, else from an undo copy taken just before.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from .backups import BackupStore
from .hosts import Host
from .planner import KeyPlan, Plan

PatchOf = Callable[[str, str], object]   # (sha256, key) -> the host's patch object


@dataclass
class ApplyStats:
    keys_written: int = 0
    bytes_written: int = 0
    seconds: float = 0.0


def apply_plan(host: Host, plan: Plan, backups: BackupStore, patch_of: PatchOf,
               progress: Callable[[int, int], None] | None = None) -> ApplyStats:
    started = time.perf_counter()
    work = plan.work
    done: list[tuple[KeyPlan, torch.Tensor | None, bool]] = []
    stats = ApplyStats()
    with torch.no_grad():
        try:
            for index, key_plan in enumerate(work):
                live = host.parameter(key_plan.key)
                undo = None if key_plan.reproducible else live.detach().clone()
                took_backup = False
                if key_plan.needs_backup:
                    clean = _unwound(host, key_plan, live, patch_of) if key_plan.unwind else live
                    backups.put(key_plan.key, clean, drift=key_plan.drift_ulps if key_plan.unwind else 0.0)
                    took_backup = True
                done.append((key_plan, undo, took_backup))   # before the write: a half-written key is undone too
                write_key(host, key_plan, live, backups, patch_of)
                stats.keys_written += 1
                stats.bytes_written += live.numel() * live.element_size()
                if progress is not None:
                    progress(index + 1, len(work))
        except BaseException:
            _rollback(host, done, backups, patch_of)
            raise
    stats.seconds = time.perf_counter() - started
    return stats


def write_key(host: Host, key_plan: KeyPlan, live: torch.Tensor, backups: BackupStore, patch_of: PatchOf) -> None:
    key = key_plan.key
    if key_plan.path == "restore":
        live.copy_(backups.get(key, live.device))
    elif key_plan.path == "exact":
        contributions = [(patch_of(c.sha256, key), c.strength) for c in key_plan.new]
        write_exact(host, key, live, backups.get(key, live.device), contributions)
    elif key_plan.path == "delta":
        terms = [(patch_of(sha, key), change) for sha, change in key_plan.delta_terms]
        _write_combined(host, key, live, live, terms)
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


def _write_combined(host: Host, key: str, live: torch.Tensor, start: torch.Tensor, contributions) -> None:
    if host.identity_rounding(live.dtype) and live.is_contiguous():
        # fp32 weights: work directly in the live tensor, no temporary copy.
        if start is not live:
            live.copy_(start)
        out = host.combine(key, live, contributions)
        if out is not live:
            live.copy_(out)
        return
    out = host.combine(key, start.to(torch.float32, copy=True), contributions)
    live.copy_(host.round(key, out, live.dtype))


def _unwound(host: Host, key_plan: KeyPlan, live: torch.Tensor, patch_of: PatchOf) -> torch.Tensor:
    """A clean copy recovered by subtracting the old (linear) contributions: needed only after delta-mode work."""
    terms = [(patch_of(c.sha256, key_plan.key), -c.strength) for c in key_plan.old]
    out = host.combine(key_plan.key, live.to(torch.float32, copy=True), terms)
    return host.round(key_plan.key, out, live.dtype)


def _rollback(host: Host, done, backups: BackupStore, patch_of: PatchOf) -> None:
    for key_plan, undo, took_backup in reversed(done):
        live = host.parameter(key_plan.key)
        if undo is not None:
            live.copy_(undo)
        elif key_plan.old:
            contributions = [(patch_of(c.sha256, key_plan.key), c.strength) for c in key_plan.old]
            write_exact(host, key_plan.key, live, backups.get(key_plan.key, live.device), contributions)
        else:
            live.copy_(backups.get(key_plan.key, live.device))
        if took_backup:
            backups.drop(key_plan.key)
