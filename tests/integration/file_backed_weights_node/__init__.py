"""Test-only ComfyUI node (linked into a test server's custom_nodes, never shipped): makes a loaded model's
weights read-only views of a file, as ComfyUI's Dynamic VRAM loads them.

With LORA_STATE_TEST_LORA_COMPUTE_DTYPE=float16 it also makes ComfyUI patch weights in fp16 on this CPU server,
through the cache of ComfyUI's own `lora_compute_dtype` (what it picks by itself on most NVIDIA GPUs).

ComfyUI 2026 (Dynamic VRAM) loads checkpoints with `comfy.utils.load_safetensors`: `torch.frombuffer` over a
read-only mmap of the file, assigned to the module without a copy. Dynamic VRAM itself needs an NVIDIA GPU; this
node gives a CPU server the same kind of weights: it writes the module's current parameters to a safetensors file
once, maps it read-only (with ComfyUI's own `load_safetensors` where the version has it, else the same
`torch.frombuffer` over `mmap.ACCESS_READ`) and assigns those tensors to the module with ComfyUI's
`set_attr_param`. Any write into them kills the server with SIGSEGV, which the tests see as a dead server.
"""
import hashlib
import mmap
import os

import safetensors.torch
import torch

import comfy.utils
import folder_paths

MARK = "_lora_state_test_file"

_compute = os.environ.get("LORA_STATE_TEST_LORA_COMPUTE_DTYPE")
if _compute:
    import comfy.model_management

    comfy.model_management.LORA_COMPUTE_DTYPES[torch.device("cpu")] = getattr(torch, _compute)


def read_only_tensors(path):
    if hasattr(comfy.utils, "load_safetensors"):
        return comfy.utils.load_safetensors(path)[0]
    import json
    import struct
    import warnings

    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapping)
    size = struct.unpack("<Q", mapping[:8])[0]
    header = json.loads(mapping[8:8 + size].decode("utf-8"))
    types = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            out[name] = torch.frombuffer(view[8 + size + start:8 + size + end],
                                         dtype=types[info["dtype"]]).view(info["shape"])
    return out


def make_file_backed(module):
    if getattr(module, MARK, None):
        return
    params = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.named_parameters()}
    path = os.path.join(folder_paths.get_temp_directory(), f"file_backed_{type(module).__name__}_{id(module)}.safetensors")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    safetensors.torch.save_file(params, path)
    for key, tensor in read_only_tensors(path).items():
        comfy.utils.set_attr_param(module, key, tensor)
    setattr(module, MARK, path)


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class LoraStateTestFileBackedWeights:
    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL", "CLIP", "STRING")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",)}}

    def run(self, model, clip):
        make_file_backed(model.model)
        make_file_backed(clip.cond_stage_model)
        files = [getattr(model.model, MARK), getattr(clip.cond_stage_model, MARK)]
        return (model, clip, "\n".join(f"{path} {file_sha256(path)}" for path in files))


NODE_CLASS_MAPPINGS = {"LoraStateTestFileBackedWeights": LoraStateTestFileBackedWeights}
