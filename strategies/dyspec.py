"""DySpec: a draft tree grown greedily by cumulative draft probability under a node budget.

A draft token's probability under the draft model predicts how likely the target accepts it
(the paper's observation), so the tree is grown best-first: the next node added is always the
candidate with the highest product of draft probabilities along its path, until the budget is
spent. Candidates are expanded in batches of `width` per draft pass (one tree-attention pass of
the draft per batch), so a round costs about budget / width draft passes and ONE target pass.
Greedy verification: the longest path matching the target's argmax, plus the target's own token.

The draft keeps its own KV cache laid out like the target's (committed prefix minus the root,
then tree nodes in order); after a round it keeps the accepted path's rows, and accepted tokens
it never ran (leaves) are fed in front of the next round's root.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from .base import Param, Strategy
from .tree_attention import AcceptanceStats, DraftTree, draft_tree_forward, greedy_round, keep_path, verify_tree


@dataclass
class GrownTree:
    tree: DraftTree
    q: list[float]                 # draft probability of each node given its parent (root: 1)
    value: list[float]             # product of q along the root path
    fed: int                       # nodes 0..fed-1 went through the draft (their KV rows are in its cache)
    draft_logits: list[torch.Tensor] = field(default_factory=list)   # per fed node, the draft's next-token logits


def grow_draft_tree(session, root: int, lag: list[int], draft_cache, budget: int, width: int,
                    branching: int, max_depth: int) -> GrownTree:
    """Best-first growth by cumulative draft probability. The draft cache holds the committed
    prefix minus `lag` + root; the first pass feeds lag + root causally."""
    first, _ = session.draft_forward(lag + [root], draft_cache)
    grown = GrownTree(DraftTree.rooted(root), [1.0], [1.0], 1, [first[0]])
    heap: list[tuple[float, int, int, float]] = []              # (-value, parent, token, q)

    def push_children(node: int, logits: torch.Tensor) -> None:
        if grown.tree.depth(node) >= max_depth:
            return
        probs = torch.softmax(logits.double(), -1)
        top = probs.topk(branching)
        for q, token in zip(top.values.tolist(), top.indices.tolist()):
            heapq.heappush(heap, (-grown.value[node] * q, node, token, q))

    push_children(0, first[0])
    tree = grown.tree
    while heap and len(tree) - 1 < budget:
        batch = [heapq.heappop(heap) for _ in range(min(width, budget - (len(tree) - 1), len(heap)))]
        for neg_value, parent, token, q in batch:
            tree.add(parent, token)
            grown.q.append(q)
            grown.value.append(-neg_value)
        if len(tree) - 1 >= budget:
            break                                                 # the last batch needs no expansion
        logits = draft_tree_forward(session, tree, draft_cache, start=grown.fed)
        for offset, row in enumerate(logits):
            grown.draft_logits.append(row)
            push_children(grown.fed + offset, row)
        grown.fed = len(tree)
    return grown


def keep_draft_path(draft_cache, past_len: int, tree: DraftTree, fed: int, path: list[int]) -> list[int]:
    """Keep the draft's KV rows of the committed path's fed prefix; return the committed tokens
    the draft has not run yet (to feed in front of the next root)."""
    ran = [n for n in path if n < fed]                            # a prefix: indices grow along a path
    keep_path(draft_cache, past_len, ran)
    return [tree.tokens[n] for n in path[len(ran):]]


class DySpec(Strategy):
    name = "dyspec"
    title = "DySpec (dynamic draft tree)"
    summary = ("A draft model grows the tree best-first by cumulative draft probability under a node "
               "budget; the target verifies it in one pass. Lossless (greedy).")
    paper = "https://arxiv.org/abs/2410.11744"
    lossless = True
    needs_draft = True
    params = (
        Param("budget", "int", 12, 1, 128, help="Draft nodes per round (tree size without the root).", step=1),
        Param("width", "int", 4, 1, 32, help="Nodes added per draft pass (expansion batch).", step=1),
        Param("branching", "int", 4, 1, 16, help="Children considered per expanded node (draft top-k).", step=1),
        Param("max_depth", "int", 8, 1, 32, help="Deepest draft position.", step=1),
    )

    def decode(self, s):
        self.cache = cache = s.new_cache()                        # exposed for tests: committed minus the root
        self.draft_cache = draft_cache = DynamicCache(config=s.draft_model.config)
        logits = s.prefill(cache)
        root = int(logits.argmax())
        yield s.commit(root, logits)
        if s.is_eos(root) or not s.room():
            return
        lag, stats, step = list(s.prompt_ids), AcceptanceStats(), 0
        while root is not None:
            grown = grow_draft_tree(s, root, lag, draft_cache, self.p["budget"], self.p["width"],
                                    self.p["branching"], self.p["max_depth"])
            tree = grown.tree
            past_len = cache.get_seq_length()
            logits = verify_tree(s, tree, cache)
            labels = [f"path value={v:.3f}" for v in grown.value]
            path, root = yield from greedy_round(s, tree, logits, cache, past_len, step, stats,
                                                 source="draft model", scores=grown.q, labels=labels,
                                                 title="DySpec draft tree")
            lag = keep_draft_path(draft_cache, past_len, tree, grown.fed, path)
            step += 1
