"""ComfyUI side of LoRA State: nodes, the ComfyUI host, the model-load hook and the HTTP routes."""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .runtime import install_load_hook

install_load_hook()

try:
    from server import PromptServer
except ImportError:      # imported outside a running server (e.g. a script using comfy as a library)
    PromptServer = None
if PromptServer is not None and getattr(PromptServer, "instance", None) is not None:
    from .routes import register
    register(PromptServer.instance)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
