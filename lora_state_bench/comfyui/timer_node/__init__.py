"""Benchmark-only ComfyUI node folder (linked into the benchmark server's custom_nodes, never shipped): times
every call of LoRA State's registry sync, which runs in LoRA Reconcile and again in the model-load hook before
each use of a model, and serves the timings at GET /lora_state_bench/timings (?clear=1 empties the list).

On a prompt that changes only the seed, ComfyUI caches the Reconcile node and the only LoRA State work is the
load hook's sync of an unchanged stack: its time is what re-running an unchanged stack costs. The ledger's
`last_change` does not record those (nothing changed), hence this timer. It wraps the registry instance's `sync`
when it is first asked (the pack may be imported after this folder), and changes nothing else.
"""
import sys
import threading
import time

from aiohttp import web

CALLS = []
LOCK = threading.Lock()
STATE = {"armed": False}

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}


def _registry():
    for name, module in list(sys.modules.items()):
        registry = getattr(module, "REGISTRY", None)
        if name.endswith("nodes.runtime") and registry is not None and hasattr(registry, "sync") \
                and hasattr(module, "install_load_hook"):
            return registry
    return None


def _arm():
    if STATE["armed"]:
        return True
    registry = _registry()
    if registry is None:
        return False
    original = registry.sync

    def sync(patcher):
        started = time.perf_counter()
        report = original(patcher)
        seconds = time.perf_counter() - started
        kind = type(getattr(patcher, "model", None)).__name__
        with LOCK:
            CALLS.append({"at": time.time(), "seconds": seconds, "model": kind,
                          "noop": None if report is None else bool(report.noop),
                          "report_seconds": None if report is None else report.seconds})
        return report

    registry.sync = sync
    STATE["armed"] = True
    return True


try:
    from server import PromptServer
except ImportError:
    PromptServer = None

if PromptServer is not None and getattr(PromptServer, "instance", None) is not None:
    @PromptServer.instance.routes.get("/lora_state_bench/timings")
    async def timings(request):
        armed = _arm()
        with LOCK:
            calls = list(CALLS)
            if request.query.get("clear"):
                CALLS.clear()
        return web.json_response({"armed": armed, "calls": calls})
