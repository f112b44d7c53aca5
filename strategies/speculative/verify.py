"""Verifiers: what a round accepts, given the tree, the target's logits on it and how it was drafted.

Glossary (as in vLLM's rejection sampler):
- accepted tokens: draft tokens on the root path the verifier kept;
- recovered token: the target's own token where every candidate at a node was rejected (greedy: the
  argmax; sampling: a draw from the residual the acceptance rule left);
- bonus token: the target's own token after an accepted leaf (nothing was drafted below it).
- residual: the distribution the recovered token was drawn from (acceptance.Outcome.residual): for
  one candidate norm(max(0, p - q)); after K recursive rejections p updated K times; for K-SEQ
  norm(max(0, p - min(q, p/rho) c)). The Verdict's rejection dict carries it, so the p-vs-q panel
  draws the law that was actually sampled, not a formula that only holds for a single candidate.
A Verdict holds the accepted path and the next token (recovered or bonus); rounds.py commits them.

Sampling verification warps the target p and the draft q with the SAME warper chain
(sampling/warpers.py), so the output follows the warped target law, whatever rules are on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from playground.row_stats import RowStats, row_stats

from ..base import InvalidParameter
from ..sampling.warpers import MIN_SAMPLING_TEMPERATURE, chain_or_greedy, family_params
from . import acceptance
from .tree import DraftTree, greedy_accept


# --- warping: one chain for p and q -------------------------------------------------------------

def sampling_params():
    """The whole sampling family, temperature 0 (greedy verification) by default."""
    return family_params(temperature_default=0.0, temperature_low=0.0)


def check_sampling(values: dict) -> None:
    """Temperatures between 0 (greedy) and the sampling chain's lowest would fail mid-run; refuse them."""
    low = MIN_SAMPLING_TEMPERATURE
    if 0 < values["temperature"] < low:
        raise InvalidParameter(f"temperature must be 0 (greedy) or at least {low}, got {values['temperature']}")


def make_warp(values: dict):
    """The warper chain for a method's parameter values; None in greedy mode (temperature 0)."""
    return chain_or_greedy(values)


def probabilities(logits: torch.Tensor, warp) -> torch.Tensor:
    """softmax(warp(logits)) in float64; untempered softmax in greedy mode (shown as p and q)."""
    logits = logits.double()
    return torch.softmax(warp(logits) if warp else logits, -1)


# --- verdicts ------------------------------------------------------------------------------------

@dataclass
class Verdict:
    path: list[int]                  # accepted tree nodes, root (node 0) first
    next_token: int                  # the target's own token after the path (recovered or bonus)
    rejection: dict | None = None    # sampling: see rejection() below
    stats: RowStats | None = None    # greedy: every row's RowStats where the verdict read them whole (row_stats.py)

    @property
    def accepted(self) -> int:
        return len(self.path) - 1

    def proposed(self, tree: DraftTree) -> list[int]:
        return [tree.tokens[n] for n in self.path[1:]] + [self.next_token]


def rejection(node: int, p: torch.Tensor, q: torch.Tensor, rejected: list[int], outcome: acceptance.Outcome,
              rule: str) -> dict:
    """The Verdict's record of a rejection at `node`; p, q (V,) the node's (warped) target and draft laws.

    rejected: the candidates turned down, in verification order ("draft" is the first, for old readers);
    residual (V,): the law the recovered token was drawn from (B = 1 row of the rule's Outcome);
    rule: in words, what that residual is (the panel shows it)."""
    return {"node": node, "draft": rejected[0], "rejected": rejected, "p": p, "q": q,
            "residual": outcome.residual[0], "recovered": int(outcome.token[0]), "rule": rule}


def chain_tree(root: int, drafts: list[int]) -> DraftTree:
    """A chain is a tree: node i + 1 is draft i, under node i."""
    return DraftTree([root] + drafts, list(range(-1, len(drafts))))


WHOLE_ROWS = 17     # up to this many rows (a plain step, a chain) a verdict reads them whole, once for the round


def greedy_rows(logits: torch.Tensor) -> tuple[list[int], RowStats | None]:
    """Each row's argmax, and the rows' RowStats where there are at most WHOLE_ROWS of them: the round's
    events and learning then read the rows no more (a big tree's rows: only their argmax, ~4 us a row)."""
    whole = len(logits) <= WHOLE_ROWS
    stats = row_stats(logits, sums=whole)
    return stats.indices[:, 0].tolist(), stats if whole else None


def greedy_verdict(tree: DraftTree, logits: torch.Tensor) -> Verdict:
    """logits (n, V) on the tree: the longest root path matching the target's argmax, then its argmax."""
    predicted, stats = greedy_rows(logits)
    path = greedy_accept(tree, predicted)
    return Verdict(path, predicted[path[-1]], stats=stats)


def verify_chain(target_logits: torch.Tensor, drafts: list[int], q: torch.Tensor | None, warp,
                 generator: torch.Generator) -> Verdict:
    """target_logits (n + 1, V) after root, x_1..x_n; q (n, V) the draft distributions x_i came from.

    Greedy (warp None): accept while x_i is the target's argmax, then take the argmax.
    Sampling (Leviathan et al.): accept x_i with prob min(1, p_i(x_i) / q_i(x_i)); at the first
    rejection draw the recovered token from norm(max(0, p_i - q_i)); if all pass, a bonus from p_{n+1}.
    """
    if warp is None:
        best, stats = greedy_rows(target_logits)
        n = next((i for i, x in enumerate(drafts) if x != best[i]), len(drafts))
        return Verdict(list(range(n + 1)), best[n], stats=stats)
    p = probabilities(target_logits, warp)
    for i, x in enumerate(drafts):
        outcome = acceptance.speculative_accept(p[i], q[i], torch.tensor([x]), generator)
        if int(outcome.index) < 0:
            return Verdict(list(range(i + 1)), int(outcome.token),
                           rejection(i, p[i], q[i], [x], outcome, "norm(max(0, p - q))"))
    return Verdict(list(range(len(drafts) + 1)), int(acceptance.sample(p[-1:], generator)))


def recursive_rejection_verdict(tree: DraftTree, logits: torch.Tensor, q_at: dict[int, torch.Tensor], warp,
                                generator: torch.Generator) -> Verdict:
    """Sampling over a tree whose siblings were drawn from q WITHOUT replacement (RSD, RSD-S, DySpec):
    recursive rejection sampling among a node's children, from the root down.
    logits (n, V) the target on the tree; q_at[i] (V,) the warped draft law node i's children came from."""
    p = probabilities(logits, warp)
    node = 0
    while True:
        children = tree.children(node)
        if not children:                                   # a leaf: the bonus comes from the target itself
            return Verdict(tree.path(node), int(acceptance.sample(p[node][None], generator)))
        candidates = torch.tensor([tree.tokens[c] for c in children])
        outcome = acceptance.recursive_rejection(p[node], q_at[node], candidates, generator)
        if int(outcome.index) < 0:
            return Verdict(tree.path(node), int(outcome.token),
                           rejection(node, p[node], q_at[node], candidates.tolist(), outcome,
                                     rrs_rule(len(children))))
        node = children[int(outcome.index)]


def rrs_rule(k: int) -> str:
    """What recursive rejection's recovered token is drawn from, after k rejected siblings."""
    if k == 1:
        return "norm(max(0, p - q))"
    return f"p after {k} recursive rejections: p_(i+1) = norm(max(0, p_i - q_i)), q_(i+1) = q_i without x_i"
