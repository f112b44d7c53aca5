"""playground/row_stats.py: one read of a row of logits gives its top-k (argmax first, equal logits by
lowest index), log-normaliser and entropy, the same as torch's float64 operations say; and the numbers a
committed token is shown with (decoding.describe) are those of softmax(logits)."""

from __future__ import annotations

import math

import pytest
import torch

from playground import row_stats as rs
from playground.decoding import TOP_ALTERNATIVES, DecodeSession

needs_kernel = pytest.mark.skipif(not rs.kernel(), reason="no C++ compiler for the row_stats operator")


def rows(seed: int, n: int, vocab: int, scale: float) -> torch.Tensor:
    return torch.randn(n, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def reference(x: torch.Tensor, k: int) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    """Top-k by (logit descending, index ascending) from a plain Python sort; lse and entropy in float64."""
    tops = [sorted(range(len(row)), key=lambda i: (-float(row[i]), i))[:k] for row in x.double()]
    logp = torch.log_softmax(x.double(), -1)
    p = logp.exp()
    entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
    return tops, torch.logsumexp(x.double(), -1), entropy


def tied(x: torch.Tensor) -> torch.Tensor:
    """Equal logits at the top, across both threads' shares of the row, and -inf over a whole share."""
    x = x.clone()
    x[0, [1, x.shape[1] // 2 + 1, x.shape[1] - 1]] = 50.0           # a three-way tie at the top
    x[1, [0, 2, x.shape[1] // 2 + 2]] = 40.0
    if len(x) > 2:
        x[2, : x.shape[1] * 3 // 4] = float("-inf")                 # a masked row (a warper's cut)
    return x


@needs_kernel
@pytest.mark.parametrize("vocab, k", [(49152, 16), (49152, 1), (5000, 8), (100, 5), (7, 7)])
@pytest.mark.parametrize("threads", [1, 2])
def test_operator_equals_the_definition(vocab, k, threads, monkeypatch):
    torch.set_num_threads(threads)
    try:
        for scale in (0.5, 4.0, 30.0):
            x = tied(rows(int(scale * 10) + vocab, 3, vocab, scale))
            got = rs.row_stats(x, k)
            tops, lse, entropy = reference(x, k)
            assert got.indices.tolist() == tops
            assert torch.equal(got.values, x.gather(1, got.indices))
            assert torch.allclose(got.lse, lse, rtol=0, atol=2e-6)
            assert torch.allclose(got.entropy, entropy, rtol=0, atol=2e-6)
    finally:
        torch.set_num_threads(2)


@needs_kernel
def test_argmax_is_torchs_first_maximal_index_and_top_only_leaves_the_sums_out():
    x = tied(rows(1, 4, 49152, 3.0))
    assert rs.argmax(x) == x.argmax(-1).tolist() == [1, 0, x[2].argmax().item(), x[3].argmax().item()]
    top = rs.row_stats(x, 4, sums=False)
    assert top.indices.tolist() == rs.row_stats(x, 4).indices.tolist() and torch.isnan(top.lse).all()


def test_the_torch_path_equals_the_definition():
    """Without a compiler (or for other dtypes) the same numbers come from torch."""
    x = tied(rows(2, 3, 3000, 5.0))
    got = rs.torch_row_stats(x, 6)
    tops, lse, entropy = reference(x, 6)
    assert got.indices.tolist() == tops
    assert torch.allclose(got.lse, lse, rtol=0, atol=1e-12) and torch.allclose(got.entropy, entropy, rtol=0, atol=1e-12)


def test_a_known_distribution_is_described_exactly(tiny_model, tiny_tokenizer):
    """p = (1/2, 1/4, 1/8, 1/8, 0, ...): logprob, entropy (1.75 bits) and the alternatives, as written down."""
    session = DecodeSession(tiny_model, tiny_tokenizer, [1, 2], 4, set(), 0)
    vocab = 1000
    logits = torch.full((vocab,), float("-inf"))
    logits[[10, 20, 30, 40]] = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125])) + 3.0   # any shift
    event = session.describe(20, logits, 0)
    assert event.logprob == pytest.approx(math.log(0.25), abs=1e-6)
    assert event.entropy == pytest.approx(1.75 * math.log(2), abs=1e-6)
    assert [(a.token_id, round(a.prob, 6)) for a in event.alternatives] == \
        [(10, 0.5), (20, 0.25), (30, 0.125), (40, 0.125), (0, 0.0)][:TOP_ALTERNATIVES]
