"""The real-ComfyUI harness of the integration tests (tests/integration/comfy_harness.py), imported from the
checkout this package sits in: the ComfyUI benchmark runs from a checkout of the repository, not from an installed
package. The harness starts `python main.py --cpu` from $COMFYUI_PATH with $COMFYUI_PYTHON, on a free loopback
port, with this repository linked into its custom_nodes."""
from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HARNESS_DIR = os.path.join(REPO, "tests", "integration")
if not os.path.isfile(os.path.join(HARNESS_DIR, "comfy_harness.py")):
    raise ImportError(f"the ComfyUI benchmark needs a checkout of the repository: {HARNESS_DIR}/comfy_harness.py "
                      f"is missing")
if HARNESS_DIR not in sys.path:
    sys.path.insert(0, HARNESS_DIR)

from comfy_harness import (
    SKIP_REASON,
    ComfyServer,
    attach_model_clip_node,
    comfy_paths,
    native_prompt,
)
from comfy_harness import build_assets as build_test_assets

__all__ = [
    "HARNESS_DIR",
    "SKIP_REASON",
    "ComfyServer",
    "attach_model_clip_node",
    "build_test_assets",
    "comfy_paths",
    "native_prompt",
]
