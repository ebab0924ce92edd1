"""LoraStateManager: keep one module's weights equal to exactly the requested LoRA stack.

    manager = LoraStateManager(module, mode="auto")
    report = manager.reconcile([("a.safetensors", 0.8), ("b.safetensors", 1.0)])
    manager.applied; manager.verify(); manager.reset()

reconcile() reads the files (cached by content), plans the per-key difference against the ledger, checks that
nothing changed the managed weights behind its back, and applies the plan all-or-nothing.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch

from .applier import apply_plan, exact_value, ulp_at_max
from .drift import max_magnitude, step_bounds, ulp_of
from .native_steps import widened
from .backups import BackupStore
from .errors import ExternalChangeError, LoraShapeError, LoraStateError, StackError, UnownedStorageError
from .files import LoraFileCache, finite_strength
from .hosts import Host, TorchModuleHost
from .hosts.storage import MemoryMap
from .ledger import AppliedLora, Contribution, KeyState, Ledger, StackEntry
from .naming import ResolvedLora
from .planner import MODES, KeyPlan, Plan, make_plan

log = logging.getLogger("lora_state")

#: Shared by every manager in the process unless one is given: a file is parsed once per content.
DEFAULT_FILE_CACHE = LoraFileCache()

#: auto's drift budget per weight dtype, in ulps at the key's largest magnitude. fp32 drift is far below anything
#: visible, so it may take many delta steps; fp16/bf16 allow three steps (a bound of 2.5 ulp + fp32 roundings,
#: 2 ulp on the dtype's grid: drift.on_the_grid) before re-basing from clean; other dtypes (fp8) never take the
#: delta path in auto.
DEFAULT_DRIFT_BUDGET_ULPS = {torch.float64: 64.0, torch.float32: 64.0, torch.float16: 2.0, torch.bfloat16: 2.0}

#: LoRAs resolved for this host that left the stack, kept for a toggle back on (their change bounds, computed
#: from the factors, cost about a fifth of a one-LoRA change at SD1.5 size). Kept only while the file cache still
#: holds the very file they were resolved from: their patches are views of that file's tensors (a format that
#: ComfyUI converts may hold converted copies), and the cache's own limit bounds them.
RECENT_LORAS = 8

#: Delta steps auto predicts one by one when it schedules a key's re-base turns (fp16/bf16 budgets allow three).
PREDICTED_STEPS = 4


@dataclass
class ReconcileReport:
    mode: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reweighted: list[tuple[str, float, float]] = field(default_factory=list)
    reordered: bool = False
    paths: dict[str, int] = field(default_factory=dict)   # keys per path: exact/delta/restore/relabel
    backend: str = "none"                                 # see Ledger.backend
    keys_as_patches: int = 0                              # keys the host's own patching applies for us
    carried_because: str = ""                             # why, e.g. "40 quantized weight, 2 ..."
    keys_changed: int = 0
    bytes_written: int = 0
    backup_bytes: int = 0
    max_drift_ulps: float = 0.0
    seconds: float = 0.0
    coverage: dict[str, dict] = field(default_factory=dict)

    @property
    def noop(self) -> bool:
        return self.keys_changed == 0 and not self.paths

    def summary(self) -> str:
        if self.noop and not (self.added or self.removed or self.reweighted or self.reordered):
            return f"[{self.mode}] unchanged: nothing to do ({self.seconds * 1000:.2f} ms)"
        parts = []
        if self.added:
            parts.append("added " + ", ".join(self.added))
        if self.removed:
            parts.append("removed " + ", ".join(self.removed))
        if self.reweighted:
            parts.append("re-weighted " + ", ".join(f"{n} {a:g}->{b:g}" for n, a, b in self.reweighted))
        if self.reordered:
            parts.append("reordered")
        paths = ", ".join(f"{n} {p}" for p, n in sorted(self.paths.items()))
        carried = f", {self.keys_as_patches} keys as patches" if self.keys_as_patches else ""
        if self.keys_as_patches and self.carried_because:
            carried += f" ({self.carried_because})"
        return (f"[{self.mode}, {self.backend}] {'; '.join(parts) or 'no stack change'}: {self.keys_changed} keys "
                f"written ({paths or 'none'}){carried}, {self.bytes_written / 2**20:.1f} MiB, backups "
                f"{self.backup_bytes / 2**20:.1f} MiB, max drift {self.max_drift_ulps:g} ulp, {self.seconds:.3f} s")

    def as_dict(self) -> dict:
        return {"mode": self.mode, "added": self.added, "removed": self.removed,
                "reweighted": [list(r) for r in self.reweighted], "reordered": self.reordered, "paths": self.paths,
                "backend": self.backend, "keys_as_patches": self.keys_as_patches,
                "carried_because": self.carried_because,
                "keys_changed": self.keys_changed, "bytes_written": self.bytes_written,
                "backup_bytes": self.backup_bytes, "max_drift_ulps": self.max_drift_ulps, "seconds": self.seconds,
                "coverage": self.coverage, "summary": self.summary()}


@dataclass
class KeyDeviation:
    key: str
    max_abs: float | None       # None where no clean copy exists to recompute the expected value
    max_ulps: float | None
    drift_bound_ulps: float
    external_change: bool


@dataclass
class VerifyReport:
    keys: list[KeyDeviation]

    @property
    def external_changes(self) -> list[str]:
        return [k.key for k in self.keys if k.external_change]

    @property
    def max_ulps(self) -> float:
        return max((k.max_ulps for k in self.keys if k.max_ulps is not None), default=0.0)

    @property
    def ok(self) -> bool:
        """No key was changed by someone else and every checked key is within its drift bound."""
        return not self.external_changes

    def summary(self) -> str:
        checked = sum(1 for k in self.keys if k.max_ulps is not None)
        text = f"verified {checked}/{len(self.keys)} keys against clean + stack: max deviation {self.max_ulps:g} ulp"
        if self.external_changes:
            text += f"; {len(self.external_changes)} changed by something else (first: {self.external_changes[0]})"
        return text

    def as_dict(self) -> dict:
        return {"ok": self.ok, "max_ulps": self.max_ulps, "external_changes": self.external_changes,
                "keys": [vars(k) for k in self.keys], "summary": self.summary()}


StackLike = Iterable[object]


def normalize_stack(stack: StackLike | None) -> list[StackEntry]:
    """Accept StackEntry, (path, strength), (path, model, clip) tuples or dicts {path, strength_model, ...}."""
    entries = []
    for index, item in enumerate(stack or ()):
        where = f"stack entry {index}"
        if isinstance(item, StackEntry):
            path, model, clip, name = item.path, item.strength_model, item.strength_clip, item.name
        elif isinstance(item, dict):
            path = item.get("path")
            model = item.get("strength_model", item.get("strength", 1.0))
            clip = item.get("strength_clip", model)
            name = item.get("name", "")
        elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
            path, model = item[0], item[1]
            clip = item[2] if len(item) == 3 else model
            name = ""
        else:
            raise StackError(f"{where}: expected (path, strength) or (path, strength_model, strength_clip), "
                             f"got {item!r}")
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise StackError(f"{where}: the LoRA path must be a non-empty string, got {path!r}")
        try:
            model = finite_strength(model, f"{where} ({os.fspath(path)}): strength_model")
            clip = finite_strength(clip, f"{where} ({os.fspath(path)}): strength_clip")
        except ValueError as exc:
            raise StackError(f"{exc}. Use a finite number such as 1.0; nothing was changed.") from None
        entries.append(StackEntry(os.fspath(path), model, clip, name))
    return entries


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in ulps of b's dtype at b's largest magnitude: the unit drift is reported in."""
    if a.numel() == 0:
        return 0.0
    unit = ulp_at_max(b)
    return float((a.float() - b.float()).abs().max()) / unit if unit else 0.0


