"""Prompt lookup decoding (PLD): the draft is copied from the context itself.

Find the most recent n-gram (n = max_ngram down to 1) earlier in prompt + output, propose the
tokens that followed its first occurrence, and verify them in one target pass. Same lookup rules
as transformers' PromptLookupCandidateGenerator (first match left to right, drafts cut at EOS), so
the output equals `generate(prompt_lookup_num_tokens=k)`, which equals plain greedy.
"""

from __future__ import annotations

from .base import Param, Strategy
from .tree_attention import AcceptanceStats, DraftTree, greedy_round, verify_tree


def lookup(ids: list[int], max_ngram: int, num_tokens: int) -> tuple[list[int], int]:
    """Draft continuation of the trailing n-gram of `ids` and where it was copied from (-1: none)."""
    for n in range(min(max_ngram, len(ids) - 1), 0, -1):
        tail = ids[-n:]
        for start in range(len(ids) - n):                  # the tail itself has no continuation
            if ids[start:start + n] == tail:
                return ids[start + n:start + n + num_tokens], start + n
    return [], -1


class PromptLookup(Strategy):
    name = "prompt_lookup"
    title = "Prompt lookup decoding"
    summary = "Drafts copied from earlier in the context after a matching n-gram; verified in one pass."
    paper = "https://github.com/apoorvumang/prompt-lookup-decoding"
    lossless = True
    params = (
        Param("max_ngram", "int", 2, 1, 8, help="Longest trailing n-gram searched for in the context.", step=1),
        Param("num_tokens", "int", 10, 1, 32, help="Draft tokens copied after a match.", step=1),
    )

    def decode(self, s):
        self.cache = cache = s.new_cache()                 # exposed for tests: committed minus the root
        logits = s.prefill(cache)
        root = int(logits.argmax())
        yield s.commit(root, logits)
        if s.is_eos(root) or not s.room():
            return
        stats, step = AcceptanceStats(), 0
        while root is not None:
            draft, source = lookup(s.prompt_ids + s.output_ids, self.p["max_ngram"], self.p["num_tokens"])
            draft = draft[:next((i for i, t in enumerate(draft) if s.is_eos(t)), len(draft))]
            tree = DraftTree.rooted(root)
            for token in draft:                               # a chain: each token under the previous
                tree.add(len(tree) - 1, token)
            past_len = cache.get_seq_length()
            logits = verify_tree(s, tree, cache)
            where = f"copied from context position {source}" if draft else "no n-gram match"
            _, root = yield from greedy_round(s, tree, logits, cache, past_len, step, stats,
                                              source=f"prompt lookup ({where})", title="Prompt lookup draft")
            step += 1
