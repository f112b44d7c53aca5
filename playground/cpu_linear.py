"""Linear layers on the CPU: the fastest kernel for the number of rows, measured on our test machine.

A decode step multiplies one row (a draft: a few rows; a prompt: hundreds) by each weight matrix.
Through `F.linear` these are MKL's fp32 products, and on some CPUs (our AMD EPYC test machine) the
one-row product runs on ONE core at ~12 GB/s while a plain copy streams at 30+ GB/s: a 135M model's
step then spends two thirds of its time waiting on one core. Two remedies, by row count:

* few rows (<= SPLIT_ROWS): split the weight's output rows into one block per core and hand the
  blocks to one batched product (`torch.bmm` parallelises over the batch), so every core streams
  its own block: x (rows, in) @ W.T == concat_p( W_p (out/p, in) @ x.T (in, rows) ).T
* more rows, float32: oneDNN's matrix product (`torch.ops.mkldnn._linear_pointwise`, the kernel
  torch's own compiler uses for CPU linear layers) instead of MKL's.
Before either: a weight held as exact low-bit codes (low_bit.py: the embedded model's) goes through the
codes' kernel up to low_bit.MAX_ROWS rows.

Measured on the 2-core test machine, the 30 layers' 120 products of the embedded model (425 MB),
best of 5 with other work paused, ms (F.linear / split / oneDNN):
    1 row 33 / 10 / 20; 4 rows 46 / 20 / 27; 8 rows 48 / 32 / 31; 11 rows 46 / 55 / 31;
    64 rows 98 / 88 / 84; 640 rows 705 / 686 / 655.
The same numbers up to float rounding: each output is still one dot product over `in`, summed in the
kernel's own order (float64, which oneDNN lacks, goes to F.linear; tests/test_cpu_linear.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import low_bit

SPLIT_ROWS = 7     # the split wins up to here; at 8 rows oneDNN ties it, and beats it beyond
HAS_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def parts_for(out_features: int, threads: int) -> int:
    """The most blocks <= threads that split the output rows evenly (1: no split)."""
    for parts in range(max(threads, 1), 1, -1):
        if out_features % parts == 0:
            return parts
    return 1


def split_linear(x: torch.Tensor, weight: torch.Tensor, parts: int) -> torch.Tensor:
    """x (..., in) @ weight (out, in).T as `parts` row blocks of the weight in one batched product."""
    rows = x.numel() // x.shape[-1]
    blocks = weight.view(parts, weight.shape[0] // parts, weight.shape[1])      # (parts, out/parts, in)
    columns = x.reshape(rows, x.shape[-1]).t().expand(parts, -1, -1)           # (parts, in, rows)
    out = torch.bmm(blocks, columns)                                            # (parts, out/parts, rows)
    # Row-major again: left column-major, a later product's input (the MLP's down projection after
    # silu(gate) * up) reached bmm transposed and took 16 ms instead of 3 for a 2-row pass.
    return out.permute(2, 0, 1).reshape(*x.shape[:-1], weight.shape[0]).contiguous()   # (..., out)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for x (..., in), weight (out, in), through the kernel that suits
    the row count (module notes); anything unusual (GPU, float64, a strided weight) -> F.linear."""
    if x.device.type != "cpu" or not weight.is_contiguous():
        return F.linear(x, weight, bias)
    rows = x.numel() // x.shape[-1]
    codes = low_bit.codes_of(weight) if rows <= low_bit.MAX_ROWS else None
    if codes is not None and x.dtype == torch.float32:
        out = codes.linear(x)
        return out if bias is None else out + bias
    parts = parts_for(weight.shape[0], torch.get_num_threads())
    if rows <= SPLIT_ROWS and parts > 1:
        out = split_linear(x, weight, parts)
        return out if bias is None else out + bias
    if HAS_ONEDNN and x.dtype == weight.dtype == torch.float32:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)
