"""AdaDec: greedy decoding that pauses at uncertain steps (entropy >= theta), rolls the top-B
candidates out greedily for L tokens, and commits the candidate whose mean log-probability
(candidate + rollout) is highest. Only that first token is committed; rollouts are thrown away.

Source: SYSUSELab/AdaDec `llm/generator.py` (generate, lookahead_scoring_function,
get_lookahead_score) with beam_size = 1 as in the paper's runs.
"""

from __future__ import annotations

import copy
import math

import torch

from playground.events import NoticeEvent, PauseEvent, StatsEvent

from ..base import InvalidParameter, Param, Strategy
from . import threshold as fitting


def parse_threshold(raw: str) -> float | None:
    """'fitted' -> None (fit for the loaded model); a number of nats >= 0; 'inf' never pauses."""
    text = raw.strip().lower()
    if text in ("fitted", "auto", ""):
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidParameter(f"threshold must be 'fitted', a number of nats >= 0 or 'inf', got {raw!r}")
    if value != value or value < 0:
        raise InvalidParameter(f"threshold must be 'fitted', a number of nats >= 0 or 'inf', got {raw!r}")
    return value


class AdaDec(Strategy):
    name = "adadec"
    title = "AdaDec (pause and rerank at uncertain steps)"
    summary = ("Greedy, except where the next-token entropy H >= theta: then the top-B candidates are each "
               "rolled out greedily for up to L tokens and the one with the best mean log-probability "
               "(candidate + rollout) is committed; only that first token is kept. Defaults from the authors' "
               "code (L=5, B=3, beam size 1; lambda = 1 is a positive factor on every score, so it is left out). "
               "Deviations: a rollout stops at EOS or after a token holding a newline (the authors' stop rules "
               "are for Python code), and its log-probabilities stop there too (theirs keep adding after a stop "
               "while the length stays); theta is fitted for the loaded model on our own short reference texts "
               "(see the threshold help; the embedded SmolLM2 gets 0.841 nats).")
    paper = "https://github.com/SYSUSELab/AdaDec"
    params = (
        Param("threshold", "text", "fitted", high=20,
              help=("Entropy theta in nats; a step pauses when H >= theta. 'fitted': fitted once per loaded model by a "
                    "class-balanced logistic regression of 'reference token ranked 1' on entropy over 9 short reference "
                    "answers, cut at the best balanced accuracy (embedded SmolLM2: 0.841 nats). A number (0 pauses at "
                    "every step), or 'inf' (never pauses: plain greedy).")),
        Param("lookahead_length", "int", 5, low=1, high=16, help="L: greedy rollout tokens per candidate (paper: 5)."),
        Param("candidates", "int", 3, low=1, high=8, help="B: top candidates rolled out at a pause (paper: 3; 1 = greedy)."),
        Param("stop_at_newline", "bool", True,
              help="A rollout also stops after a token containing a newline (always at EOS)."),
    )

    def check(self) -> None:
        self.theta = parse_threshold(self.p["threshold"])

    def resolve_threshold(self, s) -> tuple[float, str]:
        if self.theta is not None:
            return self.theta, f"Threshold {self.theta:g} nats (set by hand)."
        fit = fitting.fitted(s.model, s.tokenizer)
        return fit.threshold, fit.words()

    def stops(self, s, token: int) -> bool:
        return s.is_eos(token) or (self.p["stop_at_newline"] and "\n" in s.token_text(token))

    def rollouts(self, s, cache, candidates: list[int], logps: list[float]) -> list[tuple[list[int], float]]:
        """Every candidate's greedy rollout of up to L tokens at once: a copy of the cache repeated into
        one row per candidate, one batched pass per lookahead token (L passes a pause, not B x L).
        Rows are all the same length, so no mask is needed; a row whose rollout has stopped keeps
        being fed and its further tokens are ignored. The session's own cache is never touched.
        Returns (rollout ids, mean log p of candidate and rollout) per candidate."""
        ids: list[list[int]] = [[] for _ in candidates]
        totals = list(logps)
        live = [not self.stops(s, c) for c in candidates]
        if any(live):
            rows = copy.deepcopy(cache)
            rows.batch_repeat_interleave(len(candidates))
            tokens = list(candidates)
            for _ in range(self.p["lookahead_length"]):
                logp = torch.log_softmax(s.forward(torch.tensor(tokens)[:, None], rows)[0].double(), -1)   # (B, V)
                for r in (r for r in range(len(candidates)) if live[r]):
                    tokens[r] = int(logp[r].argmax())
                    ids[r].append(tokens[r])
                    totals[r] += float(logp[r, tokens[r]])
                    live[r] = not self.stops(s, tokens[r])
                if not any(live):
                    break
        return [(row, total / (len(row) + 1)) for row, total in zip(ids, totals)]

    def decode(self, s):
        theta, words = self.resolve_threshold(s)
        yield NoticeEvent("adadec", words)
        B = self.p["candidates"]
        cache = s.new_cache()
        logits = s.prefill(cache)
        steps = paused = 0
        while True:
            logp = torch.log_softmax(logits.double(), -1)
            entropy = float(-(torch.special.xlogy(logp.exp(), logp.exp())).sum())
            pause = entropy >= theta
            extra = {"entropy": entropy, "paused": float(pause)}
            if math.isfinite(theta):
                extra["threshold"] = theta
            if not pause:
                token = int(logits.argmax())
            else:
                top = torch.topk(logp, min(B, logp.shape[-1]))
                before = s.forward_passes
                tops, logps = top.indices.tolist(), top.values.tolist()
                candidates = [{"token_id": c, "text": s.token_text(c), "logprob": lp, "rollout_ids": ids,
                               "rollout_text": s.tokenizer.decode(ids) if ids else "", "score": score, "chosen": False}
                              for c, lp, (ids, score) in zip(tops, logps, self.rollouts(s, cache, tops, logps))]
                best = max(range(len(candidates)), key=lambda i: candidates[i]["score"])   # first wins a tie
                candidates[best]["chosen"] = True
                token = candidates[best]["token_id"]
                paused += 1
                yield PauseEvent(step=len(s.output_ids), entropy=entropy, threshold=theta if math.isfinite(theta) else None,
                                 candidates=candidates, forward_passes=s.forward_passes - before)
            steps += 1
            yield s.commit(token, logits, extra=extra)
            yield StatsEvent({"paused steps": paused, "steps": steps, "paused fraction": paused / steps,
                              **({"threshold (nats)": theta} if math.isfinite(theta) else {})})
            if s.is_eos(token) or not s.room():
                return
            logits = s.forward([token], cache)[0][0]
