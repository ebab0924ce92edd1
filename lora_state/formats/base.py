"""What every adapter reader produces: a patch for one parameter that maps a weight (fp32) to a new weight."""
from __future__ import annotations

import torch


class Adapter:
    """One file's patch for one parameter.

    ``apply(weight, strength)`` updates an fp32 weight and returns it (in place where possible). Linear adapters
    add ``strength * delta``, so their contributions commute and can be undone by a negative strength: only they
    may take the delta path. Non-linear ones (DoRA) depend on the weight they are applied to.
    """

    kind = "adapter"
    linear = True

    def natural_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def delta(self) -> torch.Tensor:
        """The fp32 weight change at strength 1, in natural_shape."""
        raise NotImplementedError

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        return weight.add_(self.delta().reshape(weight.shape), alpha=strength)

    def tensors(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def error_gain(self, weight: torch.Tensor, strength: float) -> float:
        """Bound of max|f(w + e) - f(w)| / max|e|: how much an error already in the weight can grow."""
        return 1.0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @property
    def flops(self) -> int:
        """Multiply-adds x2 needed to form the delta (used by the planner's cost model and the benchmark)."""
        return 2 * numel_of(self.natural_shape())


def numel_of(shape) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count


def fits(natural: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """A delta fits a parameter if the shapes agree up to trailing 1x1 kernel dims (Linear vs 1x1 Conv), or if
    it is the parameter flattened to (out, in*kh*kw), as PEFT and LyCORIS store conv factors."""
    def squeeze(shape):
        shape = tuple(int(s) for s in shape)
        while len(shape) > 2 and shape[-1] == 1:
            shape = shape[:-1]
        return shape
    natural, target = squeeze(natural), squeeze(target)
    if natural == target:
        return True
    return len(natural) == 2 and len(target) > 2 and natural[0] == target[0] and numel_of(natural) == numel_of(target)


def fp32(tensor: torch.Tensor, device) -> torch.Tensor:
    return tensor.to(device=device, dtype=torch.float32)
