"""Tree attention: verify a whole draft tree in ONE forward pass on top of the KV cache.

Shared machinery of the speculative family: every method's draft, a chain included, is a DraftTree.
The recipe (ALGORITHMS.md section 0, checked on transformers 5.24):

- the cache holds the committed prefix *minus* the root: node 0 of a tree is the last committed
  token, not yet run through the model;
- every node attends to the cached prefix, its ancestors and itself: an additive float mask,
  0 = allowed, finfo(dtype).min = blocked (a bool mask is wrong under eager attention);
- a node's position is past_len + depth, so its logits (and its KV rows) are exactly those of a
  sequential forward along its root path.

After a round, `keep_path` keeps the KV rows of the accepted root path and drops the rest, so the
cache again holds "committed minus the pending root" without re-running anything.

Typical round (greedy):

    tree = DraftTree.rooted(root)                 # then tree.add(parent, token) ...
    past_len = cache.get_seq_length()
    logits = verify_tree(session, tree, cache)    # (n, V); cache now past_len + n
    path = greedy_accept(tree, logits)            # [0, a1, ..., ak]
    bonus = int(logits[path[-1]].argmax())
    keep_path(cache, past_len, path)              # cache: past_len + k + 1; bonus is the next root
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class DraftTree:
    """A token tree in topological order. Node 0 is the root (the last committed token, not yet
    in the cache); parents[0] == -1 and parents[i] < i for every other node."""

    tokens: list[int]
    parents: list[int]
    depths: list[int] = field(default_factory=list)

    def __post_init__(self):
        assert self.parents and self.parents[0] == -1, "node 0 must be the root"
        assert all(0 <= p < i for i, p in enumerate(self.parents) if i), "parents must come first"
        self.depths = [0]
        for p in self.parents[1:]:
            self.depths.append(self.depths[p] + 1)

    @classmethod
    def rooted(cls, root_token: int) -> "DraftTree":
        return cls([int(root_token)], [-1])

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, parent: int, token: int) -> int:
        """Append a child of `parent`; returns its index."""
        assert 0 <= parent < len(self.tokens)
        self.tokens.append(int(token))
        self.parents.append(parent)
        self.depths.append(self.depths[parent] + 1)
        return len(self.tokens) - 1

    def depth(self, i: int) -> int:
        return self.depths[i]

    def children(self, i: int) -> list[int]:
        return [j for j in range(i + 1, len(self.parents)) if self.parents[j] == i]

    def child_with_token(self, i: int, token: int) -> int | None:
        for j in range(i + 1, len(self.parents)):
            if self.parents[j] == i and self.tokens[j] == token:
                return j
        return None

    def path(self, i: int) -> list[int]:
        """Node indices from the root down to i."""
        out = []
        while i >= 0:
            out.append(i)
            i = self.parents[i]
        return out[::-1]

    def max_depth(self) -> int:
        return max(self.depths)


def tree_mask(tree: DraftTree, past_len: int, dtype: torch.dtype, start: int = 0) -> torch.Tensor:
    """Additive mask (1, 1, n - start, past_len + n) for feeding nodes start..n-1 when the cache
    already holds past_len + start entries (the prefix, then nodes 0..start-1 in order)."""
    n = len(tree)
    blocked = torch.finfo(dtype).min
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):                                   # ancestors and self, row by row
        j = i
        while j >= 0:
            allowed[i, j] = True
            j = tree.parents[j]
    mask = torch.full((n - start, past_len + n), blocked, dtype=dtype)
    mask[:, :past_len] = 0.0                             # the whole cached prefix is visible
    mask[:, past_len:].masked_fill_(allowed[start:], 0.0)
    return mask[None, None]


def verify_tree(session, tree: DraftTree, cache, start: int = 0) -> torch.Tensor:
    """ONE counted target forward of every node on top of `cache` (committed prefix minus the root).
    Returns logits (n, V): row i is the target's next-token distribution after node i's root path.
    Afterwards the cache holds past_len + n entries. With start > 0 only nodes start..n-1 are fed
    (the cache must then already hold past_len + start) and their rows are returned."""
    return _tree_forward(session.forward, _dtype(session.model), tree, cache, start)


def verify_after_root(session, tree: DraftTree, cache, root_logits: torch.Tensor) -> torch.Tensor:
    """verify_tree for a round whose root already ran (the cache holds it; root_logits (V,) the target
    after it, from the prompt pass): only the drafts are fed, in one pass, and none when there are none."""
    if len(tree) == 1:
        return root_logits[None]
    return torch.cat([root_logits[None], verify_tree(session, tree, cache, start=1)])


def draft_tree_forward(session, tree: DraftTree, cache, start: int = 0) -> torch.Tensor:
    """The same pass through the draft model (counted as a draft pass), on the draft's own cache.
    Growing a tree level by level: feed the new nodes with start = number of nodes already fed."""
    return _tree_forward(session.draft_forward, _dtype(session.draft_model), tree, cache, start)


def _tree_forward(forward: Callable, dtype: torch.dtype, tree: DraftTree, cache, start: int) -> torch.Tensor:
    if len(tree) - start == 1 and tree.depths[start] == start:
        # One node on its own root path (a plain step, or the next node of a chain): the causal pass
        # plain decoding makes, without building a mask and positions for it (a plain round then
        # costs what a greedy step costs).
        logits, _ = forward([tree.tokens[start]], cache)
        return logits
    past_len = cache.get_seq_length() - start
    ids = torch.tensor([tree.tokens[start:]], dtype=torch.long)
    positions = torch.tensor([[past_len + d for d in tree.depths[start:]]], dtype=torch.long)
    logits, _ = forward(ids, cache, last_only=False, attention_mask=tree_mask(tree, past_len, dtype, start),
                        position_ids=positions)
    return logits[0]


def _dtype(model) -> torch.dtype:
    """The mask must be in the model's compute dtype."""
    return next(model.parameters()).dtype


def keep_prefix(cache, length: int) -> None:
    """Crop the cache back to `length` tokens (transformers 5.x crops by a negative count)."""
    n = cache.get_seq_length() - length
    if n > 0:
        cache.crop(-n)


def keep_path(cache, past_len: int, path: list[int]) -> None:
    """Keep the prefix plus the KV rows of tree nodes `path` (increasing indices, e.g. an accepted
    root path), in that order; drop every other tree row. A node's rows were computed at position
    past_len + depth, which is where they land, so they equal a sequential run's rows."""
    if path == list(range(len(path))):                  # a prefix of the fed nodes (a chain, a plain step): in place
        keep_prefix(cache, past_len + len(path))
        return
    with torch.inference_mode():                         # the cached tensors are inference tensors
        for layer in cache.layers:
            if not getattr(layer, "is_initialized", True) or layer.keys is None or layer.keys.numel() == 0:
                continue
            for slot, node in enumerate(path):           # node >= slot, so no source is overwritten early
                if node != slot:
                    layer.keys[..., past_len + slot, :] = layer.keys[..., past_len + node, :]
                    layer.values[..., past_len + slot, :] = layer.values[..., past_len + node, :]
    keep_prefix(cache, past_len + len(path))


def greedy_accept(tree: DraftTree, logits: torch.Tensor | list[int]) -> list[int]:
    """Longest root path whose every token is the argmax of its parent's logits: [0, a1, ..., ak].
    logits (n, V), or the argmax of each row already taken (a list of n tokens)."""
    predicted = logits if isinstance(logits, list) else logits.argmax(-1).tolist()
    path = [0]
    while True:
        child = tree.child_with_token(path[-1], predicted[path[-1]])
        if child is None:
            return path
        path.append(child)
