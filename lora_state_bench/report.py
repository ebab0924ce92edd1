"""Output: the console tables, Markdown (docs/bench/results.md) and the plots (docs/bench/*.png)."""
from __future__ import annotations

import os

from .machine import machine_line
from .runners import RUNNER_LABELS
from .scenarios.switching import ONE_CHANGE


def format_table(results: list[dict]) -> str:
    header = (f"{'model':11s} {'dtype':5s} {'stack':5s} {'scenario':13s} {'runner':17s} {'seconds':>10s} "
              f"{'x full':>7s} {'key-ulp':>8s} {'mean':>8s} {'elem-ulp':>9s} {'exact?':>6s} {'extra MiB':>9s} "
              f"{'bound s':>9s} {'x bound':>8s}")
    lines = [header, "-" * len(header)]
    fulls = {(e["model"], e["dtype"], e["stack"], e["scenario"]): e for e in results if e["runner"] == "full"}
    for e in results:
        full = fulls.get((e["model"], e["dtype"], e["stack"], e["scenario"]))
        ratio = (f"{full['seconds'] / e['seconds']:7.2f}" if full and full["seconds"] and e["seconds"]
                 else f"{'-':>7s}")
        err = e["error"]
        bound = e["lower_bound"]["seconds"]
        seconds = f"{e['seconds']:10.5f}" if e["seconds"] is not None else f"{'-':>10s}"
        xbound = f"{e['seconds'] / bound:8.1f}" if bound and e["seconds"] else f"{'-':>8s}"
        if err is None:
            errs = f"{'-':>8s} {'-':>8s} {'-':>9s} {'-':>6s}"
        else:
            errs = (f"{err['key_ulps_max']:8.3g} {err['key_ulps_mean']:8.2g} {err['element_ulps_max']:9.3g} "
                    f"{'yes' if err['bit_identical'] else 'no':>6s}")
        lines.append(f"{e['model']:11s} {e['dtype']:5s} {e['stack']:5s} {e['scenario']:13s} {e['label']:17s} "
                     f"{seconds} {ratio} {errs} {e['extra_bytes'] / 2**20:9.1f} {bound:9.4f} {xbound}")
    return "\n".join(lines)


def format_cycles(cycles: list[dict]) -> str:
    lines = [(f"{'dtype':5s} {'runner':17s} {'ms/switch':>10s} {'key-ulp max':>12s} {'elem-ulp max':>13s} "
              f"{'bit-identical':>14s}  (after N cycles of A->B->A)")]
    for block in cycles:
        for r in block["runners"].values():
            lines.append(f"{block['dtype']:5s} {r['label']:17s} {r['seconds_per_switch'] * 1000:10.3f} "
                         f"{r['key_ulps_max'][-1]:12.3g} {r['element_ulps_max'][-1]:13.3g} "
                         f"{r['bit_identical'][-1]!s:>14s}  N={r['cycles'][-1]}")
    return "\n".join(lines)


def format_targets(targets: list[dict]) -> str:
    lines = []
    for t in targets:
        detail = ""
        if t.get("worst") is not None:
            detail = f" (worst {t['worst']:.4g}"
            if t.get("threshold") is not None:
                detail += f" vs {t['threshold']:g}"
            if t.get("worst_case"):
                detail += f", {t['worst_case']}"
            detail += ")"
        if t.get("failures"):
            detail += f" failures: {t['failures'][:3]}"
        lines.append(f"[{'MET ' if t['met'] else 'MISS'}] {t['target']}{detail}")
    return "\n".join(lines)


def calibration_range(machine: dict) -> str:
    """The rates measured before each model/dtype run (the bounds' own), as ranges; empty for older runs."""
    calibrations = machine.get("calibrations")
    if not calibrations:
        return ""
    flops = [c["matmul_flops_per_s"] / 1e9 for c in calibrations]
    bandwidth = [c["bandwidth_bytes_per_s"] / 1e9 for c in calibrations]
    return (f" at the start; before each model/dtype run, whose bounds use them, {min(flops):.0f}-{max(flops):.0f} "
            f"GFLOP/s and {min(bandwidth):.1f}-{max(bandwidth):.1f} GB/s")


