"""The two backends in a real ComfyUI server: in place where LoRA State owns the weights, ComfyUI patches elsewhere.

- Read-only file-backed weights (what Dynamic VRAM gives every model on NVIDIA since 2026), built by the test-only
  node in file_backed_weights_node/ exactly as ComfyUI builds them. Each edit of the stack must give the latent of
  ComfyUI's own patches for the same stack (a native LoraLoader chain on the same kind of weights, on a second
  server), and no write may land in them: one would kill the server (SIGSEGV), which fails the test instead of
  pytest, since the server is a child process.
- A scaled-fp8 checkpoint, loaded by ComfyUI with its quantized / mixed-precision ops: the LoRA is applied (as
  ComfyUI patches, requantized by ComfyUI) and equals native, where it used to be skipped.
- A native LoraLoader before or after LoRA Reconcile: bit-identical to the equivalent native chain.
"""
import pytest
import torch
from comfy_harness import (
    CKPT_NODE,
    COPIED_TO_VRAM,
    NEG_NODE,
    POS_NODE,
    SAMPLER_NODE,
    ComfyServer,
    assert_weights_verified,
    attach_model_clip_node,
    latent,
    lora_problems,
    native_prompt,
    pack_log_problems,
    patches_reason,
)
from test_pack import A, B, RECONCILE_NODE, _counter, ours_prompt

FILE_NODE = "90"
TEST_NODES = ("file_backed_weights_node",)
LOCON, LOHA, LOKR, DORA = "locon_conv.safetensors", "loha.safetensors", "lokr.safetensors", "dora.safetensors"


def file_backed(prompt):
    """Put the test node between the checkpoint loader and everything that uses its MODEL/CLIP."""
    prompt = dict(prompt)
    prompt[FILE_NODE] = {"class_type": "LoraStateTestFileBackedWeights",
                         "inputs": {"model": [CKPT_NODE, 0], "clip": [CKPT_NODE, 1]}}
    for node_id, node in prompt.items():
        if node_id == FILE_NODE:
            continue
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value[0] == CKPT_NODE and value[1] in (0, 1):
                node["inputs"][name] = [FILE_NODE, value[1]]
    return prompt


def ledger(server):
    return {m["kind"]: m for m in server.get("/lora_state/ledger")["models"]}


@pytest.fixture(scope="module")
def ro_ours(comfy_assets):
    with ComfyServer(comfy_assets, test_nodes=TEST_NODES) as server:
        if server.models_setting() == "gpu":
            pytest.skip(COPIED_TO_VRAM)
        assert server.pack_import_errors() == []
        yield server
        assert pack_log_problems(server.log_text()) == []


@pytest.fixture(scope="module")
def ro_reference(comfy_assets):
    with ComfyServer(comfy_assets, test_nodes=TEST_NODES) as server:
        yield server


@pytest.fixture(scope="module")
def ro_native(ro_reference):
    cache = {}

    def get(loras=(), ckpt="tiny_a.safetensors"):
        key = (tuple(loras), ckpt)
        if key not in cache:
            prompt = file_backed(native_prompt(ckpt, loras=list(loras), prefix=f"ref{next(_counter)}"))
            cache[key] = latent(ro_reference, prompt)
        return cache[key]
    return get


def test_read_only_weights_every_edit_equals_comfyui_patches(ro_ours, ro_native):
    steps = [
        ("add", [(A, 0.8, 0.6)], "exact"),
        ("add more", [(A, 0.8, 0.6), (B, 1.0, 1.0), (LOHA, 0.7, 0.7)], "auto"),
        ("re-weight", [(A, 0.3, 0.6), (B, 1.0, 1.0), (LOHA, 0.7, 0.7)], "auto"),
        ("reorder", [(LOHA, 0.7, 0.7), (A, 0.3, 0.6), (B, 1.0, 1.0)], "exact"),
        ("every format", [(LOCON, 0.9, 0.9), (LOKR, 0.5, 0.5), (DORA, 0.8, 0.8)], "delta"),
        ("remove", [(LOKR, 0.5, 0.5)], "auto"),
        ("empty", [], "auto"),
        ("again", [(B, -0.5, 0.4)], "exact"),
    ]
    for what, stack, mode in steps:
        got = latent(ro_ours, file_backed(ours_prompt(stack, mode=mode)))
        assert torch.equal(got, ro_native(stack)), f"{what}: {stack} ({mode}) differs from ComfyUI's own patches"
        models = ledger(ro_ours)
        for kind in ("model", "clip"):
            assert models[kind]["backup_bytes"] == 0, "no clean copy: the file is the clean copy"
            assert models[kind]["keys_in_place"] == 0
            assert models[kind]["backend"] == ("patches" if stack else "none"), models[kind]
        assert [s["name"] for s in models["model"]["stack"]] == [name for name, _, _ in stack]
    assert lora_problems(ro_ours.log_text()) == []


