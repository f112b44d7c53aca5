"""Acceptance rules of speculative decoding, as pure functions on probability vectors.

Every rule takes the target distribution p and the draft distribution q (rows of shape (B, V),
or (V,) to share one pair across the batch), the drafted candidates, and an explicit
torch.Generator, and returns an Outcome (index, token, residual) per row.

Glossary (as in vLLM's rejection sampler):
- index: the position of the accepted candidate, -1 when all were rejected;
- token: the accepted candidate, or the recovered token (index -1) drawn from `residual`;
- residual: the distribution the recovered token was drawn from. It is NOT always
  norm(max(0, p - q)): after K recursive rejections it is p updated K times, and for K-SEQ it is
  norm(max(0, p - min(q, p/rho) c)). The p-vs-q panel draws exactly this row.

The batch dimension is there so the tests can check each rule's output distribution over 10^5
trials in one call; strategies call the rules with B = 1. Each rule outputs exactly p:
- speculative_accept: one candidate x ~ q (Leviathan / Chen).
- recursive_rejection: K candidates drawn from q WITHOUT replacement (RSD).
- kseq_accept: k candidates drawn i.i.d. from q (SpecTr's k-sequential selection).
- deterministic_accept: candidates that did not come from q at all (retrieval, recycled tokens).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# A residual whose mass is below this is rounding noise of p == q; fall back to p (ALGORITHMS.md s.5).
RESIDUAL_EPS = 1e-12
BISECTION_STEPS = 60


class Outcome(NamedTuple):
    """What a rule decided, per row. Unpacks as (index, token, residual)."""

    index: torch.Tensor      # (B,) long: accepted candidate's position, -1 = all rejected
    token: torch.Tensor      # (B,) long: the accepted candidate, or the recovered token
    residual: torch.Tensor   # (B, V) float64: the law the recovered token was drawn from. Every row
                             # draws one (vectorised), but only rows with index -1 use it.


def _rows(dist: torch.Tensor, batch: int) -> torch.Tensor:
    """(V,) or (B, V) -> (B, V) float64 (a view where possible)."""
    dist = dist.double()
    return dist.expand(batch, dist.shape[-1]) if dist.dim() == 1 else dist


def normalise(weights: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """weights / sum, row by row; rows with (almost) no mass become `fallback` instead."""
    total = weights.sum(-1, keepdim=True)
    empty = total <= RESIDUAL_EPS
    return torch.where(empty, fallback, weights / torch.where(empty, torch.ones_like(total), total))


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)): what is left of p after q's accepted mass; p itself if nothing is left."""
    p, q = torch.broadcast_tensors(p.double(), q.double())
    return normalise((p - q).clamp(min=0), p)


def sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row of probs (B, V) -> (B,)."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _uniform(batch: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(batch, generator=generator, dtype=torch.float64)


def _accepts(u: torch.Tensor, p_x: torch.Tensor, q_x: torch.Tensor) -> torch.Tensor:
    """U < min(1, p(x)/q(x)), written without the division so q(x) = 0 cannot produce nan."""
    return u * q_x < p_x


# --- one candidate ---------------------------------------------------------------------------

def speculative_accept(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor,
                       generator: torch.Generator) -> Outcome:
    """Accept x ~ q with probability min(1, p(x)/q(x)); otherwise draw from norm(max(0, p - q)).
    p, q (B, V) or (V,); draft (B,) or a scalar tensor."""
    draft = draft.reshape(-1)
    batch = draft.shape[0]
    p, q = _rows(p, batch), _rows(q, batch)
    u = _uniform(batch, generator)
    accepted = _accepts(u, p.gather(-1, draft[:, None])[:, 0], q.gather(-1, draft[:, None])[:, 0])
    left = residual(p, q)
    token = torch.where(accepted, draft, sample(left, generator))
    return Outcome(torch.where(accepted, 0, -1), token, left)


# --- K candidates without replacement (RSD) --------------------------------------------------

