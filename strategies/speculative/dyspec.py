"""DySpec: a draft tree grown greedily by cumulative draft probability under a node budget.

A draft token's probability under the draft model predicts how likely the target accepts it
(the paper's observation), so the tree is grown best-first: the next node added is always the
candidate with the highest product of draft probabilities along its path, until the budget is
spent. Candidates are expanded in batches of `width` per draft pass (one tree-attention pass of
the draft per batch), so a round costs about budget / width draft passes and ONE target pass.

Greedy mode (temperature 0): candidates are each node's top-`branching` draft tokens; the longest
path matching the target's argmax is kept, plus the target's own token, so the output equals greedy.

Sampling mode (temperature > 0): a node's children are drawn from the (warped) draft WITHOUT
replacement, one at a time, and verified by recursive rejection sampling as in RSD (rsd.py), so
the output follows the target's warped distribution. Best-first growth then ranks *slots* ("the
next draw at node n") by an estimate made before the draw; see sample_draft_tree for why.

The greedy growth itself lives in drafters.best_first_tree (RASD grows its draft-model part the
same way); this file adds the sampled growth and says which to use.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..base import Param
from . import acceptance
from .drafters import best_first_tree
from .loop import Draft, SpeculationLoop
from .tree import DraftTree
from .verify import probabilities, sampling_params


@dataclass
class GrownTree:
    tree: DraftTree
    q: list[float]                 # draft probability of each node given its parent (root: 1)
    value: list[float]             # product of q along the root path
    fed: int                       # nodes 0..fed-1 went through the draft
    q_at: dict[int, torch.Tensor] = field(default_factory=dict)      # per fed node, the warped draft
                                                                     # distribution its children were drawn from


def sample_draft_tree(root: int, root_q: torch.Tensor, expand: Callable[[DraftTree, int], list[torch.Tensor]],
                      budget: int, width: int, branching: int, max_depth: int, generator: torch.Generator,
                      is_eos: Callable[[int], bool] = lambda token: False) -> GrownTree:
    """Best-first growth with sampled children (sampling mode). root_q: the draft's warped
    distribution after the root; expand(tree, start) runs the draft on nodes start.. (one pass) and
    returns their warped distributions.

    The heap holds slots, "the next child of node n", each drawn only when popped: from q_n without
    n's earlier children (sequential sampling without replacement), and always added, whatever its
    probability. A slot's priority is value(n) * E[q_n(x)] for x from that residual, known BEFORE
    the draw. This is what keeps recursive rejection sampling exact: whether n gets a k-th child is
    decided from earlier draws only, so when it exists it is distributed as "q_n without the first
    k-1", the draft law RRS assumes. Ranking a token already drawn by its own q instead (the greedy
    rule) admits high-q draws more often than q draws them, and biases the output toward them."""
    tree = DraftTree.rooted(root)
    grown = GrownTree(tree, [1.0], [1.0], 1)
    left: dict[int, torch.Tensor] = {}             # node -> q_n with its drawn children zeroed
    heap: list[tuple[float, int]] = []             # (-priority, node): the next draw at node

    def push_slot(node: int) -> None:
        rest, mass = left[node], float(left[node].sum())
        if len(tree.children(node)) < branching and mass > acceptance.RESIDUAL_EPS:
            heapq.heappush(heap, (-grown.value[node] * float(rest @ grown.q_at[node]) / mass, node))

    def open_node(node: int, q: torch.Tensor) -> None:
        grown.q_at[node], left[node] = q, q.clone()
        if tree.depth(node) < max_depth and not is_eos(tree.tokens[node]):   # nothing after EOS is committed
            push_slot(node)

    open_node(0, root_q)
    while heap and len(tree) - 1 < budget:
        for _ in range(min(width, budget - (len(tree) - 1))):
            if not heap:
                break
            _, parent = heapq.heappop(heap)
            token = int(acceptance.sample(left[parent][None], generator))
            left[parent][token] = 0.0
            q = float(grown.q_at[parent][token])
            tree.add(parent, token)
            grown.q.append(q)
            grown.value.append(grown.value[parent] * q)
            push_slot(parent)                      # its next sibling, ranked before it is drawn
        if len(tree) - 1 >= budget:
            break                                  # the last batch needs no expansion
        for offset, q in enumerate(expand(tree, grown.fed)):
            open_node(grown.fed + offset, q)
        grown.fed = len(tree)
    return grown


class DySpec(SpeculationLoop):
    name = "dyspec"
    title = "DySpec (dynamic draft tree)"
    summary = ("A draft model grows the tree best-first by cumulative draft probability under a node budget; the "
               "target verifies it in one pass. Greedy at temperature 0; above it, children are sampled without "
               "replacement and verified by recursive rejection sampling (exact target distribution).")
    paper = "https://arxiv.org/abs/2410.11744"
    needs_draft = True
    tree_title = "DySpec draft tree"
    tree_params = ("budget",)   # memory bound: Strategy.footprint
    params = (
        Param("budget", "int", 12, 1, 128, help="Draft nodes per round (tree size without the root).", step=1),
        Param("width", "int", 4, 1, 32, help="Nodes added per draft pass (expansion batch).", step=1),
        Param("branching", "int", 4, 1, 16,
              help="Most children per node (greedy: the draft's top-k; sampling: draws without replacement).", step=1),
        Param("max_depth", "int", 8, 1, 32, help="Deepest draft position.", step=1),
    ) + sampling_params()

    def grow(self, s, root, room, warp, generator):
        p = self.p
        depth = min(p["max_depth"], room)                    # drafts deeper than room are never committed
        if warp is None:
            tree, q, value, _ = best_first_tree(s, self.drafts, root, p["budget"], p["width"], p["branching"], depth)
            return Draft(tree, q=q, labels=[f"path value={v:.3f}" for v in value])
        root_q = probabilities(self.drafts.start(root), warp)

        def expand(tree: DraftTree, start: int) -> list[torch.Tensor]:
            return [probabilities(row, warp) for row in self.drafts.extend(tree)]

        grown = sample_draft_tree(root, root_q, expand, p["budget"], p["width"], p["branching"], depth,
                                  generator, s.is_eos)
        return Draft(grown.tree, grown.q_at, labels=[f"path value={v:.3f}" for v in grown.value])
