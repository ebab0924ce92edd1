"""Fixtures for the real-ComfyUI integration tests.

Without COMFYUI_PATH every test in this folder is reported as SKIPPED (see SETUP_COMFYUI.md).

Environment:
    COMFYUI_PATH             ComfyUI checkout (required for these tests)
    COMFYUI_PYTHON           Python with ComfyUI's requirements (default: the interpreter running pytest)
    LORA_STATE_COMFY_ASSETS  where the built checkpoints/LoRAs are kept between runs
                             (default: <system temp>/lora_state_comfy_assets; rebuilt when build_assets.py changes)
"""

import os
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import comfy_harness


def pytest_collection_modifyitems(config, items):
    """Mark every test of this folder as skipped, visibly, when COMFYUI_PATH is unset."""
    if comfy_harness.comfy_paths() is not None:
        return
    marker = pytest.mark.skip(reason=comfy_harness.SKIP_REASON)
    for item in items:
        if str(item.fspath).startswith(HERE + os.sep):
            item.add_marker(marker)


@pytest.fixture(scope="session")
def comfy_env():
    """(COMFYUI_PATH, COMFYUI_PYTHON); skips the test when COMFYUI_PATH is unset."""
    paths = comfy_harness.comfy_paths()
    if paths is None:
        pytest.skip(comfy_harness.SKIP_REASON)
    return paths


@pytest.fixture(scope="session")
def comfy_assets(comfy_env):
    """Folder with models/checkpoints and models/loras (built once, reused while build_assets.py is unchanged).

    Returns the folder path; its manifest is ``comfy_assets_manifest``.
    """
    dest = os.environ.get("LORA_STATE_COMFY_ASSETS") or os.path.join(tempfile.gettempdir(), "lora_state_comfy_assets")
    comfy_harness.build_assets(dest)
    return dest


@pytest.fixture(scope="session")
def comfy_assets_manifest(comfy_assets):
    import json

    with open(os.path.join(comfy_assets, "manifest.json")) as f:
        return json.load(f)


@pytest.fixture
def comfy_server(comfy_assets):
    """Factory: ``server = comfy_server(**kwargs)`` starts a FRESH ComfyServer (kwargs go to ComfyServer);
    every server started through it is stopped when the test ends."""
    started = []

    def start(**kwargs):
        srv = comfy_harness.ComfyServer(comfy_assets, **kwargs)
        started.append(srv)
        srv.start()
        return srv

    yield start
    for srv in reversed(started):
        srv.stop()


# -- the two servers most tests compare: "ours" runs LoRA State's nodes, "reference" only native ones ----------
_reference_prompts = iter(range(1_000_000))


@pytest.fixture(scope="module")
def ours(comfy_assets):
    """A server with the pack; at the end, its log must hold nothing the pack caused (tracebacks, warnings)."""
    with comfy_harness.ComfyServer(comfy_assets) as server:
        assert server.pack_import_errors() == []
        yield server
        assert comfy_harness.pack_log_problems(server.log_text(), allow=getattr(server, "allowed_log", ())) == []


@pytest.fixture(scope="module")
def reference(comfy_assets):
    """A server that only ever runs native nodes: it stands for a fresh server (native LoRA is history-free)."""
    with comfy_harness.ComfyServer(comfy_assets) as server:
        yield server


@pytest.fixture(scope="module")
def native(reference):
    """native(loras, ckpt, seed) -> the latent of the native LoraLoader chain on the reference server (cached)."""
    cache = {}

    def get(loras=(), ckpt="tiny_a.safetensors", seed=1234):
        key = (tuple(loras), ckpt, seed)
        if key not in cache:
            prompt = comfy_harness.native_prompt(ckpt, loras=list(loras), seed=seed,
                                                 prefix=f"ref{next(_reference_prompts)}")
            cache[key] = comfy_harness.latent(reference, prompt)
        return cache[key]
    return get
