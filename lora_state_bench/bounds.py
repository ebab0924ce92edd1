"""The lower bound of one change: what any implementation must at least do, timed at this machine's rates.

A key must change if some LoRA's strength on it differs between the two stacks. For each such key the weight (or
its clean copy) is read once and written once: 2 x its bytes at the measured copy bandwidth. Its new value needs
the deltas of the LoRAs that changed on it (none when it goes back to clean): their matmul FLOPs at the measured
fp32 matmul rate. The bound is the sum of both; a measured change is reported as a multiple of it.

Exact mode promises the bits of a from-clean recomputation, so its own bound (`recompute_seconds`) has the same
bytes but the matmuls of every LoRA of the new stack on each changed key, not only of those that changed.

Auto promises a drift within its budget of B ulps (2 for fp16/bf16), and keeps no more than native's memory: no
extra precision per weight. A delta step rounds to the weight's dtype (up to half an ulp) and so does the exact
result, so k steps from an exact value can leave two values k + 2 half-ulps apart, a distance on the dtype's grid
that stays within B ulps in the worst case only while k <= 2B - 1. At least one change in every 2B of a key must
then recompute it from its clean copy with all its LoRAs: auto's own bound (`auto_seconds`) counts that share of
the recompute matmuls and the rest of the delta's. fp32 weights round like the fp32 work: no forced share.
"""
from __future__ import annotations

import torch

from lora_state.manager import DEFAULT_DRIFT_BUDGET_ULPS

from .workload import StackSet, lora_flops, numel

#: Dtypes whose delta steps round to fewer mantissa bits than the fp32 work (see auto_steps_per_rebase).
NARROW = (torch.float16, torch.bfloat16)


def auto_steps_per_rebase(dtype: torch.dtype) -> int | None:
    """The most delta steps in a row that auto's budget allows in the worst case (None: not limited by the
    dtype's rounding)."""
    if dtype not in NARROW:
        return None
    return max(0, int(2 * DEFAULT_DRIFT_BUDGET_ULPS[dtype]) - 1)


def lower_bound(stacks: StackSet, shapes: dict, dtype: torch.dtype, old, new, machine: dict) -> dict:
    """FLOPs of the deltas that must change / matmul rate + bytes that must be read and written / bandwidth."""
    def per_key(stack):
        out: dict[str, dict[str, float]] = {}
        for name, strength in stack:
            if strength == 0.0:
                continue
            for key in stacks.loras[name].keys:
                out.setdefault(key, {})
                out[key][name] = out[key].get(name, 0.0) + strength
        return out
    before, after = per_key(old), per_key(new)
    size = torch.tensor([], dtype=dtype).element_size()
    flops = recompute_flops = nbytes = keys = 0
    for key in set(before) | set(after):
        changed = {name for name in set(before.get(key, {})) | set(after.get(key, {}))
                   if before.get(key, {}).get(name, 0.0) != after.get(key, {}).get(name, 0.0)}
        if not changed:
            continue
        keys += 1
        nbytes += 2 * numel(shapes[key]) * size       # read the weight (or its clean copy) and write it once
        if after.get(key):                               # restoring to clean needs no delta at all
            flops += sum(lora_flops(stacks.loras[name], shapes, key) for name in changed)
            recompute_flops += sum(lora_flops(stacks.loras[name], shapes, key) for name in after[key])
    copy_seconds = nbytes / machine["bandwidth_bytes_per_s"]
    steps = auto_steps_per_rebase(dtype)
    auto_flops = flops if steps is None else (steps * flops + recompute_flops) / (steps + 1)
    rate = machine["matmul_flops_per_s"]
    return {"seconds": flops / rate + copy_seconds, "flops": flops, "bytes": nbytes,
            "keys": keys, "recompute_flops": recompute_flops,
            "recompute_seconds": recompute_flops / rate + copy_seconds,
            "auto_steps_per_rebase": steps, "auto_flops": auto_flops, "auto_seconds": auto_flops / rate + copy_seconds}
