"""Writes in the weight's own dtype: one addmm_ on an fp16/bf16 CPU weight instead of fp32 row blocks.

PyTorch's CPU kernel (oneDNN) multiplies fp16/bf16 factors exactly, accumulates in fp32 and rounds once into the
weight: the arithmetic of the applier's fp32 blocks without their conversions. Whether it does is checked once per
dtype (rounds_once); where it does not, nothing here is used.

Whether it is faster is timed once per dtype and process (faster_here): CPUs with AMX (or AVX512-FP16/BF16)
multiply these dtypes in hardware, others emulate them about twenty times slower than the fp32 path (an AVX2 EPYC:
a 1280x1280 rank-32 fp16 step 33 ms against 1.7 ms by fp32), and there everything goes by fp32 blocks.

bf16 weights take the LoRA factors of any dtype: an fp16 factor is exactly two bf16 pieces (8 + 3 significant
bits), an fp32 one three, and the products of the pieces, each exact in fp32, add up to the product of the
factors. On CPUs with AMX, bf16 products run about seven times as fast as fp32 ones (1.4 vs 0.2 TFLOP/s on one
core of a Xeon with AMX), so even four or six products per rank pay: on an SDXL-size 1280x5120 key a delta step
takes 2.2 ms instead of 5.7. Several LoRAs at once (an auto re-base) fold each strength into its up factor in
fp32 first (the scaling rounding the fp32 blocks also make). The drift bound counts every product (widened).
Subnormal bf16 pieces (factor elements under 2^-110) may be flushed to zero by the kernel: an error under 2^-126
each, far below the fp32 roundings counted for any weight not itself near fp32's underflow.
"""
from __future__ import annotations

import time

import torch

from .drift import _MANTISSA_BITS

#: Below this many elements, splitting the factors costs more than the faster products save (measured: a 640x640
#: key takes as long either way, a 320x320 one twice as long split).
MIN_SPLIT_ELEMENTS = 1 << 19

#: The most piece products per rank of one LoRA: three pieces of an fp32 factor times three.
MAX_PIECE_PAIRS = 9

_PIECES = {torch.bfloat16: 1, torch.float16: 2, torch.float32: 3}

_ROUNDS_ONCE: dict = {}
_FASTER: dict = {}


def faster_here(dtype: torch.dtype, pieces: int = 1) -> bool:
    """Whether one addmm_ in `dtype` with `pieces` products per rank beats the fp32 path it replaces (convert, fp32
    addmm_ of one product per rank, round back) on this CPU, timed once per process on a key of the sizes it is
    used for (fp32 vs native, best of three; a native run ten times slower than fp32 ends the timing)."""
    key = (dtype, pieces)
    if key not in _FASTER:
        _FASTER[key] = (pieces == 1 or faster_here(dtype, 1)) and _timed_faster(dtype, pieces)
    return _FASTER[key]


def _seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _timed_faster(dtype: torch.dtype, pieces: int, seconds=_seconds) -> bool:
    generator = torch.Generator().manual_seed(0)
    rows = 512 if pieces == 1 else 1024         # the split is for keys of MIN_SPLIT_ELEMENTS and more
    weight = (torch.randn(rows, 1024, generator=generator) * 0.02).to(dtype)
    up = (torch.randn(rows, 32 * pieces, generator=generator) * 0.01).to(dtype)
    down = (torch.randn(32 * pieces, 1024, generator=generator) * 0.01).to(dtype)
    up32, down32 = up[:, :32].float(), down[:32].float()

    def native():
        weight.addmm_(up, down, alpha=1e-3)

    def fp32():
        weight.copy_(weight.float().addmm_(up32, down32, alpha=1e-3))

    fp32_seconds = min(seconds(fp32) for _ in range(3))
    if seconds(native) > 10 * fp32_seconds:       # the first run also sets the kernel up
        return False
    return min(seconds(native) for _ in range(3)) < fp32_seconds


