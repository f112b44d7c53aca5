"""Truncation rules for sampling, as pure functions: logits (..., V) -> logits with -inf outside.

Applied in this order (the order `transformers` uses, so results are comparable):
temperature -> top-k -> top-p -> min-p -> typical-p -> epsilon -> eta.
Each rule keeps at least one token (the most probable one left). A value that switches a rule
off (top_k=0, top_p=1, min_p=0, typical_p=1, epsilon=0, eta=0) returns the input unchanged.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def temperature(logits: torch.Tensor, t: float) -> torch.Tensor:
    return logits / t


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: the smallest set of most-probable tokens whose mass reaches p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative <= (1 - p)       # ascending order: the low tail whose mass stays under 1-p
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def min_p(logits: torch.Tensor, m: float) -> torch.Tensor:
    """Keep tokens with probability >= m * p(top token)."""
    if m <= 0:
        return logits
    probs = logits.softmax(-1)
    drop = probs < m * probs.amax(-1, keepdim=True)
    return logits.masked_fill(drop, NEG_INF)


def typical_p(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling: keep tokens whose surprisal is closest to the entropy, up to `mass`."""
    if mass >= 1.0:
        return logits
    logp = logits.log_softmax(-1)
    entropy = -(logp.exp() * logp).nansum(-1, keepdim=True)
    distance = (-logp - entropy).abs()
    sorted_distance, order = torch.sort(distance, descending=False)
    cumulative = logits.gather(-1, order).softmax(-1).cumsum(-1)
    last = (cumulative < mass).sum(-1, keepdim=True).clamp(max=logits.shape[-1] - 1)
    drop_sorted = sorted_distance > sorted_distance.gather(-1, last)
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def _keep_best(logits: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    best = logits == logits.amax(-1, keepdim=True)
    return logits.masked_fill(drop & ~best, NEG_INF)


def epsilon(logits: torch.Tensor, eps: float) -> torch.Tensor:
    """Epsilon sampling (Hewitt et al. 2022): drop tokens with probability < eps."""
    if eps <= 0:
        return logits
    return _keep_best(logits, logits.softmax(-1) < eps)


def eta(logits: torch.Tensor, eps: float) -> torch.Tensor:
    """Eta sampling: drop tokens with probability < min(eps, sqrt(eps) * exp(-H(p)))."""
    if eps <= 0:
        return logits
    logp = logits.log_softmax(-1)
    entropy = -(logp.exp() * logp).nansum(-1, keepdim=True)
    threshold = torch.minimum(torch.tensor(eps, dtype=logits.dtype), eps**0.5 * torch.exp(-entropy))
    return _keep_best(logits, logp.exp() < threshold)


def kept_count(logits: torch.Tensor) -> int:
    return int(torch.isfinite(logits).sum())
