#!/usr/bin/env bash
# Fetch the ComfyUI frontends the browser tests run against into a cache OUTSIDE the repo, and print
# one line per frontend: "<version> <static dir>" (the dir to pass to ComfyUI's --front-end-root).
#
#   bash scripts/frontends.sh                # 1.27.10, 1.39.14 and the newest comfyui-frontend-package on PyPI
#   bash scripts/frontends.sh 1.30.2 ...     # just these versions
#
# Environment:
#   LORA_STATE_FRONTENDS  cache dir (default: ${XDG_CACHE_HOME:-$HOME/.cache}/lora_state_frontends)
#   PYTHON                a python with pip (default: python3)
#
# Each version is `pip download --no-deps comfyui-frontend-package==<v>`, unzipped to <cache>/<v>/; the static
# files are <cache>/<v>/comfyui_frontend_package/static. A version already unpacked is not fetched again.
set -euo pipefail

CACHE="${LORA_STATE_FRONTENDS:-${XDG_CACHE_HOME:-$HOME/.cache}/lora_state_frontends}"
PY="${PYTHON:-python3}"
mkdir -p "$CACHE"

newest() {
  # `pip index versions` prints "comfyui-frontend-package (1.58.1)" first.
  "$PY" -m pip index versions comfyui-frontend-package 2>/dev/null \
    | sed -n 's/^comfyui-frontend-package (\([0-9.]*\)).*/\1/p' | head -n1
}

if [ "$#" -gt 0 ]; then
  versions=("$@")
else
  latest="$(newest)"
  if [ -z "$latest" ]; then
    echo "could not ask PyPI for the newest comfyui-frontend-package" >&2
    exit 1
  fi
  versions=(1.27.10 1.39.14 "$latest")
fi

for v in "${versions[@]}"; do
  dest="$CACHE/$v"
  static="$dest/comfyui_frontend_package/static"
  if [ ! -f "$static/index.html" ]; then
    tmp="$(mktemp -d "$CACHE/.dl-$v.XXXXXX")"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "comfyui-frontend-package==$v" >&2
    whl="$(ls "$tmp"/comfyui_frontend_package-*.whl)"
    "$PY" -m zipfile -e "$whl" "$tmp/unpacked"
    rm -rf "$dest"
    mv "$tmp/unpacked" "$dest"
    rm -rf "$tmp"
  fi
  [ -f "$static/index.html" ] || { echo "no index.html in $static" >&2; exit 1; }
  echo "$v $static"
done
# the newest version also goes to <cache>/newest, so tests can find it without asking PyPI
if [ "$#" -eq 0 ]; then
  echo "$latest" > "$CACHE/newest"
fi
