"""The applier: carry out a plan on the live weights, in place, all or nothing.

Every write goes into the existing tensor (same storage, dtype and shape), so references held elsewhere and
compiled graphs stay valid. Where the host can split a key's contributions by rows, a key is converted, updated and
rounded one row block at a time (a few MiB, in cache): one pass over its memory whatever its dtype.

If anything fails or is interrupted part-way (an exception from the math, a KeyboardInterrupt, the progress
callback raising for a UI interrupt), every key already written is put back to its previous stack: recomputed from
its clean backup where one exists (bit-exact for keys that carried no drift; keys that did come back at the exact
value, with less drift), undone by the opposite step for delta steps done by rows (their drift bound grows by that
step's arithmetic), else from an undo copy taken just before. So undo copies are rare: never on the common path.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from . import native_steps
from .backups import BackupStore
from .drift import change_magnitude, max_magnitude, rounding, step_bounds, terms_error, ulp_of
from .hosts import Host
from .native_steps import widened
from .planner import KeyPlan, Plan
from .scratch import kept_buffers, work_buffer

PatchOf = Callable[[str, str], object]   # (sha256, key) -> the host's patch object


@dataclass
class ApplyStats:
    keys_written: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    # key -> (drift bound, ulp at the key's largest magnitude, error bound or None, magnitude bound or 0.0)
    drift: dict = field(default_factory=dict)


def ulp_at_max(tensor: torch.Tensor) -> float:
    """One ulp of the tensor's dtype at its largest magnitude: the unit drift is reported in."""
    return ulp_of(max_magnitude(tensor), tensor.dtype) if tensor.numel() else 0.0


@dataclass
class Written:
    """A key the applier has begun to write, and how a rollback puts it back."""
    key_plan: KeyPlan
    undo: torch.Tensor | None            # a copy of the bits before the write, where nothing else can restore them
    took_backup: bool
    reversible: bool = False             # a delta step done by rows: undone by the opposite step, no copy
    rows: int | None = 0                 # rows written so far (None: all of them)
    before: float = 0.0                  # magnitude bound before the step (a 0-dim GPU tensor until read)
    magnitude: float = 0.0               # the largest |value| written, where measured during the write (0: not)


def apply_plan(host: Host, plan: Plan, backups: BackupStore, patch_of: PatchOf,
               progress: Callable[[int, int], None] | None = None) -> ApplyStats:
    started = time.perf_counter()
    total = len(plan.work)
    done: list[Written] = []
    stats = ApplyStats()
    devices = set()
    delta_steps: list[tuple[Written, torch.Tensor]] = []
    with torch.no_grad(), kept_buffers():
        try:
            for key_plan in plan.keys:
                live = host.parameter(key_plan.key)
                devices.add(live.device)
                # A step that does not start from the clean copy starts from the key's error bound, at its
                # magnitude (kept from the last delta step, else measured once).
                rounds_from_live = key_plan.path in ("delta", "relabel") or key_plan.unwind
                before = key_plan.base_magnitude if rounds_from_live else 0.0
                if rounds_from_live and not before:
                    # A delta step's bound waits for the end of the plan (bound_delta_steps): on a GPU its
                    # magnitude is read then, with every other key's, not with a wait for the GPU at each key.
                    before = _magnitude_of(live) if key_plan.path == "delta" else max_magnitude(live)
                if key_plan.path == "relabel":
                    stats.drift[key_plan.key] = _step_drift(host, key_plan, live, patch_of, before, backups)
                    continue
                # With the true clean weight at hand, a rollback recomputes the old stack from it; a delta step
                # done by rows is undone by the opposite step. Only other keys need an undo copy.
                clean_at_hand = backups.drift(key_plan.key) == 0.0 or (key_plan.needs_backup and not key_plan.unwind)
                reversible = not (key_plan.reproducible or clean_at_hand) and key_plan.path == "delta" and \
                    _splits_by_rows(host, key_plan, live, patch_of)
                undo = None if key_plan.reproducible or clean_at_hand or reversible else live.detach().clone()
                took_backup = False
                if key_plan.needs_backup:
                    if key_plan.unwind:
                        clean = _unwound(host, key_plan, live, patch_of)
                        backups.put(key_plan.key, clean, drift=_unwound_drift(host, key_plan, clean, patch_of, before))
                    else:
                        backups.put(key_plan.key, live)
                    took_backup = True
                written = Written(key_plan, undo, took_backup, reversible, before=before)
                done.append(written)   # before the write: a half-written key is undone too
                try:
                    rebased = write_key(host, key_plan, live, backups, patch_of, written)
                except BaseException as exc:
                    written.rows = getattr(exc, "lora_state_rows_written", 0)
                    raise
                written.rows = None
                if key_plan.path == "delta":
                    delta_steps.append((written, live))
                elif rebased is not None:
                    stats.drift[key_plan.key] = rebased
                else:
                    backup_drift = backups.drift(key_plan.key)
                    if backup_drift and key_plan.path == "exact":
                        backup_drift = _propagated(host, key_plan, backups, patch_of, backup_drift)
                    stats.drift[key_plan.key] = _from_clean_drift(live, backup_drift, written.magnitude)
                stats.keys_written += 1
                stats.bytes_written += live.numel() * live.element_size()
                if progress is not None:
                    progress(stats.keys_written, total)
            _wait_for(devices)
            _bound_delta_steps(host, delta_steps, backups, patch_of, stats.drift)
            _read_magnitudes(stats.drift)
        except BaseException as exc:
            exc.lora_state_recomputed = _rollback(host, done, backups, patch_of, stats.drift)
            raise
    stats.seconds = time.perf_counter() - started
    return stats


