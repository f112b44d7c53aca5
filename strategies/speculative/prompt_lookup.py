"""Prompt lookup decoding (PLD): the draft is copied from the context itself.

Find the most recent n-gram (n = max_ngram down to 1) earlier in prompt + output, propose the
tokens that followed its first occurrence, and verify them in one target pass. Same lookup rules
as transformers' PromptLookupCandidateGenerator (first match left to right, drafts cut at EOS), so
the output equals `generate(prompt_lookup_num_tokens=k)`, which equals plain greedy.

Draft length (our addition; `draft_length=fixed` is transformers' behaviour): a copied draft is
only worth verifying while its expected accepted tokens pay for the bigger pass. Each round
proposes the k of the match's tokens that maximises (1 + expected accepted) / cost(k + 1), with
the acceptance per draft position counted over this run's rounds and the pass cost measured on
this machine (cost_model.py). On a CPU where an 11-token pass costs 2x a 1-token one, a
match in free text is usually cut to 1-3 tokens, and a long copy of the prompt is taken whole.
"""

from __future__ import annotations

from playground.events import StatsEvent

from ..base import Param
from .cost_model import best_size, cost_model_for
from .loop import Draft, SpeculationLoop
from .rounds import PlainStepNotice
from .tree import DraftTree


def lookup(ids: list[int], max_ngram: int, num_tokens: int) -> tuple[list[int], int]:
    """Draft continuation of the trailing n-gram of `ids` and where it was copied from (-1: none)."""
    for n in range(min(max_ngram, len(ids) - 1), 0, -1):
        tail = ids[-n:]
        for start in range(len(ids) - n):                  # the tail itself has no continuation
            if ids[start:start + n] == tail:
                return ids[start + n:start + n + num_tokens], start + n
    return [], -1


class CopyRate:
    """P(a copied token is accepted | the ones before it were), one number for every position
    (a per-position table never learns about positions it stops proposing), as a moving average
    over recent tokens: copying comes in runs (a quoted sentence, a code block), so the recent
    rounds say more than the run's whole history."""

    def __init__(self, prior: float = 0.5, rate: float = 0.35):
        self.value, self.rate = prior, rate

    def record(self, proposed: int, accepted: int) -> None:
        for i in range(min(accepted + 1, proposed)):          # position `accepted` was the first rejected
            self.value += self.rate * ((i < accepted) - self.value)

    def gains(self, most: int) -> list[float]:
        """gains[k]: expected accepted tokens when k are proposed (k = 0..most)."""
        return [sum(self.value ** i for i in range(1, k + 1)) for k in range(most + 1)]


class PromptLookup(SpeculationLoop):
    name = "prompt_lookup"
    title = "Prompt lookup decoding"
    summary = "Drafts copied from earlier in the context after a matching n-gram; verified in one pass."
    paper = "https://github.com/apoorvumang/prompt-lookup-decoding"
    tree_title = "Prompt lookup draft"
    tree_params = ("num_tokens",)   # memory bound: Strategy.footprint
    params = (
        Param("max_ngram", "int", 2, 1, 8, help="Longest trailing n-gram searched for in the context.", step=1),
        Param("num_tokens", "int", 10, 1, 32, help="Most draft tokens copied after a match.", step=1),
        Param("draft_length", "choice", "measured", choices=("measured", "fixed"),
              help="measured: propose as many of the copied tokens as pay for their pass (measured cost "
                   "and acceptance); fixed: always all of them, as transformers does."),
    )

    def prefill(self, s, cache) -> int:
        self.costs, self.rate, self.notice = cost_model_for(s.model), CopyRate(), PlainStepNotice()
        return super().prefill(s, cache)

    def grow(self, s, root, room, warp, generator):
        draft, source = lookup(s.prompt_ids + s.output_ids, self.p["max_ngram"], min(self.p["num_tokens"], room))
        draft = draft[:next((i for i, t in enumerate(draft) if s.is_eos(t)), len(draft))]
        copy, copied = list(draft), len(draft)
        if self.p["draft_length"] == "measured" and draft:
            draft = draft[:best_size(self.rate.gains(len(draft)), self.costs, list(range(len(draft) + 1)))]
        tree = DraftTree.rooted(root)
        for token in draft:                               # a chain: each token under the previous
            tree.add(len(tree) - 1, token)
        where = f"copied from context position {source}" if copied else "no n-gram match"
        return Draft(tree, source=f"prompt lookup ({where})", context=copy)

    def after_round(self, s, draft, logits, verdict, seconds, step):
        copy, proposed = draft.context, len(draft.tree) - 1
        copied = len(copy)
        self.costs.record(len(draft.tree), seconds)
        if proposed:
            self.rate.record(proposed, verdict.accepted)
        elif copy:
            # Not proposed, but the target's own token says whether the copy's first token was right:
            # the rate keeps learning, so a run that stopped copying can start again.
            self.rate.record(1, int(copy[0] == verdict.next_token))
        if copied:                                     # no copy at hand says nothing about whether drafts pay
            yield from self.notice.update(proposed == 0, step)
        yield StatsEvent({"copied tokens": copied, "proposed tokens": proposed,
                          "copy acceptance (recent)": self.rate.value})
