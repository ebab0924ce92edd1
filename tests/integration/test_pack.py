"""The pack in a real ComfyUI server: same pictures as native, never stale, friendly, incremental, routes.

One server ("ours") runs a long sequence of prompts with LoRA State nodes; every latent it produces is compared
bit for bit with what a server that only ever runs native nodes ("reference") gives for the equivalent native
prompt. Native LoraLoader is history-independent (test_harness_native proves it), so the reference server stands
for a fresh server.
"""
import copy
import json
import time
import urllib.error
import urllib.parse

import pytest
import torch
from comfy_harness import (
    CKPT_NODE,
    NEG_NODE,
    POS_NODE,
    SAMPLER_NODE,
    SAVE_NODE,
    PromptError,
    assert_weights_verified,
    attach_model_clip_node,
    lora_problems,
    native_prompt,
    latent,
    read_latent,
)

A, B = "kohya_lora_a.safetensors", "kohya_lora_b.safetensors"
STACK_NODE, RECONCILE_NODE = "20", "21"
_counter = iter(range(10_000))


def ours_prompt(stack, mode="exact", ckpt="tiny_a.safetensors", seed=1234, reconcile=True):
    """checkpoint -> LoRA Stack(s) -> LoRA Reconcile -> the sampler and both text encoders."""
    prompt = native_prompt(ckpt, seed=seed, prefix=f"ours{next(_counter)}")
    if not reconcile:
        return prompt
    source = None
    for chunk_index in range(0, max(len(stack), 1), 5):
        inputs = {} if source is None else {"lora_stack": source}
        for slot, (name, sm, sc) in enumerate(stack[chunk_index:chunk_index + 5], start=1):
            inputs |= {f"lora_{slot}": name, f"strength_model_{slot}": sm, f"strength_clip_{slot}": sc}
        node = str(int(STACK_NODE) + 100 + chunk_index)
        prompt[node] = {"class_type": "LoraStateStack", "inputs": inputs}
        source = [node, 0]
    return attach_model_clip_node(prompt, RECONCILE_NODE, "LoraStateReconcile", {"mode": mode, "lora_stack": source})


def test_nodes_are_registered(ours):
    info = ours.object_info()
    assert info["LoraStateStack"]["display_name"] == "LoRA Stack"
    assert info["LoraStateReconcile"]["display_name"] == "LoRA Reconcile"
    assert info["LoraStateReset"]["display_name"] == "Reset Model (LoRA State)"
    for node in ("LoraStateStack", "LoraStateReconcile", "LoraStateReset"):
        assert info[node]["category"] == "loaders/lora_state"
    assert info["LoraStateReconcile"]["output"] == ["MODEL", "CLIP", "STRING"]
    assert info["LoraStateStack"]["output"] == ["LORA_STACK", "STRING"]   # lora_stack, trigger_words


def test_node_api_v3_by_default_and_v1_on_request(ours, comfy_server, native):
    assert "registered through ComfyUI's V3 node API" in ours.log_text()
    v1 = comfy_server(env={"LORA_STATE_NODE_API": "v1"})
    assert "registered through ComfyUI's V1 node API" in v1.log_text() and v1.pack_import_errors() == []
    assert v1.object_info("LoraStateReconcile")["display_name"] == "LoRA Reconcile"
    stack = [(A, 0.8, 0.6)]
    assert torch.equal(latent(v1, ours_prompt(stack, mode="exact")), native(stack))
    assert torch.equal(latent(v1, ours_prompt([], reconcile=False)), native([]))


def test_exact_matches_native_chain_through_every_edit(ours, native):
    """Point 1 and 2: each edit of the stack gives the native chain's latent, bit for bit, on one server."""
    steps = [
        [(A, 0.8, 0.6), (B, 1.0, 1.0)],          # two LoRAs
        [(A, 0.8, 0.6), (B, 0.5, 1.0)],          # re-weight one
        [(B, 0.5, 1.0), (A, 0.8, 0.6)],          # reorder
        [(B, 0.5, 1.0)],                         # remove one
        [],                                      # stack emptied
        [(A, -0.7, 0.0)],                        # negative model strength, clip off
        [(A, 1.0, 1.0), (A, 0.5, 0.5)],          # the same LoRA twice
    ]
    for stack in steps:
        got = latent(ours, ours_prompt(stack, mode="exact"))
        assert torch.equal(got, native(stack)), f"stack {stack} differs from the native chain"


