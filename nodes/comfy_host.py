"""The lora_state host for ComfyUI models: ComfyUI's own key maps, adapters, calculate_weight and rounding.

Using ComfyUI's code for everything numeric is what makes `exact` mode bit-identical to a chain of native
LoraLoader nodes: the same patch tuples go through the same `comfy.lora.calculate_weight` on a copy of the same
clean weight in ComfyUI's patch compute dtype (`lora_compute_dtype` of the load device where the version has it:
fp16 on most NVIDIA GPUs, fp32 on CPU; fp32 before), on the same device, rounded by
`comfy.float.stochastic_rounding` with the same per-key seed.
"""
from __future__ import annotations

import weakref

import torch

import comfy.float
import comfy.lora
import comfy.lora_convert
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.utils

from ..lora_state.drift import product_bound
from ..lora_state.formats import WEIGHT_READERS, fits
from ..lora_state.formats.lora import FactorRows
from ..lora_state.hosts import Host
from ..lora_state.naming import Coverage, ResolvedLora, group_keys
from ..lora_state.scratch import work_buffer
from ..lora_state.transfers import to_device
from .backend import in_place_problem

# Moved from comfy.model_patcher to comfy.utils in ComfyUI 0.12 (the old name logs a warning on every call).
string_to_seed = getattr(comfy.utils, "string_to_seed", None) or comfy.model_patcher.string_to_seed

# Where each ComfyUI adapter keeps its dora_scale; an adapter with one is not linear in its strength.
_DORA_INDEX = {"LoRAAdapter": 4, "LoHaAdapter": 7, "LoKrAdapter": 8}


class ComfyPatch:
    """One file's patch parts for one parameter key: (v, offset, function) as ComfyUI's add_patches stores them."""

    __slots__ = ("key", "parts", "numel", "_bound")

    def __init__(self, key, parts, numel):
        self.key = key
        self.parts = parts
        self.numel = numel
        self._bound = False      # not computed yet

    def lora_factors(self):
        return _lora_factors(self.parts)

    def change_bound(self):
        """(limit, rank) with max |delta| <= limit for unit strength (drift accounting), or None where unknown:
        plain LoRA (up @ down, no Tucker mid, no DoRA) and "diff" parts; anything else is left unbounded."""
        if self._bound is False:
            self._bound = _change_bound(self.parts)
        return self._bound

    @property
    def linear(self) -> bool:
        for v, offset, function in self.parts:
            if function is not None:
                return False
            name = type(v).__name__
            if name in _DORA_INDEX:
                weights = getattr(v, "weights", ())
                index = _DORA_INDEX[name]
                if len(weights) > index and weights[index] is not None:
                    return False
            elif isinstance(v, tuple) and (len(v) == 1 or v[0] == "diff"):
                continue
            else:
                return False     # GLoRA, OFT, BOFT, "set", ...: treat as non-linear (exact path only)
        return True


def _lora_factors(parts):
    """[(up, down, scale)] when every part is a plain LoRA on the whole weight (no offset, function, Tucker mid,
    DoRA, reshape), else None."""
    factors = []
    for v, offset, function in parts:
        if offset is not None or function is not None or type(v).__name__ != "LoRAAdapter":
            return None
        up, down, alpha, mid, dora, reshape = (tuple(v.weights) + (None,) * 6)[:6]
        if mid is not None or dora is not None or reshape is not None:
            return None
        factors.append((up, down, float(alpha) / down.shape[0] if alpha is not None else 1.0))
    return factors


def _change_bound(parts):
    """(limit, 0) for plain LoRA and diff parts: the rank-r product is the same computation in the exact path
    (calculate_weight) and in delta steps (add_terms), so its rounding is shared, not a difference (drift.py)."""
    limit, rank = 0.0, 0
    for v, _, function in parts:
        if function is not None:
            return None
        if type(v).__name__ == "LoRAAdapter":
            up, down, alpha, mid, dora = (tuple(v.weights) + (None,) * 5)[:5]
            if mid is not None or dora is not None:
                return None
            scale = abs(float(alpha) / down.shape[0]) if alpha is not None else 1.0
            limit += scale * product_bound(up, down)
        elif isinstance(v, tuple) and len(v) == 2 and v[0] == "diff":
            limit += float(v[1][0].float().abs().max())
        else:
            return None
    return (limit, rank)


_ROUNDED_TO_NEAREST = (torch.float32, torch.float16, torch.bfloat16)    # stochastic_rounding is a plain cast

#: Each block of a fused re-base re-reads the whole down factor (rank x columns): blocks of at least 64 rows amortize
#: it on wide keys (an SDXL 1280x5120 key re-based 1.3x faster than in 12-row blocks, one core).
REBASE_MIN_BLOCK_ROWS = 64


