"""LoRA / LoCon (up, down, optional Tucker mid, alpha) and DoRA (kohya dora_scale, PEFT lora_magnitude_vector).

delta = scale * up @ down, scale = alpha / rank (1.0 without alpha), reshaped to the parameter (Linear or Conv).
DoRA rescales W + delta by magnitude / ||W + delta|| along one axis and is therefore not linear in strength.
"""
from __future__ import annotations

import math

import torch

from ..drift import product_bound
from .base import Adapter, numel_of


class LoraAdapter(Adapter):
    kind = "lora"

    def __init__(self, up, down, mid=None, alpha=None, magnitude=None, magnitude_on_output=None):
        self.up, self.down, self.mid, self.magnitude = up, down, mid, magnitude
        # PEFT's lora_magnitude_vector is always per output channel; a kohya/LyCORIS dora_scale is per output
        # channel when shaped (out, 1, ...) and per input channel when shaped (1, in, ...).
        self.magnitude_on_output = magnitude_on_output
        rank = down.shape[0]
        self.scale = float(alpha) / rank if alpha is not None else 1.0
        self.linear = magnitude is None
        if magnitude is not None:
            self.kind = "dora"

    def natural_shape(self):
        if self.mid is not None:
            return (self.up.shape[0], self.down.shape[1], *self.mid.shape[2:])
        return (self.up.shape[0], *self.down.shape[1:])

    def tensors(self):
        return [t for t in (self.up, self.down, self.mid, self.magnitude) if t is not None]

    @property
    def flops(self):
        return 2 * self.down.shape[0] * self.up.shape[0] * math.prod(self.down.shape[1:])

    def delta(self):
        up = self.up.flatten(1).float()
        down = self.down.flatten(1).float()
        if self.mid is None:
            return (up @ down).mul_(self.scale).reshape(self.natural_shape())
        mid = self.mid.float()
        return torch.einsum("oa,abhw,bi->oihw", up, mid, down).mul_(self.scale)

    def apply(self, weight, strength):
        if self.linear:
            if self.mid is None and weight.is_contiguous():
                # addmm_ fuses the rank-r product into the accumulation: one pass over the weight.
                flat = weight.view(weight.shape[0], -1)
                flat.addmm_(self.up.flatten(1).float(), self.down.flatten(1).float(), alpha=strength * self.scale)
                return weight
            return weight.add_(self.delta().reshape(weight.shape), alpha=strength)
        return self._apply_dora(weight, strength)

    def row_update(self, strength, shape):
        """FactorRows: rows [first, last) of the weight += strength * delta, as one addmm_; None for Tucker, DoRA,
        or a weight whose rows are not the LoRA's output channels."""
        if not self.linear or self.mid is not None:
            return None
        if not shape or self.up.shape[0] != shape[0] or self.up.shape[0] * self.down[0].numel() != numel_of(shape):
            return None
        return FactorRows(self.up, self.down, strength * self.scale)

    def change_bound(self):
        """(limit, rank) for plain LoRA (None for Tucker and DoRA): see drift.product_bound."""
        if not self.linear or self.mid is not None:
            return None
        if getattr(self, "_bound", None) is None:
            self._bound = (abs(self.scale) * product_bound(self.up, self.down), int(self.down.shape[0]))
        return self._bound

    def error_gain(self, weight, strength):
        if self.linear:
            return 1.0
        # W' = W + s * (m * x / ||x|| - W), x = W + delta. d(x/||x||) has spectral norm 1/||x||, and a max-norm
        # error e is at most sqrt(n) * e in 2-norm over a group of n elements.
        changed = weight + self.delta().reshape(weight.shape)
        magnitude = self.magnitude.float().abs().reshape(-1)
        on_output = self.magnitude_on_output
        if on_output is None:
            on_output = self.magnitude.shape[0] == weight.shape[0] and self.magnitude.numel() == weight.shape[0]
        groups = changed.reshape(weight.shape[0], -1) if on_output else \
            changed.transpose(0, 1).reshape(weight.shape[1], -1)
        norms = groups.norm(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
        ratio = float((magnitude * groups.shape[1] ** 0.5 / norms).max())
        return abs(1.0 - strength) + abs(strength) * ratio

    def _apply_dora(self, weight, strength):
        changed = weight + self.delta().reshape(weight.shape)
        magnitude = self.magnitude.float()
        out_features = weight.shape[0]
        on_output = self.magnitude_on_output
        if on_output is None:
            on_output = magnitude.shape[0] == out_features and magnitude.numel() == out_features
        if on_output:
            norm = changed.reshape(out_features, -1).norm(dim=1)
            shape = (out_features,) + (1,) * (weight.dim() - 1)
            factor = magnitude.reshape(shape) / norm.reshape(shape)
        else:
            # kohya/LyCORIS dora_scale of shape (1, in, ...): one norm per input column.
            in_features = weight.shape[1]
            norm = changed.transpose(0, 1).reshape(in_features, -1).norm(dim=1)
            shape = (1, in_features) + (1,) * (weight.dim() - 2)
            factor = magnitude.reshape(shape) / norm.reshape(shape)
        changed.mul_(factor)
        if strength == 1.0:
            return weight.copy_(changed)
        return weight.add_(changed.sub_(weight), alpha=strength)


def read(group: dict, alpha, config_rank=None):
    if "up" not in group or "down" not in group:
        return None
    if "magnitude" in group:
        return LoraAdapter(group["up"], group["down"], group.get("mid"), alpha, group["magnitude"], True)
    return LoraAdapter(group["up"], group["down"], group.get("mid"), alpha, group.get("dora_scale"))


class FactorRows:
    """update(block, first, last): rows [first, last) of alpha * (up @ down) added to an fp32 block in one fused
    addmm_ (no full-size product). `factors`: (up, down, alpha) as 2-D factors in their own dtype, for the
    applier's step in the weight's own dtype (applier.native_step); the fp32 copies are made at the first
    block (that step, and the applier's check whether a key splits by rows, never need them)."""

    __slots__ = ("factors", "alpha", "device", "min_block_rows", "_fp32")

    def __init__(self, up, down, alpha, device=None, min_block_rows=1):
        self.factors = (up.flatten(1), down.flatten(1), alpha)
        self.alpha, self.device, self.min_block_rows = alpha, device, min_block_rows
        self._fp32 = None

    def __call__(self, block, first, last):
        if self._fp32 is None:
            self._fp32 = tuple(t.to(device=self.device, dtype=torch.float32) for t in self.factors[:2])
        up, down = self._fp32
        block.addmm_(up[first:last], down, alpha=self.alpha)
