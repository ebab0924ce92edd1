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
    from . import nodes as _nodes  # noqa: F401  (installs the model-load hook and the routes)

    api, why = "v3", ""
    if os.environ.get("LORA_STATE_NODE_API", "").lower() == "v1":
        api, why = "v1", "LORA_STATE_NODE_API=v1"
    else:
        try:
            from .nodes.v3 import comfy_entrypoint
        except Exception as exc:   # no V3 API, or one whose names moved: the V1 nodes are the same nodes
            api, why = "v1", f"V3 node API unavailable: {type(exc).__name__}: {exc}"
    if api == "v3":
        __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
        logging.getLogger("lora_state").info("LoRA State: nodes registered through ComfyUI's V3 node API")
    else:
        from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
        __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
        logging.getLogger("lora_state").info("LoRA State: nodes registered through ComfyUI's V1 node API (%s)", why)