class _ProductRows:
    """update(block, first, last) adds rows [first, last) of alpha * (up @ down) to the block. The product is made
    once, when first needed, into a reused buffer (torch.mm with out=: the same kernel and bits as calculate_weight).

    `exact`: the two roundings of calculate_weight's `weight += ((strength * alpha) * lora_diff).type(weight.dtype)`
    (the scaled product in fp32, then the add in the block's dtype), element by element, so a key written by rows
    has the bits native patching gives it. Otherwise (a delta step) one fused add."""

    __slots__ = ("up", "down", "alpha", "device", "slot", "exact", "product")

    def __init__(self, up, down, alpha, device, slot, exact):
        self.up, self.down, self.alpha, self.device, self.slot = up, down, alpha, device, slot
        self.exact, self.product = exact, None

    def __call__(self, block, first, last):
        if self.product is None:
            up = self.up.flatten(1).to(device=self.device, dtype=torch.float32)
            down = self.down.flatten(1).to(device=self.device, dtype=torch.float32)
            out = work_buffer(f"lora product {self.slot}", up.shape[0] * down.shape[1], torch.float32, self.device)
            self.product = torch.mm(up, down, out=out.view(up.shape[0], down.shape[1]))
        rows = self.product[first:last]
        if not self.exact:
            block.add_(rows, alpha=self.alpha)
            return
        scaled = work_buffer("lora scaled rows", rows.numel(), torch.float32, self.device).view(rows.shape)
        torch.mul(rows, self.alpha, out=scaled)
        block.add_(scaled if block.dtype == torch.float32 else scaled.to(block.dtype))


def _lora_rows(weight, contributions, make, device):
    """[make(up, down, alpha, slot)] for every LoRA factor pair of `contributions` (slot: a distinct number per
    pair), or None where a contribution is not a plain LoRA on the weight's rows. The factors go to `device`
    together, in one copy (transfers.to_device)."""
    rows, cols = weight.shape[0], weight[0].numel()
    pairs = []
    for patch, strength in contributions:
        factors = patch.lora_factors()
        if factors is None or any(up.shape[0] != rows or down[0].numel() != cols for up, down, _ in factors):
            return None
        pairs.extend((up, down, strength * scale) for up, down, scale in factors)
    moved = to_device([t for up, down, _ in pairs for t in (up, down)], device)
    return [make(moved[2 * slot], moved[2 * slot + 1], alpha, slot) for slot, (_, _, alpha) in enumerate(pairs)]


