"""Independent oracle: adapter files + merged weights produced by PEFT itself.

Test helper only (no tests here).  ``make_case`` builds a tiny, deterministically
initialised ``diffusers.UNet2DConditionModel``, injects a PEFT adapter with
random (non-zero) weights, writes the adapter to a ``.safetensors`` file in one
of several real-world layouts and returns PEFT's own ``merge_and_unload()``
result as the expected merged ``state_dict``.

Layouts (``naming``):

``"peft"``
    What ``diffusers`` ``ModelMixin.save_lora_adapter`` writes: bare PEFT keys
    (``<module>.lora_A.weight``, ``<module>.hada_w1_a``, ...) and the adapter
    config in the safetensors metadata under ``"lora_adapter_metadata"`` as
    ``json.dumps(config.to_dict(), indent=2, sort_keys=True)`` (flat dict:
    ``{"r": 4, "lora_alpha": 8, "rank_pattern": {...}, ...}``).  Written with
    diffusers' own ``LoraBaseMixin.write_lora_layers``.
``"peft_unet"``
    What ``StableDiffusionLoraLoaderMixin.save_lora_weights`` writes: every key
    prefixed with ``unet.`` and the *metadata keys* prefixed too
    (``{"unet.r": 4, "unet.lora_alpha": 8, ...}``), same metadata key.
``"peft_model"``
    What ``PeftModel.save_pretrained`` writes: ``adapter_model.safetensors``
    with keys prefixed ``base_model.model.``, safetensors metadata only
    ``{"format": "pt"}``; the config (alpha!) lives in the sidecar
    ``adapter_config.json`` next to it.
``"kohya"``
    kohya / LyCORIS naming: ``lora_unet_<module path with . -> _>`` plus
    ``.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` (LoRA, DoRA +
    ``.dora_scale``), ``.hada_w{1,2}_{a,b}`` + ``.alpha`` (LoHa),
    ``.lokr_w1[_a/_b]`` / ``.lokr_w2[_a/_b]`` + ``.alpha`` (LoKr).  Per-module
    scale follows the LyCORIS/ComfyUI convention (alpha / rank, where rank is
    ``lora_down.shape[0]`` / ``hada_w1_b.shape[0]`` / ``lokr_w2_b.shape[0]``
    or ``lokr_w1_b.shape[0]``; LoKr with both factors full: scale 1, so
    PEFT's alpha/r is baked into ``lokr_w1``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import torch

KINDS = ("lora", "loha", "lokr", "dora", "lora_conv")
NAMINGS = ("peft", "peft_unet", "peft_model", "kohya")

UNET_KWARGS = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
    "sample_size": 8,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
}

# Linear attention/FF projections; proj_in/proj_out are 1x1 Conv2d in this UNet
# (use_linear_projection=False), which exercises the 1x1-conv path too.
LINEAR_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
# 3x3 Conv2d in the resnets.
CONV_TARGETS = ["conv1", "conv2"]

ADAPTER_NAME = "default"
KOHYA_PREFIX = "lora_unet_"


# --------------------------------------------------------------------------- model


@contextlib.contextmanager
def _single_thread():
    """The oracle's tensors are tiny and its cost is Python overhead; intra-op threads only
    oversubscribe a loaded 2-core box (measured 2.5x slower).  Restores the caller's setting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def build_unet():
    """A fresh tiny UNet (weights are whatever diffusers' init gives; callers overwrite)."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        unet = UNet2DConditionModel(**UNET_KWARGS)
    return unet.eval().requires_grad_(False)


def _randomise_base(unet: torch.nn.Module, seed: int) -> None:
    """Deterministic base weights, independent of diffusers' init order."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif name.endswith(".weight"):  # 1-D weights are norm scales
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))


def clean_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    unet = build_unet()
    _randomise_base(unet, seed)
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


# --------------------------------------------------------------------------- configs


