"""HTTP routes under /lora_state (also served under /api/lora_state) and the websocket event.

No client string ever reaches the filesystem: managed models are addressed by server-made ids, LoRAs only by a
name that must be in ComfyUI's own list of the `loras` folders.
"""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web

import folder_paths

from ..lora_state import LoraStateError
from ..lora_state.manager import DEFAULT_FILE_CACHE
from ..lora_state.trigger_words import trigger_words
from .runtime import EVENT, REGISTRY

log = logging.getLogger("lora_state")
PREFIX = "/lora_state"


def _prompt_running(server) -> bool:
    running, _ = server.prompt_queue.get_current_queue()
    return bool(running)


def _describe(managed) -> dict:
    status = managed.manager.status()
    for entry in status["stack"]:
        entry.pop("path", None)      # server paths stay on the server: name and sha256 identify a LoRA
    return {"id": managed.id, "kind": "clip" if managed.is_clip else "model"} | status


def _find(request_json) -> tuple:
    managed_id = (request_json or {}).get("id")
    managed = REGISTRY.by_id(managed_id) if isinstance(managed_id, str) else None
    if managed is None:
        known = [m.id for m in REGISTRY.managed()]
        return None, web.json_response({"error": f"no managed model with id {managed_id!r}; known: {known}"},
                                       status=404)
    return managed, None


def register(server) -> None:
    routes = server.routes

    @routes.get(PREFIX + "/ledger")
    async def ledger(request):
        # Off the event loop: the registry lock may be held by a prompt that is patching weights right now.
        models = await asyncio.to_thread(lambda: [_describe(m) for m in REGISTRY.managed()])
        return web.json_response({"models": models})

    async def idle_target(request, action: str):
        """The managed model named in the request, if no prompt is running (else an error response)."""
        managed, error = _find(await _json(request))
        if error is None and _prompt_running(server):
            error = web.json_response({"error": f"a prompt is running; {action} when the queue is idle (nothing "
                                                f"was changed)"}, status=409)
        return managed, error

    @routes.post(PREFIX + "/reset")
    async def reset(request):
        managed, error = await idle_target(request, "reset")
        if error:
            return error
        # The registry lock also holds back a prompt that starts meanwhile until the reset is done.
        report = await asyncio.to_thread(REGISTRY.reset, managed=managed)
        return web.json_response({"ok": True, "report": report.as_dict() if report else None,
                                  "model": _describe(managed)})

    @routes.post(PREFIX + "/verify")
    async def verify(request):
        managed, error = await idle_target(request, "verify")
        if error:
            return error
        report = await asyncio.to_thread(REGISTRY.verify, managed)
        return web.json_response(report.as_dict())

    @routes.get(PREFIX + "/loras")
    async def lora_names(request):
        # The stack editor's picker: ComfyUI's own list (subfolders as "sub/name.safetensors"), fresh on each call.
        names = await asyncio.to_thread(folder_paths.get_filename_list, "loras")
        return web.json_response({"loras": list(names)})

    @routes.get(PREFIX + "/trigger_words")
    async def lora_trigger_words(request):
        # Only the file's header is read (cheap: the editor asks for every row it shows).
        name, path, error = _named_lora(request)
        if error:
            return error
        try:
            words = await asyncio.to_thread(trigger_words, path)
        except (OSError, ValueError) as exc:
            return web.json_response({"error": f"cannot read the metadata of {name}: {exc}"}, status=422)
        return web.json_response({"name": name} | words)

    @routes.get(PREFIX + "/lora")
    async def lora_info(request):
        name, path, error = _named_lora(request)
        if error:
            return error
        try:
            loaded = await asyncio.to_thread(DEFAULT_FILE_CACHE.load, path)   # hashes and parses: off the loop
        except LoraStateError as exc:
            return web.json_response({"error": str(exc)}, status=422)
        try:
            words = await asyncio.to_thread(trigger_words, path)
        except (OSError, ValueError):
            words = {"trigger_words": []}
        return web.json_response({"name": name, "sha256": loaded.sha256, "tensors": len(loaded.tensors),
                                  "bytes": loaded.nbytes, "metadata_keys": sorted(loaded.metadata),
                                  "trigger_words": words["trigger_words"]})

    REGISTRY.listeners.append(lambda event: _broadcast(server, event))


def _broadcast(server, event: dict) -> None:
    managed = REGISTRY.by_id(event.get("id"))
    payload = {"id": event.get("id"), "event": event.get("event"), "summary": event.get("summary", ""),
               "error": event.get("error"), "added": list(event.get("added") or ()),
               "removed": list(event.get("removed") or ()), "model": _describe(managed) if managed else None}
    server.send_sync(EVENT, payload)


def _named_lora(request) -> tuple:
    """(name, path, None) for a `name` query that ComfyUI lists in its loras folders, else a 404 response."""
    name = request.query.get("name", "")
    if name not in folder_paths.get_filename_list("loras"):
        return name, None, web.json_response(
            {"error": "unknown LoRA name: use a name from the loras folders list"}, status=404)
    return name, folder_paths.get_full_path_or_raise("loras", name), None


async def _json(request):
    try:
        return await request.json()
    except Exception:
        return {}
