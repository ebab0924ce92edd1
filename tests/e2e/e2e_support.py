"""Shared pieces of the browser tests (test-only, standard library only).

Which frontend runs on which ComfyUI (each frontend on the ComfyUI version that pins it; the newest frontend on
the newest supported ComfyUI):

    frontend 1.27.10  on ComfyUI 0.3.64   (0.3.64's requirements.txt pins comfyui-frontend-package==1.27.10)
    frontend 1.39.14  on ComfyUI 0.14.1   (0.14.1 pins 1.39.14)
    newest on PyPI    on ComfyUI 0.14.1   (1.58.1 when this was written; what scripts/frontends.sh finds)

The frontends come from scripts/frontends.sh (a cache outside the repo); the server gets one through
``--front-end-root``. A ComfyUI checkout for a pairing is found in this order:

    COMFYUI_PATH_0_3_64 / COMFYUI_PYTHON_0_3_64   (or ..._0_14_1): a checkout of exactly that version
    COMFYUI_PATH / COMFYUI_PYTHON                 when its comfyui_version.py says that version
    (LORA_STATE_E2E_ANY_COMFYUI=1: COMFYUI_PATH whatever its version)
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
INTEGRATION = os.path.join(REPO_ROOT, "tests", "integration")
if INTEGRATION not in sys.path:
    sys.path.insert(0, INTEGRATION)

import comfy_harness  # tests/integration/comfy_harness.py (on sys.path above)

FRONTENDS_SCRIPT = os.path.join(REPO_ROOT, "scripts", "frontends.sh")
NODE_MODULES = os.path.join(HERE, "node_modules", "playwright-core")
DRIVER = os.path.join(HERE, "driver.mjs")

# (frontend version or "newest", ComfyUI version it runs on)
PAIRINGS = (("1.27.10", "0.3.64"), ("1.39.14", "0.14.1"), ("newest", "0.14.1"))


def frontend_cache():
    return os.environ.get("LORA_STATE_FRONTENDS") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "lora_state_frontends")


def chromium_path():
    """Debian's chromium (or CHROMIUM_PATH); None when absent."""
    explicit = os.environ.get("CHROMIUM_PATH")
    if explicit:
        return explicit if os.path.isfile(explicit) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def node_path():
    return shutil.which("node")


def comfy_version(path):
    try:
        with open(os.path.join(path, "comfyui_version.py")) as f:
            m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", f.read())
            return m.group(1) if m else None
    except OSError:
        return None


def comfy_for(version):
    """(path, python) of a ComfyUI checkout of `version`, or (None, reason)."""
    key = version.replace(".", "_")
    path = os.environ.get(f"COMFYUI_PATH_{key}", "").strip()
    if path:
        python = os.environ.get(f"COMFYUI_PYTHON_{key}", "").strip() or sys.executable
        return os.path.abspath(path), python
    paths = comfy_harness.comfy_paths()
    if paths is None:
        return None, (f"needs ComfyUI {version}: set COMFYUI_PATH (and COMFYUI_PYTHON), or COMFYUI_PATH_{key}; "
                      "see tests/integration/SETUP_COMFYUI.md")
    found = comfy_version(paths[0])
    if found == version or os.environ.get("LORA_STATE_E2E_ANY_COMFYUI"):
        return paths
    return None, (f"this frontend is paired with ComfyUI {version}, COMFYUI_PATH is {found}: set "
                  f"COMFYUI_PATH_{key} (+ COMFYUI_PYTHON_{key}) or LORA_STATE_E2E_ANY_COMFYUI=1")


def frontend_root(version, fetch=True):
    """(version, static dir) of a frontend; "newest" is resolved through the cache or scripts/frontends.sh.
    Returns (None, reason) when it cannot be had."""
    cache = frontend_cache()
    if version == "newest":
        marker = os.path.join(cache, "newest")
        if not os.path.isfile(marker) and fetch:
            _fetch_frontends([])
        try:
            with open(marker) as f:
                version = f.read().strip()
        except OSError:
            return None, "could not find the newest comfyui-frontend-package (run scripts/frontends.sh)"
    static = os.path.join(cache, version, "comfyui_frontend_package", "static")
    if not os.path.isfile(os.path.join(static, "index.html")) and fetch:
        _fetch_frontends([version])
    if not os.path.isfile(os.path.join(static, "index.html")):
        return None, f"frontend {version} not in {cache} (run scripts/frontends.sh)"
    return version, static


