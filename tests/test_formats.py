"""Each adapter format and naming scheme on real tensors, against the independent float64 oracle."""
import json

import pytest
import torch
from safetensors.torch import save_file

from lora_factory import KINDS, make_module, oracle_weights, write_lora
from lora_state import LoraFileError, LoraShapeError, LoraStateManager
from lora_state.files import LoraFileCache, read_lora_file
from lora_state.naming import group_keys


def _apply(module, path, strength=1.0, mode="exact"):
    manager = LoraStateManager(module, mode=mode, file_cache=LoraFileCache())
    return manager, manager.reconcile([(path, strength)])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("strength", [1.0, 0.7, -1.3])
def test_format_matches_float64_oracle(tmp_path, kind, strength):
    path = str(tmp_path / f"{kind}.safetensors")
    oracle = write_lora(path, kind, seed=3)
    module = make_module(torch.float32)
    clean = {k: v.detach().clone() for k, v in module.state_dict().items()}
    manager, report = _apply(module, path, strength)
    expected = oracle_weights(clean, [(path, strength)], {path: oracle})
    got = module.state_dict()
    assert set(report.coverage[f"{kind}.safetensors"]["unmatched"]) == set()
    assert report.keys_changed == len(oracle.ops)
    for key in clean:
        if key in oracle.ops:
            torch.testing.assert_close(got[key].double(), expected[key], rtol=1e-5, atol=1e-6)
            assert not torch.equal(got[key], clean[key]), f"{kind} did not change {key}"
        else:
            assert torch.equal(got[key], clean[key]), f"{kind} touched {key}"
    manager.reset()
    for key in clean:
        assert torch.equal(module.state_dict()[key], clean[key])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["lora", "loha", "dora"])
def test_low_precision_exact_is_one_rounding_of_fp32_math(tmp_path, kind, dtype):
    path = str(tmp_path / f"{kind}.safetensors")
    oracle = write_lora(path, kind, seed=5)
    module = make_module(dtype)
    clean = {k: v.detach().clone() for k, v in module.state_dict().items()}
    _apply(module, path, 0.9)
    expected = oracle_weights(clean, [(path, 0.9)], {path: oracle})
    for key in oracle.ops:
        # One rounding of a (nearly exact) fp32 result: at most one ulp from the float64 value rounded.
        got, want = module.state_dict()[key].double(), expected[key].to(dtype).double()
        ulp = torch.finfo(dtype).eps * want.abs().clamp_min(torch.finfo(dtype).tiny)
        assert bool(((got - want).abs() <= ulp * 1.01).all()), key


@pytest.mark.parametrize("prefix", ["", "unet.", "transformer.", "base_model.model.", "text_encoder."])
def test_peft_prefixes_and_metadata_alpha(tmp_path, prefix):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 16, generator=g), torch.randn(24, 4, generator=g) * 0.05
    path = str(tmp_path / "p.safetensors")
    save_file({f"{prefix}fc1.lora_A.weight": a, f"{prefix}fc1.lora_B.weight": b}, path,
              metadata={"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 2, "alpha_pattern": {}})})
    module = make_module()
    before = module.fc1.weight.detach().clone()
    _apply(module, path)
    torch.testing.assert_close(module.fc1.weight.detach(), before + 0.5 * (b @ a), rtol=1e-5, atol=1e-6)


def test_peft_without_alpha_uses_scale_one_and_says_so(tmp_path):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 16, generator=g), torch.randn(24, 4, generator=g) * 0.05
    path = str(tmp_path / "p.safetensors")
    save_file({"fc1.lora_A.weight": a, "fc1.lora_B.weight": b}, path)
    module = make_module()
    before = module.fc1.weight.detach().clone()
    _apply(module, path)
    torch.testing.assert_close(module.fc1.weight.detach(), before + b @ a, rtol=1e-5, atol=1e-6)


def test_coverage_reports_unmatched_and_unknown_keys(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = str(tmp_path / "c.safetensors")
    save_file({"lora_unet_fc1.lora_down.weight": torch.randn(2, 16, generator=g),
               "lora_unet_fc1.lora_up.weight": torch.randn(24, 2, generator=g) * 0.01,
               "lora_unet_nope.lora_down.weight": torch.randn(2, 16, generator=g),
               "lora_unet_nope.lora_up.weight": torch.randn(24, 2, generator=g),
               "something.else": torch.zeros(1)}, path)
    _, report = _apply(make_module(), path)
    coverage = report.coverage["c.safetensors"]
    assert coverage["matched"] == 1
    assert coverage["unmatched"] == ["lora_unet_nope"]
    assert coverage["unknown_keys"] == ["something.else"]


def test_shape_mismatch_is_refused_and_nothing_changes(tmp_path):
    path = str(tmp_path / "wrong.safetensors")
    save_file({"lora_unet_fc1.lora_down.weight": torch.randn(2, 15),
               "lora_unet_fc1.lora_up.weight": torch.randn(24, 2)}, path)
    good = str(tmp_path / "good.safetensors")
    write_lora(good, "lora")
    module = make_module()
    manager = LoraStateManager(module, mode="exact", file_cache=LoraFileCache())
    manager.reconcile([(good, 1.0)])
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(LoraShapeError, match=r"wrong.safetensors.*fc1.*\(24, 15\).*\(24, 16\)"):
        manager.reconcile([(good, 1.0), (path, 1.0)])
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert [a.path for a in manager.applied] == [good]


def test_pickle_files_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"lora_unet_fc1.lora_down.weight": torch.zeros(2, 16)}, path)
    with pytest.raises(LoraFileError, match="never unpickles.*convert"):
        _apply(make_module(), str(path))
    renamed = tmp_path / "evil.safetensors"   # a pickle under a .safetensors name: header parse fails, no unpickle
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(LoraFileError, match="not a readable safetensors"):
        read_lora_file(str(renamed))


