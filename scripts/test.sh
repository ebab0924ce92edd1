#!/usr/bin/env bash
# Set up .venv (torch pinned by constraints.txt: a CPU wheel, never an unpinned CUDA download) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -c constraints.txt torch -e ".[test]"
exec .venv/bin/python -m pytest "$@"