class LoraStateManager:
    """Reconciles one module's weights to a requested LoRA stack. Thread-safe; one operation at a time."""

    def __init__(self, module: torch.nn.Module | Host, mode: str = "auto", *, backup: str = "device",
                 backup_budget_bytes: int | None = None, spill_dir: str | None = None,
                 drift_budget_ulps: float | None = None, file_cache: LoraFileCache | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.host = module if isinstance(module, Host) else TorchModuleHost(module)
        self.mode = mode
        self.drift_budget_ulps = drift_budget_ulps   # None: DEFAULT_DRIFT_BUDGET_ULPS by dtype
        self.backups = BackupStore(backup, backup_budget_bytes, spill_dir, pin=self.host.pin_host_copy,
                                   unpin=self.host.unpin_host_copy)
        self.file_cache = file_cache or DEFAULT_FILE_CACHE
        self.ledger = Ledger(mode=mode)
        self.lock = threading.RLock()
        self._resolved: dict[str, ResolvedLora] = {}     # by sha256: applied + last requested LoRAs
        # by sha256: (the file it was resolved from, weakly; the resolved LoRA), least recently left first
        self._recent: OrderedDict[str, tuple[weakref.ref, ResolvedLora]] = OrderedDict()
        self._file_of: dict[str, weakref.ref] = {}
        self._request_signature: tuple | None = None
        self._changes = 0          # reconciles that wrote something: the clock of auto's re-base turns
        self.listeners: list[Callable[["LoraStateManager", dict], None]] = []

    # -- what is applied ------------------------------------------------------------------------------------
    @property
    def applied(self) -> tuple[AppliedLora, ...]:
        return self.ledger.stack

    @property
    def backup_bytes(self) -> int:
        return self.backups.nbytes

    def status(self) -> dict:
        return self.ledger.as_dict() | {"backup_bytes": self.backups.nbytes, "backup_location": self.backups.location,
                                        "pinned_bytes": self.backups.pinned_bytes, "host": self.host.label}

    # -- reconcile ------------------------------------------------------------------------------------------
    def reconcile(self, stack: StackLike | None, mode: str | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  before_write: Callable[[], None] | None = None,
                  as_patches: Mapping[str, str] | Iterable[str] = ()) -> ReconcileReport:
        """Make the weights carry exactly `stack`. `progress(done, total)` is called per key written (raise from
        it to abort: everything is rolled back); `before_write()` is called once, only if any weight will be
        written (a host uses it to take its own patches off first). Keys in `as_patches` are applied by the
        host's own patching (e.g. ComfyUI patches on read-only weights): LoRA State writes nothing there (a key
        it wrote before is brought back to clean) and records them in the ledger; a {key: reason} mapping also
        says why in the report."""
        started = time.perf_counter()
        reasons = as_patches if isinstance(as_patches, Mapping) else {}
        as_patches = frozenset(as_patches)
        mode = mode or self.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        entries = normalize_stack(stack)
        with self.lock:
            resolved = [self._resolve(entry) for entry in entries]
            requested_stack = tuple(
                AppliedLora(r.sha256, e.label, e.path, e.strength_model, e.strength_clip, self.host.strength(e))
                for e, r in zip(entries, resolved))
            signature = (tuple((a.sha256, a.strength) for a in requested_stack), as_patches)
            self._check_external_changes()
            report = self._diff_report(mode, requested_stack, resolved)
            report.backend = self.ledger.backend
            report.keys_as_patches = len(self.ledger.patch_keys)
            report.carried_because = ", ".join(f"{n} {why}" for why, n in Counter(reasons.values()).most_common())
            if signature == self._request_signature and mode == self.ledger.mode:
                self.ledger = self.ledger.with_changes(stack=requested_stack) if requested_stack != self.applied \
                    else self.ledger
                report.seconds = time.perf_counter() - started
                return report
            requested = self._contributions(requested_stack, resolved)
            carried = {key: c for key, c in requested.items() if key in as_patches}
            plan = self._plan(mode, {key: c for key, c in requested.items() if key not in as_patches})
            self._check_writable(plan)
            if plan.work and before_write is not None:
                before_write()
            stats = self._apply(plan, progress)
            self._commit(plan, stats.drift, requested_stack, mode, signature, carried)
            self._changes += bool(plan.work)
            report.backend = self.ledger.backend
            report.keys_as_patches = len(carried)
            report.paths = plan.count()
            report.keys_changed = stats.keys_written
            report.bytes_written = stats.bytes_written
            report.backup_bytes = self.backups.nbytes
            report.max_drift_ulps = max((k.drift_ulps for k in self.ledger.keys.values()), default=0.0)
            report.seconds = time.perf_counter() - started
            self.ledger.last_change = report.as_dict() | {"at": time.time()}
            if report.keys_changed or report.added or report.removed or report.reweighted:
                log.info("LoRA State %s: %s", self.host.label, report.summary())
            self._notify("reconcile", report.as_dict())
            return report

    def resolve(self, stack: StackLike | None) -> list[ResolvedLora]:
        """The stack's LoRAs as this host reads them (keys, patches, coverage); cached by file content."""
        with self.lock:
            return [self._resolve(entry) for entry in normalize_stack(stack)]

    def _resolve(self, entry: StackEntry) -> ResolvedLora:
        lora_file = self.file_cache.load(entry.path)
        resolved = self._resolved.get(lora_file.sha256)
        if resolved is None:
            source, resolved = self._recent.pop(lora_file.sha256, (None, None))
            if resolved is not None and source() is lora_file:
                self._resolved[lora_file.sha256] = resolved
                self._file_of[lora_file.sha256] = source
                return resolved
            resolved = self.host.read(lora_file)
            if resolved.coverage.shape_mismatched:
                first = resolved.coverage.shape_mismatched[0]
                raise LoraShapeError(
                    f"{entry.path}: {len(resolved.coverage.shape_mismatched)} keys do not fit this model "
                    f"(first: {first}). The LoRA was probably made for another base model (e.g. SDXL vs SD1.5); "
                    f"remove it from the stack. Nothing was changed.")
            self._resolved[lora_file.sha256] = resolved
            self._file_of[lora_file.sha256] = weakref.ref(lora_file)
        return resolved

    def _keep_resolved(self, shas) -> None:
        """Keep the resolved LoRAs of `shas`; the others leave for the recent ones (RECENT_LORAS)."""
        for sha in [sha for sha in self._resolved if sha not in shas]:
            self._recent[sha] = (self._file_of.pop(sha, lambda: None), self._resolved.pop(sha))
            self._recent.move_to_end(sha)
        for sha in [sha for sha, (source, _) in self._recent.items() if source() is None]:
            del self._recent[sha]
        while len(self._recent) > RECENT_LORAS:
            self._recent.popitem(last=False)

    def _contributions(self, stack, resolved) -> dict[str, tuple[Contribution, ...]]:
        per_key: dict[str, list[Contribution]] = {}
        for applied, lora in zip(stack, resolved):
            if applied.strength == 0.0:
                continue     # a zero strength contributes nothing (as ComfyUI's LoraLoader)
            contribution = Contribution(applied.sha256, applied.strength)
            for key in lora.patches:
                per_key.setdefault(key, []).append(contribution)
        return {key: tuple(c) for key, c in per_key.items()}

    def _plan(self, mode: str, requested) -> Plan:
        reserved = {"bytes": 0}

        def can_backup(key: str) -> bool:
            nbytes = self._nbytes(key)
            if self.backups.fits(reserved["bytes"] + nbytes):
                reserved["bytes"] += nbytes
                return True
            return False

        def is_linear(sha: str, key: str) -> bool:
            return self.host.is_linear(self._patch_of(sha, key))

        def cost(sha: str, key: str) -> float:
            return self.host.patch_flops(self._patch_of(sha, key))

        def budget(key: str) -> float:
            return self.budget_ulps(self.host.parameter(key).dtype)

        measured: dict[str, float] = {}

        term_lists: dict[str, tuple] = {}

        def bounds_of(key: str, live, old, new, terms) -> tuple:
            """The change bounds of the key's (old, new, step) terms, as step_bounds takes them: once per key and
            plan (the planner asks for a key's next step and for its run of steps)."""
            if key not in term_lists:
                bound = self.host.change_bound
                term_lists[key] = (
                    [(bound(self._patch_of(c.sha256, key)), c.strength) for c in old],
                    [(bound(self._patch_of(c.sha256, key)), c.strength) for c in new],
                    [(widened(self.host.step_bound(self._patch_of(sha, key), live), live), change)
                     for sha, change in terms])
            return term_lists[key]

        def predict(key: str, live, drift: float, error, before: float, old_terms, new_terms, step_terms) -> tuple:
            return step_bounds(
                live.dtype, self.host.work_dtype(), base_drift=drift, base_error=error, before=before,
                clean_magnitude=self.backups.magnitude(key), old_terms=old_terms, new_terms=new_terms,
                step_terms=step_terms)

        def magnitude_before(key: str, state, live) -> float:
            before = (state.magnitude if state else 0.0) or measured.get(key) or max_magnitude(live)
            measured[key] = before
            return before

        def delta_drift_ulps(key: str, state, old, new, terms) -> float:
            """The drift a delta step (or relabel) would leave, in the ulps it will be reported in."""
            live = self.host.parameter(key)
            drift, _, _, unit_magnitude = predict(
                key, live, state.drift if state else 0.0, state.error if state else None,
                magnitude_before(key, state, live), *bounds_of(key, live, old, new, terms))
            unit = ulp_of(unit_magnitude, live.dtype)   # the unit it will be reported in
            return drift / unit if unit else float("inf")

        def delta_steps(key: str, state, old, new, terms) -> int:
            """How many such steps in a row (this one, then back, ...) auto's budget allows from the exact value.
            The first PREDICTED_STEPS are predicted one by one (near the budget, the grid bound of fp16/bf16 is
            not linear in the number of steps: drift.on_the_grid); beyond, at the growth of the last step."""
            live = self.host.parameter(key)
            budget_ulps = self.budget_ulps(live.dtype)
            forth = bounds_of(key, live, old, new, terms)
            back = (forth[1], forth[0], [(bound, -change) for bound, change in forth[2]])
            drift, error, magnitude, steps, growth = 0.0, None, magnitude_before(key, state, live), 0, 0.0
            while steps < PREDICTED_STEPS:
                before = drift
                drift, error, magnitude, unit_magnitude = predict(
                    key, live, drift, error, magnitude, *(forth if steps % 2 == 0 else back))
                unit = ulp_of(unit_magnitude, live.dtype)
                if not unit or drift > budget_ulps * unit:
                    return steps
                steps, growth = steps + 1, drift - before
            return steps + int(min((budget_ulps * unit - drift) / growth, 1e6)) if growth > 0 else 1_000_000

        plan = make_plan(self.ledger.keys, requested, mode, is_linear=is_linear, backup_drift=self.backups.drift,
                         can_backup=can_backup, cost=cost, drift_budget_ulps=budget, delta_drift_ulps=delta_drift_ulps,
                         delta_steps=delta_steps, change_number=self._changes)
        for key_plan in plan.keys:
            if not key_plan.base_magnitude and key_plan.key in measured:
                key_plan.base_magnitude = measured[key_plan.key]
        needed = sum(self._nbytes(k.key) for k in plan.keys if k.needs_backup)
        if needed and not self.backups.fits(needed):
            budget = self.backups.budget_bytes
            raise LoraStateError(
                f"this stack needs {needed} more bytes of clean backups but the budget is {budget} bytes "
                f"({self.backups.nbytes} in use). Raise backup_budget_bytes, use backup='disk', or mode='delta' "
                f"(no backups). Nothing was changed.")
        return plan

    def _apply(self, plan: Plan, progress):
        try:
            return apply_plan(self.host, plan, self.backups, self._patch_of, progress)
        except BaseException as exc:
            # apply_plan has already put every written key back: the ledger still describes the weights, only
            # the fingerprints must follow the rollback's own writes.
            message = f"{type(exc).__name__}: {exc}".strip(": ")
            # Keys recomputed from their clean copy are at the exact value of their stack (no drift left); keys
            # undone by the opposite delta step carry both steps' arithmetic.
            recomputed = getattr(exc, "lora_state_recomputed", None) or {}
            keys = {}
            for key, s in self.ledger.keys.items():
                if key in recomputed:
                    drift, ulp, error, magnitude = recomputed[key]
                    keys[key] = KeyState(s.contributors, drift, ulp or s.ulp, self._fingerprint(key), error, magnitude)
                else:
                    keys[key] = KeyState(s.contributors, s.drift, s.ulp, self._fingerprint(key), s.error, s.magnitude)
            for key in recomputed.keys() - keys.keys():     # clean before, undone by the opposite step: drift
                drift, ulp, error, magnitude = recomputed[key]
                if drift:
                    keys[key] = KeyState((), drift, ulp, self._fingerprint(key), error, magnitude)
            self.ledger = self.ledger.with_changes(keys=keys, last_error=f"rolled back after {message}")
            exc.add_note("LoRA State rolled the weights back to the previously applied stack; nothing was lost.")
            log.warning("LoRA State %s: rolled back after %s", self.host.label, message)
            self._notify("rolled_back", {"error": message})
            raise

    def budget_ulps(self, dtype: torch.dtype) -> float:
        if self.drift_budget_ulps is not None:
            return float(self.drift_budget_ulps)
        return DEFAULT_DRIFT_BUDGET_ULPS.get(dtype, 0.0)

    def _fingerprint(self, key: str) -> tuple:
        return self.host.fingerprint(self.host.parameter(key))

    def _nbytes(self, key: str) -> int:
        tensor = self.host.parameter(key)
        return tensor.numel() * tensor.element_size()

    def _patch_of(self, sha: str, key: str):
        return self._resolved[sha].patches[key]

    def _check_writable(self, plan: Plan) -> None:
        """The last guard: never write into memory LoRA State does not own (a write into a read-only mapping
        kills the process). Checked for every key before anything is written."""
        if not plan.work:
            return
        memory = MemoryMap.snapshot()
        problems = [(kp.key, problem) for kp in plan.work
                    if (problem := self.host.write_problem(kp.key, self.host.parameter(kp.key), memory))]
        if problems:
            key, why = problems[0]
            raise UnownedStorageError(
                f"{len(problems)} weights of {self.host.label} are not LoRA State's to write (first: {key}: {why}). "
                f"Nothing was changed. Apply these LoRAs through the host's own patching instead (inside "
                f"ComfyUI, LoRA Reconcile does so by itself), or give LoRA State a model whose weights it owns.")

    def _commit(self, plan: Plan, drift: dict, stack: tuple[AppliedLora, ...], mode: str, signature: tuple,
                carried: dict) -> None:
        keys = dict(self.ledger.keys)
        for key_plan in plan.keys:
            live = self.host.parameter(key_plan.key)
            bound, unit, error, magnitude = drift[key_plan.key]
            if not key_plan.new and bound == 0.0:
                keys.pop(key_plan.key, None)
                self.backups.drop(key_plan.key)   # back up only what an applied LoRA touches
            else:
                keys[key_plan.key] = KeyState(key_plan.new, bound, unit, self.host.fingerprint(live), error, magnitude)
        self.ledger = self.ledger.with_changes(stack=stack, keys=keys, patch_keys=carried, mode=mode, last_error="",
                                               status="applied" if stack else "clean")
        self._request_signature = signature
        live_shas = {a.sha256 for a in stack} | {c.sha256 for s in keys.values() for c in s.contributors}
        self._keep_resolved(live_shas)

    def _diff_report(self, mode, requested: tuple[AppliedLora, ...], resolved) -> ReconcileReport:
        report = ReconcileReport(mode=mode)
        old, new = Counter(a.sha256 for a in self.applied), Counter(a.sha256 for a in requested)
        names = {a.sha256: a.name for a in self.applied + requested}
        report.added = [names[s] for s in new if s not in old]
        report.removed = [names[s] for s in old if s not in new]
        old_strengths = {a.sha256: a.strength for a in self.applied}
        report.reweighted = [(a.name, old_strengths[a.sha256], a.strength) for a in requested
                             if a.sha256 in old_strengths and old_strengths[a.sha256] != a.strength]
        common_old = [a.sha256 for a in self.applied if a.sha256 in new]
        common_new = [a.sha256 for a in requested if a.sha256 in old]
        report.reordered = common_old != common_new
        report.coverage = {r.name: r.coverage.as_dict() for r in resolved}
        return report

    # -- external changes -----------------------------------------------------------------------------------
    def _changed_keys(self) -> list[str]:
        return [key for key, state in self.ledger.keys.items()
                if state.fingerprint and self._fingerprint(key) != state.fingerprint]

    def _check_external_changes(self) -> None:
        changed = self._changed_keys()
        if changed:
            raise ExternalChangeError(
                f"{len(changed)} weights managed by LoRA State were changed by something else since the last "
                f"reconcile (first: {changed[0]}). Call reset() to restore them from the clean copies, then "
                f"reconcile again. Nothing was changed.")

    # -- reset ----------------------------------------------------------------------------------------------
    def reset(self, progress: Callable[[int, int], None] | None = None,
              before_write: Callable[[], None] | None = None) -> ReconcileReport:
        """Bring every managed weight back to clean and empty the ledger (also after external changes)."""
        with self.lock:
            started = time.perf_counter()
            report = self._diff_report("reset", (), [])
            plan = Plan()
            for key, state in self.ledger.keys.items():
                if not state.contributors and self.backups.drift(key) is None:
                    continue   # left with drift by delta work, nothing applied: nothing to undo
                if self.backups.drift(key) is not None:
                    key_plan = KeyPlan(key=key, path="restore", old=state.contributors, new=())
                else:   # delta mode: no clean copy, subtract what is applied (drift stays bounded, reported)
                    key_plan = KeyPlan(key=key, path="delta", old=state.contributors, new=(), adds_drift=True,
                                       delta_terms=tuple((c.sha256, -c.strength) for c in state.contributors),
                                       base_drift=state.drift, base_error=state.error,
                                       base_magnitude=state.magnitude)
                plan.keys.append(key_plan)
            self._check_writable(plan)
            if plan.work and before_write is not None:
                before_write()
            stats = self._apply(plan, progress)
            residual = {key: KeyState((), bound, unit, self._fingerprint(key), error, magnitude)
                        for key, (bound, unit, error, magnitude) in stats.drift.items() if bound > 0.0}
            residual |= {key: state for key, state in self.ledger.keys.items()
                         if key not in stats.drift and state.drift > 0.0}   # drift left by earlier delta work
            self.backups.clear()
            self.ledger = self.ledger.with_changes(stack=(), keys=residual, patch_keys={}, status="clean",
                                                   last_error="")
            self._request_signature = ((), frozenset())
            self._keep_resolved(())
            report.paths = plan.count()
            report.keys_changed = stats.keys_written
            report.bytes_written = stats.bytes_written
            report.max_drift_ulps = max((k.drift_ulps for k in residual.values()), default=0.0)
            report.seconds = time.perf_counter() - started
            self.ledger.last_change = report.as_dict() | {"at": time.time()}
            log.info("LoRA State %s: reset, %d keys restored", self.host.label, stats.keys_written)
            self._notify("reset", report.as_dict())
            return report

    # -- verify ---------------------------------------------------------------------------------------------
    def verify(self) -> VerifyReport:
        """Per key: deviation of the live weights from clean + applied stack, and changes made by others."""
        with self.lock:
            changed = set(self._changed_keys())
            keys = []
            with torch.no_grad():
                for key, state in self.ledger.keys.items():
                    live = self.host.parameter(key)
                    if self.backups.drift(key) is None:
                        keys.append(KeyDeviation(key, None, None, state.drift_ulps, key in changed))
                        continue
                    clean = self.backups.get(key, live.device)
                    contributions = [(self._patch_of(c.sha256, key), c.strength) for c in state.contributors]
                    expected = exact_value(self.host, key, clean, contributions)
                    max_abs = float((live.float() - expected.float()).abs().max()) if live.numel() else 0.0
                    unit = state.ulp or ulp_at_max(expected)
                    external = key in changed or max_abs > state.drift
                    keys.append(KeyDeviation(key, max_abs, max_abs / unit if unit else 0.0, state.drift_ulps,
                                             external))
            return VerifyReport(keys)

    # -- events ---------------------------------------------------------------------------------------------
    def _notify(self, event: str, data: dict) -> None:
        for listener in list(self.listeners):
            try:
                listener(self, {"event": event} | data)
            except Exception:  # a broken UI listener must never break weight management
                log.exception("LoRA State listener failed")
