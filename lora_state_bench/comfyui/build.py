"""Random-weight benchmark assets of a real model size, built with ComfyUI's own classes (not a test).

Run as a subprocess with ComfyUI's Python and cwd = the ComfyUI checkout (assets.py does this; it reuses the
builders of tests/integration/build_assets.py, which set ComfyUI up for CPU):

    python build.py sd15 DEST_DIR     # full SD1.5: 860M-parameter UNet + CLIP-L, fp16 on disk
    python build.py sdxl DEST_DIR     # full SDXL: 2.6G-parameter UNet + CLIP-L + CLIP-G, fp16 on disk
    python build.py sdxl --check [DEST_DIR]   # only the configuration: detected model, parameters, LoRA target
                                      # keys (modules allocated, never initialised or written: seconds, no disk);
                                      # with DEST_DIR, also loads its LoRAs with ComfyUI's load_lora

Each writes DEST_DIR/models/checkpoints/<size>_size.safetensors, five rank-32 kohya LoRAs
DEST_DIR/models/loras/<size>_r32_<i>.safetensors on every transformer Linear / 1x1 conv of the UNet (attention
q/k/v/out, feed-forward, proj_in/out) and every attention/MLP Linear of the text encoder(s), and
DEST_DIR/bench_manifest.json. The UNet configs are the ones ComfyUI's model detection produces for real SD1.5 and
SDXL checkpoints; the build checks that ComfyUI detects the written checkpoint as that model.
"""
import json
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import build_assets as assets  # first (it sorts first too): sets ComfyUI up for CPU before comfy.* imports
import comfy.lora
import comfy.model_detection
import comfy.sd
import comfy.taesd.taesd
import comfy.utils
import torch

RANK, ALPHA, LORAS = 32, 16.0, 5

# The UNet configs ComfyUI detects for SD1.5 and SDXL checkpoints (comfy/model_detection.py).
SD15_UNET = dict(assets.UNET_CONFIG, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
SDXL_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
             "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
             "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
             "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
             "use_temporal_attention": False, "use_temporal_resblock": False}


def build_sd15(dest):
    """As tests/integration/bench_assets.py built it (same seeds and names: earlier builds stay valid)."""
    ckpt_dir, lora_dir = os.path.join(dest, "models", "checkpoints"), os.path.join(dest, "models", "loras")
    os.makedirs(ckpt_dir, exist_ok=True)
    os.makedirs(lora_dir, exist_ok=True)
    assets.UNET_CONFIG = SD15_UNET
    ckpt = os.path.join(ckpt_dir, "sd15_size.safetensors")
    info = assets.build_checkpoint(ckpt, seed=11)
    unet_map, clip_map, weights, diffusers, _ = assets.load_key_maps(ckpt)
    targets = assets.Targets(unet_map, clip_map, weights, diffusers)
    unet, te = targets.unet_transformer(), targets.te
    manifest = {"size": "sd15", "checkpoint": "sd15_size.safetensors", "params": info["params"],
                "unet_keys": len(unet), "te_keys": len(te), "rank": RANK, "loras": []}
    for index in range(LORAS):
        name = f"sd15_r32_{index}.safetensors"
        assets.write_lora(os.path.join(lora_dir, name),
                          assets.kohya(unet + te, weights, RANK, ALPHA, seed=500 + index))
        manifest["loras"].append(name)
    return manifest


def sdxl_model(dtype, initialise):
    """The SDXL BaseModel and CLIP (L + G) from ComfyUI's classes, in `dtype`; random weights if `initialise`."""
    model_config = comfy.model_detection.model_config_from_unet_config(dict(SDXL_UNET))
    if model_config is None or type(model_config).__name__ != "SDXL":
        raise RuntimeError(f"UNet config not detected as SDXL: {model_config}")
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device="cpu")
    clip = comfy.sd.CLIP(model_config.clip_target({}), model_options={"dtype": dtype})
    left = []
    if initialise:
        left = assets.torch_reset(model) + assets.torch_reset(clip.cond_stage_model)
        with torch.no_grad():
            for module in (model, clip.cond_stage_model):
                for name, p in module.named_parameters():
                    if p.is_floating_point() and torch.isnan(p).any():
                        p.fill_(1.0 if ("scale" in name or name.endswith("weight")) else 0.0)
    return model, clip, left


def key_map(model, clip):
    """ComfyUI's LoRA key maps (LoRA name -> model key) for the model and its text encoders."""
    return comfy.lora.model_lora_keys_unet(model, {}), comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})


def lora_targets(model, clip):
    """(kohya name, model key) of every UNet transformer Linear / 1x1 conv and every text-encoder attention/MLP
    Linear, as ComfyUI's own key maps name them."""
    unet_map, clip_map = key_map(model, clip)
    params = dict(model.named_parameters())
    unet = []
    for diffusers_key, unet_key in comfy.utils.unet_to_diffusers(model.model_config.unet_config).items():
        if not diffusers_key.endswith(".weight") or ".attentions." not in diffusers_key:
            continue
        key = "diffusion_model." + unet_key
        weight = params.get(key)
        if weight is None or weight.dim() < 2 or (weight.dim() == 4 and weight.shape[-1] != 1):
            continue
        kohya = "lora_unet_" + diffusers_key[: -len(".weight")].replace(".", "_")
        if unet_map.get(kohya) == key:
            unet.append({"kohya": kohya, "key": key})
    te, seen = [], set()
    for kohya in sorted(clip_map):
        if re.match(r"lora_te[12]?_text_model_encoder_layers_\d+_(self_attn|mlp)_", kohya) and \
                clip_map[kohya] not in seen:
            seen.add(clip_map[kohya])
            te.append({"kohya": kohya, "key": clip_map[kohya]})
    return sorted(unet, key=lambda t: t["key"]), te


