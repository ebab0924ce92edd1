"""Build the random-weight test assets for the real-ComfyUI integration tests.

Run as a SUBPROCESS with ComfyUI's Python and cwd = the ComfyUI checkout (it imports ``comfy.*``):

    cd "$COMFYUI_PATH" && "$COMFYUI_PYTHON" /path/to/tests/integration/build_assets.py DEST_DIR

It writes (everything deterministic, seeded):

    DEST_DIR/models/checkpoints/tiny_a.safetensors   SD1.5 one-level UNet + full CLIP-L + TAESD VAE, fp16, seed 1
    DEST_DIR/models/checkpoints/tiny_b.safetensors   same architecture, seed 2
    DEST_DIR/models/loras/kohya_lora_a.safetensors   kohya LoRA, rank 8, alpha 4, UNet transformer + TE keys
    DEST_DIR/models/loras/kohya_lora_b.safetensors   kohya LoRA, rank 4, alpha 2, every other key of lora_a
    DEST_DIR/models/loras/locon_conv.safetensors     kohya LoCon: also the 3x3 resnet convs, rank 4, alpha 1
    DEST_DIR/models/loras/loha.safetensors           LyCORIS LoHa (hada_w1_a/b, hada_w2_a/b, alpha)
    DEST_DIR/models/loras/lokr.safetensors           LyCORIS LoKr (lokr_w1 full, lokr_w2_a/b, alpha)
    DEST_DIR/models/loras/dora.safetensors           kohya LoRA + dora_scale (output axis)
    DEST_DIR/models/loras/peft_named.safetensors     diffusers/PEFT names (lora_A/lora_B)
    DEST_DIR/models/loras/sub/nested_lora.safetensors  small kohya LoRA in a subfolder
    DEST_DIR/models/loras/not_a_lora.ckpt            a tiny pickle (torch.save); must never be unpickled
    DEST_DIR/manifest.json                           what was written (keys, ranks, formats)

Every LoRA is checked here with ``comfy.lora.load_lora`` against the key maps of the loaded tiny_a checkpoint:
all of its tensors must be consumed and every module must become a patch.
Each module's delta (at strength 1) has a Frobenius norm of DELTA_FRACTION x the tiny_a weight's norm.

Test-only code. It imports ComfyUI at run time and contains none of its code.
"""

import hashlib
import json
import os
import sys

BUILDER_VERSION = 1
DELTA_FRACTION = 0.10

sys.path.insert(0, os.getcwd())  # cwd is the ComfyUI checkout

import comfy.cli_args
import torch

comfy.cli_args.args.cpu = True  # before comfy.model_management, else torch.cuda.current_device()

import comfy.lora
import comfy.lora_convert
import comfy.model_detection
import comfy.model_management
import comfy.sd
import comfy.taesd.taesd
import comfy.utils
import safetensors.torch

# SD1.5 detection pins model_channels=320, context_dim=768, use_linear_in_transformer=False, adm_in_channels=None.
# One level, one res block, one transformer: small and fast, still detected as SD15.
UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1],
    "transformer_depth": [1],
    "transformer_depth_output": [1, 1],
    "channel_mult": [1],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}

TORCH_INIT_TYPES = (
    torch.nn.Linear,
    torch.nn.Conv1d,
    torch.nn.Conv2d,
    torch.nn.Conv3d,
    torch.nn.GroupNorm,
    torch.nn.LayerNorm,
    torch.nn.Embedding,
)


def torch_reset(module):
    """ComfyUI's ops override reset_parameters() with a no-op: call torch's own for every known module.

    Every float parameter is first filled with NaN so that anything left uninitialised is caught.
    """
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point():
                p.fill_(float("nan"))
        for m in module.modules():
            for base in TORCH_INIT_TYPES:
                if isinstance(m, base):
                    base.reset_parameters(m)
                    break
        left = [n for n, p in module.named_parameters() if p.is_floating_point() and torch.isnan(p).any()]
    return left