def test_read_only_weights_node_deleted_reset_free_and_checkpoint_switch(ro_ours, ro_native):
    stack = [(A, 1.0, 1.0), (B, 0.5, 0.5)]
    assert torch.equal(latent(ro_ours, file_backed(ours_prompt(stack, mode="auto"))), ro_native(stack))
    # The node deleted (or bypassed): the plain model is clean, and the ledger says so.
    assert torch.equal(latent(ro_ours, file_backed(ours_prompt([], reconcile=False))), ro_native([]))
    assert ledger(ro_ours)["model"]["stack"] == [] and ledger(ro_ours)["model"]["keys_as_patches"] == 0
    # Reset node downstream of a Reconcile: takes that Reconcile's patches off.
    prompt = file_backed(ours_prompt(stack, mode="exact"))
    prompt = attach_model_clip_node(prompt, "50", "LoraStateReset")
    assert torch.equal(latent(ro_ours, prompt), ro_native([]))
    # /free, then again; then another checkpoint and back.
    assert torch.equal(latent(ro_ours, file_backed(ours_prompt(stack, mode="exact"))), ro_native(stack))
    ro_ours.free()
    assert torch.equal(latent(ro_ours, file_backed(ours_prompt(stack, mode="exact"))), ro_native(stack))
    assert torch.equal(latent(ro_ours, file_backed(ours_prompt(stack, ckpt="tiny_b.safetensors"))),
                       ro_native(stack, "tiny_b.safetensors"))
    assert torch.equal(latent(ro_ours, file_backed(ours_prompt([], reconcile=False))), ro_native([]))
    assert torch.equal(latent(ro_ours, file_backed(ours_prompt(stack))), ro_native(stack))


def test_read_only_weights_route_reset_and_verify_write_nothing(ro_ours, ro_native):
    stack = [(A, 1.0, 1.0)]
    latent(ro_ours, file_backed(ours_prompt(stack, mode="exact")))
    model = ledger(ro_ours)["model"]
    assert model["backend"] == "patches" and model["keys_as_patches"] > 0
    summary = model["last_change"]["summary"]
    assert patches_reason(ro_ours, "read-only") in summary or patches_reason(ro_ours, "file") in summary
    status, verify = ro_ours.post("/lora_state/verify", {"id": model["id"]})
    assert status == 200 and verify["ok"]
    status, reset = ro_ours.post("/lora_state/reset", {"id": model["id"]})
    assert status == 200 and reset["ok"]
    # The reset route cannot take patches off a cached clone, and need not: the file is clean, and the next
    # plain prompt loads without them.
    assert torch.equal(latent(ro_ours, file_backed(ours_prompt([], reconcile=False))), ro_native([]))


# -- quantized / mixed precision ------------------------------------------------------------------------------
FP8 = "tiny_fp8.safetensors"


def test_quantized_checkpoint_gets_the_lora_like_native(ours, reference, comfy_assets_manifest):
    assert FP8 in comfy_assets_manifest["quantized_checkpoints"]
    plain = latent(reference, native_prompt(FP8, prefix=f"ref{next(_counter)}"))
    for stack, mode in (([(A, 1.0, 1.0)], "exact"), ([(A, 0.5, 1.0), (B, 1.0, 1.0)], "auto"),
                        ([(B, 1.0, 1.0)], "exact"), ([(B, 0.7, 0.2)], "delta")):
        got = latent(ours, ours_prompt(stack, mode=mode, ckpt=FP8))
        expected = latent(reference, native_prompt(FP8, loras=stack, prefix=f"ref{next(_counter)}"))
        setting = ours.models_setting()
        if mode == "exact" or setting == "dynamic":     # (under Dynamic VRAM every key is ComfyUI's patch)
            assert torch.equal(got, expected), f"{stack} ({mode}) on the fp8 checkpoint differs from native"
        elif setting == "cpu":   # the quantized keys are ComfyUI's patches; the others in place, within the drift
            torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
        else:
            assert_weights_verified(ours)      # comfy_harness.FP16_INFERENCE
        assert not torch.equal(got, plain), "the LoRA was not applied"
        model = ledger(ours)["model"]
        assert model["keys_as_patches"] > 0 and patches_reason(ours, "quantized") in model["last_change"]["summary"]
    assert torch.equal(latent(ours, ours_prompt([], reconcile=False, ckpt=FP8)), plain)
    assert lora_problems(ours.log_text()) == []


