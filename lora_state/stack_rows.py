"""The LoRA Stack node's inputs -> a LORA_STACK, without ComfyUI (the node in nodes/nodes.py calls this).

The API prompt format (also what "Save (API)" writes):
- `rows`: a JSON list of {"on": bool, "lora": name, "strength": float, "strength_clip": float | null}; a row whose
  `lora` is empty or "None" is skipped, `on` defaults to true, `strength` to 1.0;
- `clip_strength_separate`: false -> every row's clip strength is its `strength`; true -> its `strength_clip`
  (null or absent: `strength`);
- the numbered `lora_N`, `strength_model_N`, `strength_clip_N`, `on_N` (N = 1..5) of earlier versions are still
  accepted unchanged (their clip strength is always their own).
Order of the output: the incoming `lora_stack`, then the numbered slots, then the rows.
"""
from __future__ import annotations

import json
import math

from .errors import LoraStateError

SLOTS = 5
NONE = "None"
ROW_EXAMPLE = '[{"on": true, "lora": "my_lora.safetensors", "strength": 0.8, "strength_clip": null}]'


def _strength(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LoraStateError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise LoraStateError(f"{what} must be a finite number, got {value!r}")
    return value


def parse_rows(text) -> list[dict]:
    """The `rows` input as a list of {"on", "lora", "strength", "strength_clip"}; a LoraStateError says what to
    fix when it is malformed."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return []
    if isinstance(text, str):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LoraStateError(f"rows is not valid JSON ({exc.msg} at character {exc.pos}); it should look like "
                                 f"{ROW_EXAMPLE}") from None
    else:
        rows = text
    if not isinstance(rows, list):
        raise LoraStateError(f"rows must be a JSON list of rows, got {type(rows).__name__}; e.g. {ROW_EXAMPLE}")
    parsed = []
    for index, row in enumerate(rows):
        where = f"rows[{index}]"
        if not isinstance(row, dict):
            raise LoraStateError(f"{where} must be an object like {ROW_EXAMPLE[1:-1]}, got {row!r}")
        unknown = set(row) - {"on", "lora", "strength", "strength_clip"}
        if unknown:
            raise LoraStateError(f"{where} has unknown field(s) {sorted(unknown)}; allowed: on, lora, strength, "
                                 f"strength_clip")
        lora = row.get("lora", NONE)
        if lora is None:
            lora = NONE
        if not isinstance(lora, str):
            raise LoraStateError(f"{where}.lora must be a LoRA name (string), got {lora!r}")
        on = row.get("on", True)
        if not isinstance(on, bool):
            raise LoraStateError(f"{where}.on must be true or false, got {on!r}")
        strength = _strength(row.get("strength", 1.0), f"{where}.strength")
        clip = row.get("strength_clip")
        clip = None if clip is None else _strength(clip, f"{where}.strength_clip")
        parsed.append({"on": on, "lora": lora, "strength": strength, "strength_clip": clip})
    return parsed


def slot_entries(slots: dict) -> list[tuple[str, float, float]]:
    """Enabled numbered slots (lora_N ...) as (name, strength_model, strength_clip)."""
    entries = []
    for slot in range(1, SLOTS + 1):
        name = slots.get(f"lora_{slot}", NONE)
        if name in (None, "", NONE) or not slots.get(f"on_{slot}", True):
            continue
        entries.append((name, float(slots.get(f"strength_model_{slot}", 1.0)),
                        float(slots.get(f"strength_clip_{slot}", 1.0))))
    return entries


def row_entries(rows: list[dict], clip_strength_separate: bool) -> list[tuple[str, float, float]]:
    """Enabled rows with a LoRA as (name, strength_model, strength_clip)."""
    entries = []
    for row in rows:
        if not row["on"] or row["lora"] in ("", NONE):
            continue
        clip = row["strength_clip"] if clip_strength_separate and row["strength_clip"] is not None \
            else row["strength"]
        entries.append((row["lora"], row["strength"], clip))
    return entries


def requested_names(slots: dict, rows: list[dict]) -> list[tuple[str, str]]:
    """(where, name) of the LoRAs that validation checks: every numbered slot (as before rows existed) and the
    enabled rows (a switched-off row may name a file this machine lacks, e.g. in a shared workflow)."""
    names = [(f"lora_{slot}", slots.get(f"lora_{slot}")) for slot in range(1, SLOTS + 1)]
    names += [(f"rows[{i}].lora", row["lora"]) for i, row in enumerate(rows) if row["on"]]
    return [(where, name) for where, name in names if isinstance(name, str) and name not in ("", NONE)]


def build_stack(lora_stack, slots: dict, rows_text, clip_strength_separate: bool) -> list[tuple[str, float, float]]:
    """The incoming stack, then the enabled numbered slots, then the enabled rows."""
    stack = [tuple(entry) for entry in (lora_stack or [])]
    return stack + slot_entries(slots) + row_entries(parse_rows(rows_text), bool(clip_strength_separate))
