"""Weights that are exact low-bit codes, read as codes: a decode step reads 112 MB instead of 538.

The embedded model comes from a GGUF quantised as Q4_1 (every layer: blocks of 32 weights, each
`scale * q + low` with a 4-bit q and two float16 numbers) and Q8_0 (the tied embedding and head:
`scale * q`, q int8). Loading de-quantises them to float32, so a decode step then streams 538 MB of
float32 that carry 4.5 bits of information per weight (8.5 for the head): the memory roofline of that
step is set by a format the weights do not need.

`encode` finds those codes again from the float32 tensor itself (not from the file, so any model whose
weights are such codes gains, and a model whose weights are not keeps its float32 products): per block
the lowest weight is `low`, `scale` the float16 value that makes every weight `scale * q + low` for an
integer q, checked bit for bit over the whole tensor; a tensor with one block that does not decode
exactly is not encoded. playground/low_bit.cpp then multiplies few input rows by the codes, decoding
each weight in registers to the very float32 number the tensor holds (module notes there), so a step's
products are the same float32 products as before, summed in another order (as MKL's and oneDNN's
kernels differ from each other). Bench and tests compare every method against transformers' `generate`
on the float32 weights.

The kernel is a torch operator compiled once per machine (native.py); without a compiler every product
stays float32.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from . import native
from .config import settings

BLOCK = 32             # inputs per scale (GGUF's blocks)
GROUP = 4              # output rows per record (low_bit.cpp)
MAX_ROWS = 16          # up to here the codes' product beats oneDNN's float32 one (few rows: a step, a draft)
SOURCE = Path(__file__).with_name("low_bit.cpp")


@dataclass(frozen=True)
class Codes:
    """One weight (out, in) as codes, in low_bit.cpp's records: the rows in groups of GROUP, per group and
    block of 32 inputs one record (q4: GROUP scales, GROUP lows, GROUP x 16 bytes of nibbles; q8: GROUP
    scales, GROUP x 32 int8). data: (out / GROUP, in / 32, record bytes) uint8."""
    data: torch.Tensor
    bits: int                 # 4 or 8

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) float32 @ W.T -> (..., out), W the float32 weight these codes are."""
        return torch.ops.playground.coded_linear(x, self.data, self.bits)