# -- a native LoraLoader in the same chain --------------------------------------------------------------------
@pytest.mark.parametrize("where", ["after", "before"])
def test_native_lora_loader_in_the_chain_is_bit_identical(ours, native, where):
    native_node = {"lora_name": B, "strength_model": 1.0, "strength_clip": 0.7}
    if where == "after":
        prompt = attach_model_clip_node(ours_prompt([(A, 1.0, 1.0)], mode="exact"), "30", "LoraLoader", native_node)
        chain = [(A, 1.0, 1.0), (B, 1.0, 0.7)]
    else:
        prompt = ours_prompt([(A, 1.0, 1.0)], mode="exact")
        prompt["30"] = {"class_type": "LoraLoader", "inputs": native_node | {"model": [CKPT_NODE, 0],
                                                                             "clip": [CKPT_NODE, 1]}}
        prompt[RECONCILE_NODE]["inputs"] |= {"model": ["30", 0], "clip": ["30", 1]}
        chain = [(B, 1.0, 0.7), (A, 1.0, 1.0)]
    for _ in range(2):   # the second run starts from the weights the first left
        assert torch.equal(latent(ours, prompt), native(chain))
        prompt[SAMPLER_NODE]["inputs"]["seed"] = 1234
    model = ledger(ours)["model"]
    assert model["keys_as_patches"] > 0 and patches_reason(ours, "another node") in model["last_change"]["summary"]
    assert torch.equal(latent(ours, ours_prompt([(A, 1.0, 1.0)], mode="exact")), native([(A, 1.0, 1.0)]))
    assert torch.equal(latent(ours, ours_prompt([], reconcile=False)), native([]))


def test_two_reconciles_in_a_chain_the_last_one_wins(ours, native):
    """A Reconcile downstream of another replaces its stack on every key, in place and as patches alike."""
    prompt = ours_prompt([(A, 1.0, 1.0)], mode="exact")
    prompt["30"] = {"class_type": "LoraLoader", "inputs": {"lora_name": B, "strength_model": 0.5,
                                                           "strength_clip": 0.5, "model": [CKPT_NODE, 0],
                                                           "clip": [CKPT_NODE, 1]}}
    prompt[RECONCILE_NODE]["inputs"] |= {"model": ["30", 0], "clip": ["30", 1]}
    prompt = attach_model_clip_node(prompt, "31", "LoraStateReconcile", {"mode": "exact"}, clip_output=1)
    prompt["31"]["inputs"]["lora_stack"] = prompt[RECONCILE_NODE]["inputs"]["lora_stack"]
    prompt[list(k for k in prompt if prompt[k]["class_type"] == "LoraStateStack")[0]]["inputs"] |= {
        "strength_model_1": 0.25}
    assert torch.equal(latent(ours, prompt), native([(B, 0.5, 0.5), (A, 0.25, 1.0)]))
    assert prompt[POS_NODE]["inputs"]["clip"] == ["31", 1] and prompt[NEG_NODE]["inputs"]["clip"] == ["31", 1]


# -- ComfyUI's patch compute dtype ---------------------------------------------------------------------------
def test_exact_follows_comfyui_patch_compute_dtype(comfy_server, comfy_env):
    """Where ComfyUI patches in fp16 (lora_compute_dtype: most NVIDIA GPUs), exact does too, and stays
    bit-identical to native. Forced here on CPU through the cache of ComfyUI's own lora_compute_dtype."""
    import os

    if "def lora_compute_dtype" not in open(os.path.join(comfy_env[0], "comfy", "model_management.py")).read():
        pytest.skip("this ComfyUI version always patches in fp32 (no lora_compute_dtype)")
    env = {"LORA_STATE_TEST_LORA_COMPUTE_DTYPE": "float16"}
    ours_fp16 = comfy_server(test_nodes=TEST_NODES, env=env)
    if ours_fp16.models_setting() != "cpu":
        pytest.skip("on a GPU ComfyUI patches in fp16 already (no fp32 reference to tell apart): every exact test "
                    "there checks this")
    native_fp16 = comfy_server(test_nodes=TEST_NODES, env=env)
    fp32_reference = comfy_server(test_nodes=TEST_NODES)
    for stack in ([(A, 1.0, 1.0), (B, 0.6, 0.6)], [(A, 0.5, 1.0), (B, 0.6, 0.6)], [(LOHA, 0.8, 0.8), (A, 1.0, 0.0)]):
        got = latent(ours_fp16, ours_prompt(stack, mode="exact"))
        expected = latent(native_fp16, native_prompt(loras=stack, prefix=f"ref{next(_counter)}"))
        assert torch.equal(got, expected), f"{stack}: exact differs from native with fp16 patching"
        in_fp32 = latent(fp32_reference, native_prompt(loras=stack, prefix=f"ref{next(_counter)}"))
        assert not torch.equal(got, in_fp32), "fp16 patching should give other bits than fp32 (the test's premise)"
    assert pack_log_problems(ours_fp16.log_text()) == []
