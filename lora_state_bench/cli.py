"""The command line: ``python -m lora_state_bench`` (also ``python -m lora_state bench``)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from lora_state.files import LoraFileCache

from . import __doc__ as DOC
from .machine import load_average, machine_info, machine_line, measure_machine
from .profiles import PROFILES, Profile
from .report import format_markdown, make_plots, print_report
from .scenarios.cycles import run_cycles
from .scenarios.noop import run_noop
from .scenarios.switching import run_switching
from .targets import evaluate_targets
from .util import Log
from .workload import MODEL_SPECS, model_shapes, numel


def model_info(model: str) -> dict:
    shapes = model_shapes(model)
    return {"description": MODEL_SPECS[model][2], "keys": len(shapes),
            "parameters": sum(numel(s) for s in shapes.values())}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a run under a minute (smaller models, 100 cycles)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="write the results as JSON (default: bench.json in --plots's folder, if given)")
    parser.add_argument("--plots", metavar="DIR", default=None,
                        help="write error_vs_switches.png and switch_time.png (needs matplotlib) and results JSON")
    parser.add_argument("--from-json", metavar="PATH", default=None,
                        help="only redraw the plots (and tables) from an earlier JSON result")
    parser.add_argument("--markdown", metavar="PATH", default=None, help="also write the tables as Markdown")
    parser.add_argument("--reps", type=int, default=None, help="timed runs per scenario (median)")
    parser.add_argument("--cycles", type=int, default=None, help="A -> B -> A cycles (default 1000; --quick 100)")
    parser.add_argument("--no-peft", action="store_true", help="skip the PEFT fuse/unfuse baseline")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true")


def run(profile: Profile, *, reps: int | None = None, cycles: int | None = None, use_peft: bool = True,
        verbose: bool = True) -> dict:
    log = Log(verbose)
    started = time.perf_counter()
    machine = machine_info()
    machine.update(measure_machine(profile.name != "default"))
    log(machine_line(machine))
    if use_peft:
        try:
            import peft  # noqa: F401
        except ImportError:
            log("peft is not installed: the PEFT fuse/unfuse baseline is skipped")
            use_peft = False
    reps = reps or profile.reps
    cycles = cycles if cycles is not None else profile.cycles
    cache = LoraFileCache(max_bytes=8 << 30)
    results, cycle_results, noop = [], [], {}
    models = {}
    with tempfile.TemporaryDirectory(prefix="lora_state_bench_") as directory:
        runs = [(model, dtype, "r32") for model, dtypes in profile.switch_models for dtype in dtypes]
        runs += [(model, dtype, "mixed") for model, dtype in profile.mixed]
        for model, dtype, kind in runs:
            models[model] = model_info(model)
            peft_here = use_peft and kind == "r32" and (model, dtype) in profile.peft
            # The rates again just before each run: the bound is then measured in the same minutes as the switches
            # it is set against (this VM's speed moves by 10-20% within a run).
            rates = measure_machine(profile.name != "default")
            machine.setdefault("calibrations", []).append({"run": f"{model} {dtype} {kind}", **rates})
            results += run_switching(model, dtype, kind, peft_here, reps, {**machine, **rates},
                                     directory, cache, log)
            cache.clear()
        models["cycle"] = model_info("cycle")
        if cycles:
            log(f"scenario 4: A -> B -> A x {cycles} on the reduced model ({models['cycle']['keys']} keys)")
            for dtype in profile.cycle_dtypes:
                cycle_results.append(run_cycles(dtype, cycles, machine, directory, cache, log, use_peft))
            cache.clear()
        model, dtype, rank = profile.noop
        models[model] = model_info(model)
        noop = run_noop(model, dtype, rank, profile.noop_runs, directory, cache, log)
        cache.clear()
    stacks_doc = {
        "r32": "5 LoRAs of rank 32 (alpha 16), fp16 files: L0-L3 on every key, L4 on every other key; base stack "
               "L0 0.8, L1 0.7, L2 0.6, L3 0.5, L4 0.9. strength: L0 -> 0.55; strength-half: L4 -> 0.4; remove: "
               "drop L2; add: append L5 (rank 32, every key) at 0.6",
        "mixed": "ranks 8-128 on different subsets: M0 r8 every key, M1 r16 attn1, M2 r32 attn2, M3 r64 ff, M4 r128 "
                 "every other key; same scenarios, M5 r32 every key is added",
        "cycles": "A = the r32 base stack; B = L0 at 0.55 and L2 swapped for L5",
    }
    data = {
        "version": 1, "profile": profile.name, "reps": reps, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds_total": time.perf_counter() - started, "machine": machine, "models": models, "stacks": stacks_doc,
        "units": {
            "seconds": "median wall time of one switch (reconcile) over the timed runs",
            "key_ulps": "|live - oracle| in ulps of the dtype at the key's largest magnitude (LoRA State's drift "
                        "unit); _max is the max over keys and elements, _mean the mean over all elements",
            "element_ulps": "|live - oracle| in ulps at each element's own magnitude (stricter)",
            "oracle": "a fresh clean copy reconciled in exact mode to the same stack; reset is compared to clean",
            "extra_bytes": "clean copies held (LoRA State backups; the full re-patch host's backup of every touched "
                           "key); PEFT holds no copy but keeps fp32 adapters",
            "lower_bound": "FLOPs of the deltas that must change / measured fp32 GEMM rate + 2 x bytes of every "
                           "key that must change (read once, written once) / measured copy bandwidth; both rates "
                           "measured just before the model/dtype run (machine.calibrations)",
            "x full": "full re-patch seconds / this runner's seconds (same scenario, same run)",
        },
        "results": results, "cycles": cycle_results, "noop": noop,
    }
    data["machine"]["load_average_at_end"] = load_average()
    data["targets"] = evaluate_targets(results, cycle_results, noop)
    data["seconds_total"] = time.perf_counter() - started
    return data


def main(args=None) -> int:
    if args is None or isinstance(args, (list, tuple)):
        parser = argparse.ArgumentParser(prog="python -m lora_state_bench", description=DOC,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(parser)
        args = parser.parse_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as handle:
            data = json.load(handle)
    else:
        profile = PROFILES[args.profile or ("quick" if args.quick else "default")]
        data = run(profile, reps=args.reps, cycles=args.cycles, use_peft=not args.no_peft, verbose=not args.quiet)
    print_report(data)
    json_path = args.json or (os.path.join(args.plots, "bench.json") if args.plots and not args.from_json else None)
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, default=str)
        print(f"wrote {json_path}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(format_markdown(data) + "\n")
        print(f"wrote {args.markdown}")
    if args.plots:
        for path in make_plots(data, args.plots):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
