"""RASD: retrieval drafts fused with a draft-model tree by longest-prefix matching.

Two draft sources, one verification pass:
- the draft model grows a tree best-first by cumulative draft probability (DySpec's growth);
- prompt lookup retrieves continuations of the trailing n-gram from the context (several match
  positions, most recent first).
Each retrieved sequence is pruned where the draft model finds its first new token improbable
(only where the draft has a distribution for that spot), then grafted onto the deepest tree node
that shares its prefix, so shared prefixes are verified once. Every node remembers its origin
(model / retrieval / both), shown in the tree and counted per source. Greedy verification.
"""

from __future__ import annotations

import torch

from playground.events import StatsEvent

from ..base import Param
from .drafters import best_first_tree
from .loop import Draft, SpeculationLoop
from .tree import DraftTree


def retrieve(ids: list[int], max_ngram: int, length: int, paths: int) -> list[list[int]]:
    """Up to `paths` distinct continuations of the trailing n-gram (longest n first, most recent
    match first within an n), each at most `length` tokens."""
    found: list[list[int]] = []
    for n in range(min(max_ngram, len(ids) - 1), 0, -1):
        tail = ids[-n:]
        for start in range(len(ids) - n - 1, -1, -1):          # skip the tail itself
            if ids[start:start + n] == tail:
                cont = ids[start + n:start + n + length]
                if cont and cont not in found:
                    found.append(cont)
                    if len(found) == paths:
                        return found
    return found


def fuse(tree: DraftTree, origin: list[str], sequence: list[int]) -> int:
    """Walk `sequence` down from the root while a child already holds the next token (marking
    those nodes as shared), then attach the rest as a chain. Returns the graft node."""
    node, i = 0, 0
    while i < len(sequence):
        child = tree.child_with_token(node, sequence[i])
        if child is None:
            break
        if origin[child] == "model":
            origin[child] = "both"
        node, i = child, i + 1
    graft = node
    for token in sequence[i:]:
        node = tree.add(node, token)
        origin.append("retrieval")
    return graft


def graft_point(tree: DraftTree, sequence: list[int]) -> tuple[int, int]:
    """(deepest node matching a prefix of `sequence`, how many tokens matched)."""
    node, i = 0, 0
    while i < len(sequence):
        child = tree.child_with_token(node, sequence[i])
        if child is None:
            break
        node, i = child, i + 1
    return node, i


class RASD(SpeculationLoop):
    name = "rasd"
    title = "RASD (retrieval + draft tree)"
    summary = ("Prompt-lookup retrieval fused with a draft-model tree by longest-prefix matching, "
               "verified in one pass.")
    paper = "https://arxiv.org/abs/2503.03434"
    needs_draft = True
    tree_title = "RASD fused tree"
    tree_params = ("budget",)   # memory bound: Strategy.footprint
    params = (
        Param("budget", "int", 8, 1, 128, help="Draft-model nodes per round.", step=1),
        Param("width", "int", 4, 1, 32, help="Draft-model nodes added per draft pass.", step=1),
        Param("branching", "int", 3, 1, 16, help="Children considered per expanded draft node.", step=1),
        Param("max_depth", "int", 6, 1, 32, help="Deepest draft-model position.", step=1),
        Param("max_ngram", "int", 3, 1, 8, help="Longest trailing n-gram looked up in the context.", step=1),
        Param("retrieval_tokens", "int", 8, 1, 32, help="Tokens per retrieved continuation.", step=1),
        Param("retrieval_paths", "int", 3, 0, 16, help="Retrieved continuations fused per round.", step=1),
        Param("prune_below", "float", 0.0, 0.0, 1.0,
              help="Drop a retrieved continuation whose first new token has draft probability below this "
                   "(checked where the draft ran at the graft node).", step=0.01),
    )

    def prefill(self, s, cache):
        self.by_source = {"model": [0, 0], "retrieval": [0, 0], "both": [0, 0]}   # [drafted, accepted]
        return super().prefill(s, cache)

    def grow(self, s, root, room, warp, generator):
        p = self.p
        tree, q, _, draft_logits = best_first_tree(s, self.drafts, root, p["budget"], p["width"], p["branching"],
                                                   min(p["max_depth"], room))
        model_nodes = len(tree)
        origin = ["root"] + ["model"] * (model_nodes - 1)
        retrieved = retrieve(s.prompt_ids + s.output_ids, p["max_ngram"], min(p["retrieval_tokens"], room),
                             p["retrieval_paths"])
        for sequence in retrieved:
            node, matched = graft_point(tree, sequence)
            if matched < len(sequence) and node < len(draft_logits) and p["prune_below"] > 0:
                q_x = torch.softmax(draft_logits[node].double(), -1)[sequence[matched]]
                if float(q_x) < p["prune_below"]:
                    continue
            fuse(tree, origin, sequence)
        q = q + [None] * (len(tree) - model_nodes)                   # retrieved nodes have no draft q
        return Draft(tree, q=q, labels=origin, source=f"draft model + {len(retrieved)} retrieved", context=origin)

    def after_round(self, s, draft, logits, verdict, seconds, step):
        origin = draft.context
        for i in range(1, len(draft.tree)):
            self.by_source[origin[i]][0] += 1
        for i in verdict.path[1:]:
            self.by_source[origin[i]][1] += 1
        yield StatsEvent({f"{src} acceptance": acc / drafted
                          for src, (drafted, acc) in self.by_source.items() if drafted})
