"""LoraStateManager behaviour: history independence, reset, verify, memory, failures, in-place writes."""
import pytest
import torch

from lora_factory import make_module, write_all
from lora_state import (ExternalChangeError, LoraStateError, LoraStateManager, StackError, ulp_distance)
from lora_state.files import LoraFileCache
from lora_state.hosts import TorchModuleHost


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    return write_all(str(tmp_path_factory.mktemp("loras")), seed=1)


def fresh_exact(stack, dtype):
    module = make_module(dtype)
    LoraStateManager(module, mode="exact", file_cache=LoraFileCache()).reconcile(stack)
    return module.state_dict()


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_exact_is_history_independent(loras, dtype):
    a = [(loras["lora"][0], 0.8), (loras["loha"][0], 1.0), (loras["dora"][0], 0.6)]
    b = [(loras["peft"][0], 1.0), (loras["lora"][0], -0.4), (loras["lokr"][0], 1.2), (loras["diff"][0], 0.5)]
    module = make_module(dtype)
    manager = LoraStateManager(module, mode="exact")
    manager.reconcile(a)
    first = snapshot(module)
    for _ in range(5):
        manager.reconcile(b)
        assert same(snapshot(module), fresh_exact(b, dtype))
        manager.reconcile(a)
        assert same(snapshot(module), first)
    assert same(first, fresh_exact(a, dtype))


def test_weights_change_in_place(loras):
    module = make_module(torch.float16)
    params = {k: (p, p.data_ptr()) for k, p in module.named_parameters()}
    manager = LoraStateManager(module, mode="auto")
    for stack in ([(loras["lora"][0], 1.0)], [(loras["lora"][0], 0.3), (loras["dora"][0], 1.0)], []):
        manager.reconcile(stack)
        for key, param in module.named_parameters():
            assert param is params[key][0] and param.data_ptr() == params[key][1] and param.dtype == torch.float16


def test_unchanged_stack_does_no_weight_work(loras):
    module = make_module()
    manager = LoraStateManager(module)
    stack = [(loras["lora"][0], 1.0), (loras["loha"][0], 0.5)]
    manager.reconcile(stack)
    versions = {k: p._version for k, p in module.named_parameters()}
    report = manager.reconcile(stack)
    assert report.noop and report.keys_changed == 0
    assert versions == {k: p._version for k, p in module.named_parameters()}


def test_only_changed_keys_are_written(loras):
    module = make_module()
    manager = LoraStateManager(module, mode="exact")
    manager.reconcile([(loras["lora"][0], 1.0), (loras["bare"][0], 1.0)])   # lora: fc1/conv/conv1, bare: fc2
    versions = {k: p._version for k, p in module.named_parameters()}
    report = manager.reconcile([(loras["lora"][0], 1.0), (loras["bare"][0], 0.5)])
    assert report.keys_changed == 1 and report.reweighted == [("bare.safetensors", 1.0, 0.5)]
    changed = {k for k, p in module.named_parameters() if p._version != versions[k]}
    assert changed == {"fc2.weight"}


def test_reset_restores_clean_and_empties_ledger(loras):
    module = make_module(torch.bfloat16)
    clean = snapshot(module)
    manager = LoraStateManager(module, mode="auto")
    manager.reconcile([(p, 0.9) for p, _ in loras.values()])
    assert manager.backup_bytes > 0
    manager.reset()
    assert same(snapshot(module), clean)
    assert manager.applied == () and manager.backup_bytes == 0 and not manager.ledger.keys


def test_backups_hold_only_touched_keys(loras):
    module = make_module()
    manager = LoraStateManager(module, mode="exact")
    manager.reconcile([(loras["bare"][0], 1.0)])     # touches fc2.weight only
    assert manager.backup_bytes == module.fc2.weight.numel() * 4
    manager.reconcile([])
    assert manager.backup_bytes == 0


def test_delta_mode_keeps_no_backups_and_reports_drift(loras):
    module = make_module(torch.float16)
    manager = LoraStateManager(module, mode="delta")
    stack_a, stack_b = [(loras["lora"][0], 1.0)], [(loras["lora"][0], 0.2)]
    drifts = []
    for _ in range(3):
        manager.reconcile(stack_a)
        report = manager.reconcile(stack_b)
        drifts.append(report.max_drift_ulps)
    assert manager.backup_bytes == 0
    # Each delta step rounds once more: the reported bound grows (half an ulp per rounding), never resets.
    assert report.paths == {"delta": 3} and drifts[0] >= 1 and drifts[2] > drifts[1] > drifts[0]
    exact = fresh_exact(stack_b, torch.float16)
    for key in ("fc1.weight", "conv.weight", "conv1.weight"):
        assert ulp_distance(module.state_dict()[key], exact[key]) <= manager.ledger.keys[key].drift_ulps


