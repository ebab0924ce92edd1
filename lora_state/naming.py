"""Key naming: split a file's keys into (module prefix, part) groups and turn groups into adapters.

Three naming schemes reach the same groups:
- kohya / LyCORIS: ``lora_unet_<path_with_underscores>.lora_down.weight`` (``lora_te_``, ``lora_te1_``, ...),
- PEFT / diffusers: ``[unet.|transformer.|text_encoder.|base_model.model.]<path>.lora_A.weight``,
- bare: ``<path>.lora_down.weight``.
Which module a prefix names is the host's business (``resolve``): a plain module matches its own parameter
names, ComfyUI supplies its own key maps.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch

from .files import LoraFile, metadata_json
from .formats import BIAS_READERS, WEIGHT_READERS, Adapter, fits

# Longest suffixes first so ".lora_B.bias" wins over ".bias"-like endings.
PART_SUFFIXES = {
    ".lora_up.weight": "up", ".lora_down.weight": "down", ".lora_mid.weight": "mid",
    ".lora_B.weight": "up", ".lora_A.weight": "down", ".lora_B.bias": "up_bias",
    ".lora.up.weight": "up", ".lora.down.weight": "down",
    ".lora_magnitude_vector.weight": "magnitude", ".lora_magnitude_vector": "magnitude", ".dora_scale": "dora_scale",
    ".hada_w1_a": "hada_w1_a", ".hada_w1_b": "hada_w1_b", ".hada_w2_a": "hada_w2_a", ".hada_w2_b": "hada_w2_b",
    ".hada_t1": "hada_t1", ".hada_t2": "hada_t2",
    ".lokr_w1": "lokr_w1", ".lokr_w1_a": "lokr_w1_a", ".lokr_w1_b": "lokr_w1_b",
    ".lokr_w2": "lokr_w2", ".lokr_w2_a": "lokr_w2_a", ".lokr_w2_b": "lokr_w2_b", ".lokr_t2": "lokr_t2",
    ".diff_b": "diff_b", ".diff": "diff", ".alpha": "alpha",
}
_SUFFIX_ORDER = sorted(PART_SUFFIXES, key=len, reverse=True)

# Metadata keys under which the PEFT config (rank/alpha) is stored as JSON: diffusers' key, and the text of the
# adapter_config.json that PEFT's save_pretrained writes beside the weights (files.py puts it under the second).
PEFT_CONFIG_METADATA_KEYS = ("lora_adapter_metadata", "adapter_config")
# Prefixes PEFT/diffusers put before module paths.
PEFT_PREFIXES = ("base_model.model.", "unet.", "transformer.", "text_encoder_2.", "text_encoder.", "model.")


def strip_peft_prefixes(name: str) -> str:
    while True:
        stripped = next((name[len(p):] for p in PEFT_PREFIXES if name.startswith(p)), None)
        if stripped is None:
            return name
        name = stripped


def split_key(key: str) -> tuple[str, str] | None:
    for suffix in _SUFFIX_ORDER:
        if key.endswith(suffix):
            return key[: -len(suffix)], PART_SUFFIXES[suffix]
    return None


def group_keys(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in tensors.items():
        split = split_key(key)
        if split is None:
            unknown.append(key)
            continue
        prefix, part = split
        groups.setdefault(prefix, {})[part] = tensor
    return groups, unknown


@dataclass
class PeftConfig:
    """Rank/alpha from a PEFT config stored with the file (PEFT files carry no alpha tensors)."""

    alpha: float | None = None
    r: int | None = None
    use_rslora: bool = False
    alpha_pattern: dict = field(default_factory=dict)
    rank_pattern: dict = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> "PeftConfig | None":
        for key in PEFT_CONFIG_METADATA_KEYS:
            config = metadata_json(metadata, key)
            if config is None:
                continue
            # diffusers' pipeline savers flatten per component: {"unet.r": 4, "unet.lora_alpha": 8, ...}.
            config = {k.rsplit(".", 1)[-1] if k.endswith((".r", ".lora_alpha", ".alpha", ".alpha_pattern",
                                                          ".rank_pattern", ".use_rslora")) else k: v
                      for k, v in config.items()}
            alpha = config.get("lora_alpha", config.get("alpha"))   # LoRA configs: lora_alpha; LoHa/LoKr: alpha
            if alpha is None:
                continue
            return cls(alpha=float(alpha), r=config.get("r"), use_rslora=bool(config.get("use_rslora", False)),
                       alpha_pattern=config.get("alpha_pattern") or {}, rank_pattern=config.get("rank_pattern") or {})
        if "ss_network_alpha" in metadata:   # kohya trainers: a global alpha when per-key alpha tensors are absent
            try:
                rank = metadata.get("ss_network_dim")
                return cls(alpha=float(metadata["ss_network_alpha"]), r=int(float(rank)) if rank else None)
            except (TypeError, ValueError):
                return None
        return None

    @staticmethod
    def _lookup(pattern_map: dict, module: str):
        # PEFT's rule: the first pattern (in order) such that re.match(rf"(.*\.)?({pattern})$", module).
        for pattern, value in pattern_map.items():
            try:
                if re.match(rf"(.*\.)?({pattern})$", module):
                    return value
            except re.error:
                continue
        return None

    def rank_for(self, prefix: str) -> int | None:
        module = strip_peft_prefixes(prefix)
        rank = self._lookup(self.rank_pattern, module)
        return int(rank) if rank is not None else (int(self.r) if self.r is not None else None)

    def alpha_for(self, prefix: str, rank: int) -> float:
        """The alpha to use as kohya alpha so that alpha / rank equals PEFT's scaling for this module."""
        module = strip_peft_prefixes(prefix)
        alpha = self._lookup(self.alpha_pattern, module)
        alpha = float(alpha) if alpha is not None else self.alpha
        if self.use_rslora:
            return alpha / (rank ** 0.5) * rank
        return alpha


