"""Drift accounting: rigorous bounds of how far a weight is from the exact result, without pessimism that grows.

Two bounds are kept per key (absolute values):
- ``drift``: max |w - exact|, where exact is what an exact reconcile of the same stack from the clean copy would
  write (the bits a native patcher gives). This is what is reported and what auto's budget limits.
- ``error``: max |w - real|, where real is clean + sum(strength * delta) in real numbers.

A delta step only adds its own arithmetic to ``error`` (the additions it rounds and the rank-r products of the
terms it applies); the exact result's own arithmetic is counted once, when ``drift`` is derived
(drift <= error + |exact - real|), instead of once per step. The rank-r products are bounded from the LoRA
factors (``Host.change_bound``); where a patch has no such bound, its term is charged at the weight's magnitude
(one fp32 eps per term), as before. After a step, fp16/bf16 drift is tightened by the grid both values lie on
(``on_the_grid``): two or three delta steps bound to 2 or 2.5 ulp plus a few fp32 roundings are 2 ulp apart at
most.
"""
from __future__ import annotations

import math

import torch

#: fp32 unit roundoff: |fl(x) - x| <= U32 * |x| for a rounding to nearest.
U32 = 2.0 ** -24

_MANTISSA_BITS = {torch.float16: 10, torch.bfloat16: 7, torch.float32: 23, torch.float64: 52}
_TINY = {dtype: torch.finfo(dtype).tiny for dtype in _MANTISSA_BITS}


def ulp_of(magnitude: float, dtype: torch.dtype) -> float:
    """One ulp of `dtype` at `magnitude` (dtypes of unknown layout, e.g. fp8: their eps times magnitude)."""
    bits = _MANTISSA_BITS.get(dtype)
    if bits is None:
        return torch.finfo(dtype).eps * max(magnitude, torch.finfo(dtype).tiny)
    # frexp: magnitude = f * 2^e with 0.5 <= f < 1, exactly (log2 may round up just below a power of two).
    return math.ldexp(1.0, math.frexp(max(magnitude, _TINY[dtype]))[1] - 1 - bits)


def max_magnitude(tensor: torch.Tensor) -> float:
    """The tensor's largest |value|, by aminmax (no |tensor| temporary)."""
    if tensor.numel() == 0:
        return 0.0
    low, high = torch.aminmax(tensor.detach())
    return max(abs(float(low)), abs(float(high)))


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2.0


def rounding(dtype: torch.dtype, work: torch.dtype, magnitude: float) -> float:
    """Rounding the work value (in the host's `work` dtype) into the weight's dtype: none where the weight's dtype
    holds every work value (the additions already rounded, see terms_error)."""
    bits, work_bits = _MANTISSA_BITS.get(dtype), _MANTISSA_BITS.get(work)
    if bits is not None and work_bits is not None and bits >= work_bits:
        return 0.0
    return 0.5 * ulp_of(magnitude, dtype)


def terms_error(terms, magnitude: float, work: torch.dtype = torch.float32) -> float:
    """Arithmetic of applying `terms` ([(change_bound or None, strength)]) to a weight of `magnitude` held in the
    `work` dtype. A bounded term ((limit, rank): max |delta| <= limit, a rank-r product in fp32): its addition
    rounds once at the weight's magnitude, and its product, scaling and cast to the work dtype carry at most
    (r * U32 + 2 * u_work) * |strength| * limit. An unbounded one is charged one eps of the work dtype at the
    weight's magnitude."""
    total = 0.0
    unit = unit_roundoff(work)
    addition = 0.5 * ulp_of(magnitude, work)
    for bound, strength in terms:
        if bound is None:
            total += 2.0 * unit * magnitude
        else:
            limit, rank = bound
            total += addition + (rank * U32 + 2.0 * unit) * abs(strength) * limit
    return total


def exact_error(dtype: torch.dtype, work: torch.dtype, new_terms, magnitude: float) -> float:
    """max |exact - real|: the exact result's own arithmetic and rounding (none for the clean weight itself)."""
    if not new_terms:
        return 0.0
    return terms_error(new_terms, magnitude, work) + rounding(dtype, work, magnitude)


