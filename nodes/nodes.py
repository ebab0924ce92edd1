"""The three nodes. Thin: they translate ComfyUI inputs into registry/manager calls (see runtime.py)."""
from __future__ import annotations

import logging
import os

import folder_paths

from ..lora_state import LoraStateError, StackEntry
from ..lora_state.planner import MODES
from ..lora_state.stack_rows import NONE, SLOTS, build_stack, parse_rows, requested_names
from ..lora_state.trigger_words import join_trigger_words, trigger_words
from .runtime import REGISTRY

log = logging.getLogger("lora_state")
CATEGORY = "loaders/lora_state"


def lora_path(name: str) -> str:
    """A LoRA name from ComfyUI's `loras` folders -> its file. Nothing else reaches the filesystem."""
    if not isinstance(name, str) or not name:
        raise LoraStateError(f"LoRA name must be a non-empty string, got {name!r}")
    if name in folder_paths.get_filename_list("loras"):
        return folder_paths.get_full_path_or_raise("loras", name)
    # LoRA-Manager style stacks carry full paths: accept them only inside a configured loras folder.
    real = os.path.realpath(name)
    for root in folder_paths.get_folder_paths("loras"):
        root = os.path.realpath(root)
        if os.path.isabs(name) and os.path.commonpath([root, real]) == root and os.path.isfile(real):
            return real
    raise LoraStateError(
        f"LoRA '{name}' is not in ComfyUI's loras folders ({', '.join(folder_paths.get_folder_paths('loras'))}). "
        f"Put the file there (then press R / refresh), or remove it from the stack.")


def stack_entries(lora_stack) -> tuple[StackEntry, ...]:
    """LORA_STACK (list of (name, strength_model, strength_clip), the Efficiency/Comfyroll convention)."""
    entries = []
    for index, item in enumerate(lora_stack or ()):
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise LoraStateError(f"LORA_STACK entry {index} should be (lora_name, strength_model, strength_clip), "
                                 f"got {item!r}")
        name, strength_model = item[0], item[1]
        strength_clip = item[2] if len(item) > 2 else strength_model
        if name in (None, "", NONE):
            continue
        entries.append(StackEntry(lora_path(name), float(strength_model), float(strength_clip),
                                  os.path.basename(str(name)) if os.path.isabs(str(name)) else str(name)))
    return tuple(entries)


class LoraStateStack:
    """Pure data: builds a LORA_STACK. Touches no weights. The API format of its inputs is documented in
    lora_state/stack_rows.py (rows JSON, or the numbered slots of earlier versions)."""

    DESCRIPTION = ("A list of LoRAs with model/clip strengths and on/off switches, as a LORA_STACK "
                   "((name, strength_model, strength_clip) tuples, the Efficiency/Comfyroll convention). "
                   "Chain several, or plug in a stack from another pack. Apply it with LoRA Reconcile.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LORA_STACK", "STRING")
    RETURN_NAMES = ("lora_stack", "trigger_words")
    OUTPUT_TOOLTIPS = ("The incoming stack followed by this node's enabled LoRAs.",
                       "The trigger words of this node's enabled LoRAs, comma-separated, read from each file's "
                       "own metadata (training tags); empty when the files name none.")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        loras = [NONE] + folder_paths.get_filename_list("loras")
        optional = {"lora_stack": ("LORA_STACK", {"tooltip": "A stack to extend (from this or another pack)."})}
        # The numbered slots of earlier versions come first, so that old workflows' widget values keep their
        # positions; the editor hides them and moves their LoRAs into rows when such a workflow loads.
        for slot in range(1, SLOTS + 1):
            optional[f"lora_{slot}"] = (loras, {"default": NONE, "tooltip": "A LoRA from the loras folders."})
            optional[f"strength_model_{slot}"] = ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0,
                                                            "step": 0.01, "tooltip": "Strength on the model."})
            optional[f"strength_clip_{slot}"] = ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0,
                                                           "step": 0.01, "tooltip": "Strength on the text encoder."})
            optional[f"on_{slot}"] = ("BOOLEAN", {"default": True, "tooltip": "Off: left out of the stack."})
        optional["clip_strength_separate"] = ("BOOLEAN", {
            "default": False, "tooltip": "Off: each row's clip strength is its model strength. On: each row has its "
                                         "own clip strength."})
        optional["rows"] = ("STRING", {
            "default": "[]", "multiline": False,
            "tooltip": "The rows as JSON: [{\"on\": true, \"lora\": name, \"strength\": 1.0, "
                       "\"strength_clip\": null}, ...]. Edited by the node's row editor."})
        return {"required": {}, "optional": optional}

    @classmethod
    def VALIDATE_INPUTS(cls, rows="[]", **slots):
        """Reject malformed rows and names that are not in the loras folders at queue time, saying what to fix."""
        try:
            parsed = parse_rows(rows)
        except LoraStateError as exc:
            return str(exc)
        known = set(folder_paths.get_filename_list("loras"))
        for where, name in requested_names(slots, parsed):
            if name not in known:
                return (f"{where}: LoRA '{name}' is not in ComfyUI's loras folders "
                        f"({', '.join(folder_paths.get_folder_paths('loras'))}); put it there or pick another.")
        return True

    def build(self, lora_stack=None, rows="[]", clip_strength_separate=False, **slots):
        stack = build_stack(lora_stack, slots, rows, clip_strength_separate)
        own = stack[len(lora_stack or ()):]
        return (stack, trigger_text(name for name, _, _ in own))


