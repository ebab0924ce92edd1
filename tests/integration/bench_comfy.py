"""Benchmark in real ComfyUI (not a test): 5 stacked LoRAs, change one strength, LoRA State vs native chain.

    COMFYUI_PATH=... COMFYUI_PYTHON=... python tests/integration/bench_comfy.py [--size sd15] [--rounds 8]
        [--mode auto] [--json out.json]

--size tiny (default): the test assets (one-level UNet, mixed LoRA formats). --size sd15: a random-weight
checkpoint of the full SD1.5 size (860M-parameter UNet, CLIP-L) and five rank-32 LoRAs on its 192 transformer and
72 text-encoder keys, built once by bench_assets.py (a few minutes, ~2.5 GB under $LORA_STATE_BENCH_ASSETS,
default /tmp/lora_state_bench_sd15).

Two servers run side by side on this machine, prompts alternating between them so that load on the machine hits
both alike. Each round flips one LoRA's model strength (1.0 <-> 0.5) and, separately, changes only the seed (the
cost of a prompt without any weight work). Reported per server: median prompt execution time for both, the
switching overhead (strength change minus seed change), LoRA State's own reconcile seconds, and the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from comfy_harness import ComfyServer, attach_model_clip_node, build_assets, comfy_paths, native_prompt  # noqa

LORAS = ["kohya_lora_a.safetensors", "kohya_lora_b.safetensors", "locon_conv.safetensors", "loha.safetensors",
         "lokr.safetensors"]
CHANGED = 1      # kohya_lora_b: covers half of lora_a's modules
CKPT = "tiny_a.safetensors"


def stack(strength):
    return [(name, strength if i == CHANGED else 1.0, 1.0) for i, name in enumerate(LORAS)]


def sd15_assets() -> str:
    """Build (once) the SD1.5-size checkpoint and LoRAs with bench_assets.py under ComfyUI's Python."""
    import subprocess

    dest = os.environ.get("LORA_STATE_BENCH_ASSETS") or "/tmp/lora_state_bench_sd15"
    if not os.path.isfile(os.path.join(dest, "bench_manifest.json")):
        comfy_path, python = comfy_paths()
        subprocess.run([python, os.path.join(HERE, "bench_assets.py"), dest], cwd=comfy_path, check=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    return dest


def ours_prompt(loras, seed, mode):
    prompt = native_prompt(CKPT, seed=seed, prefix="bench_ours")
    inputs = {}
    for slot, (name, sm, sc) in enumerate(loras, start=1):
        inputs |= {f"lora_{slot}": name, f"strength_model_{slot}": sm, f"strength_clip_{slot}": sc}
    prompt["20"] = {"class_type": "LoraStateStack", "inputs": inputs}
    return attach_model_clip_node(prompt, "21", "LoraStateReconcile", {"mode": mode, "lora_stack": ["20", 0]})


def execution_seconds(entry) -> float:
    stamps = {name: data.get("timestamp") for name, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--size", default="tiny", choices=["tiny", "sd15"])
    parser.add_argument("--mode", default="auto", choices=["auto", "exact", "delta"])
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if comfy_paths() is None:
        print("set COMFYUI_PATH (and COMFYUI_PYTHON): see tests/integration/SETUP_COMFYUI.md")
        return 2
    global LORAS, CKPT
    if args.size == "sd15":
        assets = sd15_assets()
        with open(os.path.join(assets, "bench_manifest.json")) as handle:
            manifest = json.load(handle)
        LORAS, CKPT = manifest["loras"], manifest["checkpoint"]
    else:
        assets = os.environ.get("LORA_STATE_COMFY_ASSETS") or "/tmp/lora_state_comfy_assets"
        build_assets(assets)
    results = {"native": {"switch": [], "seed": [], "first": []},
               "ours": {"switch": [], "seed": [], "reconcile": [], "first": []}}
    with ComfyServer(assets) as native_server, ComfyServer(assets) as ours_server:
        def run(kind, strength, seed):
            if kind == "native":
                entry = native_server.run_prompt(native_prompt(CKPT, loras=stack(strength), seed=seed,
                                                               prefix="bench_native"), timeout=1200)
            else:
                entry = ours_server.run_prompt(ours_prompt(stack(strength), seed, args.mode), timeout=1200)
            return execution_seconds(entry)

        for kind in ("native", "ours"):      # warm up: load and first application, then one change
            results[kind]["first"].append(run(kind, 1.0, 1))
            run(kind, 0.5, 1)
        strength, seed = 0.5, 1      # the warm-up ended at 0.5: the first round changes it
        for _ in range(args.rounds):
            strength = 0.5 if strength == 1.0 else 1.0
            seed += 1
            for kind in ("native", "ours"):
                results[kind]["switch"].append(run(kind, strength, 1))
                if kind == "ours":
                    model = next(m for m in ours_server.get("/lora_state/ledger")["models"] if m["kind"] == "model")
                    results["ours"]["reconcile"].append(model["last_change"]["seconds"])
                results[kind]["seed"].append(run(kind, strength, seed))
    median = {kind: {k: statistics.median(v) for k, v in values.items()} for kind, values in results.items()}
    overhead = {kind: max(median[kind]["switch"] - median[kind]["seed"], 1e-9) for kind in median}
    summary = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "comfy_threads": 1},
        "model": ("random-weight SD1.5 one-level UNet" if args.size == "tiny" else
                  "random-weight full-size SD1.5 (860M UNet)") + " (fp32 on CPU) + CLIP-L (fp16), 64x64, 2 euler steps",
        "stack": LORAS, "changed": LORAS[CHANGED], "mode": args.mode, "rounds": args.rounds,
        "median_seconds": median,
        "switch_overhead_seconds": overhead,
        "ratio_prompt_time_native_over_ours": median["native"]["switch"] / median["ours"]["switch"],
        "ratio_switch_overhead_native_over_ours": overhead["native"] / overhead["ours"],
        "ratio_native_overhead_over_ours_reconcile": overhead["native"] / median["ours"]["reconcile"],
        "raw": results,
    }
    print(f"5-LoRA stack, change {LORAS[CHANGED]} model strength 1.0 <-> 0.5, {args.rounds} rounds, mode {args.mode}")
    for kind in ("native", "ours"):
        m = median[kind]
        extra = f", reconcile {m['reconcile'] * 1000:.0f} ms" if kind == "ours" else ""
        costs = [s - m["seed"] for s in results[kind]["switch"]]
        print(f"  {kind:<6}: first application (whole prompt) {m['first']:.3f} s; prompt after strength change "
              f"{m['switch']:.3f} s, after seed change {m['seed']:.3f} s, switch overhead {overhead[kind]:.3f} s "
              f"(per change {min(costs):.3f}-{max(costs):.3f} s){extra}")
    print(f"  prompt time ratio native/ours: {summary['ratio_prompt_time_native_over_ours']:.2f}x; "
          f"switch overhead ratio native/ours: {summary['ratio_switch_overhead_native_over_ours']:.2f}x; "
          f"native overhead / our reconcile: {summary['ratio_native_overhead_over_ours_reconcile']:.1f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
