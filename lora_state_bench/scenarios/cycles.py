"""Scenario 4: A -> B -> A, many times, on a reduced model; the error against the exact oracle of A at
checkpoints (1, 2, 5, 10, ... cycles), and the time per switch."""
from __future__ import annotations

import gc
import os
import time

from lora_state.files import LoraFileCache

from ..precision import Oracles, compare
from ..runners import RUNNER_LABELS, ManagerRunner, make_runners
from ..util import Log
from ..workload import DTYPES, clean_weights, make_stacks, model_shapes, numel


def run_cycles(dtype_name: str, cycles: int, machine: dict, directory: str, cache: LoraFileCache, log: Log,
               use_peft: bool = True) -> dict:
    """Scenario 4: A -> B -> A, `cycles` times, on the reduced model; error against the exact oracle of A at
    checkpoints. B changes one strength and swaps one LoRA for another."""
    dtype = DTYPES[dtype_name]
    shapes = model_shapes("cycle")
    stacks = make_stacks("r32", shapes, os.path.join(directory, "cycle"), seed=2)
    clean = clean_weights(shapes, dtype, seed=5)
    keys = list(shapes)
    a_named = stacks.base
    b_named = [("L0", 0.55), ("L1", 0.7), ("L5", 0.6), ("L3", 0.5), ("L4", 0.9)]
    a, b = stacks.stack(a_named), stacks.stack(b_named)
    runners = make_runners(clean, stacks, cache, use_peft)
    oracles = Oracles(clean, cache)
    oracle_a = oracles.get(a)
    for runner in runners:
        runner.switch(a)
    checkpoints = sorted({c for c in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, cycles) if c <= cycles})
    series = {r.name: {"cycles": [], "key_ulps_max": [], "element_ulps_max": [], "key_ulps_mean": [],
                       "bit_identical": []} for r in runners}
    seconds = {r.name: 0.0 for r in runners}
    paths = {r.name: {} for r in runners}
    for cycle in range(1, cycles + 1):
        for runner in runners:
            started = time.perf_counter()
            runner.switch(b)
            runner.switch(a)
            seconds[runner.name] += time.perf_counter() - started
            if isinstance(runner, ManagerRunner):
                for path, count in runner.last_paths.items():
                    paths[runner.name][path] = paths[runner.name].get(path, 0) + count
        if cycle in checkpoints:
            for runner in runners:
                error = compare(runner.weights(keys), oracle_a)
                entry = series[runner.name]
                entry["cycles"].append(cycle)
                for name in ("key_ulps_max", "element_ulps_max", "key_ulps_mean", "bit_identical"):
                    entry[name].append(error[name])
    out = {"dtype": dtype_name, "cycles": cycles, "keys": keys, "parameters": sum(numel(s) for s in shapes.values()),
           "stack_a": a_named, "stack_b": b_named, "runners": {}}
    for runner in runners:
        out["runners"][runner.name] = {"label": RUNNER_LABELS[runner.name], **series[runner.name],
                                       "seconds_per_switch": seconds[runner.name] / (2 * cycles),
                                       "paths_on_return_to_a": paths[runner.name] if paths[runner.name] else None,
                                       "extra_bytes": runner.extra_bytes}
        final = series[runner.name]
        log(f"  cycles {dtype_name} {RUNNER_LABELS[runner.name]:17s} {seconds[runner.name] / (2 * cycles) * 1000:8.2f}"
            f" ms/switch; after {cycles}: {final['key_ulps_max'][-1]:.3g} key-ulp, "
            f"{final['element_ulps_max'][-1]:.3g} elem-ulp, bit-identical {final['bit_identical'][-1]}")
    del runners
    gc.collect()
    return out