def _delta_contributions(key_plan: KeyPlan, patch_of: PatchOf, sign: float = 1.0) -> list:
    return [(patch_of(sha, key_plan.key), sign * change) for sha, change in key_plan.delta_terms]


def _splits_by_rows(host: Host, key_plan: KeyPlan, live: torch.Tensor, patch_of: PatchOf) -> bool:
    return bool(live.dim()) and live.is_contiguous() and \
        host.row_updates(key_plan.key, live, _delta_contributions(key_plan, patch_of), True) is not None


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
        step_terms=[(widened(host.step_bound(patch_of(sha, key), tensor), tensor), change)
                    for sha, change in key_plan.delta_terms]
        if key_plan.path == "delta" else [])
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


def _from_clean_drift(tensor: torch.Tensor, backup_drift: float | None, magnitude: float) -> tuple:
    """Computed from the clean copy: exactly as far off as that copy (0 unless it was recovered by unwinding).
    `magnitude`: the largest |value| written where measured during the write (0: the planner measures it if it
    needs it; a 0-dim device tensor is read at the end of the plan, see _larger_magnitude)."""
    if backup_drift:
        magnitude = float(magnitude)
        return (backup_drift, ulp_of(magnitude, tensor.dtype) if magnitude else ulp_at_max(tensor), None, 0.0)
    return (0.0, 0.0, None, magnitude)


def write_key(host: Host, key_plan: KeyPlan, live: torch.Tensor, backups: BackupStore,
              patch_of: PatchOf, written: Written) -> tuple | None:
    """Write one key's planned step. Returns its (drift, ulp, error, magnitude) where an auto re-base took the
    host's faster order (the caller derives the others). An auto key written from clean also gets its largest
    |value| measured block by block while in cache (`written.magnitude`): its next delta step starts from it,
    where measuring afterwards would read the whole key again."""
    key = key_plan.key
    if key_plan.path == "restore":
        live.copy_(backups.get(key, live.device))
    elif key_plan.path == "exact":
        contributions = [(patch_of(c.sha256, key), c.strength) for c in key_plan.new]
        clean = backups.get(key, live.device)
        rebased = _rebase(host, key_plan, live, clean, contributions, backups) if key_plan.rebase_budget_ulps \
            else None
        if rebased is not None:
            return rebased
        magnitude = _write_combined(host, key, live, clean, contributions, measure=bool(key_plan.rebase_budget_ulps))
        written.magnitude = 0.0 if magnitude is None else magnitude
    elif key_plan.path == "delta":
        _write_combined(host, key, live, live, _delta_contributions(key_plan, patch_of), delta_step=True)
    else:
        raise ValueError(f"unknown path {key_plan.path!r} for {key}")
    return None


