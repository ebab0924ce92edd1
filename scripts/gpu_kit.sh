#!/usr/bin/env bash
# Prepare, here, what an offline GPU machine needs to run the real-ComfyUI tests and benchmark from this checkout:
# an image with Python 3.12, CUDA torch and the common scientific packages, but no package index and no ComfyUI.
#
#   bash scripts/gpu_kit.sh SOURCE [SOURCE ...]     # ComfyUI folders or git repositories, as comfy_matrix.sh takes
#
# Writes (both git-ignored through .git/info/exclude; about 26 MB for two versions):
#   .whl/      wheels of ComfyUI's requirements such images lack, pinned to versions of early 2026 (comfy-aimdo
#              0.2.1 and comfy-kitchen 0.2.7 match 0.14.1; the newest comfy-kitchen is a 68 MB wheel)
#   .device/   comfyui-<version>.tgz per SOURCE; site_extra/av (PyAV's 35 MB wheel stood in by empty classes:
#              ComfyUI imports it at boot for video nodes these runs never execute); empty_frontend/ (for
#              --front-end-root: the frontend package is not needed); setup.sh
# There, in the repository root, each command begins with `source .device/setup.sh`: it installs the wheels into
# /tmp/site, unpacks every version into /tmp/comfy/comfyui-<version>, and exports PYTHONPATH, COMFYUI_PYTHON,
# LORA_STATE_COMFY_ASSETS and FRONTEND_ARGS. Then, for example (COMFYUI_ARGS: FRONTEND_ARGS, plus
# `--fast dynamic_vram` for Dynamic VRAM on 0.14):
#   COMFYUI_PATH=/tmp/comfy/comfyui-0.14.1 COMFYUI_ARGS="$FRONTEND_ARGS" python3 -m pytest tests/integration/...
#   COMFYUI_PATH=/tmp/comfy/comfyui-0.14.1 COMFYUI_ARGS="$FRONTEND_ARGS" python3 -m lora_state_bench.comfyui \
#       --size sdxl --threads 16 ...
# Groups run in parallel with `cmd > log 2>&1 &` and waited for by their PIDs: a bare `wait` in a script whose
# output goes through `exec > >(tee ...)` also waits for the tee, which never ends (a lost device call).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: bash scripts/gpu_kit.sh SOURCE [SOURCE ...]" >&2; exit 2; }
for path in /.whl/ /.device/; do grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude; done
mkdir -p .whl .device/site_extra/av/subtitles .device/empty_frontend
touch .device/empty_frontend/index.html

platforms=""
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms="$platforms --platform ${p}_x86_64"
done
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
    -d .whl torchsde==0.2.6 trampoline==0.1.2 alembic==1.20.1 mako==1.4.3 sqlalchemy==2.1.9 greenlet==3.5.6 \
    comfy-kitchen==0.2.7 comfy-aimdo==0.2.1 spandrel==0.4.2 kornia==0.9.0 kornia-rs==0.2.0 pydantic==2.14.4 \
    pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 annotated-types==0.8.0 \
    typing-inspection==0.4.5 websocket-client==1.9.2

stub='def __getattr__(name):
    return type(name, (), {})'
printf 'from . import container, subtitles  # noqa: F401\n\n__version__ = "14.2.0"   # the version ComfyUI asks for\n\n\n%s\n' \
    "$stub" > .device/site_extra/av/__init__.py
printf '%s\n' "$stub" > .device/site_extra/av/container.py
printf '%s\n' "$stub" > .device/site_extra/av/subtitles/stream.py
printf 'from . import stream  # noqa: F401\n\n\n%s\n' "$stub" > .device/site_extra/av/subtitles/__init__.py

WORK="$(mktemp -d)"
source scripts/comfy_source.sh
for src in "$@"; do
    folder="$(export_source "$src")"
    version="$(version_of "$folder")"
    tar -czf ".device/comfyui-$version.tgz" --exclude=tests-unit --exclude=tests -C "$(dirname "$folder")" \
        --transform "s|^$(basename "$folder")|comfyui-$version|" "$(basename "$folder")"
    echo "ComfyUI $version -> .device/comfyui-$version.tgz"
done

cat > .device/setup.sh <<'EOF'
# source .device/setup.sh   (on the GPU machine, in the repository root; see scripts/gpu_kit.sh)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/.device/site_extra PYTHONUNBUFFERED=1
mkdir -p /tmp/comfy
for archive in .device/comfyui-*.tgz; do
    name=$(basename "$archive" .tgz)
    [ -d "/tmp/comfy/$name" ] || tar -xzf "$archive" -C /tmp/comfy
done
export COMFYUI_PYTHON=$(command -v python3) LORA_STATE_COMFY_ASSETS=/tmp/lora_state_comfy_assets
export FRONTEND_ARGS="--front-end-root $PWD/.device/empty_frontend"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__)"
EOF
rm -rf "$WORK"
du -sh .whl .device