def format_markdown(data: dict) -> str:
    """The tables of docs/mechanism.md: switching (r32 stack), cycles, no-op, targets."""
    machine = data["machine"]
    lines = [(f"Measured on {machine['cpu']} ({machine['cores']} cores, {machine['torch_threads']} torch threads), "
              f"torch {machine['torch']}, fp32 GEMM {machine['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s, copy "
              f"bandwidth {machine['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s{calibration_range(machine)}; "
              f"`{data['profile']}` profile, {data['reps']} timed runs per scenario (median), {data['created']}."), ""]
    fulls = {(e["model"], e["dtype"], e["stack"], e["scenario"]): e for e in data["results"] if e["runner"] == "full"}
    lines += [("| model | dtype | stack | scenario | runner | seconds | x full re-patch | key-ulp max | elem-ulp max "
               "| bit-identical | extra MiB | lower bound s | x bound |"), "|" + "---|" * 13]
    for e in data["results"]:
        full = fulls.get((e["model"], e["dtype"], e["stack"], e["scenario"]))
        ratio = f"{full['seconds'] / e['seconds']:.2f}" if full and full["seconds"] and e["seconds"] else "-"
        err = e["error"]
        bound = e["lower_bound"]["seconds"]
        lines.append(
            f"| {e['model']} | {e['dtype']} | {e['stack']} | {e['scenario']} | {e['label']} | "
            f"{e['seconds']:.4g} | {ratio} | " if e["seconds"] is not None else
            f"| {e['model']} | {e['dtype']} | {e['stack']} | {e['scenario']} | {e['label']} | - | - | ")
        lines[-1] += ("- | - | - | " if err is None else
                      f"{err['key_ulps_max']:.3g} | {err['element_ulps_max']:.3g} | "
                      f"{'yes' if err['bit_identical'] else 'no'} | ")
        lines[-1] += (f"{e['extra_bytes'] / 2**20:.0f} | {bound:.3g} | "
                      f"{e['seconds'] / bound:.1f} |" if bound and e["seconds"] else
                      f"{e['extra_bytes'] / 2**20:.0f} | {bound:.3g} | - |")
    bounds = format_bounds_markdown(data["results"])
    if bounds:
        lines += [""] + bounds
    if data.get("cycles"):
        lines += ["", "| dtype | runner | ms per switch | key-ulp max | elem-ulp max | bit-identical | after cycles |",
                  "|---|---|---|---|---|---|---|"]
        for block in data["cycles"]:
            for r in block["runners"].values():
                lines.append(f"| {block['dtype']} | {r['label']} | {r['seconds_per_switch'] * 1000:.2f} | "
                             f"{r['key_ulps_max'][-1]:.3g} | {r['element_ulps_max'][-1]:.3g} | "
                             f"{'yes' if r['bit_identical'][-1] else 'no'} | {r['cycles'][-1]} |")
    noop = data.get("noop")
    if noop:
        lines += ["", f"No-op on {noop['model']} {noop['dtype']} ({noop['keys']} keys, {noop['parameters'] / 1e9:.2f} "
                      f"G parameters, 5 LoRAs of rank {noop['rank']}): " +
                  ", ".join(f"{m} {v['median_seconds'] * 1000:.2f} ms" for m, v in noop["modes"].items()) +
                  " (median)."]
    lines += ["", "| target | met | worst |", "|---|---|---|"]
    for t in data["targets"]:
        worst = t.get("worst")
        lines.append(f"| {t['target']} | {'yes' if t['met'] else '**no**'} | "
                     f"{'' if worst is None else f'{worst:.4g}'} {t.get('worst_case', '')} |")
    return "\n".join(lines)


