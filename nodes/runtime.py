"""One LoraStateManager per ComfyUI torch module, kept in sync with whichever patcher ComfyUI is about to use.

How the promises hold inside ComfyUI:
- A LoraStateReconcile node touches no shared state beyond the module: it returns a clone of the incoming
  MODEL/CLIP patcher carrying a `Request` attachment (the stack and mode). Clones inherit it; patchers that never
  passed through the node (the checkpoint loader's own, a native LoraLoader's) carry none, which means "no LoRA
  State LoRAs".
- Every model use in ComfyUI (sampling, text encoding, saving) goes through
  `comfy.model_management.load_models_gpu`. `install_load_hook` wraps it: before ComfyUI loads a patcher, the
  manager of its torch module reconciles the weights to that patcher's request (empty without one). So a sampler
  on the plain model gets clean weights even when the previous prompt, or the previous sampler of this prompt,
  used a LoRA'd clone of the same module; a deleted, bypassed or muted reconcile node leaves nothing behind.
- LoRA State writes the clean base tensors (ComfyUI's backup objects while its native patches are on). When it has
  work and native patches or hooks are applied, it first unpatches them through ComfyUI's own `unpatch_model`, so
  ComfyUI re-applies them on top of the new base at the load that follows.
- Keys LoRA State does not own (backend.py decides: Dynamic VRAM, read-only or file-backed weights, quantized
  weights, keys other nodes' patches touch) are carried by the clone as ComfyUI patches (patches_backend.py) and
  written by ComfyUI itself; the ledger lists them too. The request records those entries, so a later Reconcile or
  Reset on the same chain takes exactly them off, and a patcher without them (node deleted, bypassed) is clean.
"""
from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field

import torch

import comfy.model_management
import comfy.utils

from ..lora_state import LoraStateManager, StackEntry
from . import backend, patches_backend
from .comfy_host import ComfyModelHost, is_clip_module

log = logging.getLogger("lora_state")

ATTACHMENT = "lora_state"
INJECTED = "lora_state_injected"     # (request, {key: entries}) added at load time in front of later nodes' patches
EVENT = "lora_state.ledger"


@dataclass(frozen=True, eq=False)
class Request:
    """What a patcher asks of its module: LoRA State's stack (resolved paths) and mode, and the ComfyUI patch
    entries that carry it on keys LoRA State does not write ({key: entries}; reasons: {key: why})."""

    stack: tuple[StackEntry, ...]
    mode: str
    entries: dict = None
    reasons: dict = None

    def carried(self) -> dict:
        return self.entries or {}


@dataclass
class Managed:
    id: str
    manager: LoraStateManager
    is_clip: bool
    created: float
    last_patcher: object = None     # weakref to the last patcher synced (reset from the UI needs one)
    ownership: backend.Ownership = field(default_factory=backend.Ownership)

    def patcher(self):
        return self.last_patcher() if self.last_patcher is not None else None