def gumbel_top_k(q: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k distinct tokens from q (..., V) without replacement, in the order sequential sampling
    would draw them: the top k of log q + Gumbel noise. k is clipped to q's support."""
    k = min(k, int((q > 0).sum(-1).min()))
    uniform = torch.rand(q.shape, generator=generator, dtype=torch.float64).clamp_(min=1e-300)
    keys = q.double().log() - (-uniform.log()).log()
    return torch.topk(keys, k, dim=-1).indices


def _remove(dist: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """dist with `token` zeroed and the rest renormalised (the without-replacement conditional)."""
    removed = dist.scatter(-1, token[:, None], 0.0)
    return normalise(removed, removed)


def recursive_rejection(p: torch.Tensor, q: torch.Tensor, candidates: torch.Tensor,
                        generator: torch.Generator) -> Outcome:
    """Recursive rejection sampling over candidates (B, K) (or (K,)) drawn from q without replacement.

    After each rejected candidate x_k the target becomes the residual norm(max(0, p_k - q_k)) and
    the draft becomes q_k without x_k: exactly the distribution the next candidate was drawn from.
    The recovered token comes from p_{K+1}, p updated K times (Outcome.residual), not from
    norm(max(0, p - q)) of the first candidate.
    """
    if candidates.dim() == 1:
        candidates = candidates[None]
    batch, k_total = candidates.shape
    p_k, q_k = _rows(p, batch).clone(), _rows(q, batch).clone()
    index = torch.full((batch,), -1, dtype=torch.long)
    token = torch.zeros(batch, dtype=torch.long)
    for k in range(k_total):
        x = candidates[:, k]
        open_rows = index < 0
        hit = open_rows & _accepts(_uniform(batch, generator), p_k.gather(-1, x[:, None])[:, 0],
                                   q_k.gather(-1, x[:, None])[:, 0])
        index = torch.where(hit, k, index)
        token = torch.where(hit, x, token)
        p_k = residual(p_k, q_k)
        q_k = _remove(q_k, x)
    leftover = sample(p_k, generator)
    return Outcome(index, torch.where(index < 0, leftover, token), p_k)


# --- k i.i.d. candidates (SpecTr K-SEQ) ------------------------------------------------------

def kseq_beta(p: torch.Tensor, q: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """beta(rho) = sum_x min(q(x), p(x)/rho): one candidate's acceptance probability."""
    return torch.minimum(q, p / rho[..., None]).sum(-1)


def kseq_c(beta: torch.Tensor, k: int) -> torch.Tensor:
    """c = (1 - (1 - beta)^k) / beta = sum_{i<k} (1 - beta)^i (the sum form has no 0/0 at beta = 0)."""
    return sum((1 - beta) ** i for i in range(k))


def kseq_rho(p: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """rho* per row: the smallest rho in [1, k] with c(rho) <= rho, by bisection.

    c(rho) <= rho is what keeps the accepted mass min(q, p/rho) * c below p everywhere, so any
    such rho is lossless; rho = k always is (c <= k), and the smallest gives the most acceptance.
    """
    p, q = p.double(), q.double()
    if p.dim() == 1:
        p, q = p[None], q[None]
    ok = lambda rho: kseq_c(kseq_beta(p, q, rho), k) <= rho * (1 + 1e-12)  # noqa: E731
    lo = torch.ones(p.shape[0], dtype=torch.float64)
    hi = torch.full_like(lo, float(k))
    valid_at_one = ok(lo)
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        good = ok(mid)
        hi = torch.where(good, mid, hi)
        lo = torch.where(good, lo, mid)
    return torch.where(valid_at_one, torch.ones_like(hi), hi)


def kseq_residual(p: torch.Tensor, q: torch.Tensor, rho: torch.Tensor, k: int) -> torch.Tensor:
    """p_res ∝ p - min(q, p/rho) * c(rho): the mass of p the k candidates did not cover."""
    covered = torch.minimum(q, p / rho[..., None])
    left = (p - covered * kseq_c(covered.sum(-1), k)[..., None]).clamp(min=0)
    return normalise(left, p)


def kseq_accept(p: torch.Tensor, q: torch.Tensor, candidates: torch.Tensor,
                generator: torch.Generator, rho: torch.Tensor | None = None) -> Outcome:
    """K-SEQ over candidates (B, k) (or (k,)) drawn i.i.d. from q: accept the first X_i that passes
    U < min(1, p(X_i) / (rho* q(X_i))); if none does, draw from the K-SEQ residual
    norm(max(0, p - min(q, p/rho*) c(rho*))) (kseq_residual).
    rho (B,) or (1,): kseq_rho(p, q, k) when the caller has it already (it also names it), else computed."""
    if candidates.dim() == 1:
        candidates = candidates[None]
    batch, k = candidates.shape
    p, q = _rows(p, batch), _rows(q, batch)
    rho = kseq_rho(p, q, k) if rho is None else rho.double().expand(batch)
    index = torch.full((batch,), -1, dtype=torch.long)
    token = torch.zeros(batch, dtype=torch.long)
    for i in range(k):
        x = candidates[:, i]
        hit = (index < 0) & _accepts(_uniform(batch, generator), p.gather(-1, x[:, None])[:, 0],
                                     rho * q.gather(-1, x[:, None])[:, 0])
        index = torch.where(hit, i, index)
        token = torch.where(hit, x, token)
    left = kseq_residual(p, q, rho, k)
    return Outcome(index, torch.where(index < 0, sample(left, generator), token), left)


# --- candidates that are not samples of q (retrieval, recycled tokens) ---------------------

def deterministic_accept(p: torch.Tensor, candidates: torch.Tensor,
                         generator: torch.Generator) -> Outcome:
    """Distinct fixed candidates: accept x with probability p(x); else remove x from p and renormalise."""
    if candidates.dim() == 1:
        candidates = candidates[None]
    batch, k_total = candidates.shape
    p_k = _rows(p, batch).clone()
    index = torch.full((batch,), -1, dtype=torch.long)
    token = torch.zeros(batch, dtype=torch.long)
    for k in range(k_total):
        x = candidates[:, k]
        hit = (index < 0) & (_uniform(batch, generator) < p_k.gather(-1, x[:, None])[:, 0])
        index = torch.where(hit, k, index)
        token = torch.where(hit, x, token)
        p_k = _remove(p_k, x)
    left = normalise(p_k, _rows(p, batch))
    return Outcome(index, torch.where(index < 0, sample(left, generator), token), left)
