"""LoRA State for ComfyUI: LoRA Stack, LoRA Reconcile and Reset Model nodes on a shared state manager.

Where ComfyUI offers the V3 node API (`comfy_api.latest`) the nodes register through `comfy_entrypoint`; older
ComfyUI gets the same nodes as V1 classes (NODE_CLASS_MAPPINGS). LORA_STATE_NODE_API=v1 forces the V1 path.
"""
import logging
import os

try:
    import folder_paths  # noqa: F401  (exists only inside ComfyUI)
except ImportError:
    # Imported outside ComfyUI (e.g. by pytest, whose rootdir is this folder): the library is `lora_state`.
    folder_paths = None

WEB_DIRECTORY = "./web"

if folder_paths is None:
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}
    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
else:
    from . import nodes as _nodes   # installs the model-load hook and the routes

    try:
        if os.environ.get("LORA_STATE_NODE_API", "").lower() == "v1":
            raise ImportError("V1 requested")
        from .nodes.v3 import comfy_entrypoint
        __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
        logging.getLogger("lora_state").info("LoRA State: nodes registered through ComfyUI's V3 node API")
    except ImportError:
        from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
        __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
        logging.getLogger("lora_state").info("LoRA State: nodes registered through ComfyUI's V1 node API")
