"""The checkpoint and the five LoRAs each size runs on, in a folder a ComfyServer reads models from.

tiny: the integration tests' assets (SD1.5 one-level UNet fp16 + CLIP-L, five LoRAs of mixed formats: kohya
LoRA x2, LoCon with 3x3 convs, LoHa, LoKr), hard-linked into a folder of their own. sd15 / sdxl: built once by
build.py under ComfyUI's Python (sd15: a few minutes, ~2.5 GB; sdxl: ~7.5 GB, and over 10 GB of memory while it
builds). Every folder also holds the checkpoint under a second name, `<name>_ours.safetensors` (a hard link):
native prompts load one name and LoRA State's prompts the other, so that ComfyUI loads two separate models and
the native chain's patching and LoRA State's in-place writes never share one.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

from .harness import HARNESS_DIR, build_test_assets, comfy_paths

HERE = os.path.dirname(os.path.abspath(__file__))

SIZES = {
    "tiny": {"description": "random-weight SD1.5 one-level UNet (fp32 on CPU) + CLIP-L (fp16); 5 LoRAs: kohya LoRA "
                            "x2, LoCon with 3x3 convs, LoHa, LoKr",
             "server_args": [], "memory_both_gb": 3},
    "sd15": {"description": "random-weight full-size SD1.5 (860M-parameter UNet, fp32 on CPU) + CLIP-L (fp16); 5 "
                            "rank-32 kohya LoRAs on its 192 UNet transformer and 72 text-encoder keys",
             "server_args": [], "memory_both_gb": 12},
    "sdxl": {"description": "random-weight full-size SDXL (2.6G-parameter UNet + CLIP-L and CLIP-G, fp16 as on GPUs: "
                            "--fp16-unet --fp16-text-enc); 5 rank-32 kohya LoRAs on its 722 UNet transformer and 264 "
                            "text-encoder keys", "server_args": ["--fp16-unet", "--fp16-text-enc"], "memory_both_gb": 27},
}
# memory_both_gb: both sides on one server, each its loaded model plus a second copy of the touched keys (native's
# patched tensors; LoRA State's clean copies in exact/auto), plus the server. SDXL: 2 x (6.8 + 5.8) + 1.
TINY_LORAS = ["kohya_lora_a.safetensors", "kohya_lora_b.safetensors", "locon_conv.safetensors", "loha.safetensors",
              "lokr.safetensors"]
TINY_CHECKPOINT = "tiny_a.safetensors"


def default_dir(size: str, root: str | None) -> str:
    if root:
        return os.path.join(root, size)
    return os.path.join("/tmp", f"lora_state_bench_{size}")


def _link(src: str, dst: str) -> None:
    """dst as a hard link to src (a copy across file systems); a stale one (src rebuilt since) is replaced."""
    if os.path.exists(dst):
        if os.path.samefile(src, dst) or (os.path.getsize(src) == os.path.getsize(dst)
                                          and os.path.getmtime(dst) >= os.path.getmtime(src)):
            return
        os.remove(dst)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:          # another file system: a copy
        shutil.copy2(src, dst)


def ours_name(checkpoint: str) -> str:
    stem, ext = os.path.splitext(checkpoint)
    return f"{stem}_ours{ext}"


def prepare(size: str, root: str | None = None) -> dict:
    """Build (once) and return {"dir", "checkpoint", "checkpoint_ours", "loras", "description", "server_args"}."""
    dest = default_dir(size, root)
    if size == "tiny":
        source = os.environ.get("LORA_STATE_COMFY_ASSETS") or os.path.join("/tmp", "lora_state_comfy_assets")
        build_test_assets(source)
        for name in TINY_LORAS:
            _link(os.path.join(source, "models", "loras", name), os.path.join(dest, "models", "loras", name))
        _link(os.path.join(source, "models", "checkpoints", TINY_CHECKPOINT),
              os.path.join(dest, "models", "checkpoints", TINY_CHECKPOINT))
        checkpoint, loras = TINY_CHECKPOINT, list(TINY_LORAS)
    else:
        manifest_path = os.path.join(dest, "bench_manifest.json")
        if not os.path.isfile(manifest_path):
            comfy_path, python = comfy_paths()
            print(f"building the {size} assets into {dest} (once)...", flush=True)
            subprocess.run([python, os.path.join(HERE, "build.py"), size, dest], cwd=comfy_path, check=True,
                           env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")))
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        checkpoint, loras = manifest["checkpoint"], manifest["loras"]
    directory = os.path.join(dest, "models", "checkpoints")
    _link(os.path.join(directory, checkpoint), os.path.join(directory, ours_name(checkpoint)))
    return {"dir": dest, "checkpoint": checkpoint, "checkpoint_ours": ours_name(checkpoint), "loras": loras,
            "description": SIZES[size]["description"], "server_args": list(SIZES[size]["server_args"]),
            "harness": HARNESS_DIR}
