"""The patches backend: a LoRA State stack carried by a patcher as ComfyUI's own patches.

The entries are made by ComfyUI's `add_patches` from the adapters of ComfyUI's own `load_lora` (the same objects a
LoraLoader would add), so ComfyUI applies them exactly as it applies a native chain: lazily per layer under
Dynamic VRAM, dequantized and requantized on quantized weights, in order with other nodes' patches. LoRA State
writes nothing. It knows its own entries by identity (the tuple objects `add_patches` appended), so it can take
them off again (a later Reconcile or Reset on the same chain) without touching anyone else's.
"""
from __future__ import annotations

import uuid


def _targets(patch) -> dict:
    """One file's ComfyPatch for a key -> {(key, offset, function): adapter} as `add_patches` takes it."""
    return {(patch.key, offset, function): v for v, offset, function in patch.parts}


def add(patcher, contributions, keys) -> dict[str, tuple]:
    """Append `contributions` ([(ResolvedLora, strength)], in stack order) on `keys` to `patcher` with ComfyUI's
    `add_patches`. Returns {key: (entry, ...)}: the entries appended, in order."""
    keys = set(keys)
    added: dict[str, list] = {}
    for lora, strength in contributions:
        if strength == 0.0:
            continue     # as in the in-place backend: a zero strength contributes nothing
        targets = {}
        for key, patch in lora.patches.items():
            if key in keys:
                targets |= _targets(patch)
        if not targets:
            continue
        before = {key: len(patcher.patches.get(key, ())) for key in keys}
        patcher.add_patches(targets, strength)
        for key in keys:
            entries = patcher.patches.get(key, [])
            if len(entries) > before[key]:
                added.setdefault(key, []).extend(entries[before[key]:])
    return {key: tuple(entries) for key, entries in added.items()}


def add_in_front(patcher, contributions, keys) -> dict[str, tuple]:
    """Like `add`, but ahead of the patches already there: for keys whose other patches were added after the
    LoRA Reconcile node (a native LoraLoader downstream), so that the order is that of the equivalent chain."""
    before = {key: list(patcher.patches.get(key, ())) for key in keys}
    added = add(patcher, contributions, keys)
    for key, entries in added.items():
        patcher.patches[key] = list(entries) + before[key]
    return added


def strip(patcher, entries_by_key: dict[str, tuple]) -> bool:
    """Take exactly these entries (by identity) off `patcher`. Returns True if anything was removed."""
    removed = False
    for key, entries in entries_by_key.items():
        current = patcher.patches.get(key)
        if not current:
            continue
        ours = {id(entry) for entry in entries}
        kept = [entry for entry in current if id(entry) not in ours]
        if len(kept) != len(current):
            removed = True
            if kept:
                patcher.patches[key] = kept
            else:
                del patcher.patches[key]
    if removed:
        patcher.patches_uuid = uuid.uuid4()
    return removed


def foreign(patcher, key: str, ours: tuple = ()) -> bool:
    """Does `key` carry patches of another node (not the given entries of ours)?"""
    ids = {id(entry) for entry in ours}
    return any(id(entry) not in ids for entry in patcher.patches.get(key, ()))