def _exact_fp32_matmul(device: torch.device) -> bool:
    """Whether fp32 products on `device` are full fp32 (not TF32), as rebase_bound assumes."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return not torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "highest"
    return False


class ComfyModelHost(Host):
    """Weights of one ComfyUI torch module: a BaseModel (UNet, model strength) or a text encoder (clip strength).

    The module is held weakly so that ComfyUI can free it; `backup_of` returns ComfyUI's native backup dict so
    that, while native patches are applied, this host reads and writes the clean base tensors underneath them.
    """

    def __init__(self, module: torch.nn.Module, is_clip: bool, backup_of=None, compute_device=None,
                 refuse_writes: str | None = None):
        self._module = weakref.ref(module)
        self.compute_device = torch.device(compute_device) if compute_device is not None else None
        self.refuse_writes = refuse_writes     # a reason no key of this model may be written (Dynamic VRAM)
        self.is_clip = is_clip
        self.label = ("CLIP " if is_clip else "MODEL ") + type(module).__name__
        self._backup_of = backup_of or (lambda: {})
        self._key_map = None
        self._state_keys = None
        self._owners: dict[str, tuple] = {}     # key -> (weakref to the owning module, attribute name)
        self._seeds: dict[str, int] = {}        # key -> ComfyUI's rounding seed (a hash of the key, per row block)

    @property
    def module(self) -> torch.nn.Module:
        module = self._module()
        if module is None:
            raise RuntimeError("the ComfyUI model this ledger belongs to was freed")
        return module

    def key_map(self) -> dict:
        if self._key_map is None:
            if self.is_clip:
                self._key_map = comfy.lora.model_lora_keys_clip(self.module, {})
            else:
                self._key_map = comfy.lora.model_lora_keys_unet(self.module, {})
        return self._key_map

    def _keys(self) -> set:
        if self._state_keys is None:
            self._state_keys = set(self.module.state_dict().keys())
        return self._state_keys

    # -- parameters -------------------------------------------------------------------------------------
    def parameter(self, key):
        native = self._backup_of().get(key)
        if native is not None:
            return native.weight     # native patches are on: the clean base tensor is in ComfyUI's backup
        owner = self._owners.get(key)
        if owner is None:
            path, _, leaf = key.rpartition(".")
            owner = self._owners[key] = (weakref.ref(comfy.utils.get_attr(self.module, path)) if path else
                                         self._module, leaf)
        # The attribute is read each time: ComfyUI swaps these tensors (the owning modules stay).
        return getattr(owner[0](), owner[1])

    def has_parameter(self, key):
        return key in self._keys()

    def resolve_prefix(self, prefix):
        return None   # unused: read() resolves through ComfyUI's own key map

    def fingerprint(self, tensor):
        # ComfyUI legitimately swaps and moves these tensors (native patches, offloading): identity checks
        # would raise false alarms. verify() still compares the weights with clean + stack.
        return ()

    # -- reading a file -----------------------------------------------------------------------------------
    def read(self, lora_file) -> ResolvedLora:
        key_map = self.key_map()
        converted = comfy.lora_convert.convert_lora(dict(lora_file.tensors))
        loaded = comfy.lora.load_lora(converted, key_map, log_missing=False)
        coverage = Coverage()
        self._check_shapes(converted, key_map, coverage)
        bad = {entry.split(" -> ")[1].split(":")[0] for entry in coverage.shape_mismatched}
        parts: dict[str, list] = {}
        for target, v in loaded.items():
            if isinstance(target, str):
                key, offset, function = target, None, None
            else:
                key, offset = target[0], target[1]
                function = target[2] if len(target) > 2 else None
            if key not in self._keys() or key in bad:
                continue
            parts.setdefault(key, []).append((v, offset, function))
        patches = {}
        for key, key_parts in parts.items():
            patches[key] = ComfyPatch(key, tuple(key_parts), self.parameter(key).numel())
            coverage.matched.append(key)
        groups, unknown = group_keys(converted)
        coverage.unknown_keys = unknown
        coverage.unmatched = [prefix for prefix in groups if prefix not in key_map]
        return ResolvedLora(lora_file.sha256, lora_file.name, lora_file.path, patches, coverage)

    def _check_shapes(self, tensors, key_map, coverage: Coverage) -> None:
        """Never apply a LoRA to a parameter it does not fit (e.g. an SDXL LoRA on SD1.5)."""
        groups, _ = group_keys(tensors)
        for prefix, group in groups.items():
            target = key_map.get(prefix)
            if not isinstance(target, str) or target not in self._keys():
                continue      # offset/tuple targets (fused qkv) are checked by ComfyUI itself
            alpha = float(group["alpha"].reshape(-1)[0]) if "alpha" in group else None
            adapter = next((a for a in (read(group, alpha) for read in WEIGHT_READERS) if a is not None), None)
            if adapter is None:
                continue
            shape = tuple(self.parameter(target).shape)
            if not fits(adapter.natural_shape(), shape):
                coverage.shape_mismatched.append(
                    f"{prefix} -> {target}: LoRA shape {tuple(adapter.natural_shape())} vs parameter {shape}")

    # -- math: ComfyUI's own ------------------------------------------------------------------------------
    def is_linear(self, patch):
        return patch.linear

    def patch_flops(self, patch):
        return patch.numel * len(patch.parts)

    def error_gain(self, patch, weight, strength):
        return 1.0 if patch.linear else float("inf")

    def strength(self, entry):
        return entry.strength_clip if self.is_clip else entry.strength_model

    def compute_dtype(self) -> torch.dtype:
        """The dtype ComfyUI patches in on this model's load device (always fp32 before lora_compute_dtype)."""
        choose = getattr(comfy.model_management, "lora_compute_dtype", None)
        if choose is None or self.compute_device is None:
            return torch.float32
        return choose(self.compute_device)

    def combine(self, key, weight, contributions):
        # As ModelPatcher.patch_weight_to_device: the weight in the compute dtype on the load device, then
        # calculate_weight with its default (fp32) intermediate dtype.
        weight = weight.to(device=self.compute_device or weight.device, dtype=self.compute_dtype())
        patches = [(strength, v, 1.0, offset, function)
                   for patch, strength in contributions for v, offset, function in patch.parts]
        return comfy.lora.calculate_weight(patches, weight, key)

    def add_terms(self, key, weight, terms):
        # A delta step adds each plain LoRA's product computed exactly as ComfyUI's calculate_weight computes it
        # (torch.mm of the fp32 factors on the same device), so the exact result and the delta steps share that
        # product and its rounding (change_bound: rank 0); one add_ instead of calculate_weight's scaled temporary.
        # Anything else goes through calculate_weight itself.
        weight = weight.to(device=self.compute_device or weight.device, dtype=self.compute_dtype())
        rest = []
        for patch, strength in terms:
            factors = patch.lora_factors()
            flat = weight.view(weight.shape[0], -1) if weight.is_contiguous() and weight.dim() else None
            if factors is None or flat is None or any(
                    up.shape[0] != flat.shape[0] or down[0].numel() != flat.shape[1] for up, down, _ in factors):
                rest.append((patch, strength))
                continue
            for up, down, scale in factors:
                product = torch.mm(up.flatten(1).to(device=flat.device, dtype=torch.float32),
                                   down.flatten(1).to(device=flat.device, dtype=torch.float32))
                flat.add_(product, alpha=strength * scale)
        return self.combine(key, weight, rest) if rest else weight

    def row_updates(self, key, weight, contributions, delta_step):
        # Plain LoRAs on a float weight go by rows around each LoRA's whole product, made as calculate_weight makes
        # it: exact writes then repeat calculate_weight's per-element roundings in its order (native's bits, without
        # its full-size temporaries), delta steps add the product in one fused op (fp16/bf16 keys: one fused addmm_
        # per block, see fused_rows). Anything else (DoRA, diff, offset, fp8 and other stochastically rounded
        # dtypes, a weight away from the compute device) stays whole, through calculate_weight itself.
        device = self.compute_device or weight.device
        if weight.dtype not in _ROUNDED_TO_NEAREST or weight.device != device or not weight.dim():
            return None
        if delta_step and self.fused_rows(weight):
            return self.rebase_updates(key, weight, contributions)      # the same fused rows
        return _lora_rows(weight, contributions, lambda up, down, alpha, slot: _ProductRows(
            up, down, alpha, device, slot, not delta_step), device)

    def fused_rows(self, weight) -> bool:
        """Whether auto's re-bases and the delta steps of `weight` add each LoRA's rows in one addmm_ per block
        instead of native's product, scale and add (whose bits only exact mode needs): fp16/bf16 weights patched in
        full fp32 (at SDXL size an auto change took 6.6 s instead of 10.6 s). fp32 weights keep the exact order:
        their budget is in fp32 ulps, which this order's product roundings would use up."""
        device = self.compute_device or weight.device
        return weight.dtype in (torch.float16, torch.bfloat16) and self.compute_dtype() == torch.float32 and \
            weight.device == device and bool(weight.dim()) and _exact_fp32_matmul(device)

    def rebase_updates(self, key, weight, contributions):
        if not self.fused_rows(weight):
            return None
        device = self.compute_device or weight.device
        return _lora_rows(weight, contributions, lambda up, down, alpha, slot: FactorRows(
            up, down, alpha, device, min_block_rows=REBASE_MIN_BLOCK_ROWS), device)

    def rebase_bound(self, patch):
        # The fused products differ from calculate_weight's torch.mm products (which change_bound treats as shared
        # with the exact result, rank 0) by at most both products' roundings: twice the rank.
        bound = patch.change_bound()
        factors = patch.lora_factors()
        if bound is None or factors is None:
            return None
        return (bound[0], 2 * max((int(down.shape[0]) for _, down, _ in factors), default=0))

    def step_bound(self, patch, weight):
        return self.rebase_bound(patch) if self.fused_rows(weight) else self.change_bound(patch)

    def work_dtype(self):
        return self.compute_dtype()

    def identity_rounding(self, dtype):
        return dtype == torch.float32 and self.compute_dtype() == torch.float32

    def pin_host_copy(self, copy, device):
        # By the load device, not where the weight is now: a model's first LoRAs are applied before ComfyUI moves
        # its weights to the GPU, and every change after that copies from these copies to the GPU. ComfyUI's own
        # page-locking: its budget of pinned memory, none with --disable-pinned-memory. It takes plain tensors from
        # 0.12 on (0.8 to 0.11 pin model parameters only); before that the copies stay pageable.
        pin = getattr(comfy.model_management, "pin_memory", None)
        target = self.compute_device or device
        return target.type == "cuda" and pin is not None and bool(pin(copy))

    def unpin_host_copy(self, copy):
        comfy.model_management.unpin_memory(copy)

    def write_rounded(self, key, target, value):
        if target.dtype in _ROUNDED_TO_NEAREST:
            # comfy.float.stochastic_rounding casts these to nearest (every version of the matrix, and ComfyUI's
            # main in 2026); copy_ casts the same way without its temporary: one pass over the weight, not two.
            target.copy_(value)
            return
        seed = self._seeds.get(key)
        if seed is None:
            seed = self._seeds[key] = string_to_seed(key)
        target.copy_(comfy.float.stochastic_rounding(value, target.dtype, seed=seed))

    def write_problem(self, key, tensor, memory):
        if self.refuse_writes is not None:
            return self.refuse_writes
        return in_place_problem(self.module, key, tensor, memory)


def is_clip_module(module) -> bool:
    return not isinstance(module, comfy.model_base.BaseModel)