def test_dora_never_takes_the_delta_path(loras):
    module = make_module(torch.float16)
    manager = LoraStateManager(module, mode="delta")
    manager.reconcile([(loras["dora"][0], 1.0)])
    report = manager.reconcile([(loras["dora"][0], 0.5)])
    assert report.paths == {"exact": 2}
    assert same(snapshot(module), fresh_exact([(loras["dora"][0], 0.5)], torch.float16))


@pytest.mark.parametrize("location", ["cpu", "disk"])
def test_backup_locations_give_the_same_bits(loras, location, tmp_path):
    stack = [(loras["lora"][0], 1.0), (loras["dora"][0], 0.7)]
    module = make_module(torch.float16)
    clean = snapshot(module)
    manager = LoraStateManager(module, mode="exact", backup=location, spill_dir=str(tmp_path / "spill"))
    manager.reconcile(stack)
    assert same(snapshot(module), fresh_exact(stack, torch.float16))
    if location == "disk":
        assert len(list((tmp_path / "spill").iterdir())) == len(manager.ledger.keys) == 4
    manager.reset()
    assert same(snapshot(module), clean)


def test_backup_budget(loras):
    module = make_module()
    budget = module.fc2.weight.numel() * 4
    exact = LoraStateManager(module, mode="exact", backup_budget_bytes=budget)
    before = snapshot(module)
    with pytest.raises(LoraStateError, match="budget"):
        exact.reconcile([(loras["lora"][0], 1.0)])
    assert same(snapshot(module), before)
    auto = LoraStateManager(make_module(), mode="auto", backup_budget_bytes=budget)
    report = auto.reconcile([(loras["lora"][0], 1.0), (loras["bare"][0], 1.0)])
    assert auto.backup_bytes <= budget and report.paths.get("delta", 0) >= 1


def test_external_changes_are_detected_not_trusted(loras):
    module = make_module()
    manager = LoraStateManager(module, mode="exact")
    manager.reconcile([(loras["lora"][0], 1.0)])
    assert manager.verify().ok
    with torch.no_grad():
        module.fc1.weight.mul_(1.001)                  # another tool writes in place
    report = manager.verify()
    assert report.external_changes == ["fc1.weight"] and not report.ok
    with pytest.raises(ExternalChangeError, match="fc1.weight.*reset"):
        manager.reconcile([(loras["lora"][0], 0.5)])
    module.conv.weight = torch.nn.Parameter(module.conv.weight.detach().clone())   # replaced object
    assert set(manager.verify().external_changes) == {"fc1.weight", "conv.weight"}
    manager.reset()
    manager.reconcile([(loras["lora"][0], 0.5)])
    assert same(snapshot(module), fresh_exact([(loras["lora"][0], 0.5)], torch.float32))


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("mode", ["exact", "delta", "auto"])
def test_interrupt_mid_apply_rolls_back(loras, exc_type, mode):
    module = make_module(torch.float16)
    manager = LoraStateManager(module, mode=mode)
    manager.reconcile([(loras["lora"][0], 1.0), (loras["dora"][0], 0.5)])
    before = snapshot(module)
    ledger_before = {k: (s.contributors, s.drift) for k, s in manager.ledger.keys.items()}

    def interrupt_after_two(done, total):
        if done == 2:
            raise exc_type("stop")

    with pytest.raises(exc_type):
        manager.reconcile([(loras["loha"][0], 1.0), (loras["dora"][0], 1.0)], progress=interrupt_after_two)
    if mode == "delta":
        assert_back_within_drift(module, manager, before, ledger_before,
                                 fresh_exact([(loras["lora"][0], 1.0), (loras["dora"][0], 0.5)], torch.float16))
    else:
        assert same(snapshot(module), before)
        assert {k: (s.contributors, s.drift) for k, s in manager.ledger.keys.items()} == ledger_before
    assert "rolled back" in manager.ledger.last_error and manager.verify().ok
    manager.reconcile([(loras["loha"][0], 1.0)])           # and it carries on normally
    assert manager.ledger.last_error == ""


