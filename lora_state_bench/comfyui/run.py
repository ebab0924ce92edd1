"""The measurements in one ComfyUI server: native LoraLoader chain vs LoRA Stack + LoRA Reconcile, alternating."""
from __future__ import annotations

import os
import statistics
import time

from .harness import ComfyServer, attach_model_clip_node, native_prompt

TIMER_NODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "timer_node")
CHANGED = 1            # the LoRA whose model strength changes (slot 2 of 5)
PROMPT_TIMEOUT = 3600


def stack(loras, strength):
    return [(name, strength if i == CHANGED else 1.0, 1.0) for i, name in enumerate(loras)]


def ours_prompt(checkpoint, loras, seed, mode):
    prompt = native_prompt(checkpoint, seed=seed, prefix="bench_ours")
    inputs = {}
    for slot, (name, sm, sc) in enumerate(loras, start=1):
        inputs |= {f"lora_{slot}": name, f"strength_model_{slot}": sm, f"strength_clip_{slot}": sc}
    prompt["20"] = {"class_type": "LoraStateStack", "inputs": inputs}
    return attach_model_clip_node(prompt, "21", "LoraStateReconcile", {"mode": mode, "lora_stack": ["20", 0]})


def execution_seconds(entry) -> float:
    """Prompt execution time as ComfyUI stamps it (execution_start -> execution_success)."""
    stamps = {name: data.get("timestamp") for name, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def process_memory(pid: int) -> dict:
    """VmHWM (peak resident set) and VmRSS of a process, in bytes, from /proc/<pid>/status."""
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name in ("VmHWM", "VmRSS"):
                    out[name] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


class Bench:
    """One server, two copies of the checkpoint (native loads `checkpoint`, ours `checkpoint_ours`)."""

    def __init__(self, server: ComfyServer, assets: dict):
        self.server = server
        self.assets = assets

    def run_base(self, kind: str) -> float:
        """A prompt of the side's checkpoint without LoRAs: loads the checkpoint (not LoRA work)."""
        checkpoint = self.assets["checkpoint" if kind == "native" else "checkpoint_ours"]
        return execution_seconds(self.server.run_prompt(native_prompt(checkpoint, seed=0, prefix=f"bench_{kind}"),
                                                        timeout=PROMPT_TIMEOUT))

    def run(self, kind: str, mode: str, strength: float, seed: int) -> float:
        loras = stack(self.assets["loras"], strength)
        if kind == "native":
            prompt = native_prompt(self.assets["checkpoint"], loras=loras, seed=seed, prefix="bench_native")
        else:
            prompt = ours_prompt(self.assets["checkpoint_ours"], loras, seed, mode)
        return execution_seconds(self.server.run_prompt(prompt, timeout=PROMPT_TIMEOUT))

    def last_reconcile(self) -> dict:
        """LoRA State's own reconcile seconds of the last change, per managed model kind (the newest entry)."""
        out = {}
        for entry in self.server.get("/lora_state/ledger")["models"]:
            change = entry.get("last_change") or {}
            if change.get("seconds") is not None and change.get("at", 0) >= out.get(entry["kind"], {}).get("at", 0):
                out[entry["kind"]] = {"seconds": change["seconds"], "at": change.get("at", 0)}
        return {kind: value["seconds"] for kind, value in out.items()}

    def timer_calls(self) -> list[dict]:
        """The registry syncs since the last call (timer_node): seconds, model class, whether nothing changed."""
        answer = self.server.get("/lora_state_bench/timings?clear=1")
        if not answer.get("armed"):
            raise RuntimeError("the benchmark timer could not find LoRA State's registry in the server")
        return answer["calls"]


def run_mode(bench: Bench, mode: str, rounds: int, log, kinds=("native", "ours")) -> dict:
    """The first application, twice per side, in both orders: each time fresh models (POST /free), each side's
    checkpoint loaded by a prompt without LoRAs (untimed: loading a checkpoint is not LoRA work), then the first
    application of each side in turn. The side applying second finds less of the memory it needs already mapped
    into the process and pays page faults the other did not (1-3 s at SD1.5 size on this VM), so each side is
    timed once in each position and the mean is reported. Then one untimed change each, then `rounds` rounds of:
    change one LoRA's model strength (1.0 <-> 0.5) and time the prompt, then change only the seed and time it;
    the order of native and ours alternates from round to round. Returns the raw numbers of each side in `kinds`."""
    raw = {"native": {"first": None, "first_runs": [], "switch": [], "seed": []},
           "ours": {"first": None, "first_runs": [], "switch": [], "seed": [], "reconcile": [], "reconcile_clip": [],
                    "first_reconcile": None, "first_reconciles": [], "unchanged_ms": [], "unchanged_calls": []}}
    raw = {kind: raw[kind] for kind in kinds}
    for order in (tuple(kinds), tuple(reversed(kinds))) if len(kinds) > 1 else (tuple(kinds),):
        bench.server.free(unload_models=True, free_memory=True)
        for kind in order:
            bench.run_base(kind)
        for kind in order:
            raw[kind]["first_runs"].append(bench.run(kind, mode, 1.0, 1))
            if kind == "ours":
                raw["ours"]["first_reconciles"].append(bench.last_reconcile())
    for kind in kinds:
        raw[kind]["first"] = statistics.mean(raw[kind]["first_runs"])
        bench.run(kind, mode, 0.5, 1)          # warm-up change, untimed
    if "ours" in kinds:
        raw["ours"]["first_reconcile"] = raw["ours"]["first_reconciles"][-1]
    log(f"  {mode}: first application (mean of both orders) " + ", ".join(
        f"{kind} {raw[kind]['first']:.2f} s ({', '.join(f'{v:.2f}' for v in raw[kind]['first_runs'])})"
        for kind in kinds))
    bench.timer_calls()
    seed = 1
    for index in range(rounds):
        # 1.0 <-> 0.5, each time a value not used before (+ index/1000): with the LRU cache a repeated stack and
        # seed would be answered from the cache without running anything.
        strength = (1.0 if index % 2 == 0 else 0.5) + (index + 1) / 1000
        seed += 1
        for kind in kinds if index % 2 == 0 else tuple(reversed(kinds)):
            raw[kind]["switch"].append(bench.run(kind, mode, strength, 1))
            if kind == "ours":
                reconcile = bench.last_reconcile()
                raw["ours"]["reconcile"].append(reconcile.get("model"))
                raw["ours"]["reconcile_clip"].append(reconcile.get("clip"))
                bench.timer_calls()
            raw[kind]["seed"].append(bench.run(kind, mode, strength, seed))
            if kind == "ours":
                calls = bench.timer_calls()
                raw["ours"]["unchanged_calls"].append(calls)
                raw["ours"]["unchanged_ms"].append(max((c["seconds"] for c in calls), default=0.0) * 1000)
        log(f"  {mode} change {index + 1}/{rounds}: " + ", ".join(
            f"{kind} {raw[kind]['switch'][-1]:.2f} s (seed-only {raw[kind]['seed'][-1]:.2f} s)" for kind in kinds) +
            (f", reconcile {raw['ours']['reconcile'][-1] or 0:.3f} s" if "ours" in kinds else ""))
    return raw


def server_device(server: ComfyServer) -> dict:
    """The device ComfyUI runs the models on, as its /system_stats reports it (name, type, VRAM)."""
    devices = server.get("/system_stats").get("devices") or [{}]
    return {key: devices[0].get(key) for key in ("name", "type", "vram_total")}


def _range(values):
    return [min(values), max(values)] if values else None


def summarize(raw: dict) -> dict:
    """Switch overhead of change i = prompt time after the strength change i - median prompt time after a
    seed-only change (the cost of a prompt without weight work)."""
    out = {}
    for kind in ("native", "ours"):
        r = raw[kind]
        seed = statistics.median(r["seed"])
        overheads = [s - seed for s in r["switch"]]
        out[kind] = {"first": r["first"], "switch_prompt_median": statistics.median(r["switch"]),
                     "seed_prompt_median": seed, "overheads": overheads,
                     "overhead_median": statistics.median(overheads), "overhead_range": _range(overheads),
                     "max_over_median": max(overheads) / statistics.median(overheads)
                     if statistics.median(overheads) > 0 else None}
    ours = raw["ours"]
    reconcile = [v for v in ours["reconcile"] if v is not None]
    out["ours"]["reconcile_median"] = statistics.median(reconcile) if reconcile else None
    out["ours"]["reconcile_range"] = _range(reconcile)
    out["ours"]["unchanged_ms_median"] = statistics.median(ours["unchanged_ms"]) if ours["unchanged_ms"] else None
    out["ours"]["unchanged_ms_max"] = max(ours["unchanged_ms"]) if ours["unchanged_ms"] else None
    native, mine = out["native"], out["ours"]
    out["ratio_first_native_over_ours"] = native["first"] / mine["first"]
    out["ratio_overhead_native_over_ours"] = (native["overhead_median"] / mine["overhead_median"]
                                              if mine["overhead_median"] > 0 else None)
    out["ratio_prompt_native_over_ours"] = native["switch_prompt_median"] / mine["switch_prompt_median"]
    return out


#: ComfyUI's default (classic) cache keeps only the current prompt's node outputs: alternating native and ours
#: prompts would reload the other side's checkpoint on every switch of side (a new model, a first application
#: again). An LRU cache keeps both sides' checkpoints and text encodings, as one user's cached model would be.
CACHE_ARGS = ["--cache-lru", "64"]


def _server(assets: dict, threads: int) -> ComfyServer:
    return ComfyServer(assets["dir"], extra_args=assets["server_args"] + CACHE_ARGS, threads=threads,
                       test_nodes=(TIMER_NODE,), boot_timeout=300)


def run_size(size: str, assets: dict, modes, rounds: int, threads: int, log, separate: bool = False) -> dict:
    """Every mode on one server, native and ours alternating; the server's memory after each mode and at the end.
    separate: native on a server of its own (once, its numbers set against every mode), then ours on another, for
    when both sides together do not fit in memory (native's patched copies and LoRA State's clean copies of the
    touched keys come on top of two loaded models)."""
    started = time.perf_counter()
    results = []
    if not separate:
        with _server(assets, threads) as server:
            bench = Bench(server, assets)
            bench.timer_calls()
            device = server_device(server)
            log(f"{size}: server up in {server.boot_seconds:.1f} s on {device['name']} "
                f"({' '.join(assets['server_args']) or 'default'})")
            for mode in modes:
                raw = run_mode(bench, mode, rounds, log)
                results.append({"mode": mode, "rounds": rounds, "raw": raw, "summary": summarize(raw),
                                "memory_after": process_memory(server.proc.pid)})
            memory = process_memory(server.proc.pid)
    else:
        memory = {}
        with _server(assets, threads) as server:
            device = server_device(server)
            log(f"{size}: native server up in {server.boot_seconds:.1f} s on {device['name']}")
            native = run_mode(Bench(server, assets), "native", rounds, log, kinds=("native",))["native"]
            memory["native"] = process_memory(server.proc.pid)
        with _server(assets, threads) as server:
            bench = Bench(server, assets)
            bench.timer_calls()
            log(f"{size}: LoRA State server up in {server.boot_seconds:.1f} s")
            for mode in modes:
                raw = {"native": native} | run_mode(bench, mode, rounds, log, kinds=("ours",))
                results.append({"mode": mode, "rounds": rounds, "raw": raw, "summary": summarize(raw),
                                "memory_after": process_memory(server.proc.pid)})
            memory["ours"] = process_memory(server.proc.pid)
    return {"size": size, "description": assets["description"], "checkpoint": assets["checkpoint"],
            "loras": assets["loras"], "changed": assets["loras"][CHANGED], "server_args": assets["server_args"],
            "device": device, "separate": separate, "modes": results, "memory_alternating": memory,
            "seconds": time.perf_counter() - started}


def run_memory(size: str, assets: dict, modes, threads: int, log) -> dict:
    """Peak memory of each side alone: a fresh server per side (native once, ours per mode), first application and
    two changes, then VmHWM/VmRSS of the server process."""
    out = {}
    for kind, mode in [("native", None)] + [("ours", m) for m in modes]:
        label = kind if mode is None else f"ours_{mode}"
        with ComfyServer(assets["dir"], extra_args=assets["server_args"], threads=threads,
                         boot_timeout=300) as server:
            bench = Bench(server, assets)
            idle = process_memory(server.proc.pid)
            for strength in (1.0, 0.5, 1.0):
                bench.run(kind, mode or "auto", strength, 1)
            out[label] = process_memory(server.proc.pid) | {"idle_VmRSS": idle.get("VmRSS")}
        log(f"{size} memory, {label} alone: peak {out[label].get('VmHWM', 0) / 2**30:.2f} GiB")
    return out

