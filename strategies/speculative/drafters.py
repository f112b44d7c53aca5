"""The draft model's side of a round: its KV cache, and drafting a chain from it.

DraftCache is the one protocol every draft-model method uses. The draft's cache is laid out as the
target's: the committed text minus the root, then this round's tree nodes in the order they were
fed. Committed tokens the draft has not run yet (the prompt at first; later, accepted leaves it
never fed) wait in `lag` and go in front of the next root, in that round's first draft pass, so a
round costs no extra pass to catch up.
"""

from __future__ import annotations

import heapq

import torch
from transformers import DynamicCache

from . import acceptance
from .tree import DraftTree, draft_tree_forward, keep_path
from .verify import probabilities


class DraftCache:
    def __init__(self, session, lag: list[int]):
        self.session = session
        self.cache = DynamicCache(config=session.draft_model.config)
        self.lag = list(lag)           # committed tokens not yet in the cache, oldest first
        self.fed = 0                   # tree nodes 0..fed-1 are in the cache this round
        self.past_len = 0              # cache length before the round's root

    def start(self, root: int) -> torch.Tensor:
        """Feed lag + root (one draft pass); returns the draft's logits after the root (V,)."""
        logits, _ = self.session.draft_forward(self.lag + [root], self.cache)
        self.past_len = self.cache.get_seq_length() - 1
        self.lag, self.fed = [], 1
        return logits[0]

    def extend(self, tree: DraftTree) -> torch.Tensor:
        """Feed the nodes added since the last pass (one tree-attention draft pass); their logits (m, V)."""
        logits = draft_tree_forward(self.session, tree, self.cache, start=self.fed)
        self.fed = len(tree)
        return logits

    def next_level(self, tree: DraftTree, warp) -> dict[int, torch.Tensor]:
        """Run the draft on the nodes not fed yet (a round's first level is the root alone); node -> its
        (warped) draft law."""
        first = self.fed
        rows = self.start(tree.tokens[0])[None] if first == 0 else self.extend(tree)
        return {first + i: probabilities(row, warp) for i, row in enumerate(rows)}

    def keep(self, tree: DraftTree, path: list[int]) -> None:
        """After the round: keep the rows of the committed path (root first) the draft ran; the rest
        of the path waits in `lag`. Indices grow along a path, so what ran is a prefix of it."""
        ran = [n for n in path if n < self.fed]
        keep_path(self.cache, self.past_len, ran)
        self.lag = [tree.tokens[n] for n in path[len(ran):]]
        self.fed = 0


def draft_chain(session, drafts: DraftCache, root: int, length: int, warp, generator: torch.Generator):
    """Up to `length` draft tokens, one draft pass each (the last token is never fed: nothing is drawn
    after it). Returns the chain and the (warped) draft law each token was drawn from, per parent node."""
    tree, q_at = DraftTree.rooted(root), {}
    logits = drafts.start(root)[None]
    for _ in range(length):
        node = len(tree) - 1
        q_at[node] = probabilities(logits[-1], warp)
        token = int(q_at[node].argmax()) if warp is None else int(acceptance.sample(q_at[node][None], generator))
        tree.add(node, token)
        if session.is_eos(token) or len(tree) - 1 == length:   # nothing after EOS can be committed
            break
        logits = drafts.extend(tree)
    return tree, q_at


def best_first_tree(session, drafts: DraftCache, root: int, budget: int, width: int, branching: int,
                    max_depth: int):
    """DySpec's greedy growth (also RASD's draft-model part): the next node added is always the
    candidate with the highest product of draft probabilities along its path, `width` nodes per draft
    pass, until `budget` nodes. Returns (tree, q per node, path value per node, draft logits per fed node)."""
    tree, q, value = DraftTree.rooted(root), [1.0], [1.0]
    draft_logits = [drafts.start(root)]
    heap: list[tuple[float, int, int, float]] = []              # (-value, parent, token, q)

    def push_children(node: int, logits: torch.Tensor) -> None:
        if tree.depth(node) >= max_depth or session.is_eos(tree.tokens[node]):
            return
        top = torch.softmax(logits.double(), -1).topk(branching)
        for q_x, token in zip(top.values.tolist(), top.indices.tolist()):
            heapq.heappush(heap, (-value[node] * q_x, node, token, q_x))

    push_children(0, draft_logits[0])
    while heap and len(tree) - 1 < budget:
        for neg_value, parent, token, q_x in [heapq.heappop(heap) for _ in range(min(width, budget - (len(tree) - 1),
                                                                                    len(heap)))]:
            tree.add(parent, token)
            q.append(q_x)
            value.append(-neg_value)
        if len(tree) - 1 >= budget:
            break                                                 # the last batch needs no expansion
        start = drafts.fed
        for offset, row in enumerate(drafts.extend(tree)):
            draft_logits.append(row)
            push_children(start + offset, row)
    return tree, q, value, draft_logits