@pytest.mark.parametrize("lora", ["loha.safetensors", "lokr.safetensors", "dora.safetensors",
                                  "locon_conv.safetensors", "peft_named.safetensors", "sub/nested_lora.safetensors"])
def test_every_format_matches_native(ours, native, lora):
    stack = [(lora, 0.9, 0.7)]
    assert torch.equal(latent(ours, ours_prompt(stack, mode="exact")), native(stack))
    assert lora_problems(ours.log_text()) == []


def test_removed_node_leaves_nothing_behind(ours, native):
    """Reconcile node deleted / bypassed / muted: the API prompt just lacks it; the plain model must be clean."""
    for mode in ("auto", "exact"):
        latent(ours, ours_prompt([(A, 1.0, 1.0), (B, 1.0, 1.0)], mode=mode))
        assert torch.equal(latent(ours, ours_prompt([], reconcile=False)), native([]))


def test_plain_and_lora_samplers_in_one_prompt(ours, native):
    """One loader; sampler 1 (and its text encoders) through LoRA Reconcile, sampler 2 on the plain model/CLIP."""
    prompt = ours_prompt([(A, 1.0, 1.0)], mode="exact")
    plain = {"40": copy.deepcopy(prompt[POS_NODE]), "41": copy.deepcopy(prompt[NEG_NODE]),
             "42": copy.deepcopy(prompt[SAMPLER_NODE]), "43": copy.deepcopy(prompt[SAVE_NODE])}
    plain["40"]["inputs"]["clip"] = plain["41"]["inputs"]["clip"] = [CKPT_NODE, 1]
    plain["42"]["inputs"] |= {"model": [CKPT_NODE, 0], "positive": ["40", 0], "negative": ["41", 0]}
    plain["43"]["inputs"] |= {"samples": ["42", 0], "filename_prefix": f"plain{next(_counter)}"}
    prompt |= plain
    for _ in range(2):      # twice: the second run starts from the other sampler's weights
        entry = ours.run_prompt(prompt)
        assert torch.equal(read_latent(ours, entry, SAVE_NODE), native([(A, 1.0, 1.0)]))
        assert torch.equal(read_latent(ours, entry, "43"), native([]))
        prompt[SAMPLER_NODE]["inputs"]["seed"] = 1234    # unchanged: only the save prefixes differ
        prompt["43"]["inputs"]["filename_prefix"] = f"plain{next(_counter)}"
        prompt[SAVE_NODE]["inputs"]["filename_prefix"] = f"ours{next(_counter)}"


def test_lora_clip_and_plain_clip_in_one_prompt(ours, reference, native):
    """The model has no LoRA; the positive prompt is encoded with the LoRA'd CLIP, the negative with the plain one."""
    prompt = ours_prompt([(A, 0.0, 1.0)], mode="exact")
    prompt[SAMPLER_NODE]["inputs"]["model"] = [CKPT_NODE, 0]
    prompt[NEG_NODE]["inputs"]["clip"] = [CKPT_NODE, 1]
    same_graph_native = native_prompt("tiny_a.safetensors", loras=[(A, 0.0, 1.0)], prefix=f"mix{next(_counter)}")
    same_graph_native[SAMPLER_NODE]["inputs"]["model"] = [CKPT_NODE, 0]
    same_graph_native[NEG_NODE]["inputs"]["clip"] = [CKPT_NODE, 1]
    for _ in range(2):
        got = latent(ours, prompt)
        prompt[SAVE_NODE]["inputs"]["filename_prefix"] = f"mix{next(_counter)}"
        assert torch.equal(got, latent(reference, same_graph_native))
        assert not torch.equal(got, native([]))