def _rebase(host: Host, key_plan: KeyPlan, live: torch.Tensor, clean: torch.Tensor, contributions,
            backups: BackupStore) -> tuple | None:
    """auto's re-base in the host's faster order (Host.rebase_updates), from a true clean copy: returns the key's
    (drift, ulp, error, magnitude), or None where the host has no faster order or where the bound of that order is
    over the key's budget (LoRAs far larger than the weight): the caller then writes it in the exact order."""
    key = key_plan.key
    if backups.drift(key) != 0.0 or not (live.dim() and live.is_contiguous() and clean.is_contiguous()):
        return None
    updates = host.rebase_updates(key, live, contributions)
    if updates is None:
        return None
    if native_step(live, clean, updates):
        magnitude = max_magnitude(live)
    else:
        magnitude = float(_write_by_rows(host, key, live, clean, updates, measure=True))
    work = host.work_dtype()
    own = [(widened(host.rebase_bound(patch), live), strength) for patch, strength in contributions]
    exact_terms = [(host.change_bound(patch), strength) for patch, strength in contributions]
    change = change_magnitude(own)
    # The additions round at the largest partial sum, bounded by the clean weight's magnitude plus the LoRAs'; each
    # result's final rounding at its own value: ours at `magnitude`, the exact result's within both errors of it.
    partial = max(magnitude, (backups.magnitude(key) or magnitude) + change) if change is not None else 2.0 * magnitude
    error = terms_error(own, partial, work) + rounding(live.dtype, work, magnitude)
    exact_arithmetic = terms_error(exact_terms, partial, work)
    drift = error + exact_arithmetic + rounding(live.dtype, work, magnitude + error + exact_arithmetic)
    unit = ulp_of(magnitude, live.dtype)
    if not unit or drift > key_plan.rebase_budget_ulps * unit:
        return None
    return (drift, unit, error, magnitude)


def write_exact(host: Host, key: str, live: torch.Tensor, clean: torch.Tensor, contributions) -> None:
    """live := round(combine(clean in fp32, contributions)): the same bits whatever live held before."""
    _write_combined(host, key, live, clean, contributions)


def exact_value(host: Host, key: str, clean: torch.Tensor, contributions) -> torch.Tensor:
    """What write_exact would write, computed out of place (verify() and tests use it)."""
    out = torch.empty_like(clean)
    _write_combined(host, key, out, clean, contributions)
    return out


#: fp32 work per row block on CPU: a key is converted, updated by every contribution and rounded back one block at a
#: time, so that it is read and written once whatever its dtype and number of contributions. The block's rows are
#: the GEMM's M: with 512 KiB, a 1280x5120 key's blocks had 25 rows, where MKL's rank-32 addmm_ runs at ~45 GFLOP/s
#: against 60-88 at 100 rows and more. 2 MiB (102 rows of the widest SD keys; within any recent CPU's L3): on SD1.5
#: shapes on an AVX2 EPYC, one change 12-25% faster than 512 KiB in fp16/bf16 delta/auto and exact (4 MiB: the
#: same within the noise; docs/bench/ab_block_bytes_avx2.txt).
BLOCK_BYTES = 1 << 21


