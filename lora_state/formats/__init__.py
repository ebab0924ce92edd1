"""Adapter readers, one module per adapter type (like ComfyUI's comfy/weight_adapter and PEFT's tuners)."""
from . import full, loha, lokr, lora
from .base import Adapter, fits

# Tried in order; the first reader that recognises a key group wins for that parameter.
WEIGHT_READERS = (lora.read, loha.read, lokr.read, full.read)
BIAS_READERS = (full.read_bias,)

__all__ = ["Adapter", "fits", "WEIGHT_READERS", "BIAS_READERS"]
