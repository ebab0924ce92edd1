"""The planner: compare what is applied with what is requested and decide, key by key, what to do.

Paths a key can take:
- ``skip``     contributors unchanged: nothing is read or written;
- ``restore``  no contributor left and a clean backup exists: copy it back (bit-exact);
- ``exact``    recompute from the clean backup with all new contributors, fp32 math, one rounding;
- ``delta``    add sum((new - old) strength * delta) of the changed linear contributors to the current weight;
- ``relabel``  only the order of linear contributors changed: the sum is the same, no weight work.

An auto re-base may add the contributors in an order faster than the host's own patcher's (Host.rebase_updates:
inside ComfyUI, one fused pass per LoRA instead of native's product, scale and add), not bit-identical to it but
within the key's budget; exact mode always writes the patcher's bits.

auto re-bases a key (exact, from its clean copy) when a delta step would take it past the drift budget, and also
in its own turn: a key whose budget allows n delta steps in a row re-bases on every (n+1)-th change, at a phase
fixed by its name. Keys written together (a first application, a LoRA changed on every key) would otherwise all
exhaust their budget at the same change and all re-base then, every n+1 changes: a periodic full re-patch. In
turns, each change re-bases about 1/(n+1) of the keys (a quarter in fp16/bf16, where n is 3): the same work on
average, spread evenly. Keys allowed more than MAX_TURN_CYCLE - 1 steps (fp32 keys whose LoRAs are small next
to the weight) keep re-basing only when they must.
"""
from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from .ledger import Contribution, KeyState

MODES = ("exact", "delta", "auto")

#: Keys whose budget allows more delta steps than this re-base only when they run out of it: their forced re-bases
#: are rare, and turns that long would mostly re-base keys early.
MAX_TURN_CYCLE = 64


@dataclass
class KeyPlan:
    key: str
    path: str
    old: tuple[Contribution, ...]
    new: tuple[Contribution, ...]
    delta_terms: tuple[tuple[str, float], ...] = ()   # (sha256, strength change) for the delta path
    base_drift: float = 0.0                            # drift before this step's own rounding (absolute)
    base_error: float | None = None                    # the key's error bound before the step (drift.py)
    base_magnitude: float = 0.0                        # the key's magnitude bound before the step (0: measure)
    adds_drift: bool = False                           # this step rounds a non-exact value: drift grows
    needs_backup: bool = False                         # a clean copy must be taken before the first write
    unwind: bool = False                               # no clean copy: recover it by subtracting old (delta)
    reproducible: bool = False                         # old bits == exact(old): rollback can recompute them
    rebase_budget_ulps: float = 0.0                    # auto's exact write: may use the host's faster order
                                                       # (Host.rebase_updates) if it stays within this budget