def trigger_text(names) -> str:
    """The trigger words of these LoRAs (each file's header metadata), comma-joined; files without any add none."""
    groups = []
    for name in names:
        try:
            groups.append(trigger_words(lora_path(name))["trigger_words"])
        except (LoraStateError, OSError, ValueError) as exc:     # a header we cannot read has no words to add
            log.warning("LoRA State: no trigger words for %s: %s", name, exc)
    return join_trigger_words(groups)


class LoraStateReconcile:
    """Marks MODEL/CLIP with the requested stack and reconciles the shared weights to it."""

    DESCRIPTION = ("Makes the model (and text encoder) carry exactly the LoRAs of the stack: unpatches LoRAs that "
                   "were removed (also by deleting or bypassing nodes), re-weights changed ones, patches new ones, "
                   "touching only the weights that must change. exact: bit-identical to native LoraLoader; delta: "
                   "no backups, tiny drift; auto: picks per weight within a drift budget.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CLIP", "STRING")
    RETURN_NAMES = ("model", "clip", "report")
    OUTPUT_TOOLTIPS = ("The model with exactly the requested LoRAs.", "The text encoder with exactly the requested "
                       "LoRAs (empty if no clip was connected).", "What changed, and how long it took.")
    FUNCTION = "reconcile"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to apply the stack to."}),
                "mode": (list(MODES), {"default": "auto", "tooltip": "auto: fast, re-bases from clean copies "
                                       "within a drift budget set by the weight type (fp16/bf16: 2 ulp, fp32: 64 "
                                       "ulp); exact: bit-identical to native; delta: no backup memory, small drift."}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "The text encoder (clip strengths apply to it)."}),
                "lora_stack": ("LORA_STACK", {"tooltip": "Absent or empty: no LoRAs (the model comes out clean)."}),
            },
        }

    def reconcile(self, model, mode="auto", clip=None, lora_stack=None):
        stack = stack_entries(lora_stack)
        new_model = model.clone()
        REGISTRY.prepare(new_model, stack, mode)
        reports = {"model": REGISTRY.sync(new_model)}
        new_clip = None
        if clip is not None:
            new_clip = clip.clone()
            REGISTRY.prepare(new_clip.patcher, stack, mode)
            reports["clip"] = REGISTRY.sync(new_clip.patcher)
        patchers = {"model": new_model} | ({"clip": new_clip.patcher} if new_clip is not None else {})
        status = status_payload(reports, {what: ledger_of(p) for what, p in patchers.items()}, len(stack))
        # `ui` reaches the node on the graph (its status line), also when ComfyUI replays a cached result.
        return {"ui": {"lora_state_status": [status]}, "result": (new_model, new_clip, report_text(reports))}


def ledger_of(patcher) -> dict | None:
    """The ledger status of the module behind `patcher` (None when LoRA State does not manage it)."""
    managed = next((m for m in REGISTRY.managed() if m.patcher() is patcher), None)
    if managed is None:
        return None
    status = managed.manager.status()
    for entry in status["stack"]:
        entry.pop("path", None)      # server paths stay on the server
    return {"id": managed.id} | status