def make_config(kind: str):
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    if kind == "lora":
        # rank_pattern / alpha_pattern: scale must be resolved per module
        # (ff.net.2: r=8, alpha=8 -> 1.0; attn2.to_k: r=4, alpha=2 -> 0.5; rest 8/4 = 2.0)
        return LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=list(LINEAR_TARGETS),
            init_lora_weights=False,
            rank_pattern={"ff.net.2": 8},
            alpha_pattern={"attn2.to_k": 2},
        )
    if kind == "lora_conv":
        # conv1: r=8 alpha=8 -> 1.0 ; conv2: r=4 alpha=2 -> 0.5 ; rest 2.0
        return LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=LINEAR_TARGETS + CONV_TARGETS,
            init_lora_weights=False,
            rank_pattern={"conv1": 8},
            alpha_pattern={"conv2": 2},
        )
    if kind == "dora":
        return LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=LINEAR_TARGETS + ["conv1"],
            init_lora_weights=False,
            use_dora=True,
        )
    if kind == "loha":
        return LoHaConfig(r=4, alpha=8, target_modules=LINEAR_TARGETS + CONV_TARGETS, init_weights=False)
    if kind == "lokr":
        # r=2 makes w2 rank-decomposed (lokr_w2_a/b) everywhere and, with
        # decompose_both, w1 too where max(out_l, in_m)/2 > r (ff layers, 96/128-channel convs).
        # The two rank_pattern entries (r=8) make both factors full matrices:
        # PEFT still scales by alpha/r (4/8 = 0.5) there, LyCORIS would use 1.
        return LoKrConfig(
            r=2,
            alpha=8,
            target_modules=LINEAR_TARGETS + CONV_TARGETS,
            init_weights=False,
            decompose_both=True,
            rank_pattern={"attn1.to_v": 8, "down_blocks.0.resnets.0.conv2": 8},
            alpha_pattern={"attn1.to_v": 4, "down_blocks.0.resnets.0.conv2": 4},
        )
    raise ValueError(f"unknown kind {kind!r}")


def _tuner_cls(kind: str):
    if kind in ("lora", "lora_conv", "dora"):
        from peft.tuners.lora import LoraModel

        return LoraModel
    if kind == "loha":
        from peft.tuners.loha import LoHaModel

        return LoHaModel
    if kind == "lokr":
        from peft.tuners.lokr import LoKrModel

        return LoKrModel
    raise ValueError(kind)


def config_dict(cfg) -> dict:
    """``cfg.to_dict()`` with sets turned into lists, as diffusers/PEFT serialise it."""
    d = cfg.to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in d.items()}


# --------------------------------------------------------------------------- adapter weights


def _adapter_params(layer) -> dict[str, torch.nn.Parameter]:
    """{short name: parameter} of the 'default' adapter of one PEFT layer (no magnitude)."""
    out = {}
    for n, p in layer.named_parameters():
        if n.startswith("base_layer.") or "lora_magnitude_vector" in n:
            continue
        parts = n.split(".")
        if ADAPTER_NAME not in parts:
            continue
        out[n] = p
    return out


def _randomise_adapter(layer, kind: str, gen: torch.Generator) -> float:
    """Fill adapter factors with N(0,1), rescale one factor so ||dW|| / ||W|| = target."""
    base_w = layer.get_base_layer().weight
    params = _adapter_params(layer)
    with torch.no_grad():
        for p in params.values():
            p.copy_(torch.randn(p.shape, generator=gen))
        target = 0.05 + 0.15 * torch.rand((), generator=gen).item()
        delta = layer.get_delta_weight(ADAPTER_NAME)
        ratio = (delta.norm() / base_w.norm()).item()
        c = target / ratio
        if kind in ("lora", "lora_conv", "dora"):
            layer.lora_B[ADAPTER_NAME].weight.mul_(c)
        elif kind == "loha":
            layer.hada_w1_a[ADAPTER_NAME].mul_(c)
        elif kind == "lokr":
            if ADAPTER_NAME in layer.lokr_w1:
                layer.lokr_w1[ADAPTER_NAME].mul_(c)
            else:
                layer.lokr_w1_a[ADAPTER_NAME].mul_(c)
        if kind == "dora":
            # magnitude = ||W + dW|| per output row, perturbed so the rescaling is visible
            dora = layer.lora_magnitude_vector[ADAPTER_NAME]
            delta = layer.get_delta_weight(ADAPTER_NAME)
            w = base_w + delta
            norm = w.reshape(w.shape[0], -1).norm(dim=1)
            mag = norm * (1.0 + 0.1 * torch.randn(norm.shape, generator=gen))
            dora.weight.copy_(mag.reshape(dora.weight.shape))
        return (layer.get_delta_weight(ADAPTER_NAME).norm() / base_w.norm()).item()


def _module_info(layer, kind: str) -> dict:
    if kind in ("lora", "lora_conv", "dora"):
        r, alpha = layer.r[ADAPTER_NAME], layer.lora_alpha[ADAPTER_NAME]
    else:
        r, alpha = layer.r[ADAPTER_NAME], layer.alpha[ADAPTER_NAME]
    return {
        "r": r,
        "alpha": alpha,
        "scale": layer.scaling[ADAPTER_NAME],
        "weight_shape": tuple(layer.get_base_layer().weight.shape),
        "type": type(layer.get_base_layer()).__name__,
    }


