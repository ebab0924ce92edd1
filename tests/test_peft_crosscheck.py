"""Cross-check LoraStateManager against PEFT's own merge (tests/peft_oracle.py).

For every adapter kind x file layout: a fresh clean tiny UNet is reconciled to
``[(file, 1.0)]`` in exact mode; every parameter must equal PEFT's
``merge_and_unload()`` result, untouched parameters must stay bit-identical,
and ``reset()`` must give the clean weights back bit-identically.

Tolerance: everything is fp32.  Base weights are O(1/sqrt(fan_in)) ~ 0.03..0.2,
deltas 5-20 % of them.  PEFT and lora_state may order the matmul / kron / scale
operations differently, which costs a few ulp (observed max |diff| ~1e-7 for
the plain-math reference below).  DoRA additionally divides by a row norm of
O(1); LyCORIS-style loaders add ``finfo(fp32).eps`` (1.2e-7) to that norm,
a relative change of ~1e-7.  So rtol=1e-5, atol=1e-6 is ~100x the expected
noise for every kind, DoRA included, and still ~1000x smaller than any
convention error (a wrong alpha/r or norm axis moves weights by >= 1e-3).
"""

from __future__ import annotations

import pytest

pytest.importorskip("peft")
pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

import torch

try:  # works both with and without tests/__init__.py
    from tests import peft_oracle as oracle  # type: ignore
except ImportError:  # pragma: no cover
    import peft_oracle as oracle  # type: ignore

RTOL, ATOL = 1e-5, 1e-6

CASES = [(k, n) for k in oracle.KINDS for n in oracle.NAMINGS]
IDS = [f"{k}-{n}" for k, n in CASES]


@pytest.fixture(scope="module")
def case_cache(tmp_path_factory):
    cache: dict = {}

    def get(kind: str, naming: str) -> dict:
        if (kind, naming) not in cache:
            cache[(kind, naming)] = oracle.make_case(kind, tmp_path_factory.mktemp(f"{kind}-{naming}"), naming=naming)
        return cache[(kind, naming)]

    return get


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _worst(actual: dict, expected: dict, keys) -> str:
    worst = max(keys, key=lambda k: (actual[k].float() - expected[k].float()).abs().max().item())
    d = (actual[worst].float() - expected[worst].float()).abs().max().item()
    return f"worst key {worst}: max|diff|={d:.3e}, max|expected|={expected[worst].abs().max().item():.3e}"


def _assert_state_close(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys()
    bad = []
    for k, exp in expected.items():
        if actual[k].shape != exp.shape or not torch.allclose(actual[k], exp, rtol=RTOL, atol=ATOL):
            bad.append(k)
    assert not bad, (
        f"{what}: {len(bad)}/{len(expected)} tensors differ; {_worst(actual, expected, bad)}; first: {bad[:5]}"
    )


def _coverages(report) -> list:
    """Every object with .unmatched and .shape_mismatched reachable from the report."""
    found, seen, todo = [], set(), [report]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, torch.Tensor)):
            continue
        seen.add(id(obj))
        if hasattr(obj, "unmatched") and hasattr(obj, "shape_mismatched"):
            found.append(obj)
            continue
        if isinstance(obj, dict):
            if "unmatched" in obj and "shape_mismatched" in obj:
                found.append(obj)
                continue
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            todo.extend(obj)
        elif hasattr(obj, "__dict__"):
            todo.extend(vars(obj).values())
    return found


def _get(cov, name):
    v = cov[name] if isinstance(cov, dict) else getattr(cov, name)
    return v if isinstance(v, int) else len(v)


# --------------------------------------------------------------------------- oracle self-checks
# (independent of lora_state: they validate the oracle files themselves)


@pytest.mark.parametrize("kind", oracle.KINDS)
def test_oracle_kohya_file_reproduces_peft_merge(case_cache, kind):
    case = case_cache(kind, "kohya")
    ref = oracle.reference_merge_kohya(case["path"], case["clean"])
    _assert_state_close(ref, case["merged"], f"plain-math merge of kohya {kind} file vs PEFT")


@pytest.mark.parametrize("naming", ["peft", "peft_unet", "peft_model"])
@pytest.mark.parametrize("kind", oracle.KINDS)
def test_oracle_peft_file_roundtrips_through_peft(case_cache, kind, naming):
    case = case_cache(kind, naming)
    ref = oracle.reference_merge_peft_roundtrip(case)
    _assert_state_close(ref, case["merged"], f"PEFT reload of {naming} {kind} file vs PEFT")


def test_oracle_cases_are_nontrivial(case_cache):
    for kind in oracle.KINDS:
        case = case_cache(kind, "peft")
        assert case["touched_keys"], kind
        assert all(k.endswith(".weight") for k in case["touched_keys"]), kind
        # each adapted module changes its weight by a visible fraction
        for path, info in case["modules"].items():
            assert 0.04 < info["rel_delta"] < 0.21, (kind, path, info)
        # alpha scaling matters: not every module has scale 1
        assert any(abs(info["scale"] - 1.0) > 0.1 for info in case["modules"].values()), kind


# --------------------------------------------------------------------------- the cross-check


@pytest.mark.parametrize(("kind", "naming"), CASES, ids=IDS)
def test_lora_state_matches_peft_merge(case_cache, kind, naming):
    from lora_state import LoraStateManager

    case = case_cache(kind, naming)
    clean, merged, touched = case["clean"], case["merged"], case["touched_keys"]

    unet = case["module_factory"]()
    params_before = dict(unet.named_parameters())
    assert all(torch.equal(v, clean[k]) for k, v in _state(unet).items())

    manager = LoraStateManager(unet, mode="exact")
    report = manager.reconcile([(case["path"], 1.0)])

    # coverage: every file key resolved, nothing unmatched / shape-mismatched
    covs = _coverages(report)
    assert covs, f"no coverage object found in report: {report!r}"
    for cov in covs:
        assert _get(cov, "unmatched") == 0, f"unmatched keys: {cov}"
        assert _get(cov, "shape_mismatched") == 0, f"shape-mismatched keys: {cov}"
        if (isinstance(cov, dict) and "unknown_keys" in cov) or hasattr(cov, "unknown_keys"):
            assert _get(cov, "unknown_keys") == 0, f"unknown keys: {cov}"

    # in place: same Parameter objects
    params_after = dict(unet.named_parameters())
    assert params_after.keys() == params_before.keys()
    assert all(params_after[k] is params_before[k] for k in params_before), "parameters were replaced, not patched"

    after = _state(unet)
    _assert_state_close(after, merged, f"lora_state exact merge of {kind}/{naming} vs PEFT merge_and_unload")
    untouched_changed = [k for k in clean if k not in touched and not torch.equal(after[k], clean[k])]
    assert not untouched_changed, f"keys PEFT leaves alone were modified: {untouched_changed[:10]}"

    manager.reset()
    restored = _state(unet)
    not_restored = [k for k in clean if not torch.equal(restored[k], clean[k])]
    assert not not_restored, f"reset() is not bit-exact for {len(not_restored)} keys: {not_restored[:10]}"
