"""Browser end-to-end tests: headless Chromium (Debian's package) driven by playwright-core (tests/e2e/driver.mjs)
against a real ComfyUI server with this pack, once per frontend:

    frontend 1.27.10 on ComfyUI 0.3.64, 1.39.14 on ComfyUI 0.14.1, the newest on PyPI on ComfyUI 0.14.1

(pairing and how each ComfyUI is found: tests/e2e/e2e_support.py; setup: tests/e2e/README.md).

Skipped, with the reason, when a ComfyUI checkout for the pairing is missing (COMFYUI_PATH ...), when chromium or
node is missing, or when tests/e2e/node_modules is (cd tests/e2e && npm ci).

Scenarios (driver.mjs):
    smoke      page loads, the pack's script loads, its node types are registered, its sidebar tab opens, a graph
               with LoRA Stack + LoRA Reconcile queues and runs
    stack      7 rows built by clicking, toggled and re-weighted, queued; status on LoRA Reconcile; ledger in the
               sidebar; rows intact after a reload; the stack node deleted, queued again: toast, ledger empty
    editing    duplicate, remove, move rows, header toggle, separate clip strength: saved rows, run, ledger per
               model/clip, API format, undo, copy/paste; the status fits inside LoRA Reconcile
    sidebar    Verify (toast), the LoraState.Toasts setting silences the removal toast, Reset LoRA State by its
               keybinding (confirmed) empties the ledger
    workflows  each example workflow and a workflow saved with the 5-slot node load (old slots become rows) and run
    subgraph_triggers  a row's trigger words (a LoRA with safetensors metadata) shown and carried by the
               trigger_words output; the LoRA Stack converted into a subgraph: rows, API prompt, run intact
Every scenario fails on a console error or page error coming from the pack's files.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile

import e2e_support as s
import pytest

SCENARIOS = ("smoke", "stack", "editing", "sidebar", "workflows", "subgraph_triggers", "flagged")


def _frontend_ids():
    return [f"fe{fe}-comfy{cv}" for fe, cv in s.PAIRINGS]


@pytest.fixture(scope="module", params=s.PAIRINGS, ids=_frontend_ids())
def e2e_server(request):
    frontend, comfy_version = request.param
    comfy = s.comfy_for(comfy_version)
    if comfy[0] is None:
        pytest.skip(comfy[1])
    if s.chromium_path() is None:
        pytest.skip("no chromium: apt-get install chromium (or set CHROMIUM_PATH)")
    if s.node_path() is None:
        pytest.skip("no node (Node.js 18+) on PATH")
    if not os.path.isdir(s.NODE_MODULES):
        pytest.skip("tests/e2e/node_modules missing: cd tests/e2e && npm ci")
    version, static = s.frontend_root(frontend)
    if version is None:
        pytest.skip(static)
    server = s.start_server(comfy, static, s.assets_dir(),
                            test_nodes=s.TEST_NODES)
    server.frontend_version = version
    server.comfy_version = comfy_version
    try:
        assert server.pack_import_errors() == []
        yield server
        assert s.comfy_harness.pack_log_problems(server.log_text()) == []
    finally:
        server.stop()


def run_driver(server, scenario, out_dir, extra=(), timeout=900):
    cmd = [s.node_path(), s.DRIVER, "--url", server.url, "--scenario", scenario, "--out", out_dir,
           "--pack", s.comfy_harness.PACK_LINK_NAME, "--chromium", s.chromium_path(), *extra]
    proc = subprocess.run(cmd, cwd=s.HERE, capture_output=True, timeout=timeout, check=False)
    results = [json.loads(line[len("RESULT "):]) for line in proc.stdout.decode("utf-8", "replace").splitlines()
               if line.startswith("RESULT ")]
    return proc, results


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_browser(e2e_server, scenario):
    out_dir = os.environ.get("LORA_STATE_E2E_OUT") or tempfile.mkdtemp(prefix="lora_state_e2e_")
    out_dir = os.path.join(out_dir, f"{e2e_server.frontend_version}-{scenario}")
    proc, results = run_driver(e2e_server, scenario, out_dir)
    where = f"frontend {e2e_server.frontend_version} on ComfyUI {e2e_server.comfy_version}"
    if not results:
        pytest.fail(f"{where}: the driver printed no result (rc={proc.returncode}):\n"
                    f"{proc.stderr.decode('utf-8', 'replace')[-4000:]}")
    result = results[0]
    print(f"\n[{where}] {scenario}: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']} s")
    for step in result["steps"]:
        print("   ", step)
    if not result["ok"]:
        pytest.fail(
            f"{where}, scenario {scenario}: {result['error']}\n"
            f"steps done: {json.dumps(result['steps'], indent=1)}\n"
            f"console errors from the pack: {json.dumps(result['pack_errors'], indent=1)}\n"
            f"screenshot: {out_dir}\nserver log (tail):\n{e2e_server.log_text()[-3000:]}")
