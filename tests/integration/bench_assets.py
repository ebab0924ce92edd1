"""Benchmark assets of real size (not a test): a random-weight checkpoint with the full SD1.5 UNet and CLIP-L, and
five rank-32 kohya LoRAs on its 192 transformer keys and 72 text-encoder keys.

Run as a subprocess with ComfyUI's Python and cwd = the ComfyUI checkout (like build_assets.py, whose builders it
reuses):  python bench_assets.py DEST_DIR
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_assets as assets  # noqa: E402  (sets ComfyUI up for CPU first)

# The UNet config ComfyUI detects for an SD1.5 checkpoint.
SD15_UNET = dict(assets.UNET_CONFIG, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
RANK, ALPHA, LORAS = 32, 16.0, 5


def main(dest):
    ckpt_dir, lora_dir = os.path.join(dest, "models", "checkpoints"), os.path.join(dest, "models", "loras")
    os.makedirs(ckpt_dir, exist_ok=True)
    os.makedirs(lora_dir, exist_ok=True)
    assets.UNET_CONFIG = SD15_UNET
    ckpt = os.path.join(ckpt_dir, "sd15_size.safetensors")
    info = assets.build_checkpoint(ckpt, seed=11)
    unet_map, clip_map, weights, diffusers, _ = assets.load_key_maps(ckpt)
    targets = assets.Targets(unet_map, clip_map, weights, diffusers)
    unet, te = targets.unet_transformer(), targets.te
    manifest = {"checkpoint": "sd15_size.safetensors", "params": info["params"], "unet_keys": len(unet),
                "te_keys": len(te), "rank": RANK, "loras": []}
    for index in range(LORAS):
        name = f"sd15_r32_{index}.safetensors"
        assets.write_lora(os.path.join(lora_dir, name),
                          assets.kohya(unet + te, weights, RANK, ALPHA, seed=500 + index))
        manifest["loras"].append(name)
    with open(os.path.join(dest, "bench_manifest.json"), "w") as handle:
        json.dump(manifest, handle, indent=1)
    print(json.dumps(manifest))


if __name__ == "__main__":
    main(sys.argv[1])