def rounds_once(dtype: torch.dtype) -> bool:
    """Whether addmm_ on CPU tensors of `dtype` adds in fp32 and rounds once, on random probes:
    - rank 32: the bits of the fp32 computation rounded once (a kernel that accumulates or rounds in `dtype`
      differs on almost every element);
    - rank 1152 (nine pieces of a rank-128 LoRA): every element within half an ulp of the fp64 result plus the fp32
      accumulation's bound (another order of the fp32 sums may round a few elements the other way, so bits are not
      compared; a rounding in `dtype` part-way is off by far more)."""
    if dtype not in _ROUNDS_ONCE:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(96, 320, generator=generator).to(dtype)
        up = (torch.randn(96, 32, generator=generator) * 0.05).to(dtype)
        down = (torch.randn(32, 320, generator=generator) * 0.05).to(dtype)
        expected = weight.float().addmm_(up.float(), down.float(), alpha=0.37).to(dtype)
        same = torch.equal(weight.clone().addmm_(up, down, alpha=0.37), expected)
        up = (torch.randn(96, 1152, generator=generator) * 0.03).to(dtype)
        down = (torch.randn(1152, 320, generator=generator) * 0.03).to(dtype)
        exact = weight.double().addmm_(up.double(), down.double(), alpha=0.37)
        terms = weight.double().abs() + 0.37 * up.double().abs() @ down.double().abs()
        accumulation = (1152 + 8) * 2.0 ** -24 * terms       # the fp32 sums, the scaling and the addition
        half_ulp = torch.exp2(torch.floor(torch.log2(exact.abs() + accumulation)) - _MANTISSA_BITS[dtype] - 1)
        error = (weight.clone().addmm_(up, down, alpha=0.37).double() - exact).abs()
        _ROUNDS_ONCE[dtype] = same and bool((error <= half_ulp + accumulation).all())
    return _ROUNDS_ONCE[dtype]


def _bf16_pieces(factor: torch.Tensor) -> list[torch.Tensor] | None:
    """bf16 tensors that add up to `factor` exactly (fp16: 2, fp32: 3), or None for other dtypes."""
    count = _PIECES.get(factor.dtype)
    if count is None:
        return None
    pieces, rest = [factor.to(torch.bfloat16)], factor
    while len(pieces) < count:
        rest = rest - pieces[-1]     # in fp32 (promoted), exact: the bits the pieces so far did not take
        pieces.append(rest.to(torch.bfloat16))    # the last piece holds at most 8 bits: exact
    return pieces


def splits(weight: torch.Tensor) -> bool:
    """Whether a write on `weight` may split its LoRAs' factors into bf16 pieces (operands): a bf16 CPU weight of
    at least MIN_SPLIT_ELEMENTS elements, on a CPU where bf16 products pay even four per rank (faster_here)."""
    return weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and \
        weight.numel() >= MIN_SPLIT_ELEMENTS and faster_here(torch.bfloat16, 4)


def operands(live: torch.Tensor, factors) -> tuple | None:
    """(up, down, alpha) such that live.addmm_(up, down, alpha=alpha) adds sum(alpha_i * up_i @ down_i) over
    `factors` [(up, down, alpha)] in one op that rounds once, or None where that is not possible here (then the
    caller goes by fp32 blocks): an fp16/bf16 CPU weight checked by rounds_once, on a CPU where it is faster
    (faster_here); one LoRA in the weight's dtype, or any on a weight that splits."""
    if live.device.type != "cpu" or live.dtype not in (torch.float16, torch.bfloat16) or not factors or \
            not rounds_once(live.dtype) or not faster_here(live.dtype):
        return None
    if len(factors) == 1 and all(t.dtype == live.dtype for t in factors[0][:2]):
        return factors[0]
    if not splits(live):
        return None
    single = len(factors) == 1
    ups, downs = [], []
    for up, down, alpha in factors:
        # One LoRA keeps its strength as addmm_'s alpha; several share alpha 1, each strength folded in fp32.
        up_pieces = _bf16_pieces(up if single else up.float() * alpha)
        down_pieces = _bf16_pieces(down)
        if up_pieces is None or down_pieces is None or \
                not faster_here(torch.bfloat16, len(up_pieces) * len(down_pieces)):
            return None
        for up_piece in up_pieces:
            for down_piece in down_pieces:
                ups.append(up_piece)
                downs.append(down_piece)
    return torch.cat(ups, 1), torch.cat(downs, 0), factors[0][2] if single else 1.0


def widened(bound: tuple[float, int] | None, weight: torch.Tensor) -> tuple[float, int] | None:
    """A term's (limit, rank) bound (drift.terms_error) for a write that may go through `operands` on `weight`:
    up to MAX_PIECE_PAIRS fp32 products per rank, whose magnitudes add up to at most (1 + 2^-7)^2 times the
    factors' own (a piece is at most its factor's magnitude plus a rounding): rank * (MAX_PIECE_PAIRS + 1)."""
    if bound is None or not splits(weight):
        return bound
    return (bound[0], bound[1] * (MAX_PIECE_PAIRS + 1))
