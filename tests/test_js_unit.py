"""Runs the JS unit tests (tests/js: vitest + jsdom over web/stack_rows.js and web/lora_state.js) from pytest.

Skipped visibly when node/npm are absent or tests/js has no node_modules (install: `npm ci --prefix tests/js`,
which scripts/test.sh does when npm exists)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

JS_TESTS = Path(__file__).resolve().parent / "js"


def test_vitest_suite_passes():
    if shutil.which("node") is None or shutil.which("npx") is None:
        pytest.skip("node/npx not installed: the JS unit tests (tests/js) did not run")
    if not (JS_TESTS / "node_modules" / "vitest").is_dir():
        pytest.skip("tests/js/node_modules missing: run `npm ci --prefix tests/js` to run the JS unit tests")
    result = subprocess.run(["npx", "--no-install", "vitest", "run"], cwd=JS_TESTS, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