def test_checkpoint_switch_and_back(ours, native):
    stack = [(A, 0.8, 0.8)]
    assert torch.equal(latent(ours, ours_prompt(stack, ckpt="tiny_b.safetensors")), native(stack, "tiny_b.safetensors"))
    assert torch.equal(latent(ours, ours_prompt([], ckpt="tiny_a.safetensors", reconcile=False)), native([]))
    assert torch.equal(latent(ours, ours_prompt(stack)), native(stack))


def test_native_lora_loader_mixed_with_ours(ours, native):
    """A native LoraLoader after our node: the same bits as the native chain, then off again."""
    prompt = ours_prompt([(A, 1.0, 1.0)], mode="exact")
    prompt = attach_model_clip_node(prompt, "30", "LoraLoader", {"lora_name": B, "strength_model": 1.0,
                                                                  "strength_clip": 1.0})
    assert torch.equal(latent(ours, prompt), native([(A, 1.0, 1.0), (B, 1.0, 1.0)]))
    assert torch.equal(latent(ours, native_prompt("tiny_a.safetensors", loras=[(B, 1.0, 1.0)],
                                                  prefix=f"nat{next(_counter)}")), native([(B, 1.0, 1.0)]))
    assert torch.equal(latent(ours, ours_prompt([], reconcile=False)), native([]))


def _ledger(server):
    return {m["kind"]: m for m in server.get("/lora_state/ledger")["models"]}


def test_incremental_one_strength_and_noop(ours):
    stack = [(A, 1.0, 1.0), (B, 1.0, 1.0)]
    latent(ours, ours_prompt(stack, mode="exact"))
    before = _ledger(ours)
    latent(ours, ours_prompt([(A, 1.0, 1.0), (B, 0.5, 1.0)], mode="exact"))
    change = _ledger(ours)["model"]["last_change"]
    b_keys = before["model"]["keys_by_lora"]
    b_sha = next(s for s in before["model"]["stack"] if s["name"] == B)["sha256"]
    in_place = ours.models_setting() != "dynamic"       # under Dynamic VRAM ComfyUI applies every key itself
    assert change["reweighted"] == [[B, 1.0, 0.5]] and change["keys_changed"] == (b_keys[b_sha] if in_place else 0)
    assert _ledger(ours)["clip"]["last_change"] == before["clip"]["last_change"]   # clip strengths unchanged
    # Unchanged stack, new seed: the sampler re-runs, no weight is written.
    mark = _ledger(ours)["model"]["last_change"]
    latent(ours, ours_prompt([(A, 1.0, 1.0), (B, 0.5, 1.0)], mode="exact", seed=7))
    assert _ledger(ours)["model"]["last_change"] == mark


def test_reset_node(ours, native):
    latent(ours, ours_prompt([(A, 1.0, 1.0)], mode="auto"))
    prompt = ours_prompt([], reconcile=False)
    prompt = attach_model_clip_node(prompt, "50", "LoraStateReset")
    assert torch.equal(latent(ours, prompt), native([]))
    assert _ledger(ours)["model"]["stack"] == [] and _ledger(ours)["model"]["backup_bytes"] == 0