# --------------------------------------------------------------------------- kohya conversion


def kohya_module_name(path: str) -> str:
    return KOHYA_PREFIX + path.replace(".", "_")


def to_kohya(peft_sd: dict[str, torch.Tensor], modules: dict[str, dict], kind: str) -> dict[str, torch.Tensor]:
    """Convert a bare-key PEFT state dict to kohya / LyCORIS naming (exact, fp32)."""
    out: dict[str, torch.Tensor] = {}
    for path, info in modules.items():
        k = kohya_module_name(path)

        def g(suffix, path=path):
            return peft_sd.get(f"{path}.{suffix}")

        alpha = float(info["alpha"])
        if kind in ("lora", "lora_conv", "dora"):
            A, B = g("lora_A.weight"), g("lora_B.weight")
            assert info["scale"] == alpha / A.shape[0]
            out[f"{k}.lora_down.weight"] = A.clone()
            out[f"{k}.lora_up.weight"] = B.clone()
            out[f"{k}.alpha"] = torch.tensor(alpha)
            if kind == "dora":
                m = g("lora_magnitude_vector")
                # LyCORIS wd_on_out=True layout: (out, 1) / (out, 1, 1, 1)
                n_dims = len(info["weight_shape"])
                out[f"{k}.dora_scale"] = m.reshape(info["weight_shape"][0], *([1] * (n_dims - 1))).clone()
        elif kind == "loha":
            for s in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"):
                out[f"{k}.{s}"] = g(s).clone()
            assert info["scale"] == alpha / g("hada_w1_b").shape[0]
            out[f"{k}.alpha"] = torch.tensor(alpha)
        elif kind == "lokr":
            parts = {s: g(s) for s in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")}
            parts = {s: v.clone() for s, v in parts.items() if v is not None}
            if "lokr_w2_b" in parts or "lokr_w1_b" in parts:
                rank = parts["lokr_w2_b"].shape[0] if "lokr_w2_b" in parts else parts["lokr_w1_b"].shape[0]
                assert info["scale"] == alpha / rank
                out[f"{k}.alpha"] = torch.tensor(alpha)
            else:
                # both factors full: LyCORIS applies no alpha scaling -> bake PEFT's alpha/r
                parts["lokr_w1"] = parts["lokr_w1"] * info["scale"]
                out[f"{k}.alpha"] = torch.tensor(float(info["r"]))  # LyCORIS stores alpha = dim here
            for s, v in parts.items():
                out[f"{k}.{s}"] = v
        else:
            raise ValueError(kind)
    return out


# --------------------------------------------------------------------------- writers


def _write_peft(sd, meta, directory: Path, weight_name: str, naming: str) -> Path:
    import safetensors.torch

    directory.mkdir(parents=True, exist_ok=True)
    if naming == "peft":
        from diffusers.loaders.lora_base import LoraBaseMixin

        LoraBaseMixin.write_lora_layers(
            state_dict=sd,
            save_directory=str(directory),
            is_main_process=True,
            weight_name=weight_name,
            save_function=None,
            safe_serialization=True,
            lora_adapter_metadata=dict(meta),
        )
        return directory / weight_name
    if naming == "peft_unet":
        from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin

        StableDiffusionLoraLoaderMixin.save_lora_weights(
            save_directory=str(directory),
            unet_lora_layers=sd,
            weight_name=weight_name,
            unet_lora_adapter_metadata=dict(meta),
        )
        return directory / weight_name
    if naming == "peft_model":
        sub = directory / weight_name.removesuffix(".safetensors")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / "adapter_model.safetensors"
        safetensors.torch.save_file(
            {f"base_model.model.{k}": v for k, v in sd.items()}, str(path), metadata={"format": "pt"}
        )
        (sub / "adapter_config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        return path
    raise ValueError(naming)


def _write_kohya(ksd, modules, kind, cfg, path: Path) -> Path:
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    algo = {"lora": "lora", "lora_conv": "locon", "dora": "lora", "loha": "loha", "lokr": "lokr"}[kind]
    alpha = cfg.lora_alpha if hasattr(cfg, "lora_alpha") else cfg.alpha
    meta = {
        "format": "pt",
        "ss_network_module": "networks.lora" if kind == "lora" else "lycoris.kohya",
        "ss_network_dim": str(cfg.r),
        "ss_network_alpha": str(alpha),
        "ss_network_args": json.dumps({"algo": algo, **({"dora_wd": "True"} if kind == "dora" else {})}),
    }
    safetensors.torch.save_file(ksd, str(path), metadata=meta)
    return path


# --------------------------------------------------------------------------- main entry


def make_case(kind: str, tmp_path, naming: str = "peft", seed: int = 0) -> dict:
    """Build one oracle case.

    Returns dict with:
      clean          base state_dict (plain names) before any adapter
      merged         state_dict after PEFT ``merge_and_unload()`` (plain names)
      path           adapter file (str)
      module_factory callable -> fresh UNet holding ``clean``
      touched_keys   set of param names where merged != clean
      modules        {module path: {r, alpha, scale, weight_shape, type, rel_delta}}
      config         PEFT config dict (as serialised)
      peft_state_dict bare-key PEFT adapter tensors (before any renaming)
      file_keys      list of keys written to the file
      seconds        wall time of make_case (the PEFT side is cached per (kind, seed),
                     so later namings of the same kind only write a file)
    """
    with _single_thread():
        return _make_case(kind, tmp_path, naming, seed)


_PEFT_CACHE: dict[tuple[str, int], dict] = {}


def _peft_side(kind: str, seed: int) -> dict:
    """Base model, PEFT injection, random adapter, PEFT merge: once per (kind, seed)."""
    from peft import get_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer

    if (kind, seed) in _PEFT_CACHE:
        return _PEFT_CACHE[(kind, seed)]
    unet = build_unet()
    _randomise_base(unet, seed)
    clean = {k: v.detach().clone() for k, v in unet.state_dict().items()}

    cfg = make_config(kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tuner = _tuner_cls(kind)(unet, cfg, ADAPTER_NAME)

    gen = torch.Generator().manual_seed(20_000 + seed * 101 + KINDS.index(kind))
    modules: dict[str, dict] = {}
    for name, layer in unet.named_modules():
        if isinstance(layer, BaseTunerLayer):
            rel = _randomise_adapter(layer, kind, gen)
            modules[name] = {**_module_info(layer, kind), "rel_delta": rel}
    assert modules, "no module was adapted"

    peft_sd = {
        k: v.detach().clone().contiguous()
        for k, v in get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME).items()
    }
    with torch.no_grad():
        merged_model = tuner.merge_and_unload()
    merged = {k: v.detach().clone() for k, v in merged_model.state_dict().items()}
    assert merged.keys() == clean.keys(), set(merged) ^ set(clean)
    touched = {k for k in clean if not torch.equal(clean[k], merged[k])}
    side = {
        "cfg": cfg,
        "clean": clean,
        "merged": merged,
        "peft_sd": peft_sd,
        "modules": modules,
        "touched": touched,
    }
    _PEFT_CACHE[(kind, seed)] = side
    return side


def _make_case(kind: str, tmp_path, naming: str, seed: int) -> dict:
    import copy

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if naming not in NAMINGS:
        raise ValueError(f"naming must be one of {NAMINGS}, got {naming!r}")
    t0 = time.perf_counter()
    tmp_path = Path(tmp_path)

    side = _peft_side(kind, seed)
    # hand out copies: callers may mutate what they get without poisoning the cache
    clean = {k: v.clone() for k, v in side["clean"].items()}
    merged = {k: v.clone() for k, v in side["merged"].items()}
    peft_sd = {k: v.clone() for k, v in side["peft_sd"].items()}
    modules = copy.deepcopy(side["modules"])
    cfg = side["cfg"]
    meta = config_dict(cfg)

    stem = f"{kind}_{naming}_s{seed}"
    if naming == "kohya":
        ksd = to_kohya(peft_sd, modules, kind)
        path = _write_kohya(ksd, modules, kind, cfg, tmp_path / f"{stem}.safetensors")
        file_keys = sorted(ksd)
    else:
        path = _write_peft(peft_sd, meta, tmp_path / stem, f"{stem}.safetensors", naming)
        import safetensors

        with safetensors.safe_open(str(path), framework="pt") as f:
            file_keys = sorted(f.keys())

    def module_factory():
        m = build_unet()
        m.load_state_dict(clean)
        return m

    return {
        "kind": kind,
        "naming": naming,
        "clean": clean,
        "merged": merged,
        "path": str(path),
        "module_factory": module_factory,
        "touched_keys": set(side["touched"]),
        "modules": modules,
        "config": meta,
        "peft_state_dict": peft_sd,
        "file_keys": file_keys,
        "seconds": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------- oracle self-checks


def reference_merge_kohya(path: str, clean: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain-math LyCORIS/ComfyUI-semantics merge of a kohya file written by ``make_case``.

    Independent of PEFT; used to check that the kohya conversion is exact.
    DoRA uses the LyCORIS wd_on_out semantics: dora_scale * (W + dW) / ||W + dW||_row
    (no eps here).
    """
    with _single_thread():
        return _reference_merge_kohya(path, clean)


def _reference_merge_kohya(path: str, clean: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    import safetensors.torch

    sd = safetensors.torch.load_file(path)
    # module path lookup: kohya name -> plain module path of the clean model
    by_kohya = {kohya_module_name(k[: -len(".weight")]): k for k in clean if k.endswith(".weight")}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        mod, _, suffix = k.partition(".")
        groups.setdefault(mod, {})[suffix] = v
    out = {k: v.clone() for k, v in clean.items()}
    for mod, t in groups.items():
        wkey = by_kohya[mod]
        W = clean[wkey]
        alpha = t.get("alpha")
        if "lora_down.weight" in t:
            down, up = t["lora_down.weight"], t["lora_up.weight"]
            r = down.shape[0]
            scale = alpha.item() / r if alpha is not None else 1.0
            dW = (up.flatten(1) @ down.flatten(1)).reshape(W.shape) * scale
        elif "hada_w1_a" in t:
            r = t["hada_w1_b"].shape[0]
            scale = alpha.item() / r
            dW = ((t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])).reshape(W.shape) * scale
        else:
            w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
            w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"]
            if "lokr_w2_b" in t:
                scale = alpha.item() / t["lokr_w2_b"].shape[0]
            elif "lokr_w1_b" in t:
                scale = alpha.item() / t["lokr_w1_b"].shape[0]
            else:
                scale = 1.0
            if w2.ndim == 4:
                w1 = w1[:, :, None, None]
            dW = torch.kron(w1, w2).reshape(W.shape) * scale
        if "dora_scale" in t:
            merged = W + dW
            norm = merged.reshape(W.shape[0], -1).norm(dim=1).reshape(W.shape[0], *([1] * (W.ndim - 1)))
            out[wkey] = t["dora_scale"] * merged / norm
        else:
            out[wkey] = W + dW
    return out


def reference_merge_peft_roundtrip(case: dict) -> dict[str, torch.Tensor]:
    """Re-load ``case['path']`` (PEFT layouts) into a fresh PEFT-injected UNet using only
    the file (+ its metadata / sidecar config) and merge with PEFT again."""
    with _single_thread():
        return _reference_merge_peft_roundtrip(case)


def _reference_merge_peft_roundtrip(case: dict) -> dict[str, torch.Tensor]:
    import safetensors
    import safetensors.torch
    from peft import LoHaConfig, LoKrConfig, LoraConfig, set_peft_model_state_dict

    path = case["path"]
    sd = safetensors.torch.load_file(path)
    with safetensors.safe_open(path, framework="pt") as f:
        file_meta = f.metadata() or {}
    if case["naming"] == "peft_model":
        meta = json.loads((Path(path).parent / "adapter_config.json").read_text())
        sd = {k.removeprefix("base_model.model."): v for k, v in sd.items()}
    else:
        meta = json.loads(file_meta["lora_adapter_metadata"])
        if case["naming"] == "peft_unet":
            sd = {k.removeprefix("unet."): v for k, v in sd.items()}
            meta = {k.removeprefix("unet."): v for k, v in meta.items() if k.startswith("unet.")}
    cls = {"LORA": LoraConfig, "LOHA": LoHaConfig, "LOKR": LoKrConfig}[meta["peft_type"]]
    meta = {k: v for k, v in meta.items() if k not in ("peft_type", "peft_version")}
    cfg = cls(**meta)
    unet = case["module_factory"]()
    with torch.random.fork_rng(devices=[]):
        tuner = _tuner_cls(case["kind"])(unet, cfg, ADAPTER_NAME)
    res = set_peft_model_state_dict(unet, sd, adapter_name=ADAPTER_NAME)
    unexpected = getattr(res, "unexpected_keys", [])
    assert not unexpected, unexpected
    with torch.no_grad():
        merged = tuner.merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


if __name__ == "__main__":  # quick manual timing: python tests/peft_oracle.py
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for kind in KINDS:
            for naming in NAMINGS:
                c = make_case(kind, os.path.join(d, f"{kind}-{naming}"), naming=naming)
                rels = [m["rel_delta"] for m in c["modules"].values()]
                print(
                    f"{kind:10s} {naming:10s} {c['seconds'] * 1000:7.1f} ms  modules={len(c['modules'])} "
                    f"touched={len(c['touched_keys'])} file_keys={len(c['file_keys'])} "
                    f"rel_delta={min(rels):.3f}..{max(rels):.3f}"
                )
