"""Hosts: where the weights live and how LoRA math is done on them.

The manager never touches a model directly; it asks its host for live parameters, for key resolution and for the
math (combine) and rounding. A plain ``torch.nn.Module`` uses ``TorchModuleHost``; the ComfyUI pack supplies a
host that reuses ComfyUI's own key maps, adapters, ``calculate_weight`` and rounding.
"""
from .base import Host
from .torch_module import TorchModuleHost

__all__ = ["Host", "TorchModuleHost"]
