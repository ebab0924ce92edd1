"""LoRA Stack's rows (the API format scripts use), its trigger-words output and route, and LoRA Reconcile's status
(the `ui` the graph shows) in a real ComfyUI server."""
import json
import urllib.parse

import pytest
import torch
from comfy_harness import PromptError, SAVE_NODE, attach_model_clip_node, latent_path, native_prompt, read_latent

A, B = "kohya_lora_a.safetensors", "kohya_lora_b.safetensors"
STACK, RECONCILE, WORDS = "60", "61", "62"
_counter = iter(range(10_000))


def rows_prompt(rows, separate=False, slots=None, mode="exact"):
    prompt = native_prompt("tiny_a.safetensors", prefix=f"rows{next(_counter)}")
    prompt[STACK] = {"class_type": "LoraStateStack",
                     "inputs": {"rows": json.dumps(rows), "clip_strength_separate": separate} | (slots or {})}
    return attach_model_clip_node(prompt, RECONCILE, "LoraStateReconcile", {"mode": mode, "lora_stack": [STACK, 0]})


def test_rows_match_native_and_old_numbered_inputs(ours, native):
    rows = [{"on": True, "lora": A, "strength": 0.8, "strength_clip": 0.3},
            {"on": False, "lora": B, "strength": 1.0, "strength_clip": None},
            {"on": True, "lora": B, "strength": 0.5, "strength_clip": None}]
    entry = ours.run_prompt(rows_prompt(rows, separate=True))
    assert torch.equal(read_latent(ours, entry), native([(A, 0.8, 0.3), (B, 0.5, 0.5)]))
    # Without the clip toggle each row's clip strength is its model strength.
    entry = ours.run_prompt(rows_prompt(rows, separate=False))
    assert torch.equal(read_latent(ours, entry), native([(A, 0.8, 0.8), (B, 0.5, 0.5)]))
    # Numbered inputs of earlier versions still work, and come before the rows.
    slots = {"lora_1": A, "strength_model_1": 0.8, "strength_clip_1": 0.3}
    entry = ours.run_prompt(rows_prompt([{"lora": B, "strength": 0.5}], slots=slots))
    assert torch.equal(read_latent(ours, entry), native([(A, 0.8, 0.3), (B, 0.5, 0.5)]))


def test_reconcile_reports_its_status_to_the_graph(ours):
    rows = [{"lora": A, "strength": 1.0}, {"lora": B, "strength": 0.5}]
    entry = ours.run_prompt(rows_prompt(rows))
    status = entry["outputs"][RECONCILE]["lora_state_status"][0]
    assert status["requested"] == 2
    model, clip = status["parts"]["model"], status["parts"]["clip"]
    assert model["loras"] == 2 and model["keys"] > 0 and model["id"].startswith("model-") and model["ms"] >= 0
    assert clip["loras"] == 2 and clip["backend"] in ("in place", "patches", "mixed")
    # Their text-encoder keys miss the model and their UNet keys miss the clip: that is not a misfit.
    assert status["flagged"] == {}
    assert latent_path(ours, entry, SAVE_NODE)


@pytest.mark.parametrize("rows, message", [
    ("[{", "not valid JSON"),
    ('[{"lora": "kohya_lora_a.safetensors", "strenght": 1}]', "unknown field"),
    ('[{"lora": "nope.safetensors"}]', "nope.safetensors"),
])
def test_bad_rows_are_rejected_at_queue_time(ours, rows, message):
    prompt = rows_prompt([])
    prompt[STACK]["inputs"]["rows"] = rows
    with pytest.raises(PromptError, match=message):
        ours.queue_prompt(prompt)


def test_trigger_words_route_and_output(ours):
    body = ours.get("/lora_state/trigger_words?name=" + urllib.parse.quote(A))
    assert body["name"] == A and isinstance(body["trigger_words"], list) and body["source"] in (
        "explicit", "training tags", "none")
    for bad in ("../../etc/passwd", "/etc/passwd", "missing.safetensors"):
        with pytest.raises(RuntimeError, match=r"-> 404"):
            ours.get("/lora_state/trigger_words?name=" + urllib.parse.quote(bad))
    assert A in ours.get("/lora_state/loras")["loras"]
    prompt = rows_prompt([{"lora": A, "strength": 1.0}])
    prompt[WORDS] = {"class_type": "PreviewAny", "inputs": {"source": [STACK, 1]}}
    if "PreviewAny" not in ours.object_info():
        pytest.skip("this ComfyUI has no PreviewAny node to show the STRING output")
    entry = ours.run_prompt(prompt)
    shown = entry["outputs"][WORDS]["text"][0]
    assert shown == ", ".join(body["trigger_words"])
