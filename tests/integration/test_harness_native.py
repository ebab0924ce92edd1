"""Proves the harness against ComfyUI's own nodes (no node of this pack is used here).

(a) native LoraLoader on -> removed on one server == a fresh server's no-LoRA baseline, bit for bit;
(b) every LoRA file we build is loaded by ComfyUI (no "lora key not loaded" & co. in the log) and changes the
    latent through the UNet part and through the text-encoder part;
(c) the pickle decoy exists in the loras folder and ComfyUI lists it.
"""

import os

import pytest
import torch
from comfy_harness import (
    ASSET_CHECKPOINTS,
    ASSET_LORAS,
    ASSET_PICKLE,
    SAVE_NODE,
    ComfyServer,
    lora_problems,
    native_prompt,
    read_latent,
)

CKPT = "tiny_a.safetensors"


def _latent(server, prompt):
    entry = server.run_prompt(prompt)
    return read_latent(server, entry, SAVE_NODE)


@pytest.fixture(scope="module")
def shared_server(comfy_assets):
    with ComfyServer(comfy_assets) as srv:
        yield srv


@pytest.fixture(scope="module")
def baseline(shared_server):
    return _latent(shared_server, native_prompt(CKPT, prefix="baseline"))


def test_assets_listed(shared_server):
    ckpts = shared_server.object_info("CheckpointLoaderSimple")["input"]["required"]["ckpt_name"][0]
    loras = shared_server.object_info("LoraLoader")["input"]["required"]["lora_name"][0]
    for name in ASSET_CHECKPOINTS:
        assert name in ckpts
    for name in ASSET_LORAS:
        assert name in loras, (name, loras)


def test_pickle_decoy_present(comfy_assets, shared_server):
    """(c) The .ckpt pickle lies in the loras folder and ComfyUI offers it; tests of the pack's refusal use it."""
    path = os.path.join(comfy_assets, "models", "loras", ASSET_PICKLE)
    assert os.path.isfile(path)
    with open(path, "rb") as f:
        assert f.read(2) == b"PK"  # torch.save zip container holding a pickle
    loras = shared_server.object_info("LoraLoader")["input"]["required"]["lora_name"][0]
    assert ASSET_PICKLE in loras


def test_baseline_is_sane(shared_server, baseline):
    assert baseline.dtype == torch.float32
    assert tuple(baseline.shape) == (1, 4, 8, 8)
    assert torch.isfinite(baseline).all()
    other_seed = _latent(shared_server, native_prompt(CKPT, seed=4321, prefix="other_seed"))
    assert not torch.equal(other_seed, baseline)


def test_checkpoints_differ(shared_server, baseline):
    other = _latent(shared_server, native_prompt("tiny_b.safetensors", prefix="ckpt_b"))
    assert not torch.equal(other, baseline)


@pytest.mark.parametrize("lora", ASSET_LORAS)
def test_each_lora_loads_and_changes_latent(shared_server, baseline, lora):
    """(b) Full strength, UNet only and text encoder only each change the latent; nothing left unloaded."""
    mark = shared_server.log_mark()
    tag = lora.replace("/", "_").replace(".", "_")
    full = _latent(shared_server, native_prompt(CKPT, loras=[(lora, 1.0, 1.0)], prefix="full_" + tag))
    unet = _latent(shared_server, native_prompt(CKPT, loras=[(lora, 1.0, 0.0)], prefix="unet_" + tag))
    te = _latent(shared_server, native_prompt(CKPT, loras=[(lora, 0.0, 1.0)], prefix="te_" + tag))
    problems = lora_problems(shared_server.log_since(mark))
    assert not problems, problems[:10]
    for name, lat in (("full", full), ("unet-only", unet), ("te-only", te)):
        assert torch.isfinite(lat).all(), name
        assert not torch.equal(lat, baseline), f"{lora} {name} left the latent unchanged"
        rel = float((lat - baseline).norm() / baseline.norm())
        assert rel > 1e-3, f"{lora} {name}: relative change only {rel:.2e}"
    assert not torch.equal(unet, te)


def test_loras_differ_from_each_other(shared_server):
    lats = {}
    for lora in ASSET_LORAS:
        tag = lora.replace("/", "_").replace(".", "_")
        lats[lora] = _latent(shared_server, native_prompt(CKPT, loras=[(lora, 1.0, 1.0)], prefix="full_" + tag))
    names = list(lats)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.equal(lats[a], lats[b]), (a, b)


def test_native_lora_removed_matches_fresh_baseline(comfy_server):
    """(a) The bar for the pack's nodes: after a LoRA is removed, the output equals a fresh server's."""
    srv = comfy_server()
    on = _latent(
        srv,
        native_prompt(
            CKPT, loras=[("kohya_lora_a.safetensors", 1.0, 1.0), ("locon_conv.safetensors", 0.7, 0.5)], prefix="on"
        ),
    )
    one = _latent(srv, native_prompt(CKPT, loras=[("loha.safetensors", 0.8, 1.0)], prefix="one"))
    removed = _latent(srv, native_prompt(CKPT, prefix="removed"))
    assert not lora_problems(srv.log_text())

    fresh = comfy_server()
    base = _latent(fresh, native_prompt(CKPT, prefix="fresh"))
    assert not torch.equal(on, base)
    assert not torch.equal(one, base)
    assert torch.equal(removed, base), f"removed LoRA left a trace: max |diff| {float((removed - base).abs().max())}"
