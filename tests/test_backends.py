"""Memory LoRA State does not own, and keys the host patches itself (the core side of the two backends).

Read-only file-backed weights are built the way ComfyUI's Dynamic VRAM builds them: `torch.frombuffer` over a
read-only mmap of a safetensors file, assigned to the module. A write into one kills the process (SIGSEGV), so the
tests that hold such weights run in a child process: a crash fails the test instead of killing pytest.
"""
import mmap
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lora_factory import make_module, write_all
from lora_state import LoraStateManager
from lora_state.files import LoraFileCache
from lora_state.hosts.storage import MemoryMap, storage_problem

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    return write_all(str(tmp_path_factory.mktemp("loras")), seed=3)


def mapped(path, access):
    with open(path, "r+b" if access != mmap.ACCESS_READ else "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=access)
    return mapping


def test_storage_judged_by_its_memory(tmp_path):
    path = str(tmp_path / "w.bin")
    torch.arange(64, dtype=torch.float32).numpy().tofile(path)
    memory_of = MemoryMap.snapshot
    read_only = torch.frombuffer(memoryview(mapped(path, mmap.ACCESS_READ)), dtype=torch.float32)
    private = torch.frombuffer(memoryview(mapped(path, mmap.ACCESS_COPY)), dtype=torch.float32)
    assert "read-only" in storage_problem(read_only, memory_of())
    assert "w.bin" in storage_problem(private, memory_of())         # writable, but a view of a file
    assert storage_problem(torch.zeros(64), memory_of()) is None
    assert storage_problem(torch.zeros(1 << 22), memory_of()) is None   # large: its own anonymous mapping
    tagged = torch.zeros(8)
    tagged.untyped_storage()._comfy_tensor_file_slice = ("model.safetensors", 0, 32)
    assert "model file" in storage_problem(tagged)


CHILD = textwrap.dedent("""
    import json, mmap, sys, torch, warnings
    sys.path[:0] = [{repo!r}, {tests!r}]
    from lora_factory import make_module
    from lora_state import LoraStateManager, UnownedStorageError
    from lora_state.files import LoraFileCache
    from safetensors.torch import save_file
    module = make_module(torch.float16)
    params = {{k: p.detach().clone() for k, p in module.named_parameters()}}
    save_file(params, {weights!r})
    f = open({weights!r}, "rb")
    mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapping)
    header_size = int.from_bytes(mapping[:8], "little")
    header = json.loads(mapping[8:8 + header_size])
    for key, info in header.items():
        if key == "__metadata__":
            continue
        start, end = info["data_offsets"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tensor = torch.frombuffer(view[8 + header_size + start:8 + header_size + end], dtype=torch.float16)
        owner, _, leaf = key.rpartition(".")
        setattr(module.get_submodule(owner), leaf, torch.nn.Parameter(tensor.view(info["shape"]), requires_grad=False))
    manager = LoraStateManager(module, mode={mode!r}, file_cache=LoraFileCache())
    try:
        manager.reconcile([({lora!r}, 1.0)])
    except UnownedStorageError as exc:
        print("refused:", exc)
    same = all(torch.equal(p, params[k]) for k, p in module.named_parameters())
    print("unchanged:", same, "ledger:", len(manager.applied), len(manager.ledger.keys))
    # The host's own patching carries them instead: nothing is written, the ledger says what is applied.
    keys = list(manager.resolve([({lora!r}, 1.0)])[0].patches)
    report = manager.reconcile([({lora!r}, 1.0)], as_patches=dict.fromkeys(keys, "read-only"))
    print("as patches:", report.keys_as_patches == len(keys), report.keys_changed, manager.ledger.backend)
""")


@pytest.mark.parametrize("mode", ["exact", "delta", "auto"])
def test_read_only_weights_are_refused_not_crashed(tmp_path, loras, mode):
    code = CHILD.format(repo=REPO, tests=HERE, weights=str(tmp_path / "weights.safetensors"), mode=mode,
                        lora=loras["lora"][0])
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, f"the child died (rc {child.returncode}): {child.stderr[-3000:]}"
    out = child.stdout
    assert "refused:" in out and "not LoRA State's to write" in out and "Nothing was changed" in out, out
    assert "unchanged: True ledger: 0 0" in out, out
    assert "as patches: True 0 patches" in out, out


def test_keys_carried_as_patches_are_recorded_and_cleaned(loras):
    module = make_module(torch.float16)
    clean = {k: p.detach().clone() for k, p in module.named_parameters()}
    manager = LoraStateManager(module, mode="exact", file_cache=LoraFileCache())
    stack = [(loras["lora"][0], 1.0), (loras["loha"][0], 0.5)]
    manager.reconcile(stack)
    assert manager.ledger.backend == "in place"
    written = [k for k, p in module.named_parameters() if not torch.equal(p, clean[k])]
    moved = written[:2]
    report = manager.reconcile(stack, as_patches={key: "another node patches it" for key in moved})
    # Keys handed to the host's patching are brought back to clean: the host applies the stack there.
    assert all(torch.equal(dict(module.named_parameters())[k], clean[k]) for k in moved)
    assert manager.ledger.backend == "mixed" and set(manager.ledger.patch_keys) == set(moved)
    assert report.keys_as_patches == 2 and "2 another node patches it" in report.summary()
    status = manager.status()
    assert status["keys_as_patches"] == 2 and status["keys_in_place"] == len(written) - 2
    assert sum(status["keys_by_lora"].values()) >= len(written)
    manager.reconcile([])
    assert manager.ledger.backend == "none" and manager.ledger.patch_keys == {}
    assert all(torch.equal(p, clean[k]) for k, p in module.named_parameters())


def test_exact_rebases_keys_left_drifted_by_auto(loras):
    module = make_module(torch.float32)
    manager = LoraStateManager(module, mode="auto", file_cache=LoraFileCache())
    a, b = loras["lora"][0], loras["lokr"][0]
    manager.reconcile([(a, 1.0), (b, 1.0)])
    manager.reconcile([(a, 0.5), (b, 1.0)])     # a delta step: drift > 0 on a's keys
    assert manager.status()["max_drift_ulps"] > 0
    manager.reconcile([(a, 0.5), (b, 1.0)], mode="exact")   # same stack, exact: must re-base the drifted keys
    assert manager.status()["max_drift_ulps"] == 0
    fresh = make_module(torch.float32)
    LoraStateManager(fresh, mode="exact", file_cache=LoraFileCache()).reconcile([(a, 0.5), (b, 1.0)])
    assert all(torch.equal(p, dict(fresh.named_parameters())[k]) for k, p in module.named_parameters())
