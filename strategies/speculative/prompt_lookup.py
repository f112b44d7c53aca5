"""Prompt lookup decoding (PLD): the draft is copied from the context itself.

Two lookups. `ngram` is transformers' PromptLookupCandidateGenerator: the trailing n-gram (n =
max_ngram down to 1), its first match left to right, the tokens after it. `suffix` (ours, the
default) finds the LONGEST suffix of prompt + output so far (up to MAX_MATCH tokens) that occurs
earlier, its most recent occurrence, and copies what followed: a long match is a much safer copy
than a 1-gram, and the match length is what the draft length is sized by. Drafts stop at EOS.
Either way the output equals plain greedy (every draft is verified).

Draft length (`draft_length=measured`; `fixed` is transformers' rule: all of the copy): each round
proposes the k of the copy's tokens that maximises (1 + expected accepted) / cost(k + 1), with the
pass cost measured at warm-up at this context length (cost_model.py) and the acceptance of copies
estimated per match length (CopyRates). Every copy is scored against what the target then wrote,
whether it was proposed or not, so an estimate that fell after a bad copy recovers as soon as
copies come true again (it used to learn only from proposed drafts, and stopped proposing for good).
"""

from __future__ import annotations

from playground.events import StatsEvent

from ..base import Param
from .cost_model import best_size, cost_model_for
from .loop import Draft, SpeculationLoop
from .rounds import PlainStepNotice
from .tree import DraftTree

MAX_MATCH = 32           # longest suffix compared: longer matches are no more informative


def lookup(ids: list[int], max_ngram: int, num_tokens: int) -> tuple[list[int], int]:
    """transformers' rule: the continuation of the trailing n-gram's first earlier match, and where it
    was copied from (-1: none)."""
    for n in range(min(max_ngram, len(ids) - 1), 0, -1):
        tail = ids[-n:]
        for start in range(len(ids) - n):                  # the tail itself has no continuation
            if ids[start:start + n] == tail:
                return ids[start + n:start + n + num_tokens], start + n
    return [], -1


def suffix_lookup(ids: list[int], num_tokens: int) -> tuple[list[int], int, int]:
    """(draft, where it was copied from, match length) for the longest suffix of `ids` found earlier,
    the most recent occurrence among equally long ones; ([], -1, 0) when the last token never occurred."""
    last, best, where = ids[-1], 0, -1
    for end in range(len(ids) - 2, -1, -1):               # end: the match's last position, newest first
        if ids[end] != last:
            continue
        length = 1
        while length < MAX_MATCH and length <= end and ids[end - length] == ids[-1 - length]:
            length += 1
        if length > best:
            best, where = length, end + 1
            if length == MAX_MATCH:
                break
    return (ids[where:where + num_tokens], where, best) if best else ([], -1, 0)


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


class CopyRates:
    """One CopyRate per match length (1, 2, 3, 4-7, 8+ tokens): a copy after an 8-token match is right
    far more often than one after a 1-token match, and one number for both sized both badly. Priors
    rise with the match length."""

    BOUNDS = (1, 2, 3, 4, 8)
    PRIORS = (0.3, 0.4, 0.5, 0.6, 0.75)

    def __init__(self):
        self.rates = [CopyRate(prior) for prior in self.PRIORS]

    def of(self, match: int) -> CopyRate:
        return self.rates[max(i for i, bound in enumerate(self.BOUNDS) if match >= bound)]


def copy_outcome(copy: list[int], written: list[int]) -> tuple[int, int]:
    """(tokens compared, tokens right) of a copy against what the target wrote at its place: the copy is
    judged token by token up to its first wrong one, and never beyond what was written."""
    compared = min(len(copy), len(written))
    right = next((i for i in range(compared) if copy[i] != written[i]), compared)
    return compared, right


class PromptLookup(SpeculationLoop):
    name = "prompt_lookup"
    title = "Prompt lookup decoding"
    summary = "Drafts copied from earlier in the context after a matching n-gram; verified in one pass."
    paper = "https://github.com/apoorvumang/prompt-lookup-decoding"
    tree_title = "Prompt lookup draft"
    tree_params = ("num_tokens",)   # memory bound: Strategy.footprint
    params = (
        Param("lookup", "choice", "suffix", choices=("suffix", "ngram"),
              help="suffix: copy after the longest earlier match of the text's end (sized by the match "
                   "length); ngram: after the first match of the last max_ngram tokens, as transformers does."),
        Param("max_ngram", "int", 2, 1, 8, help="Longest trailing n-gram searched for (ngram lookup).", step=1),
        Param("num_tokens", "int", 10, 1, 32, help="Most draft tokens copied after a match.", step=1),
        Param("draft_length", "choice", "measured", choices=("measured", "fixed"),
              help="measured: propose as many of the copied tokens as pay for their pass (measured cost "
                   "and acceptance); fixed: always all of them, as transformers does."),
    )

    def prefill(self, s, cache):
        self.costs, self.rates, self.notice = cost_model_for(s.model), CopyRates(), PlainStepNotice()
        return super().prefill(s, cache)

    def grow(self, s, root, room, warp, generator):
        ids, most = s.prompt_ids + s.output_ids, min(self.p["num_tokens"], room)
        if self.p["lookup"] == "suffix":
            draft, source, match = suffix_lookup(ids, most)
        else:
            draft, source = lookup(ids, self.p["max_ngram"], most)
            match = min(self.p["max_ngram"], len(ids))
        draft = draft[:next((i for i, t in enumerate(draft) if s.is_eos(t)), len(draft))]
        copy, rate = list(draft), self.rates.of(max(match, 1))
        if self.p["draft_length"] == "measured" and draft:
            draft = draft[:best_size(rate.gains(len(draft)), self.costs, list(range(len(draft) + 1)), len(ids))]
        tree = DraftTree.rooted(root)
        for token in draft:                               # a chain: each token under the previous
            tree.add(len(tree) - 1, token)
        where = f"copied from context position {source} after a {match}-token match" if copy else "no match"
        return Draft(tree, source=f"prompt lookup ({where})", context=(copy, rate, len(s.output_ids)))

    def after_round(self, s, draft, logits, verdict, seconds, step):
        copy, rate, before = draft.context
        proposed = len(draft.tree) - 1
        self.costs.record(len(draft.tree), seconds)
        # The whole copy, proposed or not, against what the target wrote this round: the estimate keeps
        # learning while nothing is proposed, so drafting resumes when copies come true again.
        compared, right = copy_outcome(copy, s.output_ids[before:])
        rate.record(compared, right)
        if copy:                                       # no copy at hand says nothing about whether drafts pay
            yield from self.notice.update(proposed == 0, step)
        yield StatsEvent({"copied tokens": len(copy), "proposed tokens": proposed,
                          "copy acceptance (recent, this match length)": rate.value})
