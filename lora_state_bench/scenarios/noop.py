"""Scenario 5 at full size: re-running an unchanged 5-LoRA stack (touches no weight), timed per mode."""
from __future__ import annotations

import os

from lora_state.files import LoraFileCache
from lora_state.manager import LoraStateManager

from ..runners import MODES
from ..util import Log, median, timed
from ..workload import DTYPES, build_module, clean_weights, make_stacks, model_shapes, numel


def run_noop(model: str, dtype_name: str, rank: int, runs: int, directory: str, cache: LoraFileCache,
             log: Log) -> dict:
    """Scenario 5 on the full key set: reconcile the applied 5-LoRA stack again (touches no weight)."""
    dtype = DTYPES[dtype_name]
    shapes = model_shapes(model)
    stacks = make_stacks("noop", shapes, os.path.join(directory, f"noop-{model}"), seed=3, uniform_rank=rank)
    params = sum(numel(s) for s in shapes.values())
    log(f"no-op on {model} {dtype_name}: {len(shapes)} keys, {params / 1e9:.2f} G parameters, 5 LoRAs of rank "
        f"{rank} on every key; applying the stack once (delta mode, no backups)...")
    weights = clean_weights(shapes, dtype, seed=7)
    module = build_module(weights, copy=False)
    del weights
    manager = LoraStateManager(module, mode="delta", file_cache=cache)
    stack = stacks.stack(stacks.base)
    apply_seconds = timed(lambda: manager.reconcile(stack))
    out = {"model": model, "dtype": dtype_name, "keys": len(shapes), "parameters": params, "rank": rank,
           "apply_seconds": apply_seconds, "runs": runs, "modes": {}}
    for mode in MODES:
        manager.reconcile(stack, mode=mode)   # a mode change re-plans: every key is skipped, nothing written
        samples = [timed(lambda m=mode: manager.reconcile(stack, mode=m)) for _ in range(runs)]
        report = manager.reconcile(stack, mode=mode)
        out["modes"][mode] = {"median_seconds": median(samples), "min_seconds": min(samples),
                              "p90_seconds": sorted(samples)[int(0.9 * (len(samples) - 1))],
                              "noop_reported": report.noop}
        log(f"  no-op {mode:5s}: median {out['modes'][mode]['median_seconds'] * 1000:.3f} ms "
            f"(min {min(samples) * 1000:.3f} ms) over {runs} runs")
    return out
