"""LoKr (LyCORIS Kronecker product): delta = scale * kron(w1, w2), each factor whole or as a_@b_ (w2 maybe Tucker).

As in LyCORIS and ComfyUI, scale = alpha / rank of the factorised part, and 1.0 when both factors are whole.
Files from PEFT (rank known from their config) use PEFT's rule instead: scale = alpha / r always.
"""
from __future__ import annotations

import torch

from .base import Adapter


class LokrAdapter(Adapter):
    kind = "lokr"

    def __init__(self, w1=None, w1_a=None, w1_b=None, w2=None, w2_a=None, w2_b=None, t2=None, alpha=None,
                 config_rank=None):
        self.parts = dict(w1=w1, w1_a=w1_a, w1_b=w1_b, w2=w2, w2_a=w2_a, w2_b=w2_b, t2=t2)
        rank = config_rank
        if rank is None and w1 is None:
            rank = w1_b.shape[0]
        if config_rank is None and w2 is None:
            rank = w2_b.shape[0]
        self.scale = float(alpha) / rank if (alpha is not None and rank is not None) else 1.0

    def tensors(self):
        return [t for t in self.parts.values() if t is not None]

    def _factors(self):
        p = self.parts
        w1 = p["w1"].float() if p["w1"] is not None else p["w1_a"].float() @ p["w1_b"].float()
        if p["w2"] is not None:
            w2 = p["w2"].float()
        elif p["t2"] is not None:
            w2 = torch.einsum("ijkl,jr,ip->prkl", p["t2"].float(), p["w2_b"].float(), p["w2_a"].float())
        else:
            w2 = p["w2_a"].float() @ p["w2_b"].flatten(1).float()
            if p["w2_b"].dim() == 4:
                w2 = w2.reshape(w2.shape[0], *p["w2_b"].shape[1:])
        if w2.dim() == 4 and w1.dim() == 2:
            w1 = w1[:, :, None, None]
        return w1, w2

    def natural_shape(self):
        w1_shape = self.parts["w1"].shape if self.parts["w1"] is not None else (
            self.parts["w1_a"].shape[0], self.parts["w1_b"].shape[1])
        p = self.parts
        if p["w2"] is not None:
            w2_shape = tuple(p["w2"].shape)
        elif p["t2"] is not None:
            w2_shape = (p["w2_a"].shape[1], p["w2_b"].shape[1], *p["t2"].shape[2:])
        else:
            w2_shape = (p["w2_a"].shape[0], *p["w2_b"].shape[1:])
        w1_shape = tuple(w1_shape) + (1,) * (len(w2_shape) - len(w1_shape))
        return tuple(a * b for a, b in zip(w1_shape, w2_shape))

    def delta(self):
        w1, w2 = self._factors()
        return torch.kron(w1, w2).mul_(self.scale).reshape(self.natural_shape())


def read(group: dict, alpha, config_rank=None):
    has_w1 = "lokr_w1" in group or ("lokr_w1_a" in group and "lokr_w1_b" in group)
    has_w2 = "lokr_w2" in group or ("lokr_w2_a" in group and "lokr_w2_b" in group)
    if not (has_w1 and has_w2):
        return None
    return LokrAdapter(group.get("lokr_w1"), group.get("lokr_w1_a"), group.get("lokr_w1_b"), group.get("lokr_w2"),
                       group.get("lokr_w2_a"), group.get("lokr_w2_b"), group.get("lokr_t2"), alpha, config_rank)