def check_sdxl(dest=None):
    """The configuration without the weights: parameters are allocated (never touched, so they take no memory).
    With `dest` (a built folder), also loads each LoRA there with ComfyUI's load_lora against the key maps: every
    tensor must be used and every target module patched."""
    model, clip, _ = sdxl_model(torch.float16, initialise=False)
    unet, te = lora_targets(model, clip)
    unet_params = sum(p.numel() for p in model.diffusion_model.parameters())
    clip_params = {name: sum(p.numel() for p in getattr(clip.cond_stage_model, name).parameters())
                   for name in ("clip_l", "clip_g")}
    verified = []
    if dest:
        unet_map, clip_map = key_map(model, clip)
        with open(os.path.join(dest, "bench_manifest.json")) as handle:
            for lora in json.load(handle)["loras"]:
                assets.verify_lora(os.path.join(dest, "models", "loras", lora), unet_map | clip_map,
                                   [t["key"] for t in unet + te])
                verified.append(lora)
    params = dict(model.named_parameters()) | dict(clip.cond_stage_model.named_parameters())
    touched = sum(params[t["key"]].numel() for t in unet + te if t["key"] in params)
    return {"size": "sdxl", "loras_verified": verified, "touched_params": touched, "detected": type(model.model_config).__name__, "unet_params": unet_params,
            "clip_params": clip_params, "unet_keys": len(unet), "te_keys": len(te),
            "te_keys_by_encoder": {p: sum(t["kohya"].startswith(p) for t in te) for p in ("lora_te1_", "lora_te2_")},
            "unet_key_kinds": sorted({re.sub(r".*transformer_blocks_\d+_|.*attentions_\d+_", "", t["kohya"])
                                      for t in unet})}


def build_sdxl(dest):
    """SDXL in fp16 (as ComfyUI runs it on GPUs, and with --fp16-unet here), built and saved in fp16."""
    ckpt_dir, lora_dir = os.path.join(dest, "models", "checkpoints"), os.path.join(dest, "models", "loras")
    os.makedirs(ckpt_dir, exist_ok=True)
    os.makedirs(lora_dir, exist_ok=True)
    torch.manual_seed(12)
    model, clip, left = sdxl_model(torch.float16, initialise=True)
    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    assets.torch_reset(vae)
    with torch.no_grad():
        vae.vae_scale.fill_(1.0)
        vae.vae_shift.fill_(0.0)
    sd = assets.state_dict_for_saving(model, clip.get_sd(), vae.state_dict())
    out = {}
    for key, tensor in sd.items():
        tensor = tensor.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        out[key] = tensor.contiguous()
    detected = comfy.model_detection.model_config_from_unet(out, "model.diffusion_model.")
    if type(detected).__name__ != "SDXL":
        raise RuntimeError(f"the written checkpoint would be detected as {type(detected).__name__}, not SDXL")
    name = "sdxl_size.safetensors"
    assets.safetensors.torch.save_file(out, os.path.join(ckpt_dir, name))
    params = int(sum(t.numel() for t in out.values()))
    del out, sd, vae
    unet, te = lora_targets(model, clip)
    unet_map, clip_map = key_map(model, clip)
    verify_maps = unet_map | clip_map
    weights = dict(model.named_parameters()) | {k: v for k, v in clip.cond_stage_model.state_dict().items()}
    weights = {t["key"]: weights[t["key"]].detach() for t in unet + te}
    del model, clip
    manifest = {"size": "sdxl", "checkpoint": name, "params": params, "unet_keys": len(unet), "te_keys": len(te),
                "rank": RANK, "loras": [], "left_uninitialised_then_filled": left}
    for index in range(LORAS):
        lora = f"sdxl_r32_{index}.safetensors"
        assets.write_lora(os.path.join(lora_dir, lora),
                          assets.kohya(unet + te, weights, RANK, ALPHA, seed=700 + index))
        manifest["loras"].append(lora)
    if verify_maps is not None:
        for lora in manifest["loras"]:
            assets.verify_lora(os.path.join(lora_dir, lora), verify_maps, [t["key"] for t in unet + te])
    return manifest


def main(argv):
    if len(argv) not in (2, 3) or argv[0] not in ("sd15", "sdxl"):
        sys.exit("usage: build.py sd15|sdxl DEST_DIR  |  build.py sdxl --check [BUILT_DIR]")
    size, dest = argv[:2]
    if dest == "--check":
        built = argv[2] if len(argv) == 3 else None
        print(json.dumps(check_sdxl(built) if size == "sdxl" else {"size": size, "unet_config": SD15_UNET}))
        return
    manifest = build_sd15(dest) if size == "sd15" else build_sdxl(dest)
    with open(os.path.join(dest, "bench_manifest.json"), "w") as handle:
        json.dump(manifest, handle, indent=1)
    print(json.dumps(manifest))


if __name__ == "__main__":
    main(sys.argv[1:])