@dataclass
class Coverage:
    """What a file's keys did against one model."""

    matched: list[str] = field(default_factory=list)        # parameter keys patched
    unmatched: list[str] = field(default_factory=list)      # file key prefixes that name no module here
    shape_mismatched: list[str] = field(default_factory=list)  # "param: lora shape vs param shape"
    unknown_keys: list[str] = field(default_factory=list)   # file keys of no known adapter part
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{len(self.matched)} keys matched, {len(self.unmatched)} unmatched"
        if self.shape_mismatched:
            text += f", {len(self.shape_mismatched)} shape mismatches"
        if self.unknown_keys:
            text += f", {len(self.unknown_keys)} unknown keys"
        return text

    def as_dict(self) -> dict:
        return {"matched": len(self.matched), "unmatched": list(self.unmatched),
                "shape_mismatched": list(self.shape_mismatched), "unknown_keys": list(self.unknown_keys),
                "notes": list(self.notes)}


@dataclass
class ResolvedLora:
    """A file's adapters keyed by the host's parameter keys, plus its coverage report."""

    sha256: str
    name: str
    path: str
    patches: dict[str, Adapter]
    coverage: Coverage

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.patches.values())


def resolve_file(lora_file: LoraFile, resolve: Callable[[str], str | None],
                 param_shape: Callable[[str], tuple | None]) -> ResolvedLora:
    """Turn a file into adapters for parameters named by ``resolve(prefix) -> module key`` (without .weight)."""
    groups, unknown = group_keys(lora_file.tensors)
    peft = PeftConfig.from_metadata(lora_file.metadata)
    coverage = Coverage(unknown_keys=unknown)
    patches: dict[str, Adapter] = {}
    for prefix, group in groups.items():
        module = resolve(prefix)
        if module is None:
            coverage.unmatched.append(prefix)
            continue
        alpha = _alpha(group, prefix, peft)
        config_rank = peft.rank_for(prefix) if peft is not None and "alpha" not in group else None
        for readers, target in ((WEIGHT_READERS, module + ".weight"), (BIAS_READERS, module + ".bias")):
            adapter = next((a for a in (read(group, alpha, config_rank) for read in readers) if a is not None), None)
            if adapter is None:
                continue
            shape = param_shape(target)
            if shape is None:
                coverage.unmatched.append(f"{prefix} -> {target} (no such parameter)")
            elif not fits(adapter.natural_shape(), shape):
                coverage.shape_mismatched.append(
                    f"{prefix} -> {target}: LoRA shape {tuple(adapter.natural_shape())} vs parameter {tuple(shape)}")
            else:
                patches[target] = adapter
                coverage.matched.append(target)
    return ResolvedLora(lora_file.sha256, lora_file.name, lora_file.path, patches, coverage)


def _alpha(group: dict, prefix: str, peft: PeftConfig | None) -> float | None:
    if "alpha" in group:
        return float(group["alpha"].float().reshape(-1)[0])
    if peft is None:
        return None
    rank_source = group.get("down", group.get("hada_w1_b", group.get("lokr_w2_b", group.get("lokr_w1_b"))))
    rank = rank_source.shape[0] if rank_source is not None else peft.rank_for(prefix)
    return peft.alpha_for(prefix, rank) if rank else None
