"""Full-weight differences: `diff` (weight), `diff_b` (bias), and LoRA bias patches (PEFT lora_B.bias)."""
from __future__ import annotations

from .base import Adapter, numel_of


class DiffAdapter(Adapter):
    kind = "diff"

    def __init__(self, diff, scale: float = 1.0):
        self.diff, self.scale = diff, scale

    def natural_shape(self):
        return tuple(self.diff.shape)

    def tensors(self):
        return [self.diff]

    def delta(self):
        return self.diff.float() * self.scale if self.scale != 1.0 else self.diff.float()

    def apply(self, weight, strength):
        return weight.add_(self.diff.reshape(weight.shape).float(), alpha=strength * self.scale)

    def row_update(self, strength, shape):
        """update(block, first, last): rows [first, last) of the weight += strength * scale * diff."""
        if not shape or self.diff.numel() != numel_of(shape):
            return None
        diff, alpha = self.diff.reshape(shape[0], -1), strength * self.scale
        return lambda block, first, last: block.add_(diff[first:last].float(), alpha=alpha)

    def change_bound(self):
        if getattr(self, "_bound", None) is None:
            self._bound = (abs(self.scale) * float(self.diff.float().abs().max()) if self.diff.numel() else 0.0, 0)
        return self._bound


def read(group: dict, alpha, config_rank=None):
    if "diff" in group:
        return DiffAdapter(group["diff"])
    return None


def read_bias(group: dict, alpha, config_rank=None):
    """Bias patches target `<module>.bias` instead of `<module>.weight`."""
    if "diff_b" in group:
        return DiffAdapter(group["diff_b"])
    if "up_bias" in group and "down" in group:
        # PEFT lora_bias: the bias of lora_B is added to the output, scaled like the weight delta.
        rank = group["down"].shape[0]
        return DiffAdapter(group["up_bias"], float(alpha) / rank if alpha is not None else 1.0)
    return None
