"""Errors against the exact oracle, in ulps of the weight's dtype.

- key ulps: |live - oracle| / ulp at the key's largest magnitude (LoRA State's drift unit),
- element ulps: |live - oracle| / ulp at each element's own magnitude (stricter, for information).
"""
from __future__ import annotations

import torch

from lora_state.applier import ulp_at_max
from lora_state.files import LoraFileCache
from lora_state.manager import LoraStateManager

from .workload import MANTISSA_BITS, build_module, module_weights


def element_ulps(reference: torch.Tensor) -> torch.Tensor:
    """One ulp of the reference's dtype at each element's own magnitude (subnormal spacing below tiny)."""
    bits = MANTISSA_BITS[reference.dtype]
    finfo = torch.finfo(reference.dtype)
    magnitude = reference.float().abs()
    _, exponent = torch.frexp(magnitude)
    ulps = torch.ldexp(torch.ones_like(magnitude), exponent - 1 - bits)
    return ulps.clamp_min_(finfo.tiny * 2.0 ** -bits)


_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def compare(live: dict[str, torch.Tensor], oracle: dict[str, torch.Tensor]) -> dict:
    """Bitwise identity and the two ulp measures of live against the oracle, over every key."""
    identical = True
    key_max = key_sum = elem_max = elem_sum = 0.0
    count = differing_keys = 0
    with torch.no_grad():
        for key, expected in oracle.items():
            actual = live[key]
            count += expected.numel()
            if torch.equal(actual.view(_INT_VIEW[actual.dtype]), expected.view(_INT_VIEW[expected.dtype])):
                continue
            identical = False
            differing_keys += 1
            diff = (actual.float() - expected.float()).abs_()
            unit = ulp_at_max(expected)
            key_max = max(key_max, float(diff.max()) / unit)
            key_sum += float(diff.sum(dtype=torch.float64)) / unit
            diff.div_(element_ulps(expected))
            elem_max = max(elem_max, float(diff.max()))
            elem_sum += float(diff.sum(dtype=torch.float64))
    return {"bit_identical": identical, "keys_differing": differing_keys,
            "key_ulps_max": key_max, "key_ulps_mean": key_sum / max(count, 1),
            "element_ulps_max": elem_max, "element_ulps_mean": elem_sum / max(count, 1)}


class Oracles:
    """Exact results: a fresh clean copy reconciled in exact mode to the stack (LoRA State's exact claim)."""

    def __init__(self, clean: dict, cache: LoraFileCache, keep: int = 2):
        self.clean = clean
        self.cache = cache
        self.keep = keep
        self.store: dict[tuple, dict] = {}

    def get(self, stack) -> dict:
        signature = tuple(stack)
        if signature not in self.store:
            if len(self.store) >= self.keep:
                self.store.pop(next(iter(self.store)))
            module = build_module(self.clean)
            LoraStateManager(module, mode="exact", file_cache=self.cache).reconcile(stack)
            self.store[signature] = module_weights(module, self.clean)
        return self.store[signature]
