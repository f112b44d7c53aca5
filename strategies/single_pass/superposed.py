"""Superposed decoding (Shen et al. 2024, arXiv 2405.18400): k drafts from ONE forward stream.

Every step the model reads one vector: the superposition sum_t w_t E[t] of the drafts' last tokens, with
w = softmax of the drafts' cumulative scores (drafts sharing a last token merged, then renormalised, so
when all drafts share it the input IS that token's embedding). The one output distribution (temperature-
scaled, cut to its top m and renormalised) is shared by all drafts; each draft re-scores the m candidates
with its own interpolated n-gram statistics, score = (1-alpha) log p_lm + alpha log p_ngram (a draft
whose every candidate scores -inf gets (1-alpha) log p_lm - penalty), and the k best (draft, token)
pairs by cumulative score become the next drafts, beam-style. Without the n-gram re-scoring the drafts
see the same distribution and collapse: they end up appending the same tokens.

Output: like beam search, the answer is committed at the end: the best draft when the length runs out,
or the draft whose EOS is the best candidate of a step (that ends the run; an EOS candidate that is not
the best is dropped). Stopped (StopRun), the best draft so far is committed. While running, the drafts
panel shows all k drafts growing (SuperposedStepEvent), with a StatsEvent of the distinct drafts.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from playground.events import NoticeEvent, StatsEvent, SuperposedStepEvent

from ..base import InvalidParameter, Param, StopRun, Strategy
from .ngrams import NGramModel, NGramTable, corpus_table, encode

DEFAULT_WEIGHTS = "0.01 0.04 0.15 0.18 0.12"
SUFFIX = 4                 # drafts count as distinct when their last SUFFIX tokens differ
DISTINCT_KEY = f"distinct drafts (last {SUFFIX} tokens differ)"
MAX_USER_TEXT = 20_000


def superpose(embedding: torch.Tensor, tokens: list[int], scores: list[float]) -> tuple[torch.Tensor, list[float], int]:
    """The input vector sum_t w_t E[t] (hidden,), the per-draft weights softmax(scores) (a simplex), and
    how many distinct tokens were mixed. Duplicates are merged and the merged weights renormalised
    (x / x is exactly 1, so one distinct token gives exactly its embedding)."""
    w = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0)
    merged: dict[int, float] = {}
    for t, wt in zip(tokens, w.tolist()):
        merged[t] = merged.get(t, 0.0) + wt
    total = sum(merged.values())
    ids = list(merged)
    mix = torch.tensor([merged[t] / total for t in ids], dtype=embedding.dtype, device=embedding.device)
    rows = embedding[torch.tensor(ids, dtype=torch.long)]
    return (mix[:, None] * rows).sum(0), w.tolist(), len(ids)


def parse_weights(raw: str) -> list[float]:
    try:
        weights = [float(x) for x in raw.replace(",", " ").split()]
    except ValueError:
        raise InvalidParameter(f"ngram_weights must be up to 5 numbers (orders 2..6), got {raw!r}")
    if not 1 <= len(weights) <= 5 or any(not (0 <= w <= 10) for w in weights) or not any(weights):
        raise InvalidParameter("ngram_weights: 1 to 5 numbers in [0, 10] for orders 2..6, not all zero")
    return weights


def stream_perplexity(tokens: list) -> float:
    """exp(-mean log p) of a draft's tokens (TokenEvents) as the one superposed stream scored them."""
    return math.exp(-sum(t.logprob for t in tokens) / len(tokens)) if tokens else float("nan")


def distinct_drafts(drafts: list[list[int]]) -> int:
    return len({tuple(d[-SUFFIX:]) for d in drafts})


