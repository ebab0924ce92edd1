"""Smoke test of the benchmark on a tiny profile: the JSON it writes and the exact-mode claim. Not a timed test:
no timing is asserted (the machines are noisy; the benchmark reports its targets, it does not assert them)."""
from __future__ import annotations

import itertools
import json

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from lora_state.__main__ import main as cli
from lora_state_bench import report
from lora_state_bench.cli import main as bench_main


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny tensors: one thread is faster and immune to a busy machine
    try:
        assert cli(["bench", "--profile", "tiny", "--quiet", "--json", str(out / "bench.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    with open(out / "bench.json", encoding="utf-8") as handle:
        return json.load(handle)


def test_json_structure(result):
    assert result["profile"] == "tiny"
    for field in ("cpu", "cores", "torch", "torch_threads", "matmul_flops_per_s", "bandwidth_bytes_per_s"):
        assert field in result["machine"]
    assert result["machine"]["matmul_flops_per_s"] > 0 and result["machine"]["bandwidth_bytes_per_s"] > 0
    # The bounds' rates are measured again before each model/dtype run, and the reports give their range.
    runs = {f"{row['model']} {row['dtype']} {row['stack']}" for row in result["results"]}
    assert {c["run"] for c in result["machine"]["calibrations"]} == runs
    assert all(c["matmul_flops_per_s"] > 0 and c["bandwidth_bytes_per_s"] > 0 for c in result["machine"]["calibrations"])
    assert "before each model/dtype run" in report.format_markdown(result)
    scenarios = {row["scenario"] for row in result["results"]}
    assert scenarios == {"strength", "strength-half", "remove", "add", "no-op", "reset"}
    runners = {row["runner"] for row in result["results"]}
    assert runners == {"exact", "delta", "auto", "full", "peft"}
    for row in result["results"]:
        assert {"model", "dtype", "stack", "seconds", "samples", "error", "extra_bytes", "lower_bound"} <= set(row)
        assert {"seconds", "flops", "bytes"} <= set(row["lower_bound"])
        if row["error"] is not None:
            assert {"bit_identical", "key_ulps_max", "key_ulps_mean", "element_ulps_max",
                    "element_ulps_mean"} <= set(row["error"])
    assert {c["dtype"] for c in result["cycles"]} == {"fp16", "bf16"}
    for block in result["cycles"]:
        assert set(block["runners"]) == {"exact", "delta", "auto", "full", "peft"}
        for series in block["runners"].values():
            assert series["cycles"][-1] == block["cycles"]
            assert len(series["key_ulps_max"]) == len(series["cycles"])
    assert set(result["noop"]["modes"]) == {"exact", "delta", "auto"}
    assert all(m["noop_reported"] for m in result["noop"]["modes"].values())
    assert all({"target", "met"} <= set(t) for t in result["targets"])
    assert report.format_table(result["results"])
    bounds = report.format_bounds(result["results"], result["machine"])
    for case in ("exact s", "delta s", "auto s", "bound s", "x bound", "machine:"):
        assert case in bounds
    bound_targets = [t for t in result["targets"] if "of the lower bound" in t["target"]]
    assert {t["target"].split()[0] for t in bound_targets} == {"exact", "delta", "auto"}
    own_targets = [t for t in result["targets"] if "of its own bound" in t["target"]]
    assert {t["target"].split()[0] for t in own_targets} == {"exact", "auto"}
    for row in result["results"]:
        bound = row["lower_bound"]
        if row["scenario"] in ("strength", "remove", "add"):
            assert bound["seconds"] <= bound["auto_seconds"] <= bound["recompute_seconds"]
            assert (bound["auto_seconds"] > bound["seconds"]) == (row["dtype"] in ("fp16", "bf16"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autos_own_bound_counts_the_rebases_auto_takes(tmp_path, dtype):
    """auto's own bound assumes a key re-bases once in every auto_steps_per_rebase + 1 changes: the manager's
    auto takes exactly that many delta steps in a row on a key that changes at every reconcile."""
    from safetensors.torch import save_file

    from lora_state import LoraStateManager
    from lora_state_bench.bounds import auto_steps_per_rebase
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 64)).to(dtype)
    paths = []
    for seed in range(2):
        generator = torch.Generator().manual_seed(seed)
        paths.append(str(tmp_path / f"lora_{seed}.safetensors"))
        save_file({"lora_unet_0.lora_up.weight": torch.randn(64, 4, generator=generator) * 0.05,
                   "lora_unet_0.lora_down.weight": torch.randn(4, 64, generator=generator) * 0.05}, paths[-1])
    manager = LoraStateManager(module, mode="auto")
    manager.reconcile([(paths[0], 1.0), (paths[1], 1.0)])
    path_per_change = []
    for change in range(16):
        report = manager.reconcile([(paths[0], 1.0), (paths[1], 0.5 + change / 64)])
        path_per_change.append("exact" if report.paths.get("exact") else "delta")
    rebases = [i for i, path in enumerate(path_per_change) if path == "exact"]
    gaps = {later - earlier - 1 for earlier, later in itertools.pairwise(rebases)}
    assert gaps == {auto_steps_per_rebase(dtype)}, path_per_change


def test_exact_is_bit_identical_everywhere(result):
    exact = [row for row in result["results"] if row["runner"] in ("exact", "full") and row["error"] is not None]
    assert exact
    for row in exact:
        assert row["error"]["bit_identical"], row
        assert row["error"]["key_ulps_max"] == 0.0
        assert row.get("error_after_back", {"bit_identical": True})["bit_identical"], row
    for block in result["cycles"]:
        assert all(block["runners"]["exact"]["bit_identical"])
    target = next(t for t in result["targets"] if t["target"].startswith("exact bit-identical"))
    assert target["met"]


def test_memory_claims(result):
    for row in result["results"]:
        if row["runner"] == "delta":
            assert row["extra_bytes"] == 0
        if row["runner"] == "exact" and "touched_bytes" in row:
            assert row["extra_bytes"] <= row["touched_bytes"]


def test_plots_from_json(result, tmp_path):
    pytest.importorskip("matplotlib")
    written = report.make_plots(result, str(tmp_path))
    assert sorted(p.rsplit("/", 1)[-1] for p in written) == ["error_vs_switches.png", "switch_time.png"]


def test_package_entry_point_redraws_from_json(result, tmp_path, capsys):
    """python -m lora_state_bench --from-json: the same report from a saved run, without measuring anything."""
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(result), encoding="utf-8")
    assert bench_main(["--from-json", str(path), "--markdown", str(tmp_path / "results.md")]) == 0
    printed = capsys.readouterr().out
    assert "One change vs its lower bound" in printed and "machine:" in printed
    markdown = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "| model | dtype |" in markdown and "| lower bound s | exact | delta | auto |" in markdown


def test_runtime_does_not_import_the_benchmark():
    import subprocess
    import sys
    code = ("import sys, lora_state, lora_state.manager, lora_state.__main__; "
            "assert not [m for m in sys.modules if m.startswith('lora_state_bench')]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bench_command_without_the_package(tmp_path):
    """Where lora_state_bench is absent (e.g. the published ComfyUI pack), `python -m lora_state bench` says so."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import lora_state
    shutil.copytree(Path(lora_state.__file__).parent, tmp_path / "lora_state")
    env = {"PATH": "/usr/bin:/bin"}
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('lora_state_bench') is not None)"
    if subprocess.run([sys.executable, "-c", probe], check=False, cwd=tmp_path, env=env).returncode:
        pytest.skip("lora_state_bench is installed in this environment: it is importable from anywhere")
    done = subprocess.run([sys.executable, "-m", "lora_state", "bench", "--quick"], check=False, cwd=tmp_path,
                          capture_output=True, text=True, env=env)
    assert done.returncode == 2, done
    assert "lora_state_bench" in done.stderr and "could not be imported" in done.stderr
