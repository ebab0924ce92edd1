#!/usr/bin/env bash
# Set up .venv (torch pinned by constraints.txt: a CPU wheel, never an unpinned CUDA download) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -c constraints.txt torch -e ".[test]"
# The JS unit tests (tests/js, vitest + jsdom) run inside pytest when their dependencies are installed.
if command -v npm >/dev/null; then npm ci --prefix tests/js --no-audit --no-fund --loglevel=error >/dev/null; fi
exec .venv/bin/python -m pytest "$@"