def test_corrupt_missing_and_nan_files(tmp_path):
    good = str(tmp_path / "good.safetensors")
    write_lora(good, "lora")
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(open(good, "rb").read()[:100])
    with pytest.raises(LoraFileError, match="trunc.safetensors.*not a readable"):
        _apply(make_module(), str(truncated))
    with pytest.raises(LoraFileError, match="not found"):
        _apply(make_module(), str(tmp_path / "missing.safetensors"))
    nan = str(tmp_path / "nan.safetensors")
    save_file({"lora_unet_fc1.lora_down.weight": torch.full((2, 16), float("nan")),
               "lora_unet_fc1.lora_up.weight": torch.zeros(24, 2)}, nan)
    with pytest.raises(LoraFileError, match="nan.safetensors.*lora_down.*NaN"):
        _apply(make_module(), nan)


def test_group_keys_understands_all_suffixes():
    keys = ["a.lora_up.weight", "a.lora_down.weight", "a.alpha", "b.lora_A.weight", "b.lora_B.weight",
            "b.lora_B.bias", "b.lora_magnitude_vector", "c.hada_w1_a", "d.lokr_w2_b", "e.diff_b", "e.diff",
            "f.dora_scale", "g.lora_mid.weight"]
    groups, unknown = group_keys({k: torch.zeros(1) for k in keys})
    assert not unknown
    assert set(groups["b"]) == {"up", "down", "up_bias", "magnitude"}
    assert set(groups["e"]) == {"diff", "diff_b"}


def test_file_cache_reads_each_content_once(tmp_path):
    path = str(tmp_path / "a.safetensors")
    write_lora(path, "lora", seed=1)
    cache = LoraFileCache()
    manager = LoraStateManager(make_module(), file_cache=cache)
    for strength in (1.0, 0.5, 0.25, 0.5):
        manager.reconcile([(path, strength)])
    assert cache.reads == 1
    write_lora(path, "lora", seed=2)      # new content under the same name
    manager.reconcile([(path, 0.5)])
    assert cache.reads == 2
    copy = str(tmp_path / "copy.safetensors")
    open(copy, "wb").write(open(path, "rb").read())   # same content, another name: not parsed again
    LoraStateManager(make_module(), file_cache=cache).reconcile([(copy, 1.0)])
    assert cache.reads == 2


def test_file_cache_is_capped(tmp_path):
    paths = []
    for seed in range(4):
        paths.append(str(tmp_path / f"{seed}.safetensors"))
        write_lora(paths[-1], "lora", seed=seed)
    one = read_lora_file(paths[0]).nbytes
    cache = LoraFileCache(max_bytes=int(one * 2.5))
    for path in paths:
        cache.load(path)
    assert cache.nbytes <= one * 2.5
