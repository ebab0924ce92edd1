#!/usr/bin/env bash
# Run the real-ComfyUI integration tests against one or more ComfyUI versions, each in its own venv.
#
#   bash scripts/comfy_matrix.sh [--setup-only] SOURCE [SOURCE ...] [-- PYTEST_ARGS...]
#
# SOURCE: a ComfyUI source folder (holding main.py) or a git repository of ComfyUI (its HEAD is exported).
# For each SOURCE this sets up, once, under $LORA_STATE_MATRIX_DIR (default /tmp/lora_state_matrix):
#   comfyui-<version>/       the source (exported from git when SOURCE is a repository)
#   venv-<version>/          that version's own requirements.txt, torch pinned by constraints.txt (CPU wheel)
# then runs `pytest tests/integration` with COMFYUI_PATH/COMFYUI_PYTHON pointing at it, and prints one summary
# line per version at the end. Exit status: non-zero if any version failed.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
WORK="${LORA_STATE_MATRIX_DIR:-/tmp/lora_state_matrix}"
TORCH_PIN="$(grep -E '^torch==' constraints.txt)"
TORCHVISION_PIN="torchvision==0.28.0"    # the torchvision built for torch 2.13
# Imported by ComfyUI but not listed (requests), or by the tests (pytest, websocket-client).
TEST_PACKAGES="requests safetensors numpy pytest websocket-client"

sources=()
setup_only=0
if [ "${1:-}" = "--setup-only" ]; then setup_only=1; shift; fi
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; break; fi
    sources+=("$1"); shift
done
if [ ${#sources[@]} -eq 0 ]; then
    echo "usage: bash scripts/comfy_matrix.sh [--setup-only] SOURCE [SOURCE ...] [-- PYTEST_ARGS...]" >&2
    exit 2
fi
mkdir -p "$WORK"

# version_of, export_source (into $WORK)
source "$REPO/scripts/comfy_source.sh"

setup_venv() {   # COMFY_DIR -> prints the venv's python
    local comfy="$1" version venv stamp
    version="$(version_of "$comfy")"
    venv="$WORK/venv-$version"
    stamp="$( (cat "$comfy/requirements.txt"; echo "$TORCH_PIN $TORCHVISION_PIN $TEST_PACKAGES") | sha256sum | cut -c1-16)"
    if [ "$(cat "$venv/.lora_state_stamp" 2>/dev/null)" != "$stamp" ]; then
        echo "== setting up $venv (ComfyUI $version's requirements.txt, $TORCH_PIN)" >&2
        rm -rf "$venv"
        python3 -m venv "$venv" || return 1
        "$venv/bin/pip" install -q --upgrade pip >&2 || return 1
        "$venv/bin/pip" install -q "$TORCH_PIN" >&2 || return 1
        # Every torch line out: torch stays pinned (an unpinned torch would pull a multi-GB CUDA build).
        grep -vE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$comfy/requirements.txt" > "$venv/requirements.txt"
        "$venv/bin/pip" install -q -c constraints.txt -r "$venv/requirements.txt" \
            $TEST_PACKAGES "$TORCHVISION_PIN" >&2 || return 1
        # torchvision 0.28.0 from the index is a CUDA build: its fake-op registrations crash without CUDA ops.
        local meta
        meta="$("$venv/bin/python" -c 'import importlib.util as u; print(u.find_spec("torchvision").submodule_search_locations[0])')/_meta_registrations.py"
        sed -i 's/^@torch\.library\.register_fake(/@(torch.library.register_fake if torchvision.extension._has_ops() else (lambda *a, **k: (lambda f: f)))(/' "$meta"
        echo "$stamp" > "$venv/.lora_state_stamp"
    fi
    echo "$venv/bin/python"
}

# The whole integration suite unless PYTEST_ARGS name tests themselves.
targets=(tests/integration)
for arg in "$@"; do case "$arg" in tests/*) targets=() ;; esac; done

summary=()
status=0
for src in "${sources[@]}"; do
    comfy="$(export_source "$src")" || { summary+=("$src: could not export the source"); status=1; continue; }
    version="$(version_of "$comfy")"
    python="$(setup_venv "$comfy")" || { summary+=("$version: venv setup failed"); status=1; continue; }
    if [ $setup_only -eq 1 ]; then summary+=("ComfyUI $version: ready, COMFYUI_PATH=$comfy COMFYUI_PYTHON=$python"); continue; fi
    echo "== ComfyUI $version ($comfy) with $python"
    log="$WORK/pytest-$version.log"
    COMFYUI_PATH="$comfy" COMFYUI_PYTHON="$python" \
        LORA_STATE_COMFY_ASSETS="${LORA_STATE_COMFY_ASSETS:-$WORK/assets-$version}" \
        "$python" -m pytest -p no:cacheprovider -rs "${targets[@]}" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || status=1
    summary+=("ComfyUI $version: $(grep -E '[0-9]+ (passed|failed|errors?|skipped)' "$log" | tail -1 | tr -d '=') (rc $rc, log $log)")
done
echo
echo "== matrix summary"
printf '%s\n' "${summary[@]}"
exit $status
