"""Recursive Speculative Decoding, constant branching (RSD-C; Jeon et al. 2024).

The draft model grows a token tree level by level: every node of level i gets b_i children drawn
from the draft WITHOUT replacement (Gumbel-top-k), so siblings are always distinct. The target
verifies the whole tree in ONE tree-attention pass. Then, from the root down, recursive rejection
sampling picks among a node's children (verify.recursive_rejection_verdict): a rejected sibling
turns the target into the residual and the draft into "q without that token", exactly the law
the next sibling was drawn from, so the output is distributed as the target. If every child
fails, the last residual gives the recovered token; at a leaf, the target gives a bonus token.

Greedy mode (temperature 0): children are the draft's top-b tokens and the longest path the
target's argmax agrees with is kept, so the output equals plain greedy.
"""

from __future__ import annotations

import torch

from ..base import Param
from . import acceptance
from .loop import Draft, SpeculationLoop
from .tree import DraftTree
from .verify import sampling_params

BRANCHINGS = ("3,2,1", "2,2,2", "2,2,1,1", "4,2", "3,3", "4,1,1,1", "2,1,1,1,1", "1,1,1,1")


class RecursiveSpeculative(SpeculationLoop):
    name = "rsd"
    title = "Recursive speculative decoding (RSD-C)"
    summary = ("A draft tree whose siblings are sampled without replacement, verified in one tree-attention pass "
               "with recursive rejection sampling; exact target distribution, greedy at temperature 0.")
    paper = "https://arxiv.org/abs/2402.14160"
    needs_draft = True
    params = (Param("branching", "choice", "3,2,1", choices=BRANCHINGS,
                    help="Children per node at each depth (the tree's depth is the list's length)."),
              ) + sampling_params()
    tree_title = "RSD draft tree"

    def grow(self, s, root, room, warp, generator):
        """Level by level: b_i distinct children per node (top-b in greedy mode, Gumbel-top-b otherwise)."""
        widths = [int(b) for b in self.p["branching"].split(",")][:room]
        tree, q_at = DraftTree.rooted(root), {}
        for width in widths:
            level = self.drafts.next_level(tree, warp)
            q_at.update(level)
            for node, q in level.items():
                if s.is_eos(tree.tokens[node]):
                    continue                               # nothing after EOS is ever committed
                if warp is None:                           # greedy: the draft's best guesses
                    children = torch.topk(q, width).indices
                else:                                      # sampling: distinct, in sampling order
                    children = acceptance.gumbel_top_k(q, width, generator)
                for token in children.tolist():
                    tree.add(node, token)
        return Draft(tree, q_at)
