"""The sampling family's warpers: truncation rules as pure functions, and one composable chain.

Each rule maps logits (..., V) to logits with -inf outside the kept set, never mutating its
input, and keeps at least one token (the most probable one left). A value that switches a rule
off (top_k=0, top_p=1, min_p=0, typical_p=1, epsilon=0, eta=0, top_h=0) returns the input as is.

`WarperChain` composes them like transformers' LogitsProcessorList, in transformers' order so
results are comparable: temperature -> top-k -> top-p -> min-p -> typical-p -> epsilon -> eta,
then Top-H (entropy-bounded, measured on what the earlier rules left). transformers' generate puts
its top_h elsewhere, right after temperature: with another rule on as well, our chain equals a
LogitsProcessorList with TopHLogitsWarper last, not generate(top_h=...). Every sampling method
builds its chain from the same parameters (`family_params`), speculative verification included,
where the one chain warps both the target p and the draft q.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..base import Param

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


# --- Top-H: entropy-bounded truncation (Baghaei et al. 2025; see top_h.py for the method) -------------

# Three stopping rules, named for where each comes from. With P the top-n probabilities of p:
#   authors       the authors' released logit_processor.py: keep token k while the *unnormalised* partial
#                 entropy -sum_{i<=k} P_i log P_i <= alpha * (-sum_{i<n} P_i log P_i).
#   transformers  transformers' TopHLogitsWarper: the same loop on P renormalised within the top-n first.
#   normalized    the paper's constraint H(q) <= alpha * H(p), q the renormalised kept set, p the full law.
# authors and transformers agree exactly when the top-n holds all the mass (vocab <= top_n, or everything
# past the top-n already masked) and otherwise often keep different numbers of tokens.
TOP_H_CRITERIA = ("authors", "transformers", "normalized")
# "released" was the authors' rule's name until the transformers rule was told apart from it; saved runs
# carry it, so it still parses (to what it computed).
TOP_H_ALIASES = (("released", "authors"),)


def top_h_criterion_help(n: str) -> str:
    """The help text of a criterion choice; `n` is the candidate count ("100", or "n" for a parameter)."""
    return (f"authors: the authors' released code (budget alpha x the unnormalised entropy of the top-{n}); "
            f"transformers: transformers' top_h (the same rule on the top-{n} renormalised first). The two "
            f"agree exactly when the top-{n} holds all the mass (vocab <= {n}) and often keep different sets "
            "on a real vocabulary. normalized: the paper's H(q) <= alpha H(p).")


def top_h_criterion(name: str) -> str:
    """The criterion a (possibly retired) name stands for; an unknown name is an error, never a fallback."""
    name = dict(TOP_H_ALIASES).get(name, name)
    if name not in TOP_H_CRITERIA:
        raise ValueError(f"Top-H criterion must be one of {', '.join(TOP_H_CRITERIA)}, got {name!r}")
    return name


@dataclass(frozen=True)
class AliasedChoice(Param):
    """A choice parameter that also accepts retired names, so saved runs keep loading; the UI lists
    only `choices`, and a retired name parses to the current one."""

    aliases: tuple[tuple[str, str], ...] = ()      # (retired name, current name)

    def parse(self, raw: Any) -> Any:
        return super().parse(dict(self.aliases).get(raw, raw) if isinstance(raw, str) else raw)


def _top_h_measure(top: torch.Tensor, full: torch.Tensor, alpha: float, criterion: str):
    """(measured entropy of each prefix 0..k, budget) in nats for one criterion; `top` is the sorted top-n
    of the full distribution `full`. Every rule is the same in bits (both sides scale together)."""
    if criterion == "normalized":
        partial = (-torch.special.xlogy(top, top)).cumsum(-1)
        mass = top.cumsum(-1)
        return partial / mass + torch.log(mass), alpha * float(-torch.special.xlogy(full, full).sum())
    if criterion == "transformers":
        top = top / top.sum()                   # renormalise within the top-n, as TopHLogitsWarper does
    partial = (-torch.special.xlogy(top, top)).cumsum(-1)                 # 0 log 0 = 0, no NaN
    return partial, alpha * float(partial[-1])


def top_h_keep(logits: torch.Tensor, alpha: float, top_n: int = 100, criterion: str = "authors"):
    """Kept-set size and the numbers behind it for one distribution (logits already tempered).

    Returns (kept, budget, measured entropy of the kept set, kept mass of p), entropies in nats, the
    measured entropy being the one the criterion bounds (see TOP_H_CRITERIA above).
    """
    criterion = top_h_criterion(criterion)
    probs = torch.softmax(logits.double(), -1)
    top = torch.topk(probs, min(top_n, probs.shape[-1])).values          # sorted, descending
    measured, budget = _top_h_measure(top, probs, alpha, criterion)
    over = (measured > budget) | (top <= 0)                              # zero-mass tokens never join
    over[0] = False                                                     # the top token always stays
    # The set is a prefix: stop at the first token that breaks the budget.
    kept = int(over.long().cumsum(-1).eq(0).sum())
    return kept, float(budget), float(measured[kept - 1]), float(top.cumsum(-1)[kept - 1])


def top_h(logits: torch.Tensor, alpha: float, top_n: int = 100, criterion: str = "authors") -> torch.Tensor:
    """Keep the Top-H set of each row (alpha 0 = off)."""
    if alpha <= 0:
        return logits
    rows = logits.reshape(-1, logits.shape[-1])
    keep = torch.zeros_like(rows, dtype=torch.bool)
    for row, mask in zip(rows, keep):
        kept, *_ = top_h_keep(row, alpha, top_n, criterion)
        mask[torch.topk(row, kept).indices] = True                # the kept set is a prefix of the sorted order
    return logits.masked_fill(~keep.reshape(logits.shape), NEG_INF)


# --- the chain ---------------------------------------------------------------------------------------

# (parameter, rule) in the order applied; temperature is first and separate (it divides, never truncates).
RULES = (("top_k", top_k), ("top_p", top_p), ("min_p", min_p), ("typical_p", typical_p),
         ("epsilon", epsilon), ("eta", eta))


class WarperChain:
    """temperature, then every truncation rule whose value is not "off", in RULES order, then Top-H.
    Called on logits (..., V); returns new logits (the input is never changed)."""

    def __init__(self, values: dict):
        self.temperature = float(values.get("temperature", 1.0))
        self.rules = [(name, fn, values[name]) for name, fn in RULES if name in values]
        self.top_h = (float(values.get("top_h", 0.0)), int(values.get("top_h_n", 100)),
                      # runs saved before top_h_rule existed computed the authors' rule
                      top_h_criterion(str(values.get("top_h_rule", "authors"))))

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        logits = temperature(logits, self.temperature)
        for _, rule, value in self.rules:
            logits = rule(logits, value)
        return top_h(logits, *self.top_h)


MIN_SAMPLING_TEMPERATURE = 0.05   # the lowest sampling temperature any method takes (speculative ones: or 0, greedy)


def family_params(temperature_default: float, temperature_low: float) -> tuple:
    """The sampling family's parameters, shared by every method that samples (speculative ones
    included, with temperature 0 meaning greedy verification)."""
    zero_is_greedy = " 0 = greedy (output equals greedy)." if temperature_low == 0 else ""
    return (
        Param("temperature", "float", temperature_default, temperature_low, 5.0,
              help="Divide logits by T before everything else." + zero_is_greedy, step=0.05),
        Param("top_k", "int", 0, 0, 1000, help="Keep the k most probable tokens (0 = off).", step=1),
        Param("top_p", "float", 1.0, 0.01, 1.0, help="Nucleus: smallest set with mass >= p (1 = off).", step=0.01),
        Param("min_p", "float", 0.0, 0.0, 1.0, help="Keep tokens with p >= min_p * p_max (0 = off).", step=0.01),
        Param("typical_p", "float", 1.0, 0.01, 1.0, help="Locally typical sampling mass (1 = off).", step=0.01),
        Param("epsilon", "float", 0.0, 0.0, 0.5, help="Drop tokens with p < epsilon (0 = off).", step=0.0001),
        Param("eta", "float", 0.0, 0.0, 0.5, help="Drop p < min(eta, sqrt(eta) exp(-H)) (0 = off).", step=0.0001),
        Param("top_h", "float", 0.0, 0.0, 1.0,
              help="Top-H entropy budget alpha, applied after the rules above (0 = off; see the Top-H method).",
              step=0.01),
        AliasedChoice("top_h_rule", "choice", "authors", choices=TOP_H_CRITERIA, aliases=TOP_H_ALIASES,
                      help="Top-H rule when top_h > 0. " + top_h_criterion_help("100")),
    )


def chain_or_greedy(values: dict) -> WarperChain | None:
    """The chain for these parameter values; None at temperature 0 (greedy)."""
    return WarperChain(values) if values.get("temperature", 1.0) > 0 else None
