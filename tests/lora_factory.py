"""Test helper: a tiny model, LoRA files of every supported format for it, and an independent float64 oracle.

The oracle below is written from the published formulas with plain torch ops in float64; it shares no code with
lora_state, so agreement means the library's math is right, not merely self-consistent.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file


class TinyNet(torch.nn.Module):
    """Linear, 3x3 conv, 1x1 conv and another Linear, all with bias: the layer kinds LoRAs target."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 24)
        self.conv = torch.nn.Conv2d(4, 6, 3, padding=1)
        self.conv1 = torch.nn.Conv2d(6, 6, 1)
        self.fc2 = torch.nn.Linear(24, 8)


def make_module(dtype=torch.float32, seed=0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().to(dtype)


def _rand(generator, *shape, scale=1.0):
    return torch.randn(*shape, generator=generator) * scale


class Oracle:
    """Per parameter key, a list of functions f(W64, strength) -> W64 for one LoRA file."""

    def __init__(self):
        self.ops: dict[str, callable] = {}

    def linear(self, key, delta64):
        self.ops[key] = lambda w, s, d=delta64: w + s * d.reshape(w.shape)

    def dora_out_axis(self, key, delta64, magnitude64):
        def op(w, s, d=delta64, m=magnitude64):
            changed = w + d.reshape(w.shape)
            norm = changed.reshape(w.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (w.dim() - 1)))
            target = changed * (m.reshape(norm.shape) / norm)
            return w + s * (target - w)
        self.ops[key] = op

    def dora_in_axis(self, key, delta64, magnitude64):
        def op(w, s, d=delta64, m=magnitude64):
            changed = w + d.reshape(w.shape)
            norm = changed.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1).reshape(1, -1, *([1] * (w.dim() - 2)))
            target = changed * (m.reshape(norm.shape) / norm)
            return w + s * (target - w)
        self.ops[key] = op


KINDS = ("lora", "locon_mid", "peft", "bare", "loha", "lokr", "dora", "diff", "lora_fp16", "lora_bf16")
#: kohya LoRAs whose factors are stored in half precision, as most published LoRAs are.
FACTOR_DTYPES = {"lora": torch.float32, "lora_fp16": torch.float16, "lora_bf16": torch.bfloat16}


