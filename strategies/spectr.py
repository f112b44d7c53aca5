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
Draft cache handling as in rsd.py (committed minus the root; one draft pass per depth).
"""

from __future__ import annotations

import torch

from . import acceptance
from .base import Param, Strategy
from .rsd import feed_level, prefill_draft, roll_back, sync_draft_cache
from .speculative import (Verdict, check_sampling, committed_count, make_warp, prefill_all_but_last, probabilities,
                          round_events, sampling_params)
from .tree_attention import AcceptanceStats, DraftTree, greedy_accept, verify_tree


class SpecTr(Strategy):
    name = "spectr"
    title = "SpecTr (k drafts, K-SEQ selection)"
    summary = ("k independent draft sequences merged into a trie and verified in one pass; at each depth "
               "k-sequential selection picks a surviving candidate. Exact target distribution.")
    paper = "https://arxiv.org/abs/2310.15141"
    lossless = True
    needs_draft = True
    params = (
        Param("num_drafts", "int", 4, 1, 16, help="k: independent draft sequences per round.", step=1),
        Param("draft_length", "int", 4, 1, 16, help="L: tokens per draft sequence.", step=1),
    ) + sampling_params()

    def check(self):
        check_sampling(self.p)

    def decode(self, s):
        warp = make_warp(self.p["temperature"], self.p["top_k"], self.p["top_p"])
        draft_gen = s.spawn_generator()
        self.cache = cache = s.new_cache()                 # exposed for tests: committed minus the root
        root = prefill_all_but_last(s, cache)
        self.draft_cache = draft_cache = prefill_draft(s)          # exposed for tests
        stats, step = AcceptanceStats(), 0
        while True:
            context = s.prompt_ids + s.output_ids
            sync_draft_cache(s, draft_cache, context)
            past_len = cache.get_seq_length()
            length = min(self.p["draft_length"], s.max_new_tokens - len(s.output_ids) - 1)
            tree, q_at, fed, sequences = self.grow(s, draft_cache, root, self.p["num_drafts"], length, warp,
                                                   draft_gen)
            logits = verify_tree(s, tree, cache)
            verdict = self.verify(tree, logits, q_at, sequences, warp, s.generator)
            roll_back(cache, draft_cache, past_len, verdict.path[:committed_count(s, tree, verdict)], fed)
            if (yield from round_events(s, tree, logits, q_at, verdict, step, stats, warp, "draft model",
                                        f"SpecTr trie of {self.p['num_drafts']} drafts")):
                return
            root, step = s.output_ids[-1], step + 1

    @staticmethod
    def grow(s, draft_cache, root: int, k: int, length: int, warp, generator):
        """k i.i.d. sequences as a trie, one draft pass per depth. Returns the trie, each expanded
        node's draft distribution, the fed count, and every sequence's node path (root first)."""
        tree, q_at, fed = DraftTree.rooted(root), {}, 0
        sequences = [[0] for _ in range(k)]
        for _ in range(length):
            level, fed = feed_level(s, tree, draft_cache, fed, warp)
            q_at.update(level)
            for seq in sequences:
                node = seq[-1]
                token = int(acceptance.sample(q_at[node][None], generator))
                child = tree.child_with_token(node, token)
                seq.append(child if child is not None else tree.add(node, token))
        return tree, q_at, fed, sequences

    @staticmethod
    def verify(tree: DraftTree, logits: torch.Tensor, q_at: dict[int, torch.Tensor], sequences: list[list[int]],
               warp, generator: torch.Generator) -> Verdict:
        """Greedy: longest argmax-matching path. Sampling: K-SEQ among the surviving sequences, depth by depth."""
        if warp is None:
            path = greedy_accept(tree, logits)
            return Verdict(path, int(logits[path[-1]].argmax()))
        p = probabilities(logits, warp)
        node, depth, alive = 0, 0, sequences
        while True:
            if depth + 1 >= len(alive[0]):                 # the drafts end here: bonus from the target
                return Verdict(tree.path(node), int(acceptance.sample(p[node][None], generator)))
            candidates = torch.tensor([tree.tokens[seq[depth + 1]] for seq in alive])
            index, token = acceptance.kseq_accept(p[node], q_at[node], candidates, generator)
            if int(index) < 0:
                return Verdict(tree.path(node), int(token),
                               {"node": node, "draft": int(candidates[0]), "p": p[node], "q": q_at[node]})
            alive = [seq for seq in alive if tree.tokens[seq[depth + 1]] == int(token)]
            node, depth = alive[0][depth + 1], depth + 1