def test_routes(ours):
    latent(ours, ours_prompt([(A, 1.0, 1.0)], mode="exact"))
    models = ours.get("/lora_state/ledger")["models"]
    model = next(m for m in models if m["kind"] == "model")
    assert model["stack"][0]["name"] == A and model["mode"] == "exact"
    assert (model["backup_bytes"] > 0) == (ours.models_setting() != "dynamic")   # clean copies only in place
    # Clean copies of GPU weights are page-locked through ComfyUI's own pinning, on NVIDIA/AMD, from 0.12 on: 0.8 to
    # 0.11 pin model parameters only (their PINNING_ALLOWED_TYPES), so the copies stay pageable there.
    version = tuple(int(p) for p in ours.get("/system_stats")["system"]["comfyui_version"].split(".")[:2])
    pinning = ours.models_setting() == "gpu" and "Enabled pinned memory" in ours.log_text() and version >= (0, 12)
    assert model["pinned_bytes"] == (model["backup_bytes"] if pinning else 0)
    status, verify = ours.post("/lora_state/verify", {"id": model["id"]})
    assert status == 200 and verify["ok"] and verify["max_ulps"] == 0
    for bad in ("../../etc/passwd", "/etc/passwd", "..\\x.safetensors", "missing.safetensors", "not_a_lora.ckpt",
                "%2e%2e/%2e%2e/etc/passwd"):
        with pytest.raises(RuntimeError, match=r"-> (404|422)"):
            ours.get("/lora_state/lora?name=" + urllib.parse.quote(bad))
    info = ours.get("/lora_state/lora?name=" + A)
    assert len(info["sha256"]) == 64
    assert ours.post("/lora_state/reset", {"id": "model-999"})[0] == 404
    assert ours.post("/lora_state/reset", {"id": ["not", "a", "string"]})[0] == 404
    status, reset = ours.post("/lora_state/reset", {"id": model["id"]})
    assert status == 200 and reset["ok"] and reset["model"]["stack"] == []


def test_reset_route_refuses_during_a_running_prompt(ours):
    latent(ours, ours_prompt([(A, 1.0, 1.0)], mode="exact"))
    model_id = _ledger(ours)["model"]["id"]
    slow = ours_prompt([(A, 1.0, 1.0)], mode="exact", seed=5)
    slow[SAMPLER_NODE]["inputs"]["steps"] = 40
    prompt_id = ours.queue_prompt(slow)
    deadline = time.time() + 30
    while time.time() < deadline and not ours.get("/queue")["queue_running"]:
        time.sleep(0.05)
    status, body = ours.post("/lora_state/reset", {"id": model_id})
    assert status == 409 and "running" in body["error"]
    ours.wait_history(prompt_id)
    assert _ledger(ours)["model"]["stack"][0]["name"] == A      # the refused reset changed nothing


@pytest.mark.parametrize("api", ["v3", "v1"])
def test_missing_lora_is_rejected_at_queue_time(ours, comfy_server, api):
    server = ours if api == "v3" else comfy_server(env={"LORA_STATE_NODE_API": "v1"})
    with pytest.raises(Exception, match="does_not_exist.*loras folders"):
        server.queue_prompt(ours_prompt([("does_not_exist.safetensors", 1.0, 1.0)]))


def assert_close_to_native(server, got, expected):
    """auto/delta against the native chain: within the drift in fp32 inference; bit-identical under Dynamic VRAM
    (ComfyUI patches every key); on a GPU the weights themselves (comfy_harness.FP16_INFERENCE)."""
    setting = server.models_setting()
    if setting == "cpu":
        torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
    elif setting == "dynamic":
        assert torch.equal(got, expected)
    else:
        assert_weights_verified(server)


def test_auto_stays_close_and_cleans_up_exactly(ours, native):
    for stack in ([(A, 1.0, 1.0), (B, 0.5, 0.5)], [(A, 0.3, 1.0), (B, 0.5, 0.5)], [(B, 0.5, 0.5)]):
        assert_close_to_native(ours, latent(ours, ours_prompt(stack, mode="auto")), native(stack))
        assert_weights_verified(ours)     # within the reported drift of native's bits, key by key
        if ours.models_setting() == "cpu":
            # The fp16 text encoder (patched in fp32 on CPU) re-bases and steps by fused rows: not native's bits,
            # within auto's fp16 budget (2 ulps).
            clip = _ledger(ours)["clip"]
            assert 0 < clip["max_drift_ulps"] <= 2, clip
    assert torch.equal(latent(ours, ours_prompt([], reconcile=False)), native([]))   # restored from clean copies