def assert_back_within_drift(module, manager, before, ledger_before, exact_old):
    """Delta steps are undone by the opposite step (no undo copy): the old stack again, each key within the drift
    bound the ledger now reports for it (which includes both steps' arithmetic)."""
    assert {k: s.contributors for k, s in manager.ledger.keys.items()} == \
        {k: contributors for k, (contributors, _) in ledger_before.items()}
    after, undone = snapshot(module), 0
    for key, state in manager.ledger.keys.items():
        deviation = float((after[key].float() - exact_old[key].float()).abs().max())
        assert deviation <= state.drift, (key, deviation, state.drift)
        assert state.drift >= ledger_before[key][1]
        undone += not torch.equal(after[key], before[key]) or state.drift > ledger_before[key][1]
    assert undone, "no key was undone by an opposite step: the test no longer covers it"


class OtherOrderHost(TorchModuleHost):
    """A host whose auto re-bases of fp16/bf16 keys add the LoRAs in reverse order: another order than its exact
    path, as ComfyUI's host re-bases by fused row passes instead of calculate_weight's order."""

    def rebase_updates(self, key, weight, contributions):
        if weight.dtype not in (torch.float16, torch.bfloat16):
            return None
        return self.row_updates(key, weight, list(contributions)[::-1], False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_auto_rebases_in_the_hosts_faster_order_within_the_drift_it_reports(loras, dtype):
    module = make_module(dtype)
    manager = LoraStateManager(OtherOrderHost(module), mode="auto")
    a, b = loras["lora"][0], loras["peft"][0]
    for step, strengths in enumerate(((1.0, 0.7), (0.5, 0.7), (0.5, -0.3), (1.2, -0.3), (0.4, 0.9), (0.4, 0.9))):
        manager.reconcile([(a, strengths[0]), (b, strengths[1])])
        if step == 0:    # the first application is a re-base from clean: in the other order, with its bound
            assert all(state.drift > 0.0 for state in manager.ledger.keys.values())
        report = manager.verify()
        checked = [k for k in report.keys if k.max_ulps is not None]
        assert checked and report.ok
        for key in checked:
            assert key.max_ulps <= key.drift_bound_ulps <= manager.budget_ulps(dtype), key
    manager.reconcile([])
    assert same(snapshot(module), make_module(dtype).state_dict())    # restored from the clean copies


class CountingHost(OtherOrderHost):
    """Counts the writes in the exact order: row passes that are neither delta steps nor re-bases in the other
    order (which OtherOrderHost builds from row passes too)."""

    exact_writes = 0

    def row_updates(self, key, weight, contributions, delta_step):
        self.exact_writes += not delta_step
        return super().row_updates(key, weight, contributions, delta_step)

    def rebase_updates(self, key, weight, contributions):
        updates = super().rebase_updates(key, weight, contributions)
        self.exact_writes -= updates is not None
        return updates


def test_auto_rebase_falls_back_to_the_exact_order_over_its_budget_and_exact_mode_never_uses_it(loras):
    a, b = loras["lora"][0], loras["peft"][0]
    for mode, budget in (("auto", 0.5), ("exact", None)):
        module = make_module(torch.float16)
        host = CountingHost(module)
        manager = LoraStateManager(host, mode=mode, drift_budget_ulps=budget)
        for strengths in ((1.0, 0.7), (0.5, 0.7), (0.5, -0.3)):
            stack = [(a, strengths[0]), (b, strengths[1])]
            host.exact_writes = 0
            report = manager.reconcile(stack)
            assert same(snapshot(module), fresh_exact(stack, torch.float16))
            assert all(state.drift == 0.0 for state in manager.ledger.keys.values())
            assert host.exact_writes == report.paths["exact"]       # each key written once in the exact order


def test_row_blocks_hold_block_bytes_of_work_on_cpu_and_whole_keys_on_a_gpu():
    """Per-block kernel launches would dominate on a GPU: there a key is one block."""
    from lora_state.applier import BLOCK_BYTES, rows_per_block

    assert rows_per_block(torch.device("cpu"), 5120, 1280) == BLOCK_BYTES // (4 * 1280) < 5120
    assert rows_per_block(torch.device("cpu"), 10, 10 ** 6) == 1
    assert rows_per_block(torch.device("cpu"), 1280, 5120, 256) == 256 > BLOCK_BYTES // (4 * 5120)
    assert rows_per_block(torch.device("cuda", 0), 5120, 1280) == 5120
    assert rows_per_block(torch.device("mps"), 3, 7) == 3


class MinRowsHost(TorchModuleHost):
    """Row updates that ask for blocks of at least 4 rows (as ComfyUI's fused LoRA rows ask for 64), recording
    the blocks the applier gives them."""

    def __init__(self, module):
        super().__init__(module)
        self.blocks = []

    def row_updates(self, key, weight, contributions, delta_step):
        updates = super().row_updates(key, weight, contributions, delta_step)
        return None if updates is None else [_RecordedRows(update, weight.shape[0], self.blocks) for update in updates]


class _RecordedRows:
    min_block_rows = 4

    def __init__(self, update, rows, blocks):
        self.update, self.rows, self.blocks = update, rows, blocks

    def __call__(self, block, first, last):
        self.blocks.append((first, last, self.rows))
        return self.update(block, first, last)


def test_row_updates_get_at_least_the_rows_they_ask_for(loras, monkeypatch):
    from lora_state import applier

    monkeypatch.setattr(applier, "BLOCK_BYTES", 64)          # cache-sized blocks would be a single row here
    module = make_module(torch.float16)
    host = MinRowsHost(module)
    stack = [(loras["lora"][0], 0.7)]
    for mode in ("exact", "delta"):
        LoraStateManager(host, mode=mode).reconcile(stack)
        assert host.blocks and all(last - first == min(4, rows - first) for first, last, rows in host.blocks)
        assert same(snapshot(module), fresh_exact(stack, torch.float16))
        host.blocks.clear()
        module.load_state_dict(make_module(torch.float16).state_dict())


class CoarseStepHost(TorchModuleHost):
    """Says its delta steps' products round far more than its exact path's (as a host whose delta steps take
    another order would, see ComfyModelHost.step_bound)."""

    def step_bound(self, patch, weight):
        bound = self.change_bound(patch)
        return None if bound is None else (bound[0], 10 ** 6)


def test_delta_steps_are_bounded_and_predicted_with_the_hosts_step_bound(loras):
    a, b = loras["lora"][0], loras["peft"][0]
    drift, paths = {}, {}
    for host_type in (TorchModuleHost, CoarseStepHost):
        module = make_module(torch.float16)
        delta = LoraStateManager(host_type(module), mode="delta")
        delta.reconcile([(a, 1.0), (b, 0.7)])
        delta.reconcile([(a, 0.5), (b, 0.7)])
        drift[host_type] = {key: state.drift for key, state in delta.ledger.keys.items()}
        auto = LoraStateManager(host_type(make_module(torch.float16)), mode="auto")
        auto.reconcile([(a, 1.0), (b, 0.7)])
        paths[host_type] = auto.reconcile([(a, 0.5), (b, 0.7)]).paths
    assert all(drift[CoarseStepHost][key] > bound for key, bound in drift[TorchModuleHost].items())
    assert paths[TorchModuleHost].get("delta") and not paths[CoarseStepHost].get("delta")   # predicted over budget


@pytest.mark.parametrize("blocks_before_interrupt", [0, 3])
def test_delta_step_interrupted_inside_a_key_is_undone_row_exactly(loras, monkeypatch, blocks_before_interrupt):
    """An interrupt between row blocks of one key: the blocks written are reversed, the others left alone."""
    from lora_state import applier
    from lora_state.formats.lora import LoraAdapter

    module = make_module(torch.float16)
    manager = LoraStateManager(module, mode="delta")
    old_stack = [(loras["lora"][0], 1.0)]
    manager.reconcile(old_stack)
    before = snapshot(module)
    ledger_before = {k: (s.contributors, s.drift) for k, s in manager.ledger.keys.items()}
    monkeypatch.setattr(applier, "BLOCK_BYTES", 64)          # many small blocks per key
    calls = {"n": 0}
    real_row_update = LoraAdapter.row_update

    def row_update(self, strength, shape):
        update = real_row_update(self, strength, shape)
        if update is None:
            return None

        def interrupting(block, first, last):
            calls["n"] += 1
            if calls["n"] == blocks_before_interrupt + 1:
                raise KeyboardInterrupt("stop")
            return update(block, first, last)
        return interrupting

    monkeypatch.setattr(LoraAdapter, "row_update", row_update)
    with pytest.raises(KeyboardInterrupt):
        manager.reconcile([(loras["lora"][0], 0.25)])
    monkeypatch.setattr(LoraAdapter, "row_update", real_row_update)
    if blocks_before_interrupt == 0:
        assert same(snapshot(module), before)                 # nothing was written: nothing to undo
    else:
        assert_back_within_drift(module, manager, before, ledger_before, fresh_exact(old_stack, torch.float16))
    manager.reconcile([(loras["lora"][0], 0.25)])
    assert manager.ledger.last_error == ""


def test_bad_strengths_are_refused(loras):
    manager = LoraStateManager(make_module())
    for bad in (float("nan"), float("inf"), "x"):
        with pytest.raises(StackError, match="finite|number"):
            manager.reconcile([(loras["lora"][0], bad)])
    with pytest.raises(StackError):
        manager.reconcile([("", 1.0)])


def test_duplicates_zero_strength_and_stack_forms(loras, tmp_path):
    path = loras["lora"][0]
    module = make_module()
    manager = LoraStateManager(module, mode="exact")
    manager.reconcile([(path, 0.5), {"path": path, "strength": 0.25}, (loras["bare"][0], 0.0, 1.0)])
    assert [a.strength for a in manager.applied] == [0.5, 0.25, 0.0]
    assert "fc2.weight" not in manager.ledger.keys          # zero strength contributes nothing
    expected = fresh_exact([(path, 0.5), (path, 0.25)], torch.float32)
    assert same(snapshot(module), expected)


def test_same_content_under_two_names_is_one_lora(loras, tmp_path):
    copy = tmp_path / "renamed.safetensors"
    copy.write_bytes(open(loras["lora"][0], "rb").read())
    module = make_module()
    manager = LoraStateManager(module, mode="exact")
    manager.reconcile([(loras["lora"][0], 1.0)])
    report = manager.reconcile([(str(copy), 1.0)])
    assert report.keys_changed == 0 and manager.applied[0].name == "renamed.safetensors"


def test_listeners_hear_every_change(loras):
    events = []
    manager = LoraStateManager(make_module())
    manager.listeners.append(lambda m, data: events.append(data["event"]))
    manager.reconcile([(loras["lora"][0], 1.0)])
    manager.reset()
    assert events == ["reconcile", "reset"]


def test_mode_is_validated():
    with pytest.raises(ValueError, match="exact"):
        LoraStateManager(make_module(), mode="fast")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_auto_rebases_keys_in_turns_not_all_at_once(tmp_path, dtype):
    """Keys written together must not all exhaust their drift budget at the same change and re-base together
    (a periodic full re-patch): each re-bases in its own turn, so every change does about the same work."""
    from safetensors.torch import save_file
    module = forty_linears(dtype)
    paths = []
    for seed in range(2):
        generator = torch.Generator().manual_seed(seed)
        tensors = {}
        for index in range(40):
            tensors[f"lora_unet_{index}.lora_up.weight"] = torch.randn(32, 4, generator=generator) * 0.05
            tensors[f"lora_unet_{index}.lora_down.weight"] = torch.randn(4, 32, generator=generator) * 0.05
        paths.append(str(tmp_path / f"lora_{seed}.safetensors"))
        save_file(tensors, paths[-1])
    manager = LoraStateManager(module, mode="auto")
    first = manager.reconcile([(paths[0], 1.0), (paths[1], 1.0)])
    assert first.paths == {"exact": 40}
    rebased = []
    for change in range(8):
        strength = (0.5 if change % 2 == 0 else 1.0) + change / 100
        report = manager.reconcile([(paths[0], 1.0), (paths[1], strength)])
        assert sum(report.paths.values()) == 40 and report.max_drift_ulps <= manager.budget_ulps(dtype)
        rebased.append(report.paths.get("exact", 0))
    # fp16/bf16: three delta steps per re-base (drift.on_the_grid), so about a quarter of the keys re-base at each
    # change (a third with two steps, half with one), never all or none.
    assert all(6 <= count <= 16 for count in rebased) and sum(rebased) <= 0.3 * 40 * len(rebased), rebased
    expected = module.state_dict()
    exact = LoraStateManager(forty_linears(dtype), mode="exact")
    exact.reconcile([(paths[0], 1.0), (paths[1], strength)])
    for key, value in exact.host.module.state_dict().items():
        assert ulp_distance(expected[key], value) <= manager.ledger.keys[key].drift_ulps if key in \
            manager.ledger.keys else torch.equal(expected[key], value)


def forty_linears(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(32, 32) for _ in range(40)]).to(dtype)


