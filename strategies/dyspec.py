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

The draft keeps its own KV cache laid out like the target's (committed prefix minus the root,
then tree nodes in order); after a round it keeps the accepted path's rows, and accepted tokens
it never ran (leaves) are fed in front of the next round's root.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache

from . import acceptance
from .base import Param, Strategy
from .rsd import RecursiveSpeculative
from .speculative import (check_sampling, committed_count, make_warp, prefill_all_but_last, probabilities,
                          round_events, sampling_params)
from .tree_attention import (AcceptanceStats, DraftTree, commit_first, draft_tree_forward, greedy_round, keep_path,
                             verify_tree)


@dataclass
class GrownTree:
    tree: DraftTree
    q: list[float]                 # draft probability of each node given its parent (root: 1)
    value: list[float]             # product of q along the root path
    fed: int                       # nodes 0..fed-1 went through the draft (their KV rows are in its cache)
    draft_logits: list[torch.Tensor] = field(default_factory=list)   # per fed node, the draft's next-token logits
    q_at: dict[int, torch.Tensor] = field(default_factory=dict)      # sampling: per fed node, the warped draft
                                                                     # distribution its children were drawn from


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


class DySpec(Strategy):
    name = "dyspec"
    title = "DySpec (dynamic draft tree)"
    summary = ("A draft model grows the tree best-first by cumulative draft probability under a node budget; the "
               "target verifies it in one pass. Greedy at temperature 0; above it, children are sampled without "
               "replacement and verified by recursive rejection sampling (exact target distribution).")
    paper = "https://arxiv.org/abs/2410.11744"
    lossless = True
    needs_draft = True
    params = (
        Param("budget", "int", 12, 1, 128, help="Draft nodes per round (tree size without the root).", step=1),
        Param("width", "int", 4, 1, 32, help="Nodes added per draft pass (expansion batch).", step=1),
        Param("branching", "int", 4, 1, 16,
              help="Most children per node (greedy: the draft's top-k; sampling: draws without replacement).", step=1),
        Param("max_depth", "int", 8, 1, 32, help="Deepest draft position.", step=1),
    ) + sampling_params()

    def check(self):
        check_sampling(self.p)

    def decode(self, s):
        warp = make_warp(self.p["temperature"], self.p["top_k"], self.p["top_p"])
        yield from (self.decode_greedy(s) if warp is None else self.decode_sampling(s, warp))

    def decode_greedy(self, s):
        self.cache = cache = s.new_cache()                        # exposed for tests: committed minus the root
        self.draft_cache = draft_cache = DynamicCache(config=s.draft_model.config)
        root = yield from commit_first(s, s.prefill(cache))
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

    def decode_sampling(self, s, warp):
        p = self.p
        draft_gen = s.spawn_generator()                           # draft draws never shift the target's
        self.cache = cache = s.new_cache()
        self.draft_cache = draft_cache = DynamicCache(config=s.draft_model.config)
        root = prefill_all_but_last(s, cache)                     # the first round speculates too
        lag, stats, step = list(s.prompt_ids[:-1]), AcceptanceStats(), 0

        def expand(tree: DraftTree, start: int) -> list[torch.Tensor]:
            return [probabilities(row, warp) for row in draft_tree_forward(s, tree, draft_cache, start=start)]

        while True:
            first, _ = s.draft_forward(lag + [root], draft_cache)
            room = s.max_new_tokens - len(s.output_ids) - 1       # drafts deeper than this are never committed
            grown = sample_draft_tree(root, probabilities(first[0], warp), expand, p["budget"], p["width"],
                                      p["branching"], min(p["max_depth"], room), draft_gen, s.is_eos)
            tree = grown.tree
            past_len = cache.get_seq_length()
            logits = verify_tree(s, tree, cache)
            verdict = RecursiveSpeculative.verify(tree, logits, grown.q_at, warp, s.generator)
            path = verdict.path[:committed_count(s, tree, verdict)]
            keep_path(cache, past_len, path)
            lag = keep_draft_path(draft_cache, past_len, tree, grown.fed, path)
            events = round_events(s, tree, logits, grown.q_at, verdict, step, stats, warp, "draft model",
                                  "DySpec draft tree")
            tree_event = next(events)
            for node in tree_event.nodes[1:len(tree)]:            # drafts (not the root, not the target's token)
                node.label += f" path value={grown.value[node.id]:.3f}"
            yield tree_event
            if (yield from events):
                return
            root, step = s.output_ids[-1], step + 1
