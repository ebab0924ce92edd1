"""Tables and the plot of the ComfyUI benchmark."""
from __future__ import annotations

import os
import textwrap

GIB = 2 ** 30


def _s(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value):
    return "-" if value is None else f"{value:.1f}x"


def format_mode(size: dict, result: dict) -> str:
    s = result["summary"]
    native, ours = s["native"], s["ours"]
    title = (f"{size['size']}, mode {result['mode']}: change {size['changed']} model strength 1.0 <-> 0.5, "
             f"{result['rounds']} changes " + ("(native and ours on consecutive servers)" if size.get("separate")
                                              else "alternating with the native chain on one server"))
    header = (f"{'':20s} {'first application':>17s} {'switch overhead: median (range)':>34s} {'max/median':>10s} "
              f"{'prompt after change':>19s} {'after seed change':>17s} {'reconcile':>10s} {'unchanged re-run':>16s}")
    lines = [title, header]
    for label, row in (("native chain", native), (f"LoRA State ({result['mode']})", ours)):
        spread = row["overhead_range"]
        overhead = f"{row['overhead_median']:.3f} s ({spread[0]:.3f}-{spread[1]:.3f})"
        reconcile = f"{ours['reconcile_median'] * 1000:.0f} ms" if row is ours and ours["reconcile_median"] \
            is not None else "-"
        unchanged = f"{ours['unchanged_ms_median']:.2f} ms" if row is ours and ours["unchanged_ms_median"] \
            is not None else "-"
        lines.append(f"{label:20s} {row['first']:15.2f} s {overhead:>34s} {_s(row['max_over_median'], 2):>10s} "
                     f"{row['switch_prompt_median']:17.3f} s {row['seed_prompt_median']:15.3f} s {reconcile:>10s} "
                     f"{unchanged:>16s}")
    lines.append(f"ratio native/ours: first application {_ratio(s['ratio_first_native_over_ours'])}, switch "
                 f"overhead {_ratio(s['ratio_overhead_native_over_ours'])}, prompt after a change "
                 f"{_ratio(s['ratio_prompt_native_over_ours'])}; unchanged re-run: longest LoRA State sync in a "
                 f"seed-only prompt, median {_s(ours['unchanged_ms_median'])} ms, max {_s(ours['unchanged_ms_max'])} ms")
    memory = result.get("memory_after") or {}
    if memory:
        lines.append(f"server after this mode ({'ours' if size.get('separate') else 'both models'} loaded): VmRSS {memory.get('VmRSS', 0) / GIB:.2f} GiB, "
                     f"VmHWM {memory.get('VmHWM', 0) / GIB:.2f} GiB")
    return "\n".join(lines)


def format_memory(size: str, memory: dict) -> str:
    if not memory:
        return ""
    lines = [f"{size}: peak memory of each side alone (fresh server, first application + 2 changes)",
             f"{'':16s} {'VmHWM (peak)':>12s} {'VmRSS':>9s} {'idle VmRSS':>10s}"]
    for label, row in memory.items():
        lines.append(f"{label:16s} {row.get('VmHWM', 0) / GIB:8.2f} GiB {row.get('VmRSS', 0) / GIB:5.2f} GiB "
                     f"{(row.get('idle_VmRSS') or 0) / GIB:6.2f} GiB")
    native = memory.get("native", {}).get("VmHWM")
    for label, row in memory.items():
        if label != "native" and native and row.get("VmHWM"):
            lines.append(f"{label}: peak {row['VmHWM'] / native:.2f}x native's")
    return "\n".join(lines)


def machine_text(machine: dict) -> str:
    return (f"machine: {machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('memory_bytes', 0) / GIB:.0f} "
            f"GiB; ComfyUI {machine.get('comfyui')}, torch {machine.get('server_torch')}, "
            f"{machine.get('server_threads')} thread(s) per server")


def format_report(data: dict) -> str:
    parts = []
    for size in data["sizes"]:
        device = (size.get("device") or {}).get("name")
        parts.append(f"== {size['size']}: {size['description']}" + (f"; models on {device}" if device else ""))
        for result in size["modes"]:
            parts.append(format_mode(size, result))
        memory = size.get("memory_alternating") or {}
        if size.get("separate"):
            parts.append(f"{size['size']} servers: native peak VmHWM {memory['native'].get('VmHWM', 0) / GIB:.2f} "
                         f"GiB, LoRA State (all modes, one after the other) "
                         f"{memory['ours'].get('VmHWM', 0) / GIB:.2f} GiB")
        else:
            parts.append(f"{size['size']} server after all modes (native and ours loaded side by side): peak VmHWM "
                         f"{memory.get('VmHWM', 0) / GIB:.2f} GiB")
        if size.get("memory_alone"):
            parts.append(format_memory(size["size"], size["memory_alone"]))
    parts.append(machine_text(data["machine"]))
    return "\n\n".join(parts)


def plot(data: dict, path: str) -> str:
    """Switch overhead of every change, per change number, native vs ours: one panel per size and mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    columns = max(len(size["modes"]) for size in data["sizes"])
    rows = len(data["sizes"])
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for size_index, size in enumerate(data["sizes"]):
        for mode_index, result in enumerate(size["modes"]):
            ax = axes[size_index][mode_index]
            ax.set_visible(True)
            for kind, color, label in (("native", "tab:gray", "native chain"),
                                       ("ours", "tab:blue", f"LoRA State ({result['mode']})")):
                values = [max(v, 1e-3) for v in result["summary"][kind]["overheads"]]   # log axis: >= 1 ms
                changes = list(range(1, len(values) + 1))
                ax.plot(changes, values, marker="o", ms=4, lw=0.8, color=color, label=label)
                ax.axhline(result["summary"][kind]["overhead_median"], color=color, lw=0.6, ls="--")
            reconcile = result["raw"]["ours"]["reconcile"]
            if any(v is not None for v in reconcile):
                ax.plot(range(1, len(reconcile) + 1), [v if v is not None else float("nan") for v in reconcile],
                        marker="x", ms=4, lw=0, color="tab:blue", alpha=0.6, label="LoRA State reconcile")
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("change number")
            ax.set_ylabel("switch overhead, s")
            ax.set_title(f"{size['size']}, {result['mode']}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    machine = data["machine"]
    devices = {(size.get("device") or {}).get("name") for size in data["sizes"]} - {None}
    where = ", ".join(sorted(devices)) if devices and "cpu" not in devices else machine.get("cpu")
    title = (f"One LoRA strength change in a 5-LoRA stack, real ComfyUI {machine.get('comfyui')}: every change "
             f"(dashed: median); {where}")
    fig.suptitle(textwrap.fill(title, 60 * columns), fontsize=9)     # one line per 4.4-inch column's width
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
