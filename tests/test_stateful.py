"""Stateful property test: random sequences of stack edits, resets and injected failures.

After every step the live weights are compared with an oracle computed independently from scratch (a fresh clean
module, exact mode) and, in exact mode, with the float64 formulas of lora_factory:
- exact: bit-identical to the from-scratch result;
- delta/auto: within the drift bound the ledger claims, key by key (auto: within its 1-ulp budget on linear keys
  it re-bases);
- after an injected failure: identical to the weights and ledger before it.
"""
import os

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from safetensors.torch import save_file

from lora_factory import KINDS, make_module, oracle_weights, write_lora
from lora_state import LoraStateError, LoraStateManager, StackError
from lora_state.files import LoraFileCache

EXAMPLES = int(os.environ.get("LORA_STATE_STATEFUL_EXAMPLES", "40"))
STEPS = int(os.environ.get("LORA_STATE_STATEFUL_STEPS", "25"))
NAMES = st.sampled_from([f"{kind}_{variant}" for kind in KINDS for variant in range(2)])
STRENGTHS = st.sampled_from([1.0, 0.5, 0.8, -0.7, 0.0, 1.5, 0.25, 2.0, -1.0, 0.1])


class Files:
    """LoRA files written once per session, plus broken ones for failure injection."""

    directory = None
    good: dict = {}
    oracles: dict = {}
    bad: dict = {}

    @classmethod
    def ensure(cls, directory):
        if cls.directory:
            return
        cls.directory = directory
        for index, kind in enumerate(KINDS):
            for variant in range(2):      # two different files per kind
                path = os.path.join(directory, f"{kind}_{variant}.safetensors")
                cls.oracles[path] = write_lora(path, kind, seed=1000 + 10 * index + variant)
                cls.good[f"{kind}_{variant}"] = path
        corrupt = os.path.join(directory, "corrupt.safetensors")
        with open(cls.good["lora_0"], "rb") as handle:
            data = handle.read()
        with open(corrupt, "wb") as handle:
            handle.write(data[: len(data) // 2])
        wrong = os.path.join(directory, "wrong_shape.safetensors")
        save_file({"lora_unet_fc1.lora_down.weight": torch.randn(2, 17),
                   "lora_unet_fc1.lora_up.weight": torch.randn(24, 2)}, wrong)
        nan = os.path.join(directory, "nan.safetensors")
        save_file({"lora_unet_fc2.lora_down.weight": torch.randn(2, 24),
                   "lora_unet_fc2.lora_up.weight": torch.full((8, 2), float("inf"))}, nan)
        pickled = os.path.join(directory, "pickled.pt")
        torch.save({"x": torch.zeros(1)}, pickled)
        cls.bad = {"corrupt": corrupt, "wrong_shape": wrong, "nan": nan, "pickled": pickled,
                   "missing": os.path.join(directory, "missing.safetensors")}


FILE_CACHE = LoraFileCache()


def from_scratch(stack, dtype):
    module = make_module(dtype)
    LoraStateManager(module, mode="exact", file_cache=FILE_CACHE).reconcile(stack)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Injected(Exception):
    pass


class StackMachine(RuleBasedStateMachine):
    dtype = torch.float32
    mode = "exact"

    @initialize()
    def setup(self):
        self.module = make_module(self.dtype)
        self.clean = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        self.manager = LoraStateManager(self.module, mode=self.mode, file_cache=FILE_CACHE)
        self.stack: list[tuple[str, float]] = []
        self.longest = 0     # longest stack requested so far (any rule)

    # -- edits ---------------------------------------------------------------------------------------------
    def _apply(self):
        self.longest = max(self.longest, len(self.stack))
        self.manager.reconcile(self.stack)

    @rule(name=NAMES, strength=STRENGTHS)
    def add(self, name, strength):
        self.stack.append((Files.good[name], strength))
        self._apply()

    @precondition(lambda self: self.stack)
    @rule(data=st.data())
    def remove(self, data):
        self.stack.pop(data.draw(st.integers(0, len(self.stack) - 1)))
        self._apply()

    @precondition(lambda self: len(self.stack) > 1)
    @rule(data=st.data())
    def reorder(self, data):
        self.stack = data.draw(st.permutations(self.stack))
        self._apply()

    @precondition(lambda self: self.stack)
    @rule(data=st.data(), strength=STRENGTHS)
    def reweight(self, data, strength):
        index = data.draw(st.integers(0, len(self.stack) - 1))
        self.stack[index] = (self.stack[index][0], strength)
        self._apply()

    @precondition(lambda self: self.stack)
    @rule(data=st.data())
    def duplicate(self, data):
        self.stack.append(self.stack[data.draw(st.integers(0, len(self.stack) - 1))])
        self._apply()

    @rule()
    def rerun_same(self):
        self._apply()

    @rule()
    def reset(self):
        self.manager.reset()
        if self.mode != "delta":
            assert all(torch.equal(v, self.clean[k]) for k, v in self.module.state_dict().items())
        self.stack = []

    # -- injected failures ----------------------------------------------------------------------------------
    def _expect_unchanged(self, call, error):
        before = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        ledger = {k: (s.contributors, s.drift) for k, s in self.manager.ledger.keys.items()}
        applied = self.manager.applied
        with pytest.raises(error):
            call()
        assert all(torch.equal(before[k], v) for k, v in self.module.state_dict().items())
        assert {k: (s.contributors, s.drift) for k, s in self.manager.ledger.keys.items()} == ledger
        assert self.manager.applied == applied

    @rule(bad=st.sampled_from(["corrupt", "wrong_shape", "nan", "pickled", "missing"]), data=st.data())
    def bad_file(self, bad, data):
        stack = list(self.stack)
        stack.insert(data.draw(st.integers(0, len(stack))), (Files.bad[bad], 1.0))
        self._expect_unchanged(lambda: self.manager.reconcile(stack), LoraStateError)

    @rule(value=st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    def bad_strength(self, value):
        stack = self.stack + [(Files.good["lora_0"], value)]
        self._expect_unchanged(lambda: self.manager.reconcile(stack), StackError)

    @rule(names=st.lists(NAMES, min_size=1, max_size=4), strength=STRENGTHS, after=st.integers(0, 4))
    def exception_mid_apply(self, names, strength, after):
        """An exception after `after` written keys (as a UI interrupt raises from the progress callback)."""
        stack = [(Files.good[n], strength) for n in names]
        self.longest = max(self.longest, len(stack))

        def fail(done, total):
            if done > after:
                raise Injected(f"injected after {after} keys")

        before = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        ledger = {k: (s.contributors, s.drift) for k, s in self.manager.ledger.keys.items()}
        applied = self.manager.applied
        try:
            self.manager.reconcile(stack, progress=fail)
        except Injected:
            # The previous stack is back on every key: with the same bits; or, where a clean copy allowed it, at
            # the exact value of that stack (the drift it carried is then gone, and the ledger says so); or, for a
            # delta step on a key without a true clean copy, undone by the opposite step: within the drift bound the
            # ledger now gives it, which has grown by both steps' arithmetic.
            exact = from_scratch(self.stack, self.dtype)
            for key, value in self.module.state_dict().items():
                state = self.manager.ledger.keys.get(key)
                old_drift = ledger[key][1] if key in ledger else 0.0
                drift = state.drift if state else 0.0
                same_bits = torch.equal(before[key], value) and drift == old_drift
                recomputed = torch.equal(value, exact[key]) and drift == 0.0 and old_drift > 0.0
                undone = state is not None and self.manager.backups.drift(key) != 0.0 and drift >= old_drift and \
                    float((value.float() - exact[key].float()).abs().max()) <= drift
                assert same_bits or recomputed or undone, key
            after = {k: (s.contributors, s.drift) for k, s in self.manager.ledger.keys.items()}
            # (an undone key that was clean before stays in the ledger with no contributors: its drift)
            assert {k: c for k, (c, _) in after.items() if c} == {k: c for k, (c, _) in ledger.items() if c}
            assert self.manager.applied == applied and "rolled back" in self.manager.ledger.last_error
        else:
            self.stack = stack    # the plan had fewer keys than the injection point: it simply completed

    # -- the oracle ------------------------------------------------------------------------------------------
    @invariant()
    def matches_oracle(self):
        if not hasattr(self, "manager"):
            return
        expected = from_scratch(self.stack, self.dtype)
        live = self.module.state_dict()
        keys = self.manager.ledger.keys
        for key, value in live.items():
            state = keys.get(key)
            if self.mode == "exact" or state is None:
                assert torch.equal(value, expected[key]), f"{key} differs from the from-scratch result"
                continue
            error = float((value.float() - expected[key].float()).abs().max())
            assert error <= state.drift, f"{key}: error {error} beyond the claimed bound {state.drift}"
        if self.mode == "exact" and self.stack:
            reference = oracle_weights(self.clean, self.stack, Files.oracles)
            for key, value in live.items():
                # fp32 math vs float64: a few eps per applied term (stacked DoRAs compound), plus one rounding.
                terms = 1 + len(self.stack)
                tolerance = torch.finfo(self.dtype).eps * 8 * terms * (reference[key].abs().max() + 1)
                assert float((value.double() - reference[key]).abs().max()) <= tolerance, key
        assert [(a.path, a.strength) for a in self.manager.applied] == self.stack

    @invariant()
    def backups_match_mode(self):
        if not hasattr(self, "manager"):
            return
        backed = set(self.manager.backups.keys())
        touched = {k for k, s in self.manager.ledger.keys.items() if s.contributors}
        if self.mode == "exact":
            assert backed == touched      # back up exactly what an applied LoRA touches
        assert backed <= set(self.manager.ledger.keys)
        expected_bytes = sum(self.module.state_dict()[k].numel() * self.module.state_dict()[k].element_size()
                             for k in backed)
        assert self.manager.backup_bytes == expected_bytes

    @invariant()
    def auto_stays_within_budget(self):
        """auto lets a key's drift grow only while it stays within the budget, so it re-bases instead of drifting
        with the number of switches (drift reported in ulps at the key's largest magnitude)."""
        if not hasattr(self, "manager") or self.mode != "auto":
            return
        budget = self.manager.budget_ulps(self.dtype)
        previous = getattr(self, "previous_drift", {})
        for key, state in self.manager.ledger.keys.items():
            if state.drift > previous.get(key, 0.0):
                assert state.drift_ulps <= budget, f"{key}: drift {state.drift_ulps} ulp after a step, budget {budget}"
        self.previous_drift = {k: s.drift for k, s in self.manager.ledger.keys.items()}


def machine_test(dtype, mode):
    class Machine(StackMachine):
        pass

    Machine.dtype, Machine.mode = dtype, mode
    test = Machine.TestCase
    test.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    return test


@pytest.fixture(autouse=True, scope="module")
def lora_files(tmp_path_factory):
    Files.ensure(str(tmp_path_factory.mktemp("stateful")))


def _run(dtype, mode):
    test = machine_test(dtype, mode)("runTest")
    test.runTest()


@pytest.mark.parametrize("mode", ["exact", "delta", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_stateful(dtype, mode):
    _run(dtype, mode)
