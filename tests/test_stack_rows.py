"""The LoRA Stack node's input format (rows JSON + the numbered slots of earlier versions) and trigger words read
from safetensors headers; no ComfyUI needed."""
from __future__ import annotations

import json
import re
import struct

import pytest

from lora_state import LoraStateError
from lora_state.stack_rows import build_stack, parse_rows, requested_names
from lora_state.trigger_words import (MetadataError, join_trigger_words, read_metadata, trigger_words,
                                      trigger_words_from_metadata)


def test_rows_build_after_incoming_stack_and_numbered_slots():
    slots = {"lora_1": "old.safetensors", "strength_model_1": 0.7, "strength_clip_1": 0.3, "on_1": True,
             "lora_2": "off.safetensors", "on_2": False}
    rows = json.dumps([{"on": True, "lora": "sub/a.safetensors", "strength": 0.5, "strength_clip": 0.2},
                       {"on": False, "lora": "b.safetensors", "strength": 1.0},
                       {"lora": "None", "strength": 1.0}])
    stack = build_stack([("in.safetensors", 1.0, 1.0)], slots, rows, clip_strength_separate=False)
    assert stack == [("in.safetensors", 1.0, 1.0), ("old.safetensors", 0.7, 0.3), ("sub/a.safetensors", 0.5, 0.5)]
    separate = build_stack(None, {}, rows, clip_strength_separate=True)
    assert separate == [("sub/a.safetensors", 0.5, 0.2)]


def test_separate_clip_without_a_clip_value_uses_the_model_strength():
    assert build_stack(None, {}, '[{"lora": "a", "strength": 0.4, "strength_clip": null}]', True) == [("a", 0.4, 0.4)]


def test_old_api_prompt_without_rows_is_unchanged():
    slots = {f"lora_{i}": "None" for i in range(1, 6)} | {"lora_3": "x.safetensors", "strength_model_3": 0.9,
                                                          "strength_clip_3": 1.1, "on_3": True}
    assert build_stack(None, slots, None, False) == [("x.safetensors", 0.9, 1.1)]
    assert build_stack(None, slots, "", False) == [("x.safetensors", 0.9, 1.1)]


@pytest.mark.parametrize("text, fix", [
    ("[{", "not valid JSON"),
    ('{"lora": "a"}', "must be a JSON list"),
    ('["a"]', "rows[0] must be an object"),
    ('[{"lora": "a", "strenght": 1}]', "unknown field"),
    ('[{"lora": "a", "strength": "high"}]', "rows[0].strength must be a number"),
    ('[{"lora": "a", "on": "yes"}]', "rows[0].on must be true or false"),
    ('[{"lora": 3}]', "rows[0].lora must be a LoRA name"),
    ('[{"lora": "a", "strength": 1e999}]', "finite"),
])
def test_malformed_rows_say_what_to_fix(text, fix):
    with pytest.raises(LoraStateError, match=re.escape(fix)):
        parse_rows(text)


def test_validation_checks_slots_and_enabled_rows():
    rows = parse_rows('[{"lora": "a"}, {"lora": "b", "on": false}, {"lora": "None"}]')
    assert requested_names({"lora_1": "z", "lora_2": "None"}, rows) == [("lora_1", "z"), ("rows[0].lora", "a")]


# ---- trigger words ------------------------------------------------------------------------------------------------
def write_safetensors(path, metadata):
    header = {"__metadata__": metadata, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0\0\0\0")
    return path


def test_explicit_trigger_phrase_wins(tmp_path):
    path = write_safetensors(tmp_path / "a.safetensors", {
        "modelspec.trigger_phrase": "zxc style, Zxc style,  neon",
        "ss_tag_frequency": json.dumps({"10_foo": {"1girl": 9}}), "ss_output_name": "zxc", "modelspec.tags": "a, b"})
    words = trigger_words(path)
    assert words == {"trigger_words": ["zxc style", "neon"], "source": "explicit", "title": "zxc", "tags": ["a", "b"]}


def test_kohya_training_tags(tmp_path):
    freq = {"10_ohwx woman": {"ohwx": 30, "smile": 12, "1girl": 30, "solo": 5, "red hair": 12, "outdoors": 1,
                              "blue": 2}, "img/5_ohwx": {"smile": 3}}
    path = write_safetensors(tmp_path / "k.safetensors", {"ss_tag_frequency": json.dumps(freq)})
    words = trigger_words(path)
    assert words["source"] == "training tags"
    assert words["trigger_words"] == ["ohwx", "1girl", "smile", "red hair", "solo"]


def test_no_metadata(tmp_path):
    path = tmp_path / "n.safetensors"
    raw = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    assert read_metadata(path) == {}
    assert trigger_words(path)["trigger_words"] == [] and trigger_words(path)["source"] == "none"


@pytest.mark.parametrize("payload", [b"\x01", struct.pack("<Q", 2**40), struct.pack("<Q", 3) + b"{x}"])
def test_not_a_safetensors_header(tmp_path, payload):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(payload)
    with pytest.raises(MetadataError):
        read_metadata(path)


def test_json_list_phrase_and_join():
    assert trigger_words_from_metadata({"trigger_words": '["a b", "c"]'})["trigger_words"] == ["a b", "c"]
    assert join_trigger_words([["a", "B"], [], ["b", "c"]]) == "a, B, c"