def test_delta_mode_keeps_no_backups_and_drifts_boundedly(ours, native):
    """Last, and on the second checkpoint: delta mode has no clean copies, so it leaves its (reported) drift."""
    ckpt = "tiny_b.safetensors"
    for stack in ([(A, 1.0, 1.0), (B, 0.5, 0.5)], [(A, 0.3, 1.0), (B, 0.5, 0.5)], [(B, 0.5, 0.5)], []):
        got = latent(ours, ours_prompt(stack, mode="delta", ckpt=ckpt))
        assert_close_to_native(ours, got, native(stack, ckpt))
        if stack:
            assert not torch.equal(got, native([], ckpt)), "the LoRA was not applied"
    delta_models = [m for m in ours.get("/lora_state/ledger")["models"] if m["mode"] == "delta"]
    assert delta_models and all(m["backup_bytes"] == 0 for m in delta_models)
    if ours.models_setting() != "dynamic":      # (ComfyUI's patches drift nothing)
        assert all(m["max_drift_ulps"] > 0 for m in delta_models)


def test_interrupt_during_reconcile_rolls_back(comfy_server, native):
    """The interrupt button during a long reconcile: every written key is put back; nothing half-applied."""
    server = comfy_server()
    many = [(name, 1.0, 1.0) for name in (A, B, "locon_conv.safetensors", "loha.safetensors", "lokr.safetensors")]
    rolled_back = 0
    for attempt, delay in enumerate((0.05, 0.2, 0.4, 0.8, 1.2)):
        latent(server, ours_prompt([], reconcile=False, seed=attempt))       # clean, loaded
        prompt_id = server.queue_prompt(ours_prompt(many, mode="exact", seed=attempt))
        deadline = time.time() + 30
        while time.time() < deadline and not server.get("/queue")["queue_running"]:
            time.sleep(0.01)
        time.sleep(delay)
        server.post("/interrupt")
        server.wait_history(prompt_id)
        models = {m["kind"]: m for m in server.get("/lora_state/ledger")["models"]}
        for model in models.values():
            # All or nothing: either the whole stack is applied or none of it, never a part.
            assert [s["name"] for s in model["stack"]] in ([], [n for n, _, _ in many]), model
            status, verify = server.post("/lora_state/verify", {"id": model["id"]})
            assert status == 200 and verify["ok"] and verify["max_ulps"] == 0
            if "rolled back" in model["last_error"]:
                rolled_back += 1
        # Whatever happened, the next prompts see exactly their own weights.
        assert torch.equal(latent(server, ours_prompt([], reconcile=False)), native([]))
    assert torch.equal(latent(server, ours_prompt(many, mode="exact")), native(many))
    if server.models_setting() == "dynamic":
        return     # under Dynamic VRAM a reconcile writes nothing (ComfyUI patches): there is nothing to roll back
    assert rolled_back >= 1, "no interrupt landed inside a reconcile; the delays need tuning for this machine"


def _tensors(path):
    from safetensors.torch import load_file
    return load_file(path)


def test_free_then_run_again(ours, native):
    """ComfyUI's /free unloads models and clears caches: the next prompts reload and still get their weights."""
    stack = [(A, 1.0, 1.0)]
    latent(ours, ours_prompt(stack, mode="exact"))
    ours.free()
    assert torch.equal(latent(ours, ours_prompt(stack, mode="exact")), native(stack))
    ours.free()
    assert torch.equal(latent(ours, ours_prompt([], reconcile=False)), native([]))


def test_model_save_saves_the_lora_weights_like_native(ours, reference):
    import glob
    import os

    def save(server, prompt, prefix):
        prompt["60"] = {"class_type": "ModelSave", "inputs": {"model": prompt[SAMPLER_NODE]["inputs"]["model"],
                                                              "filename_prefix": f"checkpoints/{prefix}"}}
        server.run_prompt(prompt)
        return _tensors(sorted(glob.glob(os.path.join(server.output_dir, "checkpoints", f"{prefix}*")))[-1])

    ours_saved = save(ours, ours_prompt([(A, 0.8, 0.8)], mode="exact"), f"ours{next(_counter)}")
    native_saved = save(reference, native_prompt("tiny_a.safetensors", loras=[(A, 0.8, 0.8)],
                                                 prefix=f"ref{next(_counter)}"), f"ref{next(_counter)}")
    assert ours_saved.keys() == native_saved.keys()
    assert all(torch.equal(ours_saved[k], native_saved[k]) for k in ours_saved)
    plain_saved = save(ours, ours_prompt([], reconcile=False), f"plain{next(_counter)}")
    assert any(not torch.equal(plain_saved[k], ours_saved[k]) for k in ours_saved)   # the plain model is clean