def build_checkpoint(path, seed):
    torch.manual_seed(seed)
    model_config = comfy.model_detection.model_config_from_unet_config(dict(UNET_CONFIG))
    if model_config is None or type(model_config).__name__ != "SD15":
        raise RuntimeError(f"UNet config not detected as SD15: {model_config}")
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="cpu")
    left = torch_reset(model)

    clip = comfy.sd.CLIP(model_config.clip_target({}), model_options={"dtype": torch.float32})
    left += torch_reset(clip.cond_stage_model)

    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    left += torch_reset(vae)
    with torch.no_grad():
        vae.vae_scale.fill_(1.0)
        vae.vae_shift.fill_(0.0)
    # Parameters that no torch module owns (e.g. a logit scale): give them a neutral value.
    left = [n for n in left if n not in ("vae_scale", "vae_shift")]
    with torch.no_grad():
        for mod in (model, clip.cond_stage_model):
            for n, p in mod.named_parameters():
                if p.is_floating_point() and torch.isnan(p).any():
                    p.fill_(1.0 if ("scale" in n or n.endswith("weight")) else 0.0)

    sd = state_dict_for_saving(model, clip.get_sd(), vae.state_dict())
    out = {}
    for k, t in sd.items():
        t = t.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(torch.float16)
            if not torch.isfinite(t).all():
                raise RuntimeError(f"non-finite tensor in checkpoint: {k}")
        out[k] = t.contiguous()
    safetensors.torch.save_file(out, path)
    return {
        "seed": seed,
        "tensors": len(out),
        "left_uninitialised_then_filled": left,
        "params": int(sum(t.numel() for t in out.values())),
    }


def state_dict_for_saving(model, clip_sd, vae_sd):
    """BaseModel.state_dict_for_saving: since ComfyUI 0.12 it takes the UNet state dict first."""
    import inspect

    if "unet_state_dict" in inspect.signature(model.state_dict_for_saving).parameters:
        return model.state_dict_for_saving(model.diffusion_model.state_dict(), clip_sd, vae_sd)
    return model.state_dict_for_saving(clip_sd, vae_sd)


FP8_MAX = 448.0   # largest finite float8_e4m3fn