class Superposed(Strategy):
    name = "superposed"
    title = "Superposed decoding"
    summary = ("k drafts from one forward stream: the model reads the weighted superposition of the drafts' "
               "last-token embeddings; the shared top-m candidates are re-scored per draft with interpolated "
               "n-gram statistics and the k best (draft, token) pairs kept. Defaults: the authors' "
               "p15_d3_mixed. Deviations: n-gram tables from a small shipped corpus (the Python 3.11 language "
               "reference, PSF license) + the prompt + your text, tokenised with this model's tokenizer "
               "(the paper used up to 200k RedPajama documents); scores kept in log space (no underflow to "
               "-inf at temperature 0.06); the answer (best draft) is committed at the end, like beam search.")
    paper = "https://arxiv.org/abs/2405.18400"
    params = (
        Param("drafts", "int", 3, 1, 6, help="k: drafts decoded together in one stream.", step=1),
        Param("temperature", "float", 0.06, 0.01, 2.0,
              help="Temperature of the model's distribution before the top-m cut (0.06: very sharp).", step=0.01),
        Param("top_m", "int", 9, 1, 16, help="m: candidates per step taken from the model's distribution.",
              step=1),
        Param("ngram", "bool", True,
              help="Re-score with n-gram statistics. Off: drafts see the same distribution and collapse."),
        Param("alpha", "float", 0.54, 0.0, 1.0,
              help="Weight of the n-gram log-probability: (1-alpha) log p_lm + alpha log p_ngram.", step=0.01),
        Param("ngram_weights", "text", DEFAULT_WEIGHTS, high=100,
              help="Interpolation weights of orders 2..6 (contexts of 1..5 tokens); only relative values "
                   "matter."),
        Param("ngram_floor", "float", 1e-4, 0.0, 0.1,
              help="Deviation: the n-gram probability given to a candidate the tables never saw after the "
                   "draft's contexts (the paper: 0, i.e. log 0 = -inf, which on our small corpus forces the "
                   "drafts onto the few tokens the corpus has seen). 0 = the paper's rule.", step=1e-4),
        Param("penalty", "float", 200.0, 0.0, 1000.0,
              help="Subtracted from a draft whose every candidate has n-gram probability 0.", step=1),
        Param("user_text", "text", "", high=MAX_USER_TEXT,
              help=f"Your own text, added to the n-gram tables (up to {MAX_USER_TEXT:,} characters); the "
                   "prompt is always added."),
    )

    def check(self) -> None:
        self.weights = parse_weights(self.p["ngram_weights"])

    def ngram_model(self, s) -> NGramModel | None:
        if not self.p["ngram"] or self.p["alpha"] == 0:
            return None
        extra = [s.prompt_ids]
        if self.p["user_text"].strip():
            extra.append(encode(s.tokenizer, self.p["user_text"]))
        return NGramModel([corpus_table(s.tokenizer), NGramTable(extra)], self.weights)

    def decode(self, s):
        k, m, temp = self.p["drafts"], self.p["top_m"], self.p["temperature"]
        alpha, penalty, floor = self.p["alpha"], self.p["penalty"], self.p["ngram_floor"]
        ngrams = self.ngram_model(s)
        embedding = s.model.get_input_embeddings().weight
        cache = s.new_cache()
        logits = s.prefill(cache)
        drafts: list[list[int]] = [[]]
        scores = [0.0]
        described: list[list] = [[]]                  # per draft: its tokens' TokenEvents (uncommitted)
        if ngrams is None and self.p["ngram"] and alpha == 0:
            yield NoticeEvent("superposed", "alpha is 0: the n-gram statistics have no weight.")

        for step in range(s.max_new_tokens):
            scaled = logits.double() / temp
            top = torch.topk(scaled, min(m, scaled.shape[-1]))
            ids = top.indices.tolist()
            lm = (top.values - torch.logsumexp(top.values, 0)).tolist()        # top-m, renormalised
            texts = [s.token_text(t) for t in ids]
            full = torch.log_softmax(logits.double(), -1)
            base = s.describe(ids[0], logits, 0)

            cands = []                                   # (total, draft, j, lm, ng, score)
            for d, seq in enumerate(drafts):
                ng = [None] * len(ids)
                row = lm
                if ngrams is not None:
                    png = ngrams.probs(s.prompt_ids + seq, ids)
                    ng = [math.log(max(p, floor)) if max(p, floor) > 0 else -math.inf for p in png.tolist()]
                    row = [(1 - alpha) * a + alpha * b for a, b in zip(lm, ng)]
                    if all(r == -math.inf for r in row):
                        row = [(1 - alpha) * a - penalty for a in lm]
                for j, r in enumerate(row):
                    cands.append((scores[d] + r, d, j, lm[j], ng[j], r))
            ranked = sorted((c for c in cands if c[0] > -math.inf), key=lambda c: (-c[0], c[1], c[2]))[:2 * k]
            finished = bool(ranked) and s.is_eos(ids[ranked[0][2]])
            alive = [ranked[0]] if finished else [c for c in ranked if not s.is_eos(ids[c[2]])][:k]
            kept = {(c[1], c[2]) for c in alive}

            new_drafts, new_scores, new_described = [], [], []
            for total, d, j, *_ in alive:
                v = ids[j]
                event = replace(base, token_id=v, logprob=float(full[v]), alternatives=base.alternatives,
                                extra={"draft score": total})
                new_drafts.append(drafts[d] + [v])
                new_scores.append(total)
                new_described.append(described[d] + [event])
            if not new_drafts:                           # nothing finite to keep: end with the best so far
                break
            drafts, scores, described = new_drafts, new_scores, new_described
            n_distinct = distinct_drafts(drafts)
            for events in described:
                events[-1].extra[DISTINCT_KEY] = float(n_distinct)
            last = step + 1 >= s.max_new_tokens or finished
            if not last:
                emb, weights, merged = superpose(embedding, [d[-1] for d in drafts], scores)
            else:
                weights = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0).tolist()
                merged = len({d[-1] for d in drafts})
            try:
                yield SuperposedStepEvent(
                    step=step, drafts=[s.tokenizer.decode(d, skip_special_tokens=False) for d in drafts],
                    scores=scores, weights=weights, last_tokens=[s.token_text(d[-1]) for d in drafts], distinct=n_distinct, merged=merged, ngram=ngrams is not None,
                    finished=finished, perplexities=[stream_perplexity(events) for events in described],
                    candidates=[{"draft": d, "token_id": ids[j], "text": texts[j], "lm_logprob": a,
                                 "ngram_logprob": (None if b is None else (b if b > -math.inf else None)),
                                 "score": r, "total": t, "kept": (d, j) in kept}
                                for t, d, j, a, b, r in cands])
                yield StatsEvent({DISTINCT_KEY: float(n_distinct), "drafts": float(len(drafts))})
            except StopRun:
                yield NoticeEvent("superposed", f"Stopped: the output is the best draft so far ({len(drafts[0])} "
                                                "tokens).")
                break
            if last:
                break
            logits = s.forward(None, cache, inputs_embeds=emb.view(1, 1, -1))[0][0]

        for event in described[0]:
            yield s.emit(event)
