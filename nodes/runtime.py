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
"""
from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
import weakref
from dataclasses import dataclass

import torch

import comfy.model_management
import comfy.utils

from ..lora_state import LoraStateManager, StackEntry
from .comfy_host import ComfyModelHost, is_clip_module

log = logging.getLogger("lora_state")

ATTACHMENT = "lora_state"
EVENT = "lora_state.ledger"


@dataclass(frozen=True)
class Request:
    """What a patcher asks of its module: LoRA State's stack (resolved paths) and mode."""

    stack: tuple[StackEntry, ...]
    mode: str


@dataclass
class Managed:
    id: str
    manager: LoraStateManager
    is_clip: bool
    created: float
    last_patcher: object = None     # weakref to the last patcher synced (reset from the UI needs one)

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
            host = ComfyModelHost(module, is_clip, backup_of=lambda: backups)
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

    # -- the one operation --------------------------------------------------------------------------------
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
            return managed.manager.reconcile(stack, mode=mode, progress=_progress(),
                                             before_write=functools.partial(_take_native_patches_off, patcher))

    def reset(self, patcher=None, managed: Managed | None = None):
        """Restore the module's clean weights and empty its ledger."""
        with self.lock, torch.inference_mode():
            managed = managed or (self._managed_for(patcher, create=False) if patcher is not None else None)
            if managed is None:
                return None
            owner = patcher if patcher is not None else managed.patcher()
            return managed.manager.reset(progress=_progress(),
                                         before_write=functools.partial(_take_native_patches_off, owner))


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