def test_model_merge_with_our_lora(ours, reference):
    """ModelMergeSimple(model1 = tiny_a + our LoRA, model2 = tiny_b): same as with a native LoraLoader."""
    def merged(server, prompt):
        prompt["70"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_b.safetensors"}}
        prompt["71"] = {"class_type": "ModelMergeSimple", "inputs": {
            "model1": prompt[SAMPLER_NODE]["inputs"]["model"], "model2": ["70", 0], "ratio": 0.6}}
        prompt[SAMPLER_NODE]["inputs"]["model"] = ["71", 0]
        return latent(server, prompt)

    got = merged(ours, ours_prompt([(A, 1.0, 1.0)], mode="exact"))
    expected = merged(reference, native_prompt("tiny_a.safetensors", loras=[(A, 1.0, 1.0)],
                                               prefix=f"ref{next(_counter)}"))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_ledger_events_on_the_websocket(ours):
    websocket = pytest.importorskip("websocket")
    client = websocket.create_connection(ours.url.replace("http", "ws") + "/ws?clientId=lora_state_test", timeout=30)
    try:
        latent(ours, ours_prompt([(B, 0.7, 0.7)], mode="exact", seed=4321))
        events = []
        deadline = time.time() + 20
        while time.time() < deadline and len(events) < 2:
            message = client.recv()
            if isinstance(message, str):
                data = json.loads(message)
                if data.get("type") == "lora_state.ledger":
                    events.append(data["data"])
        kinds = {event["model"]["kind"] for event in events}
        assert kinds == {"model", "clip"}, events
        assert all(B in event["summary"] and event["event"] == "reconcile" for event in events)
    finally:
        client.close()


def test_clip_hook_lora_on_top_of_ours(ours, reference, native):
    """ComfyUI's hook LoRAs (CreateHookLora + SetClipHooks) patch the text encoder on top of our base weights."""
    def hooked(prompt):
        clip_source = prompt[POS_NODE]["inputs"]["clip"]
        prompt["80"] = {"class_type": "CreateHookLora", "inputs": {"lora_name": B, "strength_model": 1.0,
                                                                    "strength_clip": 1.0}}
        prompt["81"] = {"class_type": "SetClipHooks", "inputs": {"clip": clip_source, "apply_to_conds": True,
                                                                  "schedule_clip": False, "hooks": ["80", 0]}}
        prompt[POS_NODE]["inputs"]["clip"] = prompt[NEG_NODE]["inputs"]["clip"] = ["81", 0]
        return prompt

    stack = [(A, 1.0, 1.0)]
    if ours.models_setting() == "dynamic":
        # ComfyUI's own limitation, shown on the server without the pack: hooks fail under Dynamic VRAM.
        with pytest.raises(PromptError, match="Hooks not implemented in ModelPatcherDynamic"):
            latent(reference, hooked(native_prompt("tiny_a.safetensors", loras=stack, prefix=f"ref{next(_counter)}")))
        pytest.skip("ComfyUI does not run hook LoRAs under Dynamic VRAM (the native prompt fails the same way)")
    for _ in range(2):
        got = latent(ours, hooked(ours_prompt(stack, mode="exact")))
        expected = latent(reference, hooked(native_prompt("tiny_a.safetensors", loras=stack,
                                                          prefix=f"ref{next(_counter)}")))
        torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
        assert not torch.equal(got, native(stack))          # the hook LoRA did act
    assert torch.equal(latent(ours, ours_prompt([], reconcile=False)), native([]))