def rows_per_block(device: torch.device, rows: int, cols: int, min_rows: int = 1) -> int:
    """Rows per block: BLOCK_BYTES of fp32 work on CPU (at least `min_rows`); the whole key elsewhere. A GPU streams
    a key from memory in one kernel per op, and per-block kernel launches (a dozen per block) cost more than the
    arithmetic: at SD1.5 size, 512 KiB blocks made an exact reconcile on an H200 take 1.2 s, as long as ComfyUI's
    own re-patching."""
    if device.type != "cpu":
        return max(1, rows)
    return max(1, min_rows, BLOCK_BYTES // (4 * cols))


def _write_combined(host: Host, key: str, live: torch.Tensor, start: torch.Tensor, contributions,
                    delta_step: bool = False, rows: int | None = None, measure: bool = False) -> float | None:
    """live := round(start in the work dtype + contributions): by row blocks where the host can split every
    contribution by rows (Host.row_updates), else on the whole weight at once. `rows`: only the first rows
    (the rollback of a delta step that was interrupted part-way). `measure`: return the largest |value| written
    where the write goes by rows (see _write_by_rows), else None."""
    updates = host.row_updates(key, live, contributions, delta_step)
    if updates is not None and live.dim() and live.is_contiguous() and start.is_contiguous():
        if delta_step and rows is None and native_step(live, live, updates):
            return None
        return _write_by_rows(host, key, live, start, updates, rows, measure)
    combine = host.add_terms if delta_step else host.combine
    if host.identity_rounding(live.dtype) and live.is_contiguous():
        # fp32 weights: work directly in the live tensor, no temporary copy.
        if start is not live:
            live.copy_(start)
        out = combine(key, live, contributions)
        if out is not live:
            live.copy_(out)
        return None
    out = combine(key, _work_scratch(start, start.numel(), torch.float32).view(start.shape).copy_(start),
                  contributions)
    host.write_rounded(key, live, out)
    return None


def native_step(live: torch.Tensor, start: torch.Tensor, updates) -> bool:
    """live := start + the updates' sum in one addmm_ in the weight's own dtype (native_steps.operands: an fp16/bf16
    CPU weight, plain LoRAs), where that is possible; else False and nothing is written. One op over the whole key:
    an interrupt leaves it written or untouched."""
    factors = [getattr(update, "factors", None) for update in updates]
    found = None if None in factors else native_steps.operands(live, factors)
    if found is None:
        return False
    up, down, alpha = found
    if start is not live:
        live.copy_(start)
    live.view(live.shape[0], -1).addmm_(up, down, alpha=alpha)
    return True


def _write_by_rows(host: Host, key: str, live: torch.Tensor, start: torch.Tensor, updates,
                   rows: int | None = None, measure: bool = False) -> float | None:
    """One pass per row block: convert to the work dtype, add every update, round back. A block's rows are written
    by one final copy, so an exception (an interrupt) leaves whole blocks written and the rest untouched; the
    exception carries how many rows were written (`lora_state_rows_written`), which the rollback reverses.
    `measure`: returns the largest |value| written, each block's taken from the rows just written (still in
    cache: about half the time of a separate pass over the key from memory); else None."""
    total = live.shape[0]
    if total == 0 or live.numel() == 0:
        return 0.0 if measure else None
    cols = live.numel() // total
    rows = total if rows is None else rows
    target, source = live.view(total, cols), start.view(total, cols)
    # fp32 weight and work, one update from another tensor (an exact write, or a one-term step): the live rows are
    # the work. Otherwise the block is computed aside and copied back in one op.
    in_place = host.identity_rounding(live.dtype) and (source is not target or len(updates) == 1)
    min_rows = max((getattr(update, "min_block_rows", 1) for update in updates), default=1)
    step = rows_per_block(live.device, rows, cols, min_rows)
    scratch = None if in_place else _work_scratch(live, min(step, rows) * cols, host.work_dtype())
    first, magnitude = 0, 0.0
    try:
        for first in range(0, rows, step):
            last = min(first + step, rows)
            if in_place:
                block = target[first:last]
                if source is not target:
                    block.copy_(source[first:last])
            else:
                block = scratch[: (last - first) * cols].view(last - first, cols).copy_(source[first:last])
            for update in updates:
                update(block, first, last)
            if not in_place:
                host.write_rounded(key, target[first:last], block)
            if measure:
                magnitude = _larger_magnitude(magnitude, target[first:last])
    except BaseException as exc:
        exc.lora_state_rows_written = first
        raise
    return magnitude if measure else None


def _larger_magnitude(magnitude, block: torch.Tensor):
    """max(magnitude, max |block|): a float on CPU; elsewhere a 0-dim tensor on the block's device, read with every
    other key's at the end of the plan (_read_magnitudes): reading it now would make the CPU wait for the GPU at
    every key instead of queueing the next one."""
    if block.device.type == "cpu":
        return max(magnitude, max_magnitude(block))
    low, high = torch.aminmax(block)
    largest = torch.maximum(low.abs(), high.abs()).float()
    return largest if isinstance(magnitude, float) and magnitude == 0.0 else torch.maximum(largest, magnitude)


def _wait_for(devices) -> None:
    """Wait until every GPU has carried out the work queued for the plan: a reconcile's time is then its real time,
    and an error on the device surfaces here, where the plan can still be rolled back."""
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def _magnitude_of(tensor: torch.Tensor):
    """max |tensor|: a float on CPU, a 0-dim tensor elsewhere (see _larger_magnitude)."""
    return _larger_magnitude(0.0, tensor) if tensor.numel() else 0.0


def _floats(values: list) -> list[float]:
    """`values` (floats, or 0-dim tensors left on a device by _larger_magnitude) as floats: one read per device."""
    out = list(values)
    by_device: dict = {}
    for index, value in enumerate(values):
        if isinstance(value, torch.Tensor):
            by_device.setdefault(value.device, []).append(index)
    for indices in by_device.values():
        for index, value in zip(indices, torch.stack([values[index] for index in indices]).tolist()):
            out[index] = value
    return out


def _bound_delta_steps(host: Host, steps: list, backups: BackupStore, patch_of: PatchOf, drift: dict) -> None:
    """The drift bounds of the plan's delta steps [(Written, live)], from their magnitudes before the step."""
    for (written, live), before in zip(steps, _floats([written.before for written, _ in steps])):
        written.before = before
        drift[written.key_plan.key] = _step_drift(host, written.key_plan, live, patch_of, before, backups)


def _read_magnitudes(drift: dict) -> None:
    """Replace the magnitudes left on a device (_larger_magnitude) by floats: one read per device."""
    keys = list(drift)
    for key, value in zip(keys, _floats([drift[key][3] for key in keys])):
        drift[key] = drift[key][:3] + (value,)


def _work_scratch(like: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    return work_buffer("applier", numel, dtype, like.device)


def _unwound(host: Host, key_plan: KeyPlan, live: torch.Tensor, patch_of: PatchOf) -> torch.Tensor:
    """A clean copy recovered by subtracting the old (linear) contributions: needed only after delta-mode work."""
    terms = [(patch_of(c.sha256, key_plan.key), -c.strength) for c in key_plan.old]
    out = host.combine(key_plan.key, live.to(torch.float32, copy=True), terms)
    clean = torch.empty_like(live)
    host.write_rounded(key_plan.key, clean, out)
    return clean


def _rollback(host: Host, done: list[Written], backups: BackupStore, patch_of: PatchOf, drift: dict) -> dict:
    """Put every written key back at its previous stack. Returns {key: (drift, ulp, error, magnitude)} for keys
    whose bits changed state: recomputed from their true clean copy (now the exact value of the old stack, no
    drift) or undone by the opposite delta step (the two steps' arithmetic added to the old bound)."""
    recomputed = {}
    for written in reversed(done):
        key_plan = written.key_plan
        live = host.parameter(key_plan.key)
        if written.undo is not None:
            live.copy_(written.undo)
        elif written.reversible:
            if written.rows != 0:
                _write_combined(host, key_plan.key, live, live, _delta_contributions(key_plan, patch_of, -1.0),
                                delta_step=True, rows=written.rows)
                recomputed[key_plan.key] = _reversed_drift(host, key_plan, live, patch_of, float(written.before),
                                                           backups, drift.get(key_plan.key))
        else:
            if key_plan.old:
                contributions = [(patch_of(c.sha256, key_plan.key), c.strength) for c in key_plan.old]
                write_exact(host, key_plan.key, live, backups.get(key_plan.key, live.device), contributions)
            else:
                live.copy_(backups.get(key_plan.key, live.device))
            if not key_plan.reproducible:
                recomputed[key_plan.key] = (0.0, 0.0, None, 0.0)   # the exact value of the old stack
        if written.took_backup:
            backups.drop(key_plan.key)
    return recomputed


def _reversed_drift(host: Host, key_plan: KeyPlan, live: torch.Tensor, patch_of: PatchOf, before: float,
                    backups: BackupStore, forward: tuple | None) -> tuple:
    """The bound after a delta step and its opposite: the forward step's bound (computed now if the step was cut
    short: a bound for every row, written or not), then the opposite step from the new stack back to the old."""
    drift, _, error, magnitude = forward or _step_drift(host, key_plan, live, patch_of, before, backups)
    back = replace(key_plan, old=key_plan.new, new=key_plan.old, base_drift=drift, base_error=error,
                   delta_terms=tuple((sha, -change) for sha, change in key_plan.delta_terms))
    return _step_drift(host, back, live, patch_of, magnitude, backups)
