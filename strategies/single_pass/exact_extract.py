"""Exact extract (optimal extractive QA): the most probable span of a passage, found exactly.

Every contiguous span of the passage (as tokenised) is a candidate answer. The score of a span is
the model's log-probability of answering with exactly that span and then stopping:

    score(span) = sum_t log p(span_t | prompt, span_<t) + log p(end | prompt, span)

where `end` is the run's end-of-answer token(s) (logsumexp over the session's EOS ids). Adding a token
or the end token only lowers a log-probability, so the first token's log-probability (read from the
prompt's own logits, no extra pass) bounds every span starting there. The search sorts the start
positions by that bound and scores them in batches: one batched forward over the shared prompt's
cache (copied, never recomputed) scores ALL spans of up to `max_span` tokens from each start in that
batch (a span is a prefix of its start's chain). It stops when the next start's bound is below the
k-th best distinct span found so far: every later span scores lower, so the top k are exact
(branch-and-bound; `prune` off scores every start, which must give the same answer).

The answer's first token is the passage token with its leading whitespace stripped and re-tokenised
(" Paris" -> "Paris"): a reply starts without a space, and keeping the space would favour spans at
the passage's first word. A span never starts on a whitespace-only token.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field

import torch

from playground.events import ExtractEvent, NoticeEvent, StatsEvent

from ..base import InvalidParameter, Param, StopRun, Strategy

MAX_PASSAGE_CHARS = 4000
MAX_QUESTION_CHARS = 500
MAX_PASSAGE_TOKENS = 1024
PROMPT_TEMPLATE = ("Answer the question with a short span copied exactly from the passage.\n\n"
                   "Passage: {passage}\n\nQuestion: {question}")
PASSAGE_MARK = re.compile(r"passage\s*:", re.I)
QUESTION_MARK = re.compile(r"question\s*:", re.I)


@dataclass
class Start:
    """One start position: the chain of tokens its spans are prefixes of, and which prefixes are spans."""

    index: int                     # the passage token it starts at
    chain: list[int]               # first token re-tokenised without its leading space, then the passage's next tokens
    ends: list[int]                # chain lengths that end a span (one per passage-token length 1..)
    lengths: list[int]             # the span's length in passage tokens, for each end


@dataclass
class Found:
    score: float                   # log p(span) + log p(end)
    start: int                     # index into the starts list
    end: int                       # chain length
    span_logprob: float            # log p(span) alone
    end_logprob: float


@dataclass
class SearchResult:
    ranked: list[Found]            # best first, distinct token sequences
    passes: int = 0                # batched forwards the search ran
    starts_scored: int = 0
    spans_scored: int = 0
    pruned: int = 0                # starts never scored: their bound was below the k-th best
    trace: list[list[Found]] = field(default_factory=list)


def end_logprob(logp: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """log p(answer ends) from log-probs (..., V): logsumexp over the end tokens."""
    return torch.logsumexp(logp[..., eos_ids], -1)


def search_spans(session, cache, first_logits: torch.Tensor, starts: list[Start], eos_ids: list[int],
                 top: int = 10, batch: int = 16, prune: bool = True):
    """The top `top` distinct spans by score, exactly: a generator that yields the (growing) result after
    every batched forward (the live view) and returns it. `cache` holds the prompt (batch 1) and is left
    untouched; `first_logits` (V,) are the logits after the prompt."""
    if not eos_ids:
        raise InvalidParameter("exact extract needs an end-of-answer token (this model names no EOS id)")
    first_logp = torch.log_softmax(first_logits.double().cpu(), -1)
    bounds = [float(first_logp[s.chain[0]]) for s in starts]
    order = sorted(range(len(starts)), key=lambda i: (-bounds[i], i))
    best: dict[tuple[int, ...], Found] = {}
    result = SearchResult(ranked=[])

    def kth() -> float:
        if len(best) < top:
            return -math.inf
        return sorted((f.score for f in best.values()), reverse=True)[top - 1]

    position = 0
    while position < len(order):
        if prune and bounds[order[position]] < kth():
            result.pruned = len(order) - position
            break
        rows = order[position:position + batch]
        position += len(rows)
        width = max(len(starts[i].chain) for i in rows)
        ids = torch.tensor([starts[i].chain + [starts[i].chain[-1]] * (width - len(starts[i].chain)) for i in rows])
        rows_cache = copy.deepcopy(cache)
        rows_cache.batch_repeat_interleave(len(rows))
        logits, _ = session.forward(ids, rows_cache, last_only=False)         # (rows, width, V)
        result.passes += 1
        logp = torch.log_softmax(logits.double().cpu(), -1)
        logp = torch.cat([first_logp[None, None].expand(len(rows), 1, -1), logp], 1)   # position t: after chain[:t]
        ends = end_logprob(logp, eos_ids)                                          # (rows, width + 1)
        for r, i in enumerate(rows):
            s = starts[i]
            token_logp = logp[r, torch.arange(len(s.chain)), torch.tensor(s.chain)]
            cumulative = torch.cumsum(token_logp, 0)
            for end in s.ends:
                span = float(cumulative[end - 1])
                found = Found(span + float(ends[r, end]), i, end, span, float(ends[r, end]))
                key = tuple(s.chain[:end])
                held = best.get(key)
                if held is None or (found.score, -found.start) > (held.score, -held.start):
                    best[key] = found
                result.spans_scored += 1
            result.starts_scored += 1
        result.ranked = sorted(best.values(), key=lambda f: (-f.score, starts[f.start].index, f.end))[:top]
        yield result
    return result


# --- text <-> tokens --------------------------------------------------------------------------------
def encode(tokenizer, text: str) -> list[int]:
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]


def boundaries(tokenizer, ids: list[int]) -> list[int | None]:
    """Character offset of every token boundary (len(ids) + 1 of them): the length of the decoded
    prefix. None where the prefix ends inside a multi-byte character (no span starts or ends there)."""
    out: list[int | None] = [0]
    for k in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:k], skip_special_tokens=False)
        out.append(None if text.endswith("\ufffd") else len(text))
    return out


def build_starts(tokenizer, passage: str, max_span: int) -> tuple[list[Start], list[tuple[int, int]], list[int]]:
    """The passage's starts, each start's span character ranges (per end), and the passage's ids."""
    ids = encode(tokenizer, passage)
    if not ids:
        raise InvalidParameter("the passage is empty")
    if len(ids) > MAX_PASSAGE_TOKENS:
        raise InvalidParameter(f"the passage is {len(ids):,} tokens; the limit is {MAX_PASSAGE_TOKENS:,}")
    if tokenizer.decode(ids, skip_special_tokens=False) != passage:
        raise InvalidParameter("this tokenizer does not give the passage back exactly, so spans cannot be "
                               "mapped to its characters")
    cuts = boundaries(tokenizer, ids)
    starts, ranges = [], []
    for i in range(len(ids)):
        if cuts[i] is None:
            continue
        head = passage[cuts[i]:cuts[i + 1]] if cuts[i + 1] is not None else ""
        stripped = head.lstrip()
        if not stripped:
            continue
        first = encode(tokenizer, stripped)
        chain, ends, lengths, spans = list(first), [], [], []
        for k in range(1, max_span + 1):
            if i + k > len(ids):
                break
            if k > 1:
                chain.append(ids[i + k - 1])
            if cuts[i + k] is None:
                continue
            ends.append(len(chain))
            lengths.append(k)
            spans.append((cuts[i] + len(head) - len(stripped), cuts[i + k]))
        if ends:
            chain = chain[:ends[-1]]
            starts.append(Start(i, chain, ends, lengths))
            ranges.append(spans)
    if not starts:
        raise InvalidParameter("the passage has no span to extract (only whitespace)")
    return starts, ranges, ids


