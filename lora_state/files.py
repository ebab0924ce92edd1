"""Reading LoRA files: safetensors only, never unpickled, cached by content.

A file is identified by the SHA-256 of its bytes, so the same LoRA under two names is one LoRA, and a file that
was overwritten in place is a new one. The cache re-reads a file only when its size/mtime/inode change and then
only re-parses it when its content hash changed.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from safetensors import safe_open

from .errors import LoraFileError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")

CONVERT_HINT = (
    "LoRA State only reads .safetensors files and never unpickles (a pickle can run arbitrary code). "
    "If you trust this file, convert it once: python -c \"import torch, safetensors.torch as s; "
    "s.save_file({k: v.contiguous() for k, v in torch.load('IN', weights_only=True).items()}, 'OUT.safetensors')\""
)


@dataclass
class LoraFile:
    """The tensors and metadata of one LoRA file, read once."""

    path: str
    sha256: str
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def peft_sidecar(path: str) -> str | None:
    """PEFT's save_pretrained keeps rank/alpha in adapter_config.json beside adapter_model.safetensors."""
    sidecar = os.path.join(os.path.dirname(os.path.abspath(path)), "adapter_config.json")
    return sidecar if os.path.isfile(sidecar) else None


def file_sha256(path: str) -> str:
    """Identity of a LoRA: its bytes, plus its PEFT sidecar config if it has one (it changes the scale)."""
    digest = hashlib.sha256()
    for part in filter(None, (path, peft_sidecar(path))):
        with open(part, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def read_lora_file(path: str, sha256: str | None = None) -> LoraFile:
    """Read every tensor of a safetensors LoRA (mmap-backed via safe_open) and check it is finite."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LoraFileError(f"LoRA file not found: {path}. Check the name/path, or remove it from the stack.")
    if path.lower().endswith(PICKLE_SUFFIXES):
        raise LoraFileError(f"{path}: refused, this is a pickle-based checkpoint. {CONVERT_HINT}")
    sha256 = sha256 or file_sha256(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        sidecar = peft_sidecar(path)
        if sidecar and "lora_adapter_metadata" not in metadata:
            with open(sidecar, encoding="utf-8") as handle:
                metadata["adapter_config"] = handle.read()
    except Exception as exc:  # safetensors raises its own error types for bad headers/truncation
        raise LoraFileError(
            f"{path}: not a readable safetensors file ({exc}). The file may be truncated or in another format; "
            f"re-download it or convert it to .safetensors. {CONVERT_HINT}"
        ) from exc
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise LoraFileError(
                f"{path}: tensor '{key}' contains NaN or Inf values. The LoRA is broken (often a failed training "
                f"run or an fp16 overflow); re-export it or remove it from the stack."
            )
    return LoraFile(path=path, sha256=sha256, tensors=tensors, metadata=metadata)


def metadata_json(metadata: dict[str, str], key: str) -> dict | None:
    raw = metadata.get(key)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def finite_strength(value, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return number


class LoraFileCache:
    """LRU of parsed files, capped in bytes; stat() decides when a file must be looked at again."""

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = max_bytes
        self._by_hash: OrderedDict[str, LoraFile] = OrderedDict()
        self._hash_by_stat: dict[tuple, str] = {}
        self._lock = threading.Lock()
        self.reads = 0  # how many times a file's bytes were parsed (tests and reports use it)

    @staticmethod
    def _stat_key(path: str) -> tuple:
        # The file itself (device and inode: any name or link of it), its size and modification time. Runs for
        # every LoRA of the stack on every prompt, also when nothing changed: no realpath (a system call per
        # component of the path: two thirds of the time of this key).
        key = ()
        for part in filter(None, (path, peft_sidecar(path))):
            st = os.stat(part)
            key += (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        return key

    def load(self, path: str) -> LoraFile:
        path = os.fspath(path)
        if path.lower().endswith(PICKLE_SUFFIXES):
            raise LoraFileError(f"{path}: refused, this is a pickle-based checkpoint. {CONVERT_HINT}")
        try:
            stat_key = self._stat_key(path)
        except OSError:
            raise LoraFileError(f"LoRA file not found: {path}. Check the name/path, or remove it from the stack.")
        with self._lock:
            known = self._hash_by_stat.get(stat_key)
            if known in self._by_hash:
                self._by_hash.move_to_end(known)
                return self._by_hash[known]
        sha256 = file_sha256(path)
        with self._lock:
            cached = self._by_hash.get(sha256)
            if cached is not None:
                self._hash_by_stat[stat_key] = sha256
                self._by_hash.move_to_end(sha256)
                return cached
        lora_file = read_lora_file(path, sha256)
        with self._lock:
            self.reads += 1
            self._hash_by_stat[stat_key] = sha256
            self._by_hash[sha256] = lora_file
            self._evict()
        return lora_file

    def _evict(self) -> None:
        total = sum(f.nbytes for f in self._by_hash.values())
        while total > self.max_bytes and len(self._by_hash) > 1:
            _, dropped = self._by_hash.popitem(last=False)
            total -= dropped.nbytes
        live = set(self._by_hash)
        self._hash_by_stat = {k: v for k, v in self._hash_by_stat.items() if v in live}

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self._by_hash.values())

    def clear(self) -> None:
        with self._lock:
            self._by_hash.clear()
            self._hash_by_stat.clear()
