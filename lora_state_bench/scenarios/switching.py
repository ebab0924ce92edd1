"""Scenarios 1-3, 5 and 6 on one model and dtype: one change in a 5-LoRA stack (a strength on every key, a
strength on half the keys, remove one, add one), then a no-op (the same stack again) and a reset to clean, for
every mode and baseline, interleaved and in rotating order so that drifts of the machine hit all alike."""
from __future__ import annotations

import gc
import os

from lora_state.files import LoraFileCache

from ..bounds import lower_bound
from ..precision import Oracles, compare
from ..runners import RUNNER_LABELS, ManagerRunner, make_runners
from ..util import Log, median, timed
from ..workload import DTYPES, clean_weights, make_stacks, model_shapes, numel

ONE_CHANGE = ("strength", "strength-half", "remove", "add")


def run_switching(model: str, dtype_name: str, stack_kind: str, use_peft: bool, reps: int, machine: dict,
                  directory: str, cache: LoraFileCache, log: Log) -> list[dict]:
    """Scenarios 1-3 (strength, strength of a half-coverage LoRA, remove, add), 5 (no-op) and 6 (reset) for
    every mode and baseline, interleaved and in rotating order so that drifts of the machine hit all alike."""
    dtype = DTYPES[dtype_name]
    shapes = model_shapes(model)
    stacks = make_stacks(stack_kind, shapes, os.path.join(directory, f"{model}-{stack_kind}"), seed=1)
    clean = clean_weights(shapes, dtype)
    keys = list(shapes)
    params = sum(numel(s) for s in shapes.values())
    log(f"{model} {dtype_name} {stack_kind}: {len(keys)} keys, {params / 1e6:.1f} M parameters "
        f"({params * clean[keys[0]].element_size() / 2**30:.2f} GiB)")

    runners = make_runners(clean, stacks, cache, use_peft)
    oracles = Oracles(clean, cache)
    base = stacks.stack(stacks.base)
    for runner in runners:
        runner.switch(base)
    results = []

    def row(scenario, runner, samples, back, error, bound, extra):
        return {"model": model, "dtype": dtype_name, "stack": stack_kind, "scenario": scenario,
                "runner": runner.name, "label": RUNNER_LABELS[runner.name], "seconds": median(samples),
                "samples": samples, "seconds_back": median(back), "error": error, "extra_bytes": extra,
                "paths": runner.last_paths, "lower_bound": bound}

    for scenario, named in stacks.scenarios.items():
        target = stacks.stack(named)
        bound = lower_bound(stacks, shapes, dtype, stacks.base, named, machine)
        samples = {r.name: [] for r in runners}
        back = {r.name: [] for r in runners}
        errors, extras, paths = {}, {}, {}
        for rep in range(reps):
            order = runners[rep % len(runners):] + runners[:rep % len(runners)]
            for runner in order:
                samples[runner.name].append(timed(lambda r=runner, t=target: r.switch(t)))
            if rep == reps - 1:
                oracle = oracles.get(target)
                for runner in runners:
                    errors[runner.name] = compare(runner.weights(keys), oracle)
                    extras[runner.name] = runner.extra_bytes
                    paths[runner.name] = runner.last_paths
                    if isinstance(runner, ManagerRunner):
                        extras[runner.name + "_touched"] = runner.touched_bytes()
            for runner in order:
                back[runner.name].append(timed(lambda r=runner: r.switch(base)))
        oracle = oracles.get(base)
        for runner in runners:
            after_back = compare(runner.weights(keys), oracle)
            runner.last_paths = paths[runner.name]
            entry = row(scenario, runner, samples[runner.name], back[runner.name], errors[runner.name], bound,
                        extras[runner.name])
            entry["error_after_back"] = after_back
            if runner.name + "_touched" in extras:
                entry["touched_bytes"] = extras[runner.name + "_touched"]
            results.append(entry)
        _log_scenario(log, results[-len(runners):])

    # 5. no-op: the same stack again.
    noop_runs = max(20, reps * 10)
    noop = {}
    for runner in runners:
        if isinstance(runner, ManagerRunner):
            noop[runner.name] = [timed(lambda r=runner: r.switch(base)) for _ in range(noop_runs)]
    oracle = oracles.get(base)
    for runner in runners:
        if isinstance(runner, ManagerRunner):
            entry = row("no-op", runner, noop[runner.name], [], compare(runner.weights(keys), oracle),
                        {"seconds": 0.0, "flops": 0, "bytes": 0, "keys": 0}, runner.extra_bytes)
        else:   # hosts compare the stack and skip an unchanged one: nothing to time
            entry = row("no-op", runner, [], [], None, {"seconds": 0.0, "flops": 0, "bytes": 0, "keys": 0},
                        runner.extra_bytes)
            entry["note"] = "hosts skip an unchanged stack by comparing it; not timed"
        results.append(entry)

    # 6. reset: back to clean.
    bound = lower_bound(stacks, shapes, dtype, stacks.base, [], machine)
    clean_view = clean
    resets = {}
    for runner in runners:
        resets[runner.name] = [timed(runner.reset)]
    for runner in runners:
        results.append(row("reset", runner, resets[runner.name], [],
                           compare(runner.weights(keys), clean_view), bound, runner.extra_bytes))
    _log_scenario(log, results[-2 * len(runners):])
    del runners, oracles
    gc.collect()
    return results


def _log_scenario(log: Log, rows: list[dict]) -> None:
    for entry in rows:
        error = entry["error"]
        text = "n/a" if error is None else ("bit-identical" if error["bit_identical"] else
                                           f"{error['key_ulps_max']:.3g} key-ulp, {error['element_ulps_max']:.3g} "
                                           f"elem-ulp")
        seconds = entry["seconds"]
        log(f"  {entry['scenario']:14s} {entry['label']:17s} "
            f"{'-' if seconds is None else f'{seconds * 1000:10.2f} ms'}  {text}  paths={entry['paths']}")
