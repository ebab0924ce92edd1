"""python -m lora_state_bench.comfyui: see the package docstring."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from . import __doc__ as DOC
from ..machine import cpu_name, memory_bytes
from .assets import SIZES, prepare
from .harness import SKIP_REASON, comfy_paths
from .report import format_report, plot
from .run import run_memory, run_size

MODES = ("exact", "delta", "auto")


def _split(values):
    out = []
    for value in values:
        out += [v for v in value.split(",") if v]
    return out


def machine(threads: int) -> dict:
    cpu = cpu_name()
    comfy_path, python = comfy_paths()
    comfyui = server_torch = None
    try:
        with open(os.path.join(comfy_path, "comfyui_version.py"), encoding="utf-8") as handle:
            comfyui = handle.read().split("__version__ = ", 1)[1].strip().strip("\"'")
    except (OSError, IndexError):
        pass
    try:
        server_torch = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], check=True,
                                      capture_output=True, text=True, timeout=120).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    memory = memory_bytes()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": memory, "comfyui": comfyui,
            "comfyui_path": comfy_path, "server_torch": server_torch, "server_threads": threads,
            "python": platform.python_version(), "platform": platform.platform(), "load_average_at_start": load}


def available_gb() -> float:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except (OSError, ValueError):
        pass
    return float("inf")


def fits_together(size: str) -> bool:
    return SIZES[size]["memory_both_gb"] < available_gb()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_state_bench.comfyui", description=DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", nargs="+", default=["tiny"], help=f"one or more of {', '.join(SIZES)}")
    parser.add_argument("--modes", nargs="+", default=list(MODES), help="LoRA State modes (default: all three)")
    parser.add_argument("--rounds", type=int, default=8, help="strength changes per mode (default 8)")
    parser.add_argument("--memory", action="store_true",
                        help="also the peak memory of each side alone (fresh servers)")
    parser.add_argument("--separate", choices=("auto", "yes", "no"), default="auto",
                        help="native and LoRA State on consecutive servers instead of alternating on one; auto "
                             "(default): only for a size whose two sides together would not fit in the memory "
                             "available at the start (sdxl on a 24 GiB machine)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server (default 1)")
    parser.add_argument("--assets-root", default=None,
                        help="where the assets are kept (default /tmp/lora_state_bench_<size>)")
    parser.add_argument("--json", default=None, help="write every raw number here")
    parser.add_argument("--plot", default=None, help="write the switch-overhead plot (PNG) here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    sizes, modes = _split(args.size), _split(args.modes)
    for size in sizes:
        if size not in SIZES:
            parser.error(f"unknown size {size!r}: {', '.join(SIZES)}")
    for mode in modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}: {', '.join(MODES)}")
    if comfy_paths() is None:
        print(SKIP_REASON, file=sys.stderr)
        return 2
    started = time.perf_counter()

    def log(text):
        if not args.quiet:
            print(f"[{time.perf_counter() - started:7.1f}s] {text}", flush=True)

    data = {"version": 2, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(args.threads),
            "rounds": args.rounds, "modes": modes, "sizes": [],
            "units": {"first": "execution time of the first prompt with the LoRAs after POST /free, the side's "
                               "checkpoint loaded by an untimed prompt without LoRAs before (5 LoRAs, text "
                               "encoding, 2 sampling steps at 64x64)",
                      "overheads": "per change: prompt time after the strength change - median prompt time after "
                                   "a seed-only change",
                      "reconcile": "LoRA State's reconcile seconds of the change (ledger last_change.seconds)",
                      "unchanged_ms": "per seed-only prompt: the longest LoRA State registry sync (an unchanged "
                                      "stack), in ms",
                      "memory": "bytes, from /proc/<server pid>/status"}}
    for size in sizes:
        assets = prepare(size, args.assets_root)
        separate = args.separate == "yes" or (args.separate == "auto" and not fits_together(size))
        if separate:
            log(f"{size}: native and LoRA State on consecutive servers (--separate {args.separate}: both sides "
                f"together need about {SIZES[size]['memory_both_gb']} GB, {available_gb():.0f} GB available)")
        entry = run_size(size, assets, modes, args.rounds, args.threads, log, separate=separate)
        if args.memory:
            entry["memory_alone"] = run_memory(size, assets, modes, args.threads, log)
        data["sizes"].append(entry)
    try:
        data["machine"]["load_average_at_end"] = list(os.getloadavg())
    except OSError:
        pass
    data["seconds_total"] = time.perf_counter() - started
    print()
    print(format_report(data))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {plot(data, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
