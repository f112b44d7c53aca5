"""Recursive Speculative Decoding with Stochastic Beam Search drafts (RSD-S; Jeon et al. 2024).

RSD-C gives every node a fixed number of children; RSD-S keeps the W best *sequences* at every
depth, so likely branches get many children and unlikely ones are pruned early. The sequences are
drawn with Stochastic Beam Search (Kool et al. 2019): every prefix carries a Gumbel-perturbed
log-probability; a child's perturbed value is drawn conditioned on its parent's being the maximum
over its children ("top-down" Gumbels); the W largest values at each depth survive.

Why recursive rejection sampling stays exact: at one node, the children ordered by their
perturbed values are a sample without replacement from q (Gumbel-top-k), and which of them
survive is decided by their VALUES (against the other beams' values), which for Gumbels are
independent of WHICH token holds them. So a surviving next sibling is distributed as "q without
the earlier ones", the law RRS assumes (verify.py), however many survive.

Greedy mode (temperature 0): plain beam search of the draft (top-W by path log-probability), and
the longest path the target's argmax agrees with; the output equals greedy.
"""

from __future__ import annotations

import torch

from ..base import Param
from .loop import Draft
from .rsd import RecursiveSpeculative
from .tree import DraftTree
from .verify import sampling_params


def conditioned_gumbels(log_probs: torch.Tensor, parent_value: float, generator: torch.Generator) -> torch.Tensor:
    """Perturbed values of a node's children: Gumbel(log_probs), shifted so their maximum equals
    the parent's value (Kool et al. 2019, eq. 23, in the numerically stable form)."""
    uniform = torch.rand(log_probs.shape, generator=generator, dtype=torch.float64).clamp_(min=1e-300)
    g = log_probs - (-uniform.log()).log()
    z = g.max()
    v = parent_value - g + torch.log(-torch.expm1(g - z))      # log1mexp(z - g); the maximum gets -inf
    return parent_value - v.clamp(min=0) - torch.log1p(torch.exp(-v.abs()))


class StochasticBeamRSD(RecursiveSpeculative):
    name = "rsd_s"
    title = "Recursive speculative decoding (RSD-S)"
    summary = ("A draft tree of the W best sequences per depth, sampled by stochastic beam search, verified in "
               "one tree-attention pass with recursive rejection sampling; exact target distribution, greedy "
               "(beam search drafts) at temperature 0.")
    tree_params = ("beam_width", "draft_depth")   # memory bound: Strategy.footprint
    params = (Param("beam_width", "int", 3, 1, 16, help="Sequences kept at every draft depth (W).", step=1),
              Param("draft_depth", "int", 3, 1, 8, help="Draft depth (L).", step=1)) + sampling_params()

    def grow(self, s, root, room, warp, generator):
        """Level by level: each surviving prefix proposes its children (sampling: top-down Gumbels; greedy:
        path log-probabilities) and the W largest over all prefixes survive, added in decreasing
        value, so each node's children appear in without-replacement order."""
        tree, q_at = DraftTree.rooted(root), {}
        beams = {0: (0.0, 0.0)}                          # node -> (perturbed value, path log-probability)
        width = self.p["beam_width"]
        for _ in range(min(self.p["draft_depth"], room)):
            level = self.drafts.next_level(tree, warp)
            q_at.update(level)
            candidates = []                              # (value, node, token, path log-probability)
            for node, (value, path_logp) in beams.items():
                if s.is_eos(tree.tokens[node]):
                    continue                             # nothing after EOS is ever committed
                log_q = level[node].double().log()
                scores = path_logp + log_q
                if warp is not None:
                    scores = conditioned_gumbels(scores, value, generator)
                top = torch.topk(scores, min(width, int((log_q > float("-inf")).sum())))
                candidates += [(v, node, t, path_logp + float(log_q[t]))
                               for v, t in zip(top.values.tolist(), top.indices.tolist())]
            kept = sorted(candidates, key=lambda c: -c[0])[:width]
            if not kept:
                break
            beams = {tree.add(node, token): (v, logp) for v, node, token, logp in kept}
        return Draft(tree, q_at)
