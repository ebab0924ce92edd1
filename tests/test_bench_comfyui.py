"""The real-ComfyUI benchmark's arithmetic and output, on made-up numbers (no ComfyUI needed): overheads per
change, medians, ratios, the table and the plot. The benchmark itself runs with
``python -m lora_state_bench.comfyui --size tiny --rounds 2`` (see its docstring)."""
from __future__ import annotations

import pytest

from lora_state_bench.comfyui import report
from lora_state_bench.comfyui.run import process_memory, summarize


def fake_raw():
    return {"native": {"first": 12.0, "switch": [5.0, 4.5, 6.0], "seed": [1.0, 1.2, 0.8]},
            "ours": {"first": 10.0, "switch": [1.5, 1.4, 1.6], "seed": [1.0, 1.1, 0.9],
                     "reconcile": [0.4, 0.35, None], "reconcile_clip": [None] * 3, "first_reconcile": {},
                     "unchanged_ms": [0.5, 0.7, 0.6], "unchanged_calls": [[], [], []]}}


def test_summary_overheads_and_ratios():
    s = summarize(fake_raw())
    assert s["native"]["seed_prompt_median"] == 1.0
    assert s["native"]["overheads"] == pytest.approx([4.0, 3.5, 5.0])
    assert s["native"]["overhead_median"] == pytest.approx(4.0)
    assert s["native"]["overhead_range"] == pytest.approx([3.5, 5.0])
    assert s["ours"]["overhead_median"] == pytest.approx(0.5)
    assert s["ours"]["max_over_median"] == pytest.approx(0.6 / 0.5)
    assert s["ours"]["reconcile_median"] == pytest.approx(0.375)
    assert s["ours"]["unchanged_ms_median"] == pytest.approx(0.6)
    assert s["ratio_overhead_native_over_ours"] == pytest.approx(8.0)
    assert s["ratio_first_native_over_ours"] == pytest.approx(1.2)


def fake_data(separate=False):
    raw = fake_raw()
    mode = {"mode": "auto", "rounds": 3, "raw": raw, "summary": summarize(raw),
            "memory_after": {"VmHWM": 3 << 30, "VmRSS": 2 << 30}}
    memory = {"native": {"VmHWM": 2 << 30}, "ours": {"VmHWM": 2 << 30}} if separate else {"VmHWM": 3 << 30}
    size = {"size": "sd15", "description": "d", "checkpoint": "c", "loras": ["a", "b"], "changed": "b",
            "server_args": [], "device": {"name": "cuda:0 Some GPU", "type": "cuda"}, "separate": separate,
            "modes": [mode], "memory_alternating": memory,
            "memory_alone": {"native": {"VmHWM": 2 << 30, "VmRSS": 1 << 30, "idle_VmRSS": 1 << 29},
                             "ours_auto": {"VmHWM": 1 << 30, "VmRSS": 1 << 30, "idle_VmRSS": 1 << 29}}}
    machine = {"cpu": "cpu", "cores": 2, "memory_bytes": 24 << 30, "comfyui": "0.3.64", "server_torch": "2",
               "server_threads": 1}
    return {"sizes": [size], "machine": machine}


@pytest.mark.parametrize("separate", [False, True])
def test_report_and_plot(tmp_path, separate):
    pytest.importorskip("matplotlib")
    text = report.format_report(fake_data(separate))
    for part in ("first application", "switch overhead", "reconcile", "unchanged re-run", "ratio native/ours",
                 "8.0x", "VmHWM", "ours_auto: peak 0.50x native's", "machine: cpu", "models on cuda:0 Some GPU"):
        assert part in text, part
    path = report.plot(fake_data(separate), str(tmp_path / "switch.png"))
    assert (tmp_path / "switch.png").stat().st_size > 1000 and path.endswith("switch.png")


def test_process_memory_of_this_process():
    import os
    memory = process_memory(os.getpid())
    if memory:       # Linux
        assert memory["VmHWM"] >= memory["VmRSS"] > 0