def write_lora(path: str, kind: str, seed: int = 0, scale: float = 0.05) -> Oracle:
    """Write a LoRA of `kind` for TinyNet to `path`; return its float64 oracle."""
    g = torch.Generator().manual_seed(seed)
    t: dict[str, torch.Tensor] = {}
    oracle = Oracle()
    metadata: dict[str, str] = {}
    d64 = lambda x: x.double()  # noqa: E731

    if kind in FACTOR_DTYPES:   # kohya, Linear + 3x3 LoCon + 1x1 conv
        for module, out_f, in_shape in (("fc1", 24, (16,)), ("conv", 6, (4, 3, 3)), ("conv1", 6, (6, 1, 1))):
            rank, alpha = 4, 2.0
            up = _rand(g, out_f, rank, *([1, 1] if len(in_shape) > 1 else []), scale=scale).to(FACTOR_DTYPES[kind])
            down = _rand(g, rank, *in_shape).to(FACTOR_DTYPES[kind])
            t[f"lora_unet_{module}.lora_up.weight"] = up
            t[f"lora_unet_{module}.lora_down.weight"] = down
            t[f"lora_unet_{module}.alpha"] = torch.tensor(alpha)
            oracle.linear(f"{module}.weight", alpha / rank * (d64(up).flatten(1) @ d64(down).flatten(1)))
    elif kind == "locon_mid":   # LoCon with a Tucker mid on the 3x3 conv, no alpha (scale 1)
        rank = 3
        up, mid, down = _rand(g, 6, rank, 1, 1, scale=scale), _rand(g, rank, rank, 3, 3), _rand(g, rank, 4, 1, 1)
        t.update({"lora_unet_conv.lora_up.weight": up, "lora_unet_conv.lora_mid.weight": mid,
                  "lora_unet_conv.lora_down.weight": down})
        delta = torch.einsum("oa,abhw,bi->oihw", d64(up).flatten(1), d64(mid), d64(down).flatten(1))
        oracle.linear("conv.weight", delta)
    elif kind == "peft":   # diffusers/PEFT names with a prefix, alpha only in metadata, plus a lora_B bias
        rank, alpha = 4, 8.0
        for module, out_f, in_f in (("fc1", 24, 16), ("fc2", 8, 24)):
            a, b = _rand(g, rank, in_f), _rand(g, out_f, rank, scale=scale)
            t[f"unet.{module}.lora_A.weight"] = a
            t[f"unet.{module}.lora_B.weight"] = b
            oracle.linear(f"{module}.weight", alpha / rank * (d64(b) @ d64(a)))
        bias = _rand(g, 8, scale=scale)
        t["unet.fc2.lora_B.bias"] = bias
        oracle.linear("fc2.bias", alpha / rank * d64(bias))
        metadata["lora_adapter_metadata"] = json.dumps({"r": rank, "lora_alpha": alpha})
    elif kind == "bare":   # <path>.lora_up.weight with a per-key alpha tensor
        rank, alpha = 2, 1.0
        up, down = _rand(g, 8, rank, scale=scale), _rand(g, rank, 24)
        t.update({"fc2.lora_up.weight": up, "fc2.lora_down.weight": down, "fc2.alpha": torch.tensor(alpha)})
        oracle.linear("fc2.weight", alpha / rank * (d64(up) @ d64(down)))
    elif kind == "loha":
        rank, alpha = 4, 2.0
        for module, out_f, in_shape in (("fc1", 24, (16,)), ("conv", 6, (4, 3, 3))):
            w1a, w1b = _rand(g, out_f, rank, scale=scale ** 0.5), _rand(g, rank, *in_shape, scale=scale ** 0.5)
            w2a, w2b = _rand(g, out_f, rank), _rand(g, rank, *in_shape)
            prefix = f"lora_unet_{module}"
            t.update({f"{prefix}.hada_w1_a": w1a, f"{prefix}.hada_w1_b": w1b, f"{prefix}.hada_w2_a": w2a,
                      f"{prefix}.hada_w2_b": w2b, f"{prefix}.alpha": torch.tensor(alpha)})
            delta = (d64(w1a) @ d64(w1b).flatten(1)) * (d64(w2a) @ d64(w2b).flatten(1)) * (alpha / rank)
            oracle.linear(f"{module}.weight", delta)
    elif kind == "lokr":
        # fc1 (24x16): w1 whole 4x4, w2 = w2_a @ w2_b (6x4, rank 2) -> scale alpha / 2.
        w1, w2a, w2b, alpha = _rand(g, 4, 4, scale=scale), _rand(g, 6, 2), _rand(g, 2, 4), 1.0
        t.update({"lora_unet_fc1.lokr_w1": w1, "lora_unet_fc1.lokr_w2_a": w2a, "lora_unet_fc1.lokr_w2_b": w2b,
                  "lora_unet_fc1.alpha": torch.tensor(alpha)})
        oracle.linear("fc1.weight", torch.kron(d64(w1), d64(w2a) @ d64(w2b)) * (alpha / 2))
        # conv (6x4x3x3): both factors whole -> scale 1 (LyCORIS/ComfyUI convention).
        cw1, cw2 = _rand(g, 2, 2, scale=scale), _rand(g, 3, 2, 3, 3)
        t.update({"lora_unet_conv.lokr_w1": cw1, "lora_unet_conv.lokr_w2": cw2})
        oracle.linear("conv.weight", torch.kron(d64(cw1)[:, :, None, None], d64(cw2)))
    elif kind == "dora":
        rank = 4
        # fc1: PEFT names, magnitude per output row.
        a, b = _rand(g, rank, 16), _rand(g, 24, rank, scale=scale)
        magnitude = _rand(g, 24, scale=0.1).abs() + 0.5
        t.update({"fc1.lora_A.weight": a, "fc1.lora_B.weight": b, "fc1.lora_magnitude_vector": magnitude})
        oracle.dora_out_axis("fc1.weight", d64(b) @ d64(a), d64(magnitude))
        # fc2: kohya names, dora_scale (1, in) per input column, alpha 2.
        up, down, scale_in = _rand(g, 8, rank, scale=scale), _rand(g, rank, 24), _rand(g, 1, 24, scale=0.1).abs() + 0.5
        t.update({"lora_unet_fc2.lora_up.weight": up, "lora_unet_fc2.lora_down.weight": down,
                  "lora_unet_fc2.alpha": torch.tensor(2.0), "lora_unet_fc2.dora_scale": scale_in})
        oracle.dora_in_axis("fc2.weight", 2.0 / rank * (d64(up) @ d64(down)), d64(scale_in))
    elif kind == "diff":
        diff, diff_b = _rand(g, 6, 6, 1, 1, scale=scale), _rand(g, 6, scale=scale)
        t.update({"lora_unet_conv1.diff": diff, "lora_unet_conv1.diff_b": diff_b})
        oracle.linear("conv1.weight", d64(diff))
        oracle.linear("conv1.bias", d64(diff_b))
    else:
        raise ValueError(kind)
    save_file({k: v.contiguous() for k, v in t.items()}, path, metadata=metadata or None)
    return oracle


def write_all(directory: str, seed: int = 0) -> dict[str, tuple[str, Oracle]]:
    out = {}
    for index, kind in enumerate(KINDS):
        path = os.path.join(directory, f"{kind}.safetensors")
        out[kind] = (path, write_lora(path, kind, seed=seed * 100 + index))
    return out


def oracle_weights(clean: dict[str, torch.Tensor], stack, oracles: dict[str, Oracle]) -> dict[str, torch.Tensor]:
    """float64 weights for `stack` = [(path, strength)] applied in order to `clean`."""
    out = {k: v.double().clone() for k, v in clean.items()}
    for path, strength in stack:
        if strength == 0:
            continue
        for key, op in oracles[path].ops.items():
            out[key] = op(out[key], strength)
    return out