def make_plots(data: dict, directory: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    written = []
    colors = {"exact": "tab:green", "delta": "tab:orange", "auto": "tab:blue", "full": "tab:gray",
              "peft": "tab:red"}
    cycles = data.get("cycles") or []
    if cycles:
        fig, axes = plt.subplots(1, len(cycles), figsize=(5 * len(cycles), 4.2), squeeze=False)
        for ax, block in zip(axes[0], cycles):
            for name, r in block["runners"].items():
                ax.plot(r["cycles"], r["key_ulps_max"], marker="o", ms=3, color=colors[name],
                        label=f"{r['label']} (key ulps)")
                ax.plot(r["cycles"], r["element_ulps_max"], ls=":", color=colors[name], alpha=0.7)
            ax.set_xscale("log")
            ax.set_yscale("symlog", linthresh=0.5)
            ax.set_ylim(bottom=0)
            ax.set_xlabel("A -> B -> A cycles")
            ax.set_title(f"{block['dtype']}: max error vs exact oracle")
            ax.set_ylabel("ulps (solid: key scale, dotted: per element)")
            ax.axhline(1.0, color="k", lw=0.5, ls="--")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7, loc="upper left")
        fig.suptitle("Error vs number of switches (exact and full re-patch stay at 0: bit-identical)", fontsize=10)
        fig.tight_layout()
        path = os.path.join(directory, "error_vs_switches.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    results = [e for e in data.get("results", []) if e["stack"] == "r32" and e["scenario"] in ONE_CHANGE + ("reset",)]
    groups = sorted({(e["model"], e["dtype"]) for e in results}, key=lambda g: (g[0], ["fp16", "bf16", "fp32"].index(g[1])))
    if groups:
        fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 4.4), squeeze=False)
        for ax, (model, dtype) in zip(axes[0], groups):
            rows = [e for e in results if e["model"] == model and e["dtype"] == dtype]
            scenarios = [s for s in ONE_CHANGE + ("reset",) if any(e["scenario"] == s for e in rows)]
            runners = [r for r in ("exact", "delta", "auto", "full", "peft") if any(e["runner"] == r for e in rows)]
            width = 0.8 / len(runners)
            for i, runner in enumerate(runners):
                values = []
                for s in scenarios:
                    match = [e for e in rows if e["scenario"] == s and e["runner"] == runner]
                    values.append(match[0]["seconds"] if match and match[0]["seconds"] else float("nan"))
                ax.bar([j + i * width for j in range(len(scenarios))], values, width, color=colors[runner],
                       label=RUNNER_LABELS[runner])
            bounds = []
            for s in scenarios:
                match = [e for e in rows if e["scenario"] == s]
                bounds.append(match[0]["lower_bound"]["seconds"] if match else float("nan"))
            ax.scatter([j + 0.4 - width / 2 for j in range(len(scenarios))], bounds, marker="_", s=400,
                       color="k", zorder=5, label="lower bound")
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(scenarios))])
            ax.set_xticklabels(scenarios, rotation=20, fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("seconds per switch (median)")
            ax.set_title(f"{model} {dtype}", fontsize=10)
            ax.grid(alpha=0.3, axis="y")
        axes[0][0].legend(fontsize=7)
        machine = data.get("machine", {})
        fig.suptitle(f"Switch time, 5-LoRA stack (rank 32), {machine.get('cpu', '')}, "
                     f"{machine.get('torch_threads')} threads", fontsize=10)
        fig.tight_layout()
        path = os.path.join(directory, "switch_time.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


#: The modes whose promise asks for more than the changed LoRAs' matmuls, and their own bound (bounds.py).
OWN_BOUNDS = {"exact": "recompute_seconds", "auto": "auto_seconds"}


def _bound_rows(results: list[dict]):
    """The modes present, and {(model, dtype, scenario): {mode: result}} for one change in the r32 stack."""
    modes = [m for m in ("exact", "delta", "auto") if any(e["runner"] == m for e in results)]
    rows = {}
    for e in results:
        if e["stack"] == "r32" and e["scenario"] in ONE_CHANGE and e["runner"] in modes:
            rows.setdefault((e["model"], e["dtype"], e["scenario"]), {})[e["runner"]] = e
    return modes, rows


def format_bounds_markdown(results: list[dict]) -> list[str]:
    """The bound table as Markdown lines: seconds of one change per mode, and x its lower bound."""
    from .targets import BOUND_TARGET
    modes, rows = _bound_rows(results)
    if not rows:
        return []
    lines = [f"One change vs its lower bound (seconds, x the bound; target: within {BOUND_TARGET:g}x):", "",
             "| model | dtype | scenario | lower bound s | " + " | ".join(modes) +
             " | exact's own bound s (all LoRAs of the key recomputed) | auto's own bound s (its budget's share of "
             "re-bases) |", "|" + "---|" * (6 + len(modes))]
    for (model, dtype, scenario), by_mode in rows.items():
        bound = next(iter(by_mode.values()))["lower_bound"]["seconds"]
        cells = []
        for mode in modes:
            e = by_mode.get(mode)
            cells.append("-" if e is None or not e["seconds"] or not bound else
                         f"{e['seconds']:.3g} ({e['seconds'] / bound:.2f}x)")
        for mode, own in OWN_BOUNDS.items():
            e = by_mode.get(mode)
            seconds = e["lower_bound"].get(own) if e else None
            cells.append(f"{seconds:.3g} ({e['seconds'] / seconds:.2f}x)" if seconds and e["seconds"] else "-")
        lines.append(f"| {model} | {dtype} | {scenario} | {bound:.3g} | " + " | ".join(cells) + " |")
    return lines


def format_bounds(results: list[dict], machine: dict | None = None) -> str:
    """One change in the 5-LoRA rank-32 stack against its lower bound, per model, dtype and scenario: the median
    time of each mode, and that time as a multiple of the bound (target: within BOUND_TARGET x)."""
    from .targets import BOUND_TARGET
    modes, rows = _bound_rows(results)
    if not rows:
        return ""
    header = f"{'model':11s} {'dtype':5s} {'scenario':13s} {'bound s':>9s}" + "".join(
        f" | {mode + ' s':>9s} {'x bound':>7s}" for mode in modes)
    lines = [f"One change vs its lower bound (median of the timed runs; target: within {BOUND_TARGET:g}x)",
             header, "-" * len(header)]
    for (model, dtype, scenario), by_mode in rows.items():
        bound = next(iter(by_mode.values()))["lower_bound"]["seconds"]
        line = f"{model:11s} {dtype:5s} {scenario:13s} {bound:9.4f}"
        for mode in modes:
            e = by_mode.get(mode)
            if e is None or not e["seconds"]:
                line += f" | {'-':>9s} {'-':>7s}"
                continue
            ratio = e["seconds"] / bound if bound else None
            mark = "" if ratio is None or ratio <= BOUND_TARGET else "*"
            line += f" | {e['seconds']:9.4f} {'-' if ratio is None else f'{ratio:.2f}{mark}':>7s}"
        for mode, own in OWN_BOUNDS.items():
            e = by_mode.get(mode)
            seconds = e["lower_bound"].get(own) if e else None
            if seconds and e["seconds"] and seconds != bound:
                line += f" | {mode} {e['seconds'] / seconds:.2f}x its own bound {seconds:.4f} s"
        lines.append(line)
    lines.append(f"(* above {BOUND_TARGET:g}x the bound. Exact recomputes every LoRA of the key from its clean copy, "
                 f"as promised: its own bound counts all their matmuls. Auto's fp16/bf16 budget allows at most "
                 f"2 x budget - 1 delta steps in a row: its own bound counts that share of recomputes, bounds.py)")
    if machine:
        lines.append(machine_line(machine) + calibration_range(machine))
    return "\n".join(lines)


def print_report(data: dict, out=print) -> None:
    out("")
    out(format_table(data["results"]))
    bounds = format_bounds(data["results"], data.get("machine"))
    if bounds:
        out("")
        out(bounds)
    if data.get("cycles"):
        out("")
        out(format_cycles(data["cycles"]))
    noop = data.get("noop")
    if noop:
        out("")
        out(f"no-op on {noop['model']} {noop['dtype']} ({noop['keys']} keys, {noop['parameters'] / 1e9:.2f} G "
            f"parameters, 5 LoRAs): " + ", ".join(f"{m} {v['median_seconds'] * 1000:.3f} ms"
                                                  for m, v in noop["modes"].items()))
    out("")
    out("Targets:")
    out(format_targets(data["targets"]))
    machine = data["machine"]
    out(f"\n{data['profile']} run, {data['seconds_total']:.0f} s total, on {machine['cpu']} "
        f"({machine['cores']} cores, {machine['torch_threads']} torch threads, torch {machine['torch']}); load "
        f"average {machine.get('load_average_at_start')} at start, {machine.get('load_average_at_end')} at end")
    loads = [x for x in (machine.get("load_average_at_start") or [])[:1] + (machine.get("load_average_at_end")
                                                                            or [])[:1]]
    if any(load > (machine.get("cores") or 1) for load in loads):
        out("note: other processes were competing for the CPU during this run: absolute times are inflated; the "
            "ratios come from interleaved runs and are less affected")
