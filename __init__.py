"""LoRA State for ComfyUI: LoRA Stack, LoRA Reconcile and Reset Model nodes on a shared state manager."""
try:
    import folder_paths  # noqa: F401  (exists only inside ComfyUI)
except ImportError:
    # Imported outside ComfyUI (e.g. by pytest, whose rootdir is this folder): the library is `lora_state`.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