def template_prefix(tokenizer) -> str | None:
    """The text the chat template puts before a user's message (None: no chat template)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": "\x01"}], tokenize=False,
                                         add_generation_prompt=True)
    return text.split("\x01")[0]


def parse_prompt(text: str, specials: list[str]) -> tuple[str, str]:
    """'Passage: ... Question: ...' (either order, case-insensitive) -> (passage, question)."""
    p, q = PASSAGE_MARK.search(text), QUESTION_MARK.search(text)
    if not p or not q:
        raise InvalidParameter("give a passage and a question (the method's fields), or a prompt of the form "
                               "'Passage: ... Question: ...'")
    if p.start() < q.start():
        passage, question = text[p.end():q.start()], text[q.end():]
    else:
        question, passage = text[q.end():p.start()], text[p.end():]
    for special in specials:                      # the template's closing tokens after the user's text
        if special:
            passage, question = passage.split(special)[0], question.split(special)[0]
    return passage.strip(), question.strip()


class ExactExtract(Strategy):
    name = "exact_extract"
    title = "Exact extract (best span)"
    summary = ("The passage's most probable span, found exactly: score = log p(span) + log p(end-of-answer) "
               "(not length-normalised), maximised over every span of up to `max span` passage tokens by "
               "branch-and-bound over start positions (a start's first-token log-prob bounds all its spans) with "
               "batched forwards on the shared prompt's cache. Greedy's free answer is shown beside it. "
               "Deviation: the answer's first token is its passage token without the leading space, re-tokenised.")
    paper = "https://arxiv.org/abs/2108.05857"
    free_text = False
    row_params, tree_params = ("batch",), ("max_span",)   # memory bound: Strategy.footprint
    params = (
        Param("passage", "text", "", high=MAX_PASSAGE_CHARS,
              help="The passage to extract from (at most 4,000 characters). Empty: taken from the prompt, "
                   "which must read 'Passage: ... Question: ...' and is then sent as it is."),
        Param("question", "text", "", high=MAX_QUESTION_CHARS,
              help="The question (at most 500 characters). With a passage, the model sees: 'Answer the question "
                   "with a short span copied exactly from the passage. Passage: <passage> Question: <question>'."),
        Param("max_span", "int", 16, 1, 32, help="Longest span, in passage tokens."),
        Param("top", "int", 10, 1, 20, help="Spans ranked (exact: the top k distinct spans)."),
        Param("batch", "int", 16, 1, 64, help="Start positions scored per batched forward."),
        Param("prune", "bool", True, help="Branch-and-bound: skip starts whose bound is below the k-th best "
                                          "(off: score every start; the answer is the same)."),
        Param("free_tokens", "int", 24, 1, 64, help="Length cap of greedy's free answer shown beside the span."),
    )

    def check(self) -> None:
        if bool(self.p["passage"].strip()) != bool(self.p["question"].strip()):
            raise InvalidParameter("give both a passage and a question, or neither (then the prompt is parsed)")

    def own_prompt(self) -> str | None:
        """With the passage and question fields filled, the model sees PROMPT_TEMPLATE built from them."""
        passage, question = self.p["passage"].strip(), self.p["question"].strip()
        return PROMPT_TEMPLATE.format(passage=passage, question=question) if passage else None

    def _inputs(self, s) -> tuple[str, str, str]:
        tokenizer = s.tokenizer
        if self.p["passage"].strip():            # the runner already made the prompt from the fields
            return self.p["passage"].strip(), self.p["question"].strip(), "fields"
        prefix = template_prefix(tokenizer)
        shown = tokenizer.decode(s.prompt_ids, skip_special_tokens=False)
        chat = prefix is not None and shown.startswith(prefix)
        specials = list(getattr(tokenizer, "all_special_tokens", []) or [])
        passage, question = parse_prompt(shown[len(prefix):] if chat else shown, specials)
        if not passage:
            raise InvalidParameter("the passage is empty")
        if len(passage) > MAX_PASSAGE_CHARS:
            raise InvalidParameter(f"the passage is {len(passage):,} characters; the limit is {MAX_PASSAGE_CHARS:,}")
        return passage, question, "prompt"

    def decode(self, s):
        passage, question, source = self._inputs(s)
        starts, ranges, _ = build_starts(s.tokenizer, passage, self.p["max_span"])
        eos_ids = sorted(s.eos_ids)
        cache = s.new_cache()
        first = s.prefill(cache)
        free = self._free_answer(s, cache, first)

        def event(result: SearchResult, done: bool) -> ExtractEvent:
            spans = []
            for rank, f in enumerate(result.ranked, 1):
                st = starts[f.start]
                a, b = ranges[f.start][st.ends.index(f.end)]
                spans.append({"start_char": a, "end_char": b, "text": passage[a:b], "logprob": f.score,
                              "span_logprob": f.span_logprob, "end_logprob": f.end_logprob, "rank": rank,
                              "tokens": f.end})
            return ExtractEvent(passage=passage, question=question, spans=spans, free_answer=free,
                                chosen=0 if spans else None, done=done, starts=len(starts),
                                starts_scored=result.starts_scored, spans_scored=result.spans_scored,
                                pruned=result.pruned, search_passes=result.passes, source=source)

        search = search_spans(s, cache, first, starts, eos_ids, self.p["top"], self.p["batch"], self.p["prune"])
        result = SearchResult(ranked=[])
        stopped = False
        try:
            for result in search:
                yield event(result, False)
        except StopRun:                 # Stop: the best span found so far is committed, marked not exact
            stopped = True
        if not result.ranked:
            return
        yield event(result, not stopped)
        if stopped:
            yield NoticeEvent("extract_stopped", "Stopped during the search: the answer is the best span found so "
                                                 "far, not necessarily the most probable one.")
        yield StatsEvent({"starts": len(starts), "starts scored": result.starts_scored,
                          "starts pruned": result.pruned, "spans scored": result.spans_scored,
                          "search passes": result.passes})
        best = result.ranked[0]
        chain = starts[best.start].chain[:best.end]
        logits, _ = s.forward(chain, copy.deepcopy(cache), last_only=False)     # the chosen span's own steps
        steps = [first] + [logits[0, t] for t in range(len(chain) - 1)]
        for token, step in zip(chain, steps):
            if not s.room():
                yield NoticeEvent("extract_length", "The span is longer than the output length: cut.")
                return
            yield s.commit(token, step)

    def _free_answer(self, s, cache, first) -> str:
        """Greedy from the same prompt, up to free_tokens (counted forwards), as text."""
        free_cache = copy.deepcopy(cache)
        logits, ids = first, []
        for _ in range(self.p["free_tokens"]):
            token = int(logits.argmax())
            if s.is_eos(token):
                break
            ids.append(token)
            logits = s.forward([token], free_cache)[0][0]
        return s.tokenizer.decode(ids, skip_special_tokens=True).strip()
