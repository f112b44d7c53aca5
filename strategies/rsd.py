"""Recursive Speculative Decoding, constant branching (RSD-C; Jeon et al. 2024).

The draft model grows a token tree level by level: every node of level i gets b_i children drawn
from the draft WITHOUT replacement (Gumbel-top-k), so siblings are always distinct. The target
verifies the whole tree in ONE tree-attention pass (tree_attention.py). Then, from the root down,
recursive rejection sampling picks among a node's children (acceptance.recursive_rejection): a
rejected sibling turns the target into the residual and the draft into "q without that token",
exactly the law the next sibling was drawn from, so the output is distributed as the target.
If every child fails, the last residual gives the round's final token; at a leaf, the target's
own distribution gives a bonus token.

Greedy mode (temperature 0): children are the draft's top-b tokens and the longest path the
target's argmax agrees with is kept, so the output equals plain greedy.

Draft cache: like the target's, it holds the committed text minus the root. Drafting feeds each new
level on top of it (the last level's leaves are never fed: nothing is drawn below them); after the
round the accepted path's rows are kept (keep_path) and any committed token the draft has not seen
is fed before the next round (sync_draft_cache).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from . import acceptance
from .base import Param, Strategy
from .speculative import (Verdict, check_sampling, committed_count, make_warp, prefill_all_but_last, probabilities,
                          round_events, sampling_params)
from .tree_attention import AcceptanceStats, DraftTree, draft_tree_forward, greedy_accept, keep_path, verify_tree

BRANCHINGS = ("3,2,1", "2,2,2", "2,2,1,1", "4,2", "3,3", "4,1,1,1", "2,1,1,1,1", "1,1,1,1")


# --- draft cache for tree methods ---------------------------------------------------------------

def prefill_draft(session) -> DynamicCache:
    """A draft cache holding the prompt minus its last token (the first root)."""
    cache = DynamicCache(config=session.draft_model.config)
    if len(session.prompt_ids) > 1:
        session.draft_forward(session.prompt_ids[:-1], cache)
    return cache


def sync_draft_cache(session, cache, context: list[int]) -> None:
    """Feed the draft any committed token it lacks, so it holds context minus the root again."""
    missing = context[cache.get_seq_length():-1]
    if missing:
        session.draft_forward(missing, cache)


def roll_back(cache, draft_cache, past_len: int, path: list[int], fed: int) -> None:
    """Keep the committed part of the accepted path in both caches (the draft saw only `fed` nodes)."""
    keep_path(cache, past_len, path)
    keep_path(draft_cache, past_len, [n for n in path if n < fed])


def feed_level(session, tree: DraftTree, cache, fed: int, warp) -> tuple[dict[int, torch.Tensor], int]:
    """Run the draft on nodes fed.. (one pass); their draft distributions and the new fed count."""
    logits = draft_tree_forward(session, tree, cache, start=fed)
    return {fed + i: probabilities(row, warp) for i, row in enumerate(logits)}, len(tree)


# --- the round loop shared by the sampled draft-tree methods (RSD-C, RSD-S, SpecTr) -----------------

class SampledTreeSpeculation(Strategy):
    """One round: sync the draft cache, grow a tree (`grow`), verify it in one target pass, choose
    what to commit (`accept`), keep the accepted rows in both caches, emit the round's events.
    Subclasses say how the tree is drawn and how its candidates are judged."""

    lossless = True
    needs_draft = True
    tree_title = "draft tree"

    def check(self):
        check_sampling(self.p)

    def grow(self, s, draft_cache, root: int, room: int, warp, generator):
        """(tree, draft distribution per expanded node, fed count, anything `accept` needs); room:
        the deepest draft position that can still be committed."""
        raise NotImplementedError

    def accept(self, tree: DraftTree, logits: torch.Tensor, q_at: dict[int, torch.Tensor], grown_with,
               warp, generator: torch.Generator) -> Verdict:
        raise NotImplementedError

    def decode(self, s):
        warp = make_warp(self.p["temperature"], self.p["top_k"], self.p["top_p"])
        draft_gen = s.spawn_generator()                    # draft draws never shift the target's
        self.cache = cache = s.new_cache()                 # exposed for tests: committed minus the root
        root = prefill_all_but_last(s, cache)
        self.draft_cache = draft_cache = prefill_draft(s)  # exposed for tests
        stats, step = AcceptanceStats(), 0
        while True:
            sync_draft_cache(s, draft_cache, s.prompt_ids + s.output_ids)
            past_len = cache.get_seq_length()
            room = s.max_new_tokens - len(s.output_ids) - 1     # draft depths that can still be committed
            tree, q_at, fed, grown_with = self.grow(s, draft_cache, root, room, warp, draft_gen)
            logits = verify_tree(s, tree, cache)
            verdict = self.accept(tree, logits, q_at, grown_with, warp, s.generator)
            roll_back(cache, draft_cache, past_len, verdict.path[:committed_count(s, tree, verdict)], fed)
            if (yield from round_events(s, tree, logits, q_at, verdict, step, stats, warp, "draft model",
                                        self.tree_title)):
                return
            root, step = s.output_ids[-1], step + 1


class RecursiveSpeculative(SampledTreeSpeculation):
    name = "rsd"
    title = "Recursive speculative decoding (RSD-C)"
    summary = ("A draft tree whose siblings are sampled without replacement, verified in one tree-attention pass "
               "with recursive rejection sampling; exact target distribution, greedy at temperature 0.")
    paper = "https://arxiv.org/abs/2402.14160"
    params = (Param("branching", "choice", "3,2,1", choices=BRANCHINGS,
                    help="Children per node at each depth (the tree's depth is the list's length)."),
              ) + sampling_params()
    tree_title = "RSD draft tree"

    def accept(self, tree, logits, q_at, grown_with, warp, generator) -> Verdict:
        return self.verify(tree, logits, q_at, warp, generator)

    def grow(self, s, draft_cache, root: int, room: int, warp, generator):
        """The tree, level by level: b_i distinct children per node (top-b in greedy mode, Gumbel-top-b
        otherwise). Returns the tree, each expanded node's draft distribution, and the fed count."""
        widths = [int(b) for b in self.p["branching"].split(",")][:room]
        tree, q_at, fed = DraftTree.rooted(root), {}, 0
        for width in widths:
            level, fed = feed_level(s, tree, draft_cache, fed, warp)
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
        return tree, q_at, fed, None

    @staticmethod
    def verify(tree: DraftTree, logits: torch.Tensor, q_at: dict[int, torch.Tensor], warp,
               generator: torch.Generator) -> Verdict:
        """Greedy: longest argmax-matching path. Sampling: recursive rejection sampling from the root down."""
        if warp is None:
            path = greedy_accept(tree, logits)
            return Verdict(path, int(logits[path[-1]].argmax()))
        p = probabilities(logits, warp)
        node = 0
        while True:
            children = tree.children(node)
            if not children:                               # a leaf: the bonus comes from the target itself
                return Verdict(tree.path(node), int(acceptance.sample(p[node][None], generator)))
            candidates = torch.tensor([tree.tokens[c] for c in children])
            index, token = acceptance.recursive_rejection(p[node], q_at[node], candidates, generator)
            if int(index) < 0:
                return Verdict(tree.path(node), int(token),
                               {"node": node, "draft": int(candidates[0]), "p": p[node], "q": q_at[node]})
            node = children[int(index)]