@dataclass
class Plan:
    keys: list[KeyPlan] = field(default_factory=list)

    @property
    def work(self) -> list[KeyPlan]:
        return [k for k in self.keys if k.path != "relabel"]

    def count(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for key_plan in self.keys:
            counts[key_plan.path] += 1
        return dict(counts)


def net_terms(old: tuple[Contribution, ...], new: tuple[Contribution, ...]) -> tuple[tuple[str, float], ...]:
    """Strength change per LoRA on one key, in first-seen order; zero changes dropped."""
    net: dict[str, float] = {}
    for contribution in new:
        net[contribution.sha256] = net.get(contribution.sha256, 0.0) + contribution.strength
    for contribution in old:
        net[contribution.sha256] = net.get(contribution.sha256, 0.0) - contribution.strength
    return tuple((sha, change) for sha, change in net.items() if change != 0.0)


def make_plan(current: dict[str, KeyState], requested: dict[str, tuple[Contribution, ...]], mode: str, *,
              is_linear: Callable[[str, str], bool], backup_drift: Callable[[str], float | None],
              can_backup: Callable[[str], bool], cost: Callable[[str, str], float],
              drift_budget_ulps: Callable[[str], float],
              delta_drift_ulps: Callable[[str, KeyState | None, tuple, tuple, tuple], float],
              delta_steps: Callable[[str, KeyState | None, tuple, tuple, tuple], int] | None = None,
              change_number: int = 0) -> Plan:
    """``backup_drift(key)``: None without a backup, else the drift bound of the backup itself (0.0 if clean).

    Drift is a bound of max |weight - exact result| in absolute terms. ``drift_budget_ulps(key)`` is auto's budget
    in ulps of the key's dtype at its largest magnitude; ``delta_drift_ulps(key, state, old, new, terms)``
    predicts the drift after a delta step (or a relabel, without terms) from ``state``. auto takes such a step
    only if the predicted drift stays within the budget, and not in the key's re-base turn: ``delta_steps(...)``
    says how many such steps in a row the budget allows from the exact value, ``change_number`` is the manager's
    count of reconciles that wrote something (see the module's docstring).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    plan = Plan()
    for key in list(current) + [k for k in requested if k not in current]:
        state = current.get(key)
        old = state.contributors if state else ()
        drift = state.drift if state else 0.0
        new = requested.get(key, ())
        base_drift = backup_drift(key)
        backed = base_drift is not None
        if old == new and not (mode == "exact" and drift > 0.0 and backed):
            continue     # unchanged (exact mode still re-bases a key that earlier delta steps left drifted)
        at_clean = not old and drift == 0.0
        linear = all(is_linear(c.sha256, key) for c in old + new)
        terms = net_terms(old, new)
        def within_budget(key=key, state=state, old=old, new=new, terms=terms) -> bool:
            return delta_drift_ulps(key, state, old, new, terms) <= drift_budget_ulps(key)

        def rebase_turn(key=key, state=state, old=old, new=new, terms=terms) -> bool:
            cycle = delta_steps(key, state, old, new, terms) + 1 if delta_steps is not None else 0
            return 1 < cycle <= MAX_TURN_CYCLE and zlib.crc32(key.encode()) % cycle == change_number % cycle
        path = _choose(mode, new, terms, linear, backed, at_clean, within_budget, rebase_turn, can_backup, key,
                       cost)
        unwind = path == "exact" and not backed and not at_clean
        # delta: rounds cur + change; relabel: same real sum in another fp32 order; unwind: the clean copy is
        # itself recovered by a delta step. exact/restore inherit only the drift of the clean copy.
        adds_drift = path in ("delta", "relabel") or unwind
        plan.keys.append(KeyPlan(
            key=key, path=path, old=old, new=new, delta_terms=terms if path == "delta" else (),
            base_drift=drift if path in ("delta", "relabel") or unwind else (base_drift or 0.0),
            base_error=state.error if state else None, base_magnitude=state.magnitude if state else 0.0,
            adds_drift=adds_drift, needs_backup=path == "exact" and not backed, unwind=unwind,
            reproducible=drift == 0.0 and (backed or (path == "exact" and at_clean)),
            rebase_budget_ulps=drift_budget_ulps(key) if mode == "auto" and path == "exact" and linear and not unwind
            else 0.0))
    return plan


def _choose(mode, new, terms, linear, backed, at_clean, within_budget, rebase_turn, can_backup, key, cost) -> str:
    if linear and not terms and mode != "exact":
        # Same real sum in another order: free, but it counts as a step against auto's drift budget.
        return "exact" if mode == "auto" and backed and not within_budget() else "relabel"
    if not new and backed:
        return "restore"
    if not linear or mode == "exact":
        return "exact"      # DoRA and other non-linear adapters: only exact is correct, even in delta mode
    if mode == "delta":
        return "delta"
    # auto: delta where it is cheaper and the drift budget allows it, exact (from a clean backup) otherwise.
    if not backed and (not at_clean or not can_backup(key)):
        return "delta"
    exact_cost = sum(cost(c.sha256, key) for c in new)
    delta_cost = sum(cost(sha, key) for sha, _ in terms)
    if backed and delta_cost < exact_cost and within_budget() and not rebase_turn():
        return "delta"
    return "exact"