def on_the_grid(drift: float, dtype: torch.dtype, work: torch.dtype, magnitude: float) -> float:
    """A drift bound tightened by the grid both values lie on, after a step that rounded into `dtype` (fp16 or
    bf16, round to nearest) and whose own rounding and the exact result's were each counted as half an ulp U at
    `magnitude` (step_bounds). Both values lie below the next binade up (else the bound is returned as it is).
    - Both in U's binade (the top one): multiples of U, at most floor(drift / U) * U apart.
    - One in the top binade, the other in the binade below: multiples of U / 2, and the lower one's rounding
      erred by at most U / 4, a quarter of U less than counted: at most floor((drift - U / 4) / (U / 2)) * U / 2.
    - Both below the top binade, or one two binades down or more: each rounding below the top binade errs by at
      most half the spacing there, and the distance is a multiple of the finer spacing; every such case is within
      the previous bound (a value two binades below the top one cannot be within `drift` < 2^(e-1) of a value in
      the top binade [2^e, 2^(e+1))).
    The larger of the two bounds holds either way: two delta steps after a re-base, counted 2 U + tiny, are at most
    2 U apart; three, counted 2.5 U + tiny, also (2 U on both grids); 2.8 U + tiny gives 2.5 U. In the subnormal
    range, or for a drift too large for the binade argument, the bound is returned as it is or with the coarser
    argument (one rounding below the top binade: drift - U / 4)."""
    if dtype not in (torch.float16, torch.bfloat16) or not rounding(dtype, work, magnitude) or \
            magnitude < 2.0 * torch.finfo(dtype).tiny:
        return drift
    unit = ulp_of(magnitude, dtype)
    if ulp_of(magnitude + drift, dtype) != unit:
        return drift
    top = math.floor(drift / unit) * unit
    binade_start = unit * 2.0 ** _MANTISSA_BITS[dtype]
    if drift >= binade_start / 2:
        return min(drift, max(top, drift - 0.25 * unit))
    # In units of U / 2, where drift / unit is exact (a power of two) and so is the subtraction of half of one.
    return min(drift, max(top, math.floor(2.0 * drift / unit - 0.5) * 0.5 * unit))


def product_bound(up: torch.Tensor, down: torch.Tensor) -> float:
    """An upper bound of max_ij sum_k |up_ik| |down_kj| (which bounds both max |up @ down| and the rounding error
    of computing it): the smaller of sum_k max_i |up_ik| max_j |down_kj| and, by Cauchy-Schwarz,
    max_i ||up_i||_2 * max_j ||down_j||_2. Reads only the factors."""
    up, down = up.flatten(1).float(), down.flatten(1).float()
    by_rank = float((up.abs().amax(dim=0) * down.abs().amax(dim=1)).sum())
    by_norm = float(up.norm(dim=1).max() * down.norm(dim=0).max()) if up.numel() and down.numel() else 0.0
    return min(by_rank, by_norm)


def change_magnitude(terms) -> float | None:
    """An upper bound of max |sum(strength * delta)| over `terms`, or None if a term has no bound."""
    total = 0.0
    for bound, strength in terms:
        if bound is None:
            return None
        total += abs(strength) * bound[0]
    return total


def step_bounds(dtype: torch.dtype, work: torch.dtype, *, base_drift: float, base_error: float | None,
                before: float, old_terms, new_terms, step_terms, clean_magnitude: float | None,
                measure_after=None) -> tuple:
    """(drift, error, magnitude, unit magnitude) after a step that does not start from the clean copy: a delta
    step (`step_terms` applied to the current weight) or a relabel (no `step_terms`: no write, the real value is
    unchanged). `before` bounds the weight's largest magnitude before the step.

    The magnitude after the step is bounded from the terms' change bounds: the smaller of (before + the change)
    and (the clean weight's + all new contributions + the error), so it does not grow with the number of steps.
    Where a term has no bound, `measure_after()` gives it (the applier, after writing); without one (the planner,
    before writing) twice the magnitude before is assumed, the unit stays that of `before`, and the grid bound is
    not taken: the real magnitude decides which grid applies (the coarser grid of the assumed one could snap a
    bound that the applier, at the real magnitude near a binade's top, cannot)."""
    guessed = False
    start = base_error if base_error is not None else \
        base_drift + exact_error(dtype, work, old_terms, before)
    change = change_magnitude(step_terms)
    if change is not None:
        magnitude = unit_magnitude = before + change
        total = change_magnitude(new_terms)
        if clean_magnitude is not None and total is not None:
            error = start + terms_error(step_terms, magnitude, work) + 0.5 * ulp_of(magnitude, torch.float32)
            magnitude = unit_magnitude = min(magnitude, clean_magnitude + total + error)
    elif measure_after is not None:
        magnitude = unit_magnitude = max(before, measure_after())
    else:
        magnitude, unit_magnitude, guessed = 2.0 * before, before, True
    error = start
    if step_terms:
        error += terms_error(step_terms, magnitude, work) + rounding(dtype, work, magnitude)
    drift = error + exact_error(dtype, work, new_terms, magnitude)
    # The grid argument counts two roundings, this step's and the exact result's: none for the clean weight itself
    # (no new terms), whose values in the binades below the bound's then do not make up for ours.
    if step_terms and new_terms and not guessed:      # this step rounded at `magnitude`, as the exact result does
        drift = on_the_grid(drift, dtype, work, magnitude)
    return drift, error, magnitude, unit_magnitude