def _records(*parts: torch.Tensor) -> torch.Tensor:
    """Per-row, per-block parts (out, in / 32, bytes_i), each viewed as bytes, into records
    (out / GROUP, in / 32, GROUP * sum(bytes_i)): a part's GROUP rows side by side, then the next part."""
    grouped = [p.reshape(p.shape[0] // GROUP, GROUP, p.shape[1], -1).transpose(1, 2).reshape(
        p.shape[0] // GROUP, p.shape[1], -1) for p in parts]
    return torch.cat(grouped, -1).contiguous()


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """(out, blocks) float32 -> (out, blocks, 4) uint8; (out, blocks, w) 8-bit ints -> uint8, as stored."""
    return t.unsqueeze(-1).contiguous().view(torch.uint8) if t.dtype == torch.float32 else t.view(torch.uint8)


def _is_half(t: torch.Tensor) -> bool:
    """Every value a float16 one (then scale * q, q of <= 8 bits, is exact in float32)."""
    return bool(torch.isfinite(t).all()) and torch.equal(t.half().float(), t)


def q4_codes(weight: torch.Tensor) -> Codes | None:
    """`weight` (out, in) as 4-bit affine codes per block of 32, or None where one block is not exactly that."""
    blocks = weight.reshape(weight.shape[0], -1, BLOCK)                      # (out, in / 32, 32)
    low = blocks.amin(-1, keepdim=True)
    scale = ((blocks.amax(-1, keepdim=True) - low) / 15).half().float()
    ok = torch.zeros(low.shape, dtype=torch.bool)
    q = torch.zeros_like(blocks)
    # The quantiser's float16 scale is the rounded (max - min) / 15 of the original block, whose max is
    # not kept exactly: try it and its float16 neighbours, per block.
    for step in (0, -1, 1, -2, 2):
        candidate = (scale.half().view(torch.int16) + step).view(torch.float16).float() if step else scale
        trial = torch.round((blocks - low) / candidate.clamp_min(1e-30)).clamp(0, 15)
        exact = (trial * candidate + low == blocks).all(-1, keepdim=True) & ~ok
        q, scale = torch.where(exact, trial, q), torch.where(exact, candidate, scale)
        ok |= exact
    if not bool(ok.all()) or not _is_half(scale) or not _is_half(low):
        return None
    q = q.to(torch.uint8)
    nibbles = q[..., :16] | (q[..., 16:] << 4)                               # GGUF Q4_1's order
    return Codes(_records(_bytes(scale.squeeze(-1)), _bytes(low.squeeze(-1)), nibbles), 4)


def q8_codes(weight: torch.Tensor) -> Codes | None:
    """`weight` (out, in) as int8 codes times one float16 scale per block of 32, or None."""
    blocks = weight.reshape(weight.shape[0], -1, BLOCK)
    scale = blocks.abs().amax(-1, keepdim=True) / 127        # the largest |weight| of a block is code +-127
    q = torch.round(blocks / scale.clamp_min(1e-30))
    if not _is_half(scale) or not bool((q.abs() <= 127).all()) or not torch.equal(q * scale, blocks):
        return None
    return Codes(_records(_bytes(scale.squeeze(-1)), _bytes(q.to(torch.int8))), 8)


def encode(weight: torch.Tensor) -> Codes | None:
    """The cheapest exact codes of a float32 CPU weight (out, in), or None."""
    if (weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.dim() != 2
            or weight.shape[0] % GROUP or weight.shape[1] % BLOCK or not bool(torch.isfinite(weight).all())):
        return None
    with torch.no_grad():
        # Its first rows say which format can fit, before the whole tensor is tried (a float model's
        # weights fail at once instead of after five passes over each weight)
        first = weight[:GROUP]
        if q4_codes(first) is not None:
            return q4_codes(weight)
        return q8_codes(weight) if q8_codes(first) is not None else None


# ---- which weights have codes: per weight tensor object, dropped with it ----

_CODED: dict[int, Codes] = {}


def codes_of(weight: torch.Tensor) -> Codes | None:
    return _CODED.get(id(weight))


def attach(weight: torch.Tensor) -> Codes | None:
    """Encode `weight` once (kept until the tensor object is gone); None where it is not codes or the
    kernel is unavailable."""
    known = _CODED.get(id(weight))
    if known is not None or not kernel():
        return known
    codes = encode(weight)
    if codes is not None:
        _CODED[id(weight)] = codes
        weakref.finalize(weight, _CODED.pop, id(weight), None)
    return codes


def _products(model) -> list[torch.Tensor]:
    """The weights a lean decode step multiplies: each layer's stacked products and the head."""
    from . import lean_forward
    if not lean_forward.supports(model):
        return []
    plans = lean_forward.layer_plans(model.model)
    return [w for plan in plans for w, _ in (plan.qkv, plan.o, plan.gate_up, plan.down)] + [model.lm_head.weight]


def attach_model(model) -> list[Codes]:
    """Codes for every weight a lean decode step multiplies, where exact and enabled (PLAYGROUND_LOW_BIT)."""
    if not settings().low_bit:
        return []
    return [codes for codes in map(attach, _products(model)) if codes is not None]


def bytes_saved(model) -> int:
    """Float32 bytes minus code bytes over the weights of `model` that have codes: what a few-row pass
    reads less (decoding.weight_bytes)."""
    pairs = [(w, codes_of(w)) for w in _products(model)]
    return sum(w.numel() * w.element_size() - codes.nbytes for w, codes in pairs if codes is not None)


# ---- the kernel ----

def kernel() -> bool:
    """Whether the operator playground::coded_linear is loaded (built on first use, native.py)."""
    return native.load(SOURCE, {"playground::coded_linear": _shape})


def _shape(x, data, bits):
    """What the operator returns, for torch's compiler: (..., out)."""
    return x.new_empty(*x.shape[:-1], data.shape[0] * GROUP)
