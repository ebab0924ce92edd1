"""`python -m lora_state demo`: stale weights from a naive patcher vs the manager, on a model built in code.

Everything is made here: a small fp16 model, three LoRA files written to a temporary folder. No download.
"""
from __future__ import annotations

import os
import tempfile
import time

import torch
from safetensors.torch import save_file

from . import LoraStateManager, ulp_distance
from .files import LoraFileCache

LAYERS = {"blocks.0.attn.to_q": (256, 256), "blocks.0.attn.to_v": (256, 256), "blocks.0.ff": (1024, 256),
          "blocks.1.attn.to_q": (256, 256), "blocks.1.attn.to_v": (256, 256), "blocks.1.ff": (1024, 256)}


def build_model(dtype=torch.float16, seed=0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Module()
    for path, (out_f, in_f) in LAYERS.items():
        parent = model
        *parents, leaf = path.split(".")
        for name in parents:
            if not hasattr(parent, name):
                parent.add_module(name, torch.nn.Module())
            parent = getattr(parent, name)
        parent.add_module(leaf, torch.nn.Linear(in_f, out_f))
    return model.to(dtype)


def write_loras(directory: str) -> dict[str, str]:
    """Three kohya-style LoRAs: 'style' on every layer, 'detail' on attention only, 'face' on block 1."""
    generator = torch.Generator().manual_seed(1)
    plans = {"style": list(LAYERS), "detail": [p for p in LAYERS if "attn" in p],
             "face": [p for p in LAYERS if p.startswith("blocks.1")]}
    paths = {}
    for name, layers in plans.items():
        tensors = {}
        for path in layers:
            out_f, in_f = LAYERS[path]
            prefix = "lora_unet_" + path.replace(".", "_")
            tensors[f"{prefix}.lora_down.weight"] = torch.randn(16, in_f, generator=generator) * 0.1
            tensors[f"{prefix}.lora_up.weight"] = torch.randn(out_f, 16, generator=generator) * 0.02
            tensors[f"{prefix}.alpha"] = torch.tensor(8.0)
        paths[name] = os.path.join(directory, f"{name}.safetensors")
        save_file(tensors, paths[name])
    return paths


def naive_apply(model: torch.nn.Module, stack) -> None:
    """What stale-weight bugs look like: add the requested LoRAs' deltas, never undo what is no longer asked."""
    from safetensors.torch import load_file
    params = dict(model.named_parameters())
    with torch.no_grad():
        for path, strength in stack:
            tensors = load_file(path)
            for key, down in tensors.items():
                if not key.endswith(".lora_down.weight"):
                    continue
                prefix = key[: -len(".lora_down.weight")]
                module = prefix[len("lora_unet_"):].replace("_", ".").replace("to.", "to_")
                up, alpha = tensors[prefix + ".lora_up.weight"], float(tensors[prefix + ".alpha"])
                weight = params[module + ".weight"]
                weight += (strength * alpha / down.shape[0] * (up @ down)).to(weight.dtype)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _max_ulps(model, reference) -> float:
    return max(ulp_distance(v, reference[k]) for k, v in model.state_dict().items())


def run(out=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="lora_state_demo_") as directory:
        loras = write_loras(directory)
        first = [(loras["style"], 0.8), (loras["detail"], 1.0), (loras["face"], 0.6)]
        second = [(loras["style"], 0.8), (loras["face"], 0.3)]          # 'detail' removed, 'face' re-weighted

        def reference(stack):
            model = build_model()
            LoraStateManager(model, mode="exact", file_cache=LoraFileCache()).reconcile(stack)
            return _state(model)

        expected = reference(second)
        out("LoRA State demo: a 6-layer fp16 model, 3 LoRAs (style, detail, face) written to " + directory)
        out("Run 1 asks for style 0.8 + detail 1.0 + face 0.6; run 2 removes 'detail' and sets face to 0.3.\n")

        naive = build_model()
        naive_apply(naive, first)
        naive_apply(naive, second)
        stale = _max_ulps(naive, expected)
        out(f"naive patcher (applies only what run 2 names):  max error vs correct weights = {stale:,.0f} ulp "
            f"-> 'detail' and the old 'face' are still baked in (stale weights)")

        results = {"naive_stale_ulps": stale, "modes": {}}
        for mode in ("exact", "delta", "auto"):
            model = build_model()
            manager = LoraStateManager(model, mode=mode, file_cache=LoraFileCache())
            manager.reconcile(first)
            started = time.perf_counter()
            report = manager.reconcile(second)
            seconds = time.perf_counter() - started
            error = _max_ulps(model, expected)
            # A -> B -> A 200 times: exact stays bit-identical, delta drifts, auto re-bases within its budget.
            for _ in range(200):
                manager.reconcile(first)
                manager.reconcile(second)
            cycled = _max_ulps(model, expected)
            results["modes"][mode] = {"switch_seconds": seconds, "error_ulps": error,
                                      "error_after_200_cycles_ulps": cycled, "backup_bytes": manager.backup_bytes}
            out(f"LoRA State mode={mode:<5}: switch {seconds * 1000:6.2f} ms, error {error:g} ulp, after 200 more "
                f"switches {cycled:g} ulp, backups {manager.backup_bytes / 1024:.0f} KiB")
            out(f"    {report.summary()}")
            if mode == "auto":
                out("\nThe ledger (what is applied to this model, key by key):")
                ledger = manager.status()
                for applied in ledger["stack"]:
                    out(f"    {applied['name']:<20} strength {applied['strength']:<5g} "
                        f"keys {ledger['keys_by_lora'][applied['sha256']]:>2}  sha256 {applied['sha256'][:12]}")
                out(f"    keys touched {ledger['keys_touched']}, backups {ledger['backup_bytes'] / 1024:.0f} KiB, "
                    f"max drift {ledger['max_drift_ulps']:.2f} ulp")
                verify = manager.verify()
                out(f"    verify(): {verify.summary()}")
                manager.reset()
                clean = _state(build_model())
                back = all(torch.equal(v, clean[k]) for k, v in model.state_dict().items())
                out(f"    reset(): weights bit-identical to the clean model: {back}")
                results["reset_bit_identical"] = back
        out("\nexact: bit-identical to computing from scratch, backups of touched keys only; delta: no backups, "
            "drift grows and is reported; auto (default): delta steps within a drift budget per dtype (fp16/bf16: 2 ulp, "
            "fp32: 64 ulp), exact otherwise.")
        return results