def _fetch_frontends(versions):
    env = dict(os.environ, LORA_STATE_FRONTENDS=frontend_cache())
    env.setdefault("PYTHON", sys.executable)
    subprocess.run(["bash", FRONTENDS_SCRIPT, *versions], env=env, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)


def assets_dir():
    import tempfile

    return os.environ.get("LORA_STATE_COMFY_ASSETS") or os.path.join(tempfile.gettempdir(), "lora_state_comfy_assets")


# Test-only node folders the server loads (tests/e2e/<name>).
TEST_NODES = [os.path.join(HERE, "comfyroll_standin"), os.path.join(HERE, "show_text")]

# A LoRA whose safetensors header carries trigger metadata (the integration assets' LoRAs carry none): the
# tensors of kohya_lora_a with `modelspec.trigger_phrase` and kohya's `ss_tag_frequency`. Its trigger words
# (lora_state/trigger_words.py: the explicit phrase wins) are TRIGGER_WORDS.
TRIGGER_LORA = "e2e_trigger_lora.safetensors"
TRIGGER_WORDS = "e2ezebra, striped coat"
_TRIGGER_SCRIPT = r"""
import json, os, sys
from safetensors.torch import load_file, save_file
src, dest, phrase = sys.argv[1:4]
meta = {"modelspec.trigger_phrase": phrase, "ss_output_name": "e2e_trigger_lora",
        "ss_tag_frequency": json.dumps({"10_e2ezebra horse": {"e2ezebra": 12, "striped coat": 9, "grass": 3}})}
tmp = dest + ".tmp"
save_file(load_file(src), tmp, metadata=meta)
os.replace(tmp, dest)
"""


# A LoRA of which a third of the modules match nothing in the model (renamed kohya prefixes): LoRA Reconcile must
# flag it on the graph (its status line and the row naming it), while applying the rest.
UNMATCHED_LORA = "e2e_unmatched_lora.safetensors"
_UNMATCHED_SCRIPT = r"""
import os, sys
from safetensors.torch import load_file, save_file
src, dest = sys.argv[1:3]
tensors = load_file(src)
prefixes = sorted({k.split(".", 1)[0] for k in tensors})
renamed = {p: f"lora_unet_e2e_missing_{i}" for i, p in enumerate(prefixes[::3])}
out = {renamed.get(k.split(".", 1)[0], k.split(".", 1)[0]) + "." + k.split(".", 1)[1]: v for k, v in tensors.items()}
tmp = dest + ".tmp"
save_file(out, tmp)
os.replace(tmp, dest)
"""


def add_unmatched_lora(assets, python):
    """Write UNMATCHED_LORA into the assets' loras folder (with the server's python)."""
    loras = os.path.join(assets, "models", "loras")
    dest = os.path.join(loras, UNMATCHED_LORA)
    if not os.path.isfile(dest):
        subprocess.run([python, "-c", _UNMATCHED_SCRIPT, os.path.join(loras, "kohya_lora_a.safetensors"), dest],
                       check=True, capture_output=True, timeout=300)
    return dest


def add_trigger_lora(assets, python):
    """Write TRIGGER_LORA into the assets' loras folder (with the server's python, which has safetensors)."""
    loras = os.path.join(assets, "models", "loras")
    dest = os.path.join(loras, TRIGGER_LORA)
    if not os.path.isfile(dest):
        subprocess.run([python, "-c", _TRIGGER_SCRIPT, os.path.join(loras, "kohya_lora_a.safetensors"), dest,
                        TRIGGER_WORDS], check=True, capture_output=True, timeout=300)
    return dest


def start_server(comfy, static, assets, **kwargs):
    """A ComfyServer (tests/integration/comfy_harness.py) on checkout `comfy` = (path, python), serving the
    frontend in `static`; the assets get TRIGGER_LORA and UNMATCHED_LORA."""
    old = {k: os.environ.get(k) for k in ("COMFYUI_PATH", "COMFYUI_PYTHON")}
    os.environ["COMFYUI_PATH"], os.environ["COMFYUI_PYTHON"] = comfy
    try:
        comfy_harness.build_assets(assets)
        add_trigger_lora(assets, comfy[1])
        add_unmatched_lora(assets, comfy[1])
        server = comfy_harness.ComfyServer(assets, extra_args=["--front-end-root", static], **kwargs)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    server.start()
    return server