class Registry:
    def __init__(self):
        self._by_module: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self._ids = itertools.count(1)
        self.lock = threading.RLock()
        self.listeners = []   # fn(event: dict), e.g. the websocket broadcaster

    # -- lookup ---------------------------------------------------------------------------------------------
    def managed(self) -> list[Managed]:
        with self.lock:
            return sorted(self._by_module.values(), key=lambda m: m.created)

    def verify(self, managed: Managed):
        with self.lock, torch.inference_mode():
            return managed.manager.verify()

    def by_id(self, managed_id: str) -> Managed | None:
        return next((m for m in self.managed() if m.id == managed_id), None)

    def _managed_for(self, patcher, create: bool) -> Managed | None:
        module = patcher.model
        managed = self._by_module.get(module)
        if managed is None and create:
            is_clip = is_clip_module(module)
            backups = patcher.backup   # ComfyUI's native backup dict, shared by all clones of this module
            host = ComfyModelHost(module, is_clip, backup_of=lambda: backups,
                                  compute_device=getattr(patcher, "load_device", None),
                                  refuse_writes=backend.model_reason(patcher))
            # Clean copies live on the offload device, like ComfyUI's own backups: they survive device moves.
            manager = LoraStateManager(host, mode="auto", backup="cpu")
            managed = Managed(f"{'clip' if is_clip else 'model'}-{next(self._ids)}", manager, is_clip, time.time())
            manager.listeners.append(lambda m, data, mid=managed.id: self._emit(mid, data))
            self._by_module[module] = managed
        return managed

    def _emit(self, managed_id: str, data: dict) -> None:
        event = {"id": managed_id} | data
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                log.exception("LoRA State event listener failed")

    # -- the two operations ---------------------------------------------------------------------------------
    def prepare(self, patcher, stack: tuple[StackEntry, ...], mode: str) -> None:
        """Make a fresh clone carry `stack` (LoRA Reconcile): keys LoRA State may not write get ComfyUI patch
        entries now, the rest is written in place when the clone is loaded. An earlier request on the same chain
        (a Reconcile or Reset upstream) is replaced, its entries taken off."""
        with self.lock:
            _take_our_entries_off(patcher)
            entries, reasons = {}, {}
            managed = self._managed_for(patcher, create=bool(stack))
            if managed is not None and stack:
                manager = managed.manager
                contributions = [(lora, manager.host.strength(entry))
                                 for entry, lora in zip(stack, manager.resolve(stack))]
                keys = {key for lora, _ in contributions for key in lora.patches}
                foreign = {key for key in keys if patcher.patches.get(key)}
                reasons = backend.keys_as_patches(patcher, keys, manager.host.parameter, foreign, managed.ownership)
                entries = patches_backend.add(patcher, contributions, reasons)
            patcher.set_attachments(ATTACHMENT, Request(tuple(stack), mode, entries, reasons))

    def sync(self, patcher):
        """Reconcile `patcher`'s module to `patcher`'s request. Returns the report, or None if never managed."""
        if not hasattr(patcher, "model") or not hasattr(patcher, "get_attachment"):
            return None
        request = patcher.get_attachment(ATTACHMENT)
        # ComfyUI loads weights as inference tensors: they may only be written in inference mode.
        with self.lock, torch.inference_mode():
            managed = self._managed_for(patcher, create=bool(request and request.stack))
            if managed is None:
                return None
            managed.last_patcher = weakref.ref(patcher)
            stack = request.stack if request else ()
            mode = request.mode if request else managed.manager.ledger.mode
            as_patches = self._carry_behind_later_patches(managed, patcher, request) if request else {}
            return managed.manager.reconcile(stack, mode=mode, progress=_progress(), as_patches=as_patches,
                                             before_write=functools.partial(_take_native_patches_off, patcher))

    def _carry_behind_later_patches(self, managed: Managed, patcher, request: Request) -> dict[str, str]:
        """{key: reason} of the request's keys ComfyUI carries as patches on this patcher: those chosen when the
        node ran, plus keys that nodes after LoRA Reconcile (a native LoraLoader) patched since. The latter get
        our entries in front of theirs, so the result is that of the equivalent native chain."""
        as_patches = dict(request.reasons or {})
        if not request.stack:
            return as_patches
        marker = patcher.get_attachment(INJECTED)
        injected = dict(marker[1]) if marker is not None and marker[0] is request else {}
        manager = managed.manager
        contributions = [(lora, manager.host.strength(entry)) for entry, lora in zip(request.stack,
                                                                                    manager.resolve(request.stack))]
        # From the patcher's patched keys (usually none) rather than every key of every LoRA: this runs on every
        # model load, also when nothing changed (722 keys x 5 LoRAs at SDXL size took 0.14 ms).
        later = {key for key, entries in patcher.patches.items()
                 if entries and key not in as_patches and key not in injected
                 and any(key in lora.patches for lora, _ in contributions)}
        if later:
            injected |= patches_backend.add_in_front(patcher, contributions, later)   # a new patches_uuid too
            patcher.set_attachments(INJECTED, (request, injected))
        as_patches |= {key: backend.FOREIGN_PATCHES for key in injected}
        return as_patches

    def reset(self, patcher=None, managed: Managed | None = None):
        """Restore the module's clean weights and empty its ledger."""
        with self.lock, torch.inference_mode():
            managed = managed or (self._managed_for(patcher, create=False) if patcher is not None else None)
            if managed is None:
                return None
            owner = patcher if patcher is not None else managed.patcher()
            return managed.manager.reset(progress=_progress(),
                                         before_write=functools.partial(_take_native_patches_off, owner))


def _take_our_entries_off(patcher) -> None:
    """A fresh clone downstream of an earlier Reconcile or Reset: take that request's ComfyUI patch entries off, so
    that this node's request replaces it on every key, as it does in place."""
    request = patcher.get_attachment(ATTACHMENT)
    marker = patcher.get_attachment(INJECTED)
    if request is not None:
        patches_backend.strip(patcher, request.carried())
    if marker is not None:
        patches_backend.strip(patcher, marker[1])
        patcher.set_attachments(INJECTED, None)


def _take_native_patches_off(patcher) -> None:
    """ComfyUI's native patches/hooks were computed from the old base weights: unpatch them (ComfyUI re-applies
    them on top of the new base at the next load, as it does whenever its patch set changes)."""
    if patcher is not None and (len(patcher.backup) or len(getattr(patcher, "hook_backup", None) or {})):
        patcher.unpatch_model(unpatch_weights=True)


def _progress():
    state = {}

    def update(done: int, total: int) -> None:
        # Honour ComfyUI's interrupt button: raising here rolls every written key back.
        comfy.model_management.throw_exception_if_processing_interrupted()
        if total >= 8:
            bar = state.get("bar")
            if bar is None:
                bar = state["bar"] = comfy.utils.ProgressBar(total)
            bar.update_absolute(done, total)
    return update


REGISTRY = Registry()


def install_load_hook(registry: Registry = REGISTRY) -> None:
    """Wrap comfy.model_management.load_models_gpu once; chains with whatever was there (other packs' wraps)."""
    current = comfy.model_management.load_models_gpu
    if getattr(current, "_lora_state", False):
        return

    @functools.wraps(current)
    def load_models_gpu(models, *args, **kwargs):
        for patcher in list(models):
            registry.sync(patcher)
        return current(models, *args, **kwargs)

    load_models_gpu._lora_state = True
    comfy.model_management.load_models_gpu = load_models_gpu