def test_a_lora_toggled_back_on_is_not_read_again_while_its_file_is_cached(loras, monkeypatch):
    """Removing a LoRA and adding it back (a toggle) reuses its resolved patches and their change bounds, as long
    as the file cache holds the same file; once the cache lets the file go, it is resolved afresh."""
    cache = LoraFileCache()
    manager = LoraStateManager(make_module(), mode="delta", file_cache=cache)
    reads = []
    read = manager.host.read
    monkeypatch.setattr(manager.host, "read", lambda lora_file: reads.append(lora_file.name) or read(lora_file))
    base = [(loras["lora"][0], 0.8), (loras["bare"][0], 1.0)]
    manager.reconcile(base)
    assert len(reads) == 2
    for _ in range(3):
        manager.reconcile(base[:1])
        manager.reconcile(base)
    assert len(reads) == 2
    manager.reconcile(base[:1])
    cache.clear()          # the file cache lets go of both files: the removed one is read and resolved again (the
    manager.reconcile(base)   # applied one stays resolved as it was)
    assert reads == ["lora.safetensors", "bare.safetensors", "bare.safetensors"]
    exact = LoraStateManager(make_module(), mode="exact", file_cache=LoraFileCache())
    exact.reconcile(base)
    for key, value in exact.host.module.state_dict().items():
        state = manager.ledger.keys.get(key)
        assert ulp_distance(manager.host.module.state_dict()[key], value) <= (state.drift_ulps if state else 0.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_auto_measures_a_key_written_from_clean_while_writing_it(tmp_path, dtype, monkeypatch):
    """auto keeps the largest |value| of each key it wrote from clean (measured block by block during the
    write), so the next change's delta steps start from it without reading the whole key again."""
    from safetensors.torch import save_file

    from lora_state import manager as manager_module
    paths = []
    for seed in range(2):
        generator = torch.Generator().manual_seed(seed)
        paths.append(str(tmp_path / f"lora_{seed}.safetensors"))
        save_file({f"lora_unet_{index}.lora_{part}.weight": torch.randn(*shape, generator=generator) * 0.05
                   for index in range(40) for part, shape in (("up", (32, 4)), ("down", (4, 32)))}, paths[-1])
    module = forty_linears(dtype)
    manager = LoraStateManager(module, mode="auto")
    manager.reconcile([(paths[0], 1.0), (paths[1], 1.0)])
    weights = dict(module.named_parameters())
    for key, state in manager.ledger.keys.items():
        assert state.magnitude == float(weights[key].detach().abs().max()), key
    measured = []
    monkeypatch.setattr(manager_module, "max_magnitude", lambda tensor: measured.append(tensor) or 1.0)
    report = manager.reconcile([(paths[0], 1.0), (paths[1], 0.5)])
    assert report.paths.get("delta", 0) > 0 and measured == []


def count_native_steps(monkeypatch) -> list:
    """Patch applier.native_step to record, per call, whether it wrote the key in one op."""
    from lora_state import applier
    taken = []
    original = applier.native_step
    monkeypatch.setattr(applier, "native_step", lambda live, start, updates: taken.append(
        original(live, start, updates)) or taken[-1])
    return taken


@pytest.fixture
def native_faster(monkeypatch):
    """Writes in the weights' own dtype taken wherever they are possible, whether or not this CPU multiplies fp16/bf16
    faster than fp32 (native_steps.faster_here): the tests check their arithmetic, not this machine's speed."""
    from lora_state import native_steps
    monkeypatch.setattr(native_steps, "faster_here", lambda dtype, pieces=1: True)


def assert_within_reported_drift(module, manager, stack, dtype):
    assert manager.verify().ok
    reference = make_module(dtype)
    LoraStateManager(reference, mode="exact", file_cache=LoraFileCache()).reconcile(stack)
    for key, state in manager.ledger.keys.items():
        difference = float((module.state_dict()[key].double() - reference.state_dict()[key].double()).abs().max())
        assert difference <= state.drift, key


@pytest.mark.parametrize("dtype,kind", [(torch.float16, "lora_fp16"), (torch.bfloat16, "lora_bf16")])
def test_a_delta_step_with_factors_of_the_weights_dtype_is_one_addmm_in_that_dtype(loras, dtype, kind, monkeypatch,
                                                                                   native_faster):
    """fp16/bf16 weights, a LoRA stored in the same dtype: a one-LoRA delta step is a single addmm_ in the weights'
    dtype (PyTorch adds in fp32 and rounds once, checked once per dtype), and stays within the drift it reports;
    where that check fails, or where that addmm_ is slower than fp32 on this CPU, the step goes by fp32 blocks."""
    from lora_state import native_steps
    taken = count_native_steps(monkeypatch)
    module = make_module(dtype)
    manager = LoraStateManager(module, mode="delta", file_cache=LoraFileCache())
    manager.reconcile([(loras[kind][0], 1.0), (loras["loha"][0], 0.5)])
    manager.reconcile([(loras[kind][0], 0.3), (loras["loha"][0], 0.5)])
    assert native_steps.rounds_once(dtype) and any(taken)
    assert_within_reported_drift(module, manager, [(loras[kind][0], 0.3), (loras["loha"][0], 0.5)], dtype)
    taken.clear()
    monkeypatch.setitem(native_steps._ROUNDS_ONCE, dtype, False)
    manager.reconcile([(loras[kind][0], 1.0), (loras["loha"][0], 0.5)])
    assert taken and not any(taken)
    taken.clear()
    monkeypatch.setitem(native_steps._ROUNDS_ONCE, dtype, True)
    monkeypatch.setattr(native_steps, "faster_here", lambda dtype, pieces=1: False)
    manager.reconcile([(loras[kind][0], 0.3), (loras["loha"][0], 0.5)])
    assert taken and not any(taken)
    assert_within_reported_drift(module, manager, [(loras[kind][0], 0.3), (loras["loha"][0], 0.5)], dtype)


@pytest.mark.parametrize("mode", ["delta", "auto"])
def test_bf16_weights_take_loras_of_any_dtype_in_one_bf16_addmm(loras, mode, monkeypatch, native_faster):
    """bf16 weights (here every key, by a lowered size threshold): fp16 and fp32 LoRAs are split into exact bf16
    pieces, so delta steps and auto's re-bases of several LoRAs are one bf16 addmm_ each; every key stays within
    the drift it reports and auto within its budget; a reset brings back the clean bits."""
    from lora_state import native_steps
    monkeypatch.setattr(native_steps, "MIN_SPLIT_ELEMENTS", 0)
    taken = count_native_steps(monkeypatch)
    module = make_module(torch.bfloat16)
    clean = snapshot(module)
    manager = LoraStateManager(module, mode=mode, file_cache=LoraFileCache())
    a, b = loras["lora_fp16"][0], loras["lora"][0]
    for strengths in ((1.0, 0.7), (0.5, 0.7), (0.5, -0.3), (1.2, -0.3), (0.4, 0.9), (0.4, 0.2), (0.9, 0.2)):
        stack = [(a, strengths[0]), (b, strengths[1])]
        taken.clear()
        report = manager.reconcile(stack)
        assert any(taken), report.paths
        assert_within_reported_drift(module, manager, stack, torch.bfloat16)
        if mode == "auto":
            for key in manager.verify().keys:
                assert key.max_ulps is None or key.max_ulps <= key.drift_bound_ulps <= 2.0, key
    manager.reconcile([])
    if mode == "auto":
        assert same(snapshot(module), clean)


def test_bf16_pieces_add_up_to_the_factor_and_their_product_to_the_factors_product(native_faster):
    from lora_state.native_steps import _bf16_pieces, operands
    generator = torch.Generator().manual_seed(3)
    exponents = torch.randint(-60, 60, (64, 48), generator=generator).double()
    wide = (torch.randn(64, 48, generator=generator, dtype=torch.float64) * torch.exp2(exponents)).float()
    half = (torch.randn(64, 48, generator=generator) * 0.05).half()
    half[0, :4] = torch.tensor([65504.0, -6e-8, 1e-5, 0.0]).half()       # fp16's largest, subnormals, zero
    for factor, count in ((half, 2), (wide, 3), (half.bfloat16(), 1)):
        pieces = _bf16_pieces(factor)
        assert len(pieces) == count and all(piece.dtype == torch.bfloat16 for piece in pieces)
        assert torch.equal(sum(piece.double() for piece in pieces), factor.double())
    live = torch.zeros(1 << 10, 1 << 9, dtype=torch.bfloat16)
    ups = [(torch.randn(1 << 10, 8, generator=generator) * 0.05).half() for _ in range(2)]
    downs = [(torch.randn(8, 1 << 9, generator=generator) * 0.05).to(dtype) for dtype in (torch.float16, torch.float32)]
    up, down, alpha = operands(live, [(ups[0], downs[0], 0.375)])
    assert up.dtype == down.dtype == torch.bfloat16 and up.shape[1] == 4 * 8 and alpha == 0.375
    assert torch.allclose(up.double() @ down.double(), ups[0].double() @ downs[0].double(), rtol=0, atol=1e-15)
    up, down, alpha = operands(live, [(ups[0], downs[0], 0.375), (ups[1], downs[1], -1.3)])
    assert up.shape[1] == 6 * 8 + 9 * 8 and alpha == 1.0
    expected = 0.375 * ups[0].double() @ downs[0].double() - 1.3 * ups[1].double() @ downs[1].double()
    assert float((up.double() @ down.double() - expected).abs().max()) <= 2.0 ** -22 * float(expected.abs().max())
    assert operands(live[:100], [(ups[0][:100], downs[0], 1.0)]) is None     # under the size threshold: fp32 blocks
    assert operands(live.half(), [(ups[0], downs[1], 1.0)]) is None          # fp16 weights: no fp16 split


def test_writes_in_the_weights_dtype_only_where_this_cpu_runs_them_faster(monkeypatch):
    """faster_here times the dtype's addmm_ against the fp32 path once per (dtype, pieces) and keeps the answer; a
    split (several products per rank) is timed only where one product per rank is already faster."""
    from lora_state import native_steps
    assert native_steps._timed_faster(torch.float16, 1, seconds=lambda run: 1.0 if run.__name__ == "native" else 2.0)
    assert not native_steps._timed_faster(torch.float16, 1,
                                          seconds=lambda run: 2.0 if run.__name__ == "native" else 1.0)
    slow_first = iter([1.0, 1.0, 1.0, 11.0])         # fp32 x3, then a first native run over ten times as long
    assert not native_steps._timed_faster(torch.bfloat16, 4, seconds=lambda run: next(slow_first))
    timed = []
    monkeypatch.setattr(native_steps, "_FASTER", {})
    monkeypatch.setattr(native_steps, "_timed_faster", lambda dtype, pieces: timed.append((dtype, pieces)) or False)
    assert not native_steps.faster_here(torch.bfloat16, 4) and not native_steps.faster_here(torch.bfloat16, 4)
    assert not native_steps.faster_here(torch.bfloat16)
    assert timed == [(torch.bfloat16, 1)]
    weight = torch.zeros(1 << 10, 1 << 10, dtype=torch.bfloat16)
    assert not native_steps.splits(weight)
    assert native_steps.operands(weight, [(torch.ones(1 << 10, 4, dtype=torch.bfloat16),
                                           torch.ones(4, 1 << 10, dtype=torch.bfloat16), 1.0)]) is None
    monkeypatch.setattr(native_steps, "_FASTER", {})
    monkeypatch.setattr(native_steps, "_timed_faster", lambda dtype, pieces: timed.append((dtype, pieces)) or True)
    assert native_steps.splits(weight) and timed[1:] == [(torch.bfloat16, 1), (torch.bfloat16, 4)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_delta_steps_back_to_no_lora_keep_the_drift_they_leave(tmp_path, dtype):
    """In delta mode a key whose every LoRA is taken off by delta steps keeps its drift in the ledger (it is not
    back at clean), and the weight stays within it. The grid bound must not count a rounding of the exact result
    there: the exact result is the clean weight itself (found by the stateful test: bf16 conv.weight dropped from
    the ledger while one element was a bf16 ulp off)."""
    from lora_factory import write_lora
    files = {}
    for name, kind, seed in (("tucker", "locon_mid", 1011), ("a", "lora", 1000), ("b", "lora", 1001),
                             ("other", "bare", 1030)):
        files[name] = str(tmp_path / f"{name}.safetensors")
        write_lora(files[name], kind, seed=seed)
    module = make_module(dtype)
    clean = snapshot(module)
    manager = LoraStateManager(module, mode="delta", file_cache=LoraFileCache())
    for stack in ([("tucker", 0.25)], [("a", 1.5), ("b", 1.5)], [("other", 1.0)]):
        manager.reconcile([(files[name], strength) for name, strength in stack])
    for key, value in module.state_dict().items():
        state = manager.ledger.keys.get(key)
        if state is not None and state.contributors:
            continue     # fc2: the LoRA still applied there
        difference = float((value.double() - clean[key].double()).abs().max())
        assert difference <= (state.drift if state else 0.0), key
