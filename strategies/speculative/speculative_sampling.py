"""Speculative sampling (Leviathan et al. 2023; Chen et al. 2023) with a separate draft model.

Each round the draft proposes gamma tokens one by one; the target scores all gamma + 1 positions
in ONE forward pass; the drafts are accepted left to right and the first rejection is replaced by
the target's own choice (greedy: its argmax; sampling: a draw from the residual max(0, p - q)).
If every draft survives, the target's distribution after the last one gives a bonus token.

Greedy mode (temperature 0) equals plain greedy token for token. Sampling mode applies the same
warper chain to BOTH p and q before the ratio, so the output is distributed exactly as plain
sampling with those settings.
"""

from __future__ import annotations

import torch

from ..base import Param
from .drafters import draft_chain
from .loop import Draft, SpeculationLoop
from .verify import sampling_params, verify_chain


class SpeculativeSampling(SpeculationLoop):
    name = "speculative"
    title = "Speculative sampling (draft model)"
    summary = ("A small draft model proposes gamma tokens; the target checks them all in one pass and keeps "
               "the longest acceptable prefix. Greedy at temperature 0, exact sampling above it.")
    paper = "https://arxiv.org/abs/2211.17192"
    needs_draft = True
    tree_title = "Draft chain"
    tree_params = ("gamma",)   # memory bound: Strategy.footprint
    params = (
        Param("gamma", "int", 4, 1, 16, help="Draft tokens proposed per round (the most, when adaptive).", step=1),
        Param("adaptive", "bool", True,
              help="Adapt the draft length to acceptance (transformers' heuristic schedule): +2 after a fully "
                   "accepted round, -1 after a rejection, between 1 and gamma."),
    ) + sampling_params()

    def prefill(self, s, cache):
        self.length = self.p["gamma"]
        return super().prefill(s, cache)

    def grow(self, s, root, room, warp, generator):
        tree, q_at = draft_chain(s, self.drafts, root, min(self.length, room), warp, generator)
        return Draft(tree, q_at)

    def accept(self, draft, logits, warp, generator):
        tree, q_at = draft.tree, draft.q_at
        q = torch.stack([q_at[i] for i in range(len(tree) - 1)]) if len(tree) > 1 else None
        return verify_chain(logits, tree.tokens[1:], q, warp, generator)

    def after_round(self, s, draft, logits, verdict, seconds, step):
        if self.p["adaptive"]:                       # depends on past rounds only, so still exact
            drafted = len(draft.tree) - 1
            self.length = min(self.length + 2, self.p["gamma"]) if verdict.accepted == drafted \
                else max(1, self.length - 1)
        return iter(())