def build_fp8_checkpoint(src, dst):
    """A scaled-fp8 copy of `src` (the "scaled_fp8" layout that ComfyUI converts into per-layer quant configs and
    loads with its mixed-precision ops; 0.3.x with its scaled-fp8 ops): the UNet's transformer Linear weights in
    float8_e4m3fn with a per-tensor `scale_weight`; everything else as in `src`. Both kinds of ops have the
    `set_weight`/`convert_weight` functions by which ComfyUI patches quantized weights."""
    sd = safetensors.torch.load_file(src)
    quantized = []
    for key in list(sd):
        if key.startswith("model.diffusion_model.") and "transformer_blocks" in key and key.endswith(".weight") \
                and sd[key].dim() == 2 and "norm" not in key:
            weight = sd[key].float()
            scale = weight.abs().max() / FP8_MAX
            sd[key] = (weight / scale).to(torch.float8_e4m3fn)
            sd[key[: -len("weight")] + "scale_weight"] = scale.reshape(()).to(torch.float32)
            quantized.append(key)
    sd["model.diffusion_model.scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    safetensors.torch.save_file(sd, dst)
    return {"quantized_weights": len(quantized), "layout": "scaled_fp8", "from": os.path.basename(src)}


def load_key_maps(ckpt_path):
    """Load a checkpoint exactly as CheckpointLoaderSimple does; return key maps and the base weights."""
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(ckpt_path, output_vae=True, output_clip=True)
    detected = type(model.model.model_config).__name__
    if detected != "SD15":
        raise RuntimeError(f"checkpoint detected as {detected} instead of SD15")
    unet_map = comfy.lora.model_lora_keys_unet(model.model, {})
    clip_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
    weights = {}
    for k, v in model.model.state_dict().items():
        weights[k] = v.detach().float()
    for k, v in clip.cond_stage_model.state_dict().items():
        weights[k] = v.detach().float()
    diffusers = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    return unet_map, clip_map, weights, diffusers, vae


class Targets:
    """Module names (several namings) for the modules the LoRAs patch."""

    def __init__(self, unet_map, clip_map, weights, diffusers):
        self.weights = weights
        # unet weight key -> diffusers path (without .weight)
        self.unet_to_diff = {}
        for dk, uk in diffusers.items():
            if dk.endswith(".weight"):
                self.unet_to_diff["diffusion_model." + uk] = dk[: -len(".weight")]
        self.unet_map = unet_map
        self.clip_map = clip_map
        # TE: kohya name -> model key, in layer order
        self.te = []
        for b in range(12):
            for c, cc in comfy.lora.LORA_CLIP_MAP.items():
                kohya = f"lora_te_text_model_encoder_layers_{b}_{cc}"
                diff = f"text_encoder.text_model.encoder.layers.{b}.{c}"
                mk = clip_map.get(kohya)
                if mk is None or clip_map.get(diff) != mk:
                    raise RuntimeError(f"CLIP key map lacks {kohya} / {diff}")
                self.te.append({"kohya": kohya, "peft": diff, "key": mk})
        # UNet modules with a kohya (diffusers-derived) name
        self.unet = []
        for uk in sorted(self.unet_to_diff):
            if uk not in weights or weights[uk].dim() < 2:
                continue
            dpath = self.unet_to_diff[uk]
            kohya = "lora_unet_" + dpath.replace(".", "_")
            peft = "unet." + dpath.replace(".to_", ".processor.to_")
            if peft.endswith(".to_out.0"):
                peft = peft[:-2]
            if unet_map.get(kohya) != uk or unet_map.get(peft) != uk:
                continue
            w = weights[uk]
            kind = "linear" if w.dim() == 2 else ("conv1x1" if w.shape[-1] == 1 else "conv{}x{}".format(*w.shape[-2:]))
            self.unet.append({"kohya": kohya, "peft": peft, "key": uk, "diffusers": dpath, "kind": kind})

    def unet_transformer(self):
        return [t for t in self.unet if ".attentions." in t["diffusers"] and t["kind"] in ("linear", "conv1x1")]

    def unet_resnet(self):
        return [t for t in self.unet if ".resnets." in t["diffusers"]]


def _norm(t):
    return float(t.float().norm())


def _fit(delta_fn, tensors, scale_names, target):
    """Scale the tensors named in scale_names (equally, multiplicatively) so that ||delta|| == target."""
    d = _norm(delta_fn(tensors))
    f = (target / d) ** (1.0 / len(scale_names))
    for n in scale_names:
        tensors[n] = tensors[n] * f
    return tensors


def lora_tensors(w, rank, alpha, gen):
    out_dim = w.shape[0]
    in_flat = w[0].numel()
    if w.dim() == 4 and w.shape[-1] != 1:
        down = torch.randn(rank, w.shape[1], w.shape[2], w.shape[3], generator=gen)
        up = torch.randn(out_dim, rank, 1, 1, generator=gen)
    elif w.dim() == 4:
        down = torch.randn(rank, w.shape[1], 1, 1, generator=gen)
        up = torch.randn(out_dim, rank, 1, 1, generator=gen)
    else:
        down = torch.randn(rank, in_flat, generator=gen)
        up = torch.randn(out_dim, rank, generator=gen)
    scale = (alpha / rank) if alpha is not None else 1.0
    t = {"up": up, "down": down}
    return _fit(
        lambda t: scale * (t["up"].flatten(1) @ t["down"].flatten(1)), t, ["up", "down"], DELTA_FRACTION * _norm(w)
    )


def loha_tensors(w, rank, alpha, gen):
    o, i = w.shape[0], w[0].numel()
    t = {
        k: torch.randn(*s, generator=gen)
        for k, s in (("w1a", (o, rank)), ("w1b", (rank, i)), ("w2a", (o, rank)), ("w2b", (rank, i)))
    }
    scale = alpha / rank
    return _fit(
        lambda t: scale * (t["w1a"] @ t["w1b"]) * (t["w2a"] @ t["w2b"]), t, ["w1a", "w2a"], DELTA_FRACTION * _norm(w)
    )


def lokr_tensors(w, rank, alpha, gen, factor=4):
    o, i = w.shape[0], w[0].numel()
    a = factor if o % factor == 0 else 1
    c = factor if i % factor == 0 else 1
    b, d = o // a, i // c
    t = {
        "w1": torch.randn(a, c, generator=gen),
        "w2a": torch.randn(b, rank, generator=gen),
        "w2b": torch.randn(rank, d, generator=gen),
    }
    scale = alpha / rank
    return _fit(lambda t: scale * torch.kron(t["w1"], t["w2a"] @ t["w2b"]), t, ["w1", "w2a"], DELTA_FRACTION * _norm(w))


def f16(t):
    return t.to(torch.float16).contiguous()


def write_lora(path, sd):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    safetensors.torch.save_file({k: f16(v) for k, v in sd.items()}, path)


def kohya(targets, weights, rank, alpha, seed, dora=False):
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for t in targets:
        w = weights[t["key"]]
        lt = lora_tensors(w, rank, alpha, gen)
        n = t["kohya"]
        sd[n + ".lora_down.weight"] = lt["down"]
        sd[n + ".lora_up.weight"] = lt["up"]
        if alpha is not None:
            sd[n + ".alpha"] = torch.tensor(float(alpha))
        if dora:
            w2 = w.reshape(w.shape[0], -1)
            row = w2.norm(dim=1, keepdim=True)
            sd[n + ".dora_scale"] = (row * (1.0 + 0.05 * torch.randn(row.shape, generator=gen))).reshape(
                w.shape[0], *[1] * (w.dim() - 1)
            )
    return sd


def build_loras(loras_dir, tg):
    W = tg.weights
    te = tg.te
    tr = tg.unet_transformer()
    rn = tg.unet_resnet()
    files = {}

    def rec(name, fmt, targets, rank, alpha, sd, **extra):
        files[name] = dict(
            format=fmt,
            rank=rank,
            alpha=alpha,
            unet_modules=sum(1 for t in targets if t["key"].startswith("diffusion_model.")),
            te_modules=sum(1 for t in targets if not t["key"].startswith("diffusion_model.")),
            tensors=len(sd),
            modules=sorted(t["key"] for t in targets),
            **extra,
        )
        write_lora(os.path.join(loras_dir, name), sd)

    a_targets = tr + te
    rec("kohya_lora_a.safetensors", "kohya-lora", a_targets, 8, 4.0, kohya(a_targets, W, 8, 4.0, 101))

    b_targets = a_targets[::2]
    rec("kohya_lora_b.safetensors", "kohya-lora", b_targets, 4, 2.0, kohya(b_targets, W, 4, 2.0, 102))

    c_targets = tr + rn + te
    rec(
        "locon_conv.safetensors",
        "kohya-locon",
        c_targets,
        4,
        1.0,
        kohya(c_targets, W, 4, 1.0, 103),
        conv3x3_modules=sum(1 for t in c_targets if t.get("kind") == "conv3x3"),
    )

    gen = torch.Generator().manual_seed(104)
    sd = {}
    h_targets = [t for t in tr if t["kind"] == "linear"] + te
    for t in h_targets:
        h = loha_tensors(W[t["key"]], 4, 2.0, gen)
        n = t["kohya"]
        sd[n + ".hada_w1_a"], sd[n + ".hada_w1_b"] = h["w1a"], h["w1b"]
        sd[n + ".hada_w2_a"], sd[n + ".hada_w2_b"] = h["w2a"], h["w2b"]
        sd[n + ".alpha"] = torch.tensor(2.0)
    rec("loha.safetensors", "lycoris-loha", h_targets, 4, 2.0, sd)

    gen = torch.Generator().manual_seed(105)
    sd = {}
    k_targets = tr + te
    for t in k_targets:
        k = lokr_tensors(W[t["key"]], 4, 2.0, gen)
        n = t["kohya"]
        sd[n + ".lokr_w1"], sd[n + ".lokr_w2_a"], sd[n + ".lokr_w2_b"] = k["w1"], k["w2a"], k["w2b"]
        sd[n + ".alpha"] = torch.tensor(2.0)
    rec("lokr.safetensors", "lycoris-lokr", k_targets, 4, 2.0, sd)

    d_targets = [t for t in tr if t["kind"] == "linear"] + te
    rec("dora.safetensors", "kohya-dora", d_targets, 8, 8.0, kohya(d_targets, W, 8, 8.0, 106, dora=True))

    # diffusers/PEFT naming. UNet: "unet.<diffusers path>.lora_A/B.weight" for every module whose diffusers path
    # ComfyUI maps; attention projections only under the old attention-processor names
    # ("...attn1.processor.to_q", "...processor.to_out"), because model_lora_keys_unet rewrites ".to_" into
    # ".processor.to_" for SD1.5. UNet keys carry an alpha tensor (ComfyUI reads "<name>.alpha"),
    # text-encoder keys ("text_encoder.text_model.encoder.layers.N.<module>") carry none (scale 1.0).
    gen = torch.Generator().manual_seed(107)
    sd = {}
    p_targets = tr + [t for t in rn if t["kind"] == "linear"] + te
    for t in p_targets:
        is_unet = t["key"].startswith("diffusion_model.")
        alpha = 4.0 if is_unet else None
        lt = lora_tensors(W[t["key"]], 8, alpha, gen)
        n = t["peft"]
        sd[n + ".lora_A.weight"] = lt["down"]
        sd[n + ".lora_B.weight"] = lt["up"]
        if alpha is not None:
            sd[n + ".alpha"] = torch.tensor(alpha)
    rec("peft_named.safetensors", "diffusers-peft", p_targets, 8, "4.0 on unet keys, none on te keys", sd)

    n_targets = [t for t in tr if ".attn2." in t["diffusers"]] + [t for t in te if "_mlp_" in t["kohya"]]
    rec("sub/nested_lora.safetensors", "kohya-lora", n_targets, 2, 1.0, kohya(n_targets, W, 2, 1.0, 108))

    pkl = os.path.join(loras_dir, "not_a_lora.ckpt")
    torch.save({"state_dict": {"x": torch.zeros(2)}, "note": "pickle: must never be loaded"}, pkl)
    files["not_a_lora.ckpt"] = {"format": "torch pickle (refusal test)"}
    return files


def verify_lora(path, key_map, expected_modules):
    sd = comfy.utils.load_torch_file(path, safe_load=True)
    import logging

    seen = []

    class H(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    h = H(level=logging.WARNING)
    logging.getLogger().addHandler(h)
    try:
        patches = comfy.lora.load_lora(comfy.lora_convert.convert_lora(sd), key_map)
    finally:
        logging.getLogger().removeHandler(h)
    bad = [m for m in seen if "lora key not loaded" in m]
    if bad:
        raise RuntimeError(f"{path}: ComfyUI did not load {len(bad)} keys, e.g. {bad[:3]}")
    if sorted(patches) != sorted(expected_modules):
        raise RuntimeError(f"{path}: patches {len(patches)} != expected {len(expected_modules)}")


def builder_hash():
    with open(os.path.abspath(__file__), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(dest):
    dest = os.path.abspath(dest)
    ckpt_dir = os.path.join(dest, "models", "checkpoints")
    loras_dir = os.path.join(dest, "models", "loras")
    os.makedirs(ckpt_dir, exist_ok=True)
    os.makedirs(loras_dir, exist_ok=True)
    manifest = {
        "builder_version": BUILDER_VERSION,
        "builder_sha256": builder_hash(),
        "delta_fraction": DELTA_FRACTION,
        "checkpoints": {},
        "loras": {},
    }
    try:
        import comfyui_version

        manifest["comfyui_version"] = comfyui_version.__version__
    except ImportError:
        manifest["comfyui_version"] = None
    for name, seed in (("tiny_a.safetensors", 1), ("tiny_b.safetensors", 2)):
        manifest["checkpoints"][name] = build_checkpoint(os.path.join(ckpt_dir, name), seed)
    fp8 = build_fp8_checkpoint(os.path.join(ckpt_dir, "tiny_a.safetensors"), os.path.join(ckpt_dir, "tiny_fp8.safetensors"))
    manifest["quantized_checkpoints"] = {"tiny_fp8.safetensors": fp8}
    unet_map, clip_map, weights, diffusers, _ = load_key_maps(os.path.join(ckpt_dir, "tiny_a.safetensors"))
    _, _, _, _, _ = load_key_maps(os.path.join(ckpt_dir, "tiny_b.safetensors"))  # detection check only
    tg = Targets(unet_map, clip_map, weights, diffusers)
    manifest["loras"] = build_loras(loras_dir, tg)
    key_map = dict(unet_map)
    key_map.update(clip_map)
    for name, info in manifest["loras"].items():
        if "modules" in info:
            verify_lora(os.path.join(loras_dir, name), key_map, info["modules"])
    with open(os.path.join(dest, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    print("assets written to", dest)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: build_assets.py DEST_DIR")
    main(sys.argv[1])