def status_payload(reports: dict, ledgers: dict, loras: int) -> dict:
    """What LoRA Reconcile shows on the graph after a run: per part (model, clip) the ledger's LoRAs and keys, the
    time this run took, the backend and drift; and the files whose keys did not fit (`flagged`)."""
    parts = {}
    for what, report in reports.items():
        ledger = ledgers.get(what) or {}
        parts[what] = {"id": ledger.get("id"), "loras": len(ledger.get("stack", ())),
                       "keys": ledger.get("keys_touched", 0), "ms": round((report.seconds if report else 0.0) * 1000, 1),
                       "backend": ledger.get("backend", "none"), "mode": ledger.get("mode"),
                       "max_drift_ulps": ledger.get("max_drift_ulps", 0.0),
                       "backup_bytes": ledger.get("backup_bytes", 0),
                       "keys_changed": report.keys_changed if report else 0, "error": ledger.get("last_error") or ""}
    return {"requested": loras, "parts": parts, "flagged": flagged_files(reports)}


def flagged_files(reports: dict) -> dict:
    """{file: {"unmatched", "mismatched"}} for files that did not fit. A file's text-encoder keys never match the
    diffusion model (and the reverse), so with both parts a key counts as unmatched only if neither part knows it;
    with one part, a file is flagged for unmatched keys only when none of its keys matched."""
    per_file: dict[str, list[dict]] = {}
    done = [report for report in reports.values() if report]
    for report in done:
        for name, coverage in report.coverage.items():
            per_file.setdefault(name, []).append(coverage)
    flagged = {}
    for name, coverages in per_file.items():
        sets = [set(c.get("unmatched", ())) for c in coverages]
        if len(coverages) > 1 and len(coverages) == len(done):
            unmatched = len(set.intersection(*sets))
        else:
            unmatched = len(set.union(*sets)) if not any(c.get("matched", 0) for c in coverages) else 0
        mismatched = sum(len(c.get("shape_mismatched", ())) for c in coverages)
        if unmatched or mismatched:
            flagged[name] = {"unmatched": unmatched, "mismatched": mismatched}
    return flagged


def report_text(reports: dict) -> str:
    """One line per part, plus LoRA keys that neither the model nor the text encoder knows."""
    lines = [f"{what}: {report.summary()}" if report else f"{what}: no LoRAs, nothing applied"
             for what, report in reports.items()]
    per_file: dict[str, list[set]] = {}
    for report in filter(None, reports.values()):
        for name, coverage in report.coverage.items():
            per_file.setdefault(name, []).append(set(coverage.get("unmatched", ())))
    for name, unmatched_sets in per_file.items():
        unmatched = set.intersection(*unmatched_sets) if len(unmatched_sets) == len(reports) else set()
        if unmatched:
            lines.append(f"{name}: {len(unmatched)} keys match nothing in this model (first: {sorted(unmatched)[0]})")
    return "\n".join(lines)


class LoraStateReset:
    """Restores the clean weights of MODEL (and CLIP) and empties their ledgers."""

    DESCRIPTION = "Brings the model (and text encoder) back to their clean weights and clears LoRA State's ledger."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CLIP")
    RETURN_NAMES = ("model", "clip")
    OUTPUT_TOOLTIPS = ("The clean model.", "The clean text encoder (empty if none was connected).")
    FUNCTION = "reset"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL", {"tooltip": "The model to bring back to its clean weights."})},
                "optional": {"clip": ("CLIP", {"tooltip": "The text encoder to bring back to its clean weights."})}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")     # a reset is an action: run it every time it is queued

    def reset(self, model, clip=None):
        new_model = model.clone()
        REGISTRY.prepare(new_model, (), "auto")      # also takes an upstream Reconcile's ComfyUI patches off
        REGISTRY.reset(new_model)
        new_clip = None
        if clip is not None:
            new_clip = clip.clone()
            REGISTRY.prepare(new_clip.patcher, (), "auto")
            REGISTRY.reset(new_clip.patcher)
        return (new_model, new_clip)


NODE_CLASS_MAPPINGS = {
    "LoraStateStack": LoraStateStack,
    "LoraStateReconcile": LoraStateReconcile,
    "LoraStateReset": LoraStateReset,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoraStateStack": "LoRA Stack",
    "LoraStateReconcile": "LoRA Reconcile",
    "LoraStateReset": "Reset Model (LoRA State)",
}
