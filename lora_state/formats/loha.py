"""LoHa (LyCORIS Hadamard product): delta = scale * (w1_a @ w1_b) * (w2_a @ w2_b), optional Tucker t1/t2."""
from __future__ import annotations

import torch

from .base import Adapter


class LohaAdapter(Adapter):
    kind = "loha"

    def __init__(self, w1_a, w1_b, w2_a, w2_b, t1=None, t2=None, alpha=None):
        self.w1_a, self.w1_b, self.w2_a, self.w2_b, self.t1, self.t2 = w1_a, w1_b, w2_a, w2_b, t1, t2
        rank = w1_b.shape[0]
        self.scale = float(alpha) / rank if alpha is not None else 1.0

    def natural_shape(self):
        if self.t1 is not None:
            return (self.w1_a.shape[1], self.w1_b.shape[1], *self.t1.shape[2:])
        return (self.w1_a.shape[0], *self.w1_b.shape[1:])

    def tensors(self):
        return [t for t in (self.w1_a, self.w1_b, self.w2_a, self.w2_b, self.t1, self.t2) if t is not None]

    @staticmethod
    def _factor(a, b, t):
        if t is not None:
            return torch.einsum("ijkl,jr,ip->prkl", t.float(), b.float(), a.float())
        return a.float() @ b.flatten(1).float()

    def delta(self):
        product = self._factor(self.w1_a, self.w1_b, self.t1) * self._factor(self.w2_a, self.w2_b, self.t2)
        return product.mul_(self.scale).reshape(self.natural_shape())


def read(group: dict, alpha, config_rank=None):
    if not all(k in group for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")):
        return None
    return LohaAdapter(group["hada_w1_a"], group["hada_w1_b"], group["hada_w2_a"], group["hada_w2_b"],
                       group.get("hada_t1"), group.get("hada_t2"), alpha)
