#!/usr/bin/env bash
# Regenerate the README screenshots: docs/screenshots/stack.png (a LoRA Stack with rows), status.png (LoRA Reconcile
# with its status after a run) and sidebar.png (the LoRA State sidebar with the ledger).
#
#   bash scripts/screenshots.sh [FRONTEND]      FRONTEND: newest (default), 1.39.14, 1.27.10, or any version
#
# Starts a CPU ComfyUI server with this pack and the test assets (tests/e2e/serve.py: the same ComfyUI and frontend
# lookup as the browser tests, see tests/e2e/README.md), builds the graph in headless chromium by clicking
# (tests/e2e/driver.mjs, scenario "screenshots"), queues it once, saves element screenshots, stops the server.
# Needs: COMFYUI_PATH/COMFYUI_PYTHON (or COMFYUI_PATH_0_14_1/...), chromium, node, tests/e2e/node_modules (npm ci).
set -euo pipefail
cd "$(dirname "$0")/.."
FRONTEND="${1:-newest}"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
OUT_DIR="${SCREENSHOTS_DIR:-docs/screenshots}"
log="$(mktemp)"
"$PY" tests/e2e/serve.py "$FRONTEND" >"$log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true      # serve.py stops its ComfyUI server on SIGTERM
  wait "$pid" 2>/dev/null || true
  rm -f "$log"
}
trap cleanup EXIT
for _ in $(seq 1 480); do
  grep -q '^URL ' "$log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.5
done
url="$(awk '/^URL /{print $2}' "$log")"
[ -n "$url" ] || { echo "server did not start:" >&2; cat "$log" >&2; exit 1; }
echo "$(cat "$log")"
node tests/e2e/driver.mjs --url "$url" --scenario screenshots --shots "$OUT_DIR" \
  --out "${TMPDIR:-/tmp}/lora_state_screenshots" | sed 's/^RESULT //'
ls -l "$OUT_DIR"
