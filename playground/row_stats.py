"""What a step reads from a row of logits, in one pass over it: the top-k logits (the argmax first), the
softmax's log-normaliser and its entropy.

Every committed token is described by its log-probability, the distribution's entropy and the top
alternatives (decoding.describe); greedy verification takes each row's argmax, Token Recycling each
row's top-k. As separate torch operations over SmolLM2's 49,152 logits these cost ~75-110 us each on
our 2-core CPU (argmax, topk, log_softmax, exp), several hundred us a token: a twentieth of a decode
step, and more in the speculative methods, which read the rows more ways. The C++ operator
(row_stats.cpp, built once per machine by native.py) reads each row once (~20 us); without a
compiler the same numbers come from torch.

Definitions (both paths): `values`/`indices` (n, K) the K largest logits, largest first, equal logits
by index (lowest first, so indices[:, 0] is torch.argmax's first maximal index); `lse` (n,) float64
log sum exp; `entropy` (n,) float64 -sum p log p with 0 log 0 = 0. The operator's exp is float32
(relative error < 2e-7, summed in float64): lse and entropy agree with torch's float64 to ~1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import native

SOURCE = Path(__file__).with_name("row_stats.cpp")
K = 16            # enough for the alternatives shown (decoding.TOP_ALTERNATIVES) and Token Recycling's top_k


@dataclass(frozen=True)
class RowStats:
    values: torch.Tensor      # (n, K) the largest logits (their dtype), largest first
    indices: torch.Tensor     # (n, K) int64: their tokens
    lse: torch.Tensor         # (n,) float64: log sum exp of the row
    entropy: torch.Tensor     # (n,) float64: of the row's softmax, in nats

    def row(self, i: int) -> "RowStats":
        return RowStats(self.values[i:i + 1], self.indices[i:i + 1], self.lse[i:i + 1], self.entropy[i:i + 1])


def kernel() -> bool:
    return native.load(SOURCE, {"playground::row_stats": _shape})


def _shape(logits, k, sums):
    n = logits.shape[0]
    return (logits.new_empty(n, k), logits.new_empty(n, k, dtype=torch.long),
            logits.new_empty(n, dtype=torch.float64), logits.new_empty(n, dtype=torch.float64))


def row_stats(logits: torch.Tensor, k: int = K, sums: bool = True) -> RowStats:
    """logits (n, V) or (V,) -> RowStats of its n rows (1 for a (V,) row); sums=False: the top k only
    (lse and entropy NaN), a few us a row."""
    rows = logits.reshape(-1, logits.shape[-1])
    k = min(k, rows.shape[-1])
    if rows.dtype == torch.float32 and rows.device.type == "cpu" and kernel():
        return RowStats(*torch.ops.playground.row_stats(rows, k, sums))
    return torch_row_stats(rows, k)


def top_tokens(logits: torch.Tensor, k: int = 1) -> torch.Tensor:
    """(n, k) int64: each row's k largest logits' tokens, largest first, ties by lowest index
    (top_tokens(x)[:, 0] is x.argmax(-1))."""
    return row_stats(logits, k, sums=False).indices


def argmax(logits: torch.Tensor) -> list[int]:
    """Each row's argmax (the first maximal index, as torch.argmax)."""
    return top_tokens(logits)[:, 0].tolist()


def torch_row_stats(rows: torch.Tensor, k: int = K) -> RowStats:
    """The same numbers from torch's operations (no compiler; other dtypes and devices), in float64."""
    x = rows.double().cpu()
    # topk's order among equal logits is unspecified: every logit at least the k-th largest, stably sorted
    bar = x.topk(k, -1).values[:, -1:]
    values, indices = [], []
    for row, floor in zip(x, bar):
        at = (row >= floor).nonzero().flatten()
        order = torch.sort(row[at], descending=True, stable=True).indices[:k]
        values.append(row[at[order]])
        indices.append(at[order])
    logp = torch.log_softmax(x, -1)
    entropy = -(logp.exp() * logp.clamp(min=torch.finfo(logp.dtype).min)).sum(-1)
    return RowStats(torch.stack(values).to(rows.dtype), torch.stack(indices), torch.logsumexp(x, -1), entropy)
