"""SpecTr with k-sequential selection (K-SEQ; Sun et al. 2023).

The draft model samples k draft sequences of length L independently (i.i.d., with replacement);
sequences sharing a prefix share the trie's nodes, and the whole trie is verified in ONE
tree-attention pass. Then, depth by depth, the candidates are the next tokens of the sequences
that still agree with the accepted prefix (k' of them, repeats included): K-SEQ accepts the first
that passes U < p(x) / (rho* q(x)), rho* chosen so the output is exactly the target's law
(acceptance.kseq_accept). The sequences carrying the accepted token continue; if none passes, the
K-SEQ residual gives the round's final token; at the end of the drafts, a bonus from the target.

Greedy mode (temperature 0): the k sequences are sampled from the untempered draft (so they differ)
and the longest path the target's argmax agrees with is kept: the output equals plain greedy.
One draft pass per depth (drafters.DraftCache).
"""

from __future__ import annotations

import torch

from ..base import Param
from . import acceptance
from .loop import Draft, SpeculationLoop
from .tree import DraftTree
from .verify import Verdict, greedy_verdict, probabilities, rejection, sampling_params


def kseq_rule(k: int, rho: float) -> str:
    """What K-SEQ's recovered token is drawn from, in words."""
    if k == 1:
        return "norm(max(0, p - q))"                     # rho* = 1, c = 1: the standard residual
    return f"norm(max(0, p - min(q, p/rho) c)), the K-SEQ residual of {k} i.i.d. candidates (rho* = {rho:.3f})"


class SpecTr(SpeculationLoop):
    name = "spectr"
    title = "SpecTr (k drafts, K-SEQ selection)"
    summary = ("k independent draft sequences merged into a trie and verified in one pass; at each depth "
               "k-sequential selection picks a surviving candidate. Exact target distribution.")
    paper = "https://arxiv.org/abs/2310.15141"
    needs_draft = True
    tree_params = ("num_drafts", "draft_length")   # memory bound: Strategy.footprint
    params = (
        Param("num_drafts", "int", 4, 1, 16, help="k: independent draft sequences per round.", step=1),
        Param("draft_length", "int", 4, 1, 16, help="L: tokens per draft sequence.", step=1),
    ) + sampling_params()

    @property
    def tree_title(self) -> str:
        return f"SpecTr trie of {self.p['num_drafts']} drafts"

    def grow(self, s, root, room, warp, generator):
        """k i.i.d. sequences as a trie, one draft pass per depth; the context: every sequence's node
        path (root first)."""
        tree, q_at = DraftTree.rooted(root), {}
        sequences = [[0] for _ in range(self.p["num_drafts"])]
        for _ in range(min(self.p["draft_length"], room)):
            q_at.update(self.drafts.next_level(tree, warp))
            for seq in sequences:
                node = seq[-1]
                token = int(acceptance.sample(q_at[node][None], generator))
                child = tree.child_with_token(node, token)
                seq.append(child if child is not None else tree.add(node, token))
        return Draft(tree, q_at, context=sequences)

    def accept(self, draft, logits, warp, generator) -> Verdict:
        return self.verify(draft.tree, logits, draft.q_at, draft.context, warp, generator)

    @staticmethod
    def verify(tree: DraftTree, logits: torch.Tensor, q_at: dict[int, torch.Tensor], sequences: list[list[int]],
               warp, generator: torch.Generator) -> Verdict:
        """Greedy: longest argmax-matching path. Sampling: K-SEQ among the surviving sequences, depth by depth."""
        if warp is None:
            return greedy_verdict(tree, logits)
        p = probabilities(logits, warp)
        node, depth, alive = 0, 0, sequences
        while True:
            if depth + 1 >= len(alive[0]):                 # the drafts end here: bonus from the target
                return Verdict(tree.path(node), int(acceptance.sample(p[node][None], generator)))
            candidates = torch.tensor([tree.tokens[seq[depth + 1]] for seq in alive])
            rho = acceptance.kseq_rho(p[node], q_at[node], len(candidates))     # (1,), also shown
            outcome = acceptance.kseq_accept(p[node], q_at[node], candidates, generator, rho)
            token = int(outcome.token)
            if int(outcome.index) < 0:
                rejected = list(dict.fromkeys(candidates.tolist()))       # i.i.d. candidates may repeat
                return Verdict(tree.path(node), token, rejection(node, p[node], q_at[node], rejected, outcome,
                                                                 kseq_rule(len(candidates), float(rho))))
            alive = [seq for seq in alive if tree.tokens[seq[depth + 1]] == token]
            node, depth = alive[0][depth + 1], depth + 1
