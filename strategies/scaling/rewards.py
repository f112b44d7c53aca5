"""Rewards: one small interface that scores lanes in [0, 1], and the signals a CPU playground has offline.

A reward sees the lanes and the rows to score, and whether the lanes' answers are final (an outcome reward
such as the checker scores only final answers; earlier it is neutral, 0.5). Rewards that run the model do
it through `Lanes.peek` or `session.reward_forward`, so their passes are counted apart from generation
(MetricsEvent.reward_forward_passes). Appendix A of ALGORITHMS.md lists the options and their caveats.
"""

from __future__ import annotations

import math
from typing import ClassVar

from playground.lanes import Lanes

from ..base import InvalidParameter, Param
from .population import CLIP, extract_answer

NEUTRAL = 0.5


class Reward:
    name: ClassVar[str]
    label: ClassVar[str]          # what the score means, in words (shown in the views)
    calls_model: ClassVar[bool] = False

    def __init__(self, values: dict):
        self.values = values

    def score(self, lanes: Lanes, rows: list[int], final: bool) -> list[float]:
        """One score in [0, 1] per row (higher is better)."""
        raise NotImplementedError


def scope_logprobs(lanes: Lanes, row: int, scope: str) -> list[float]:
    """The lane's token log-probs: its current step (tokens since data['step_start']) or the whole trace."""
    lane = lanes.lanes[row]
    start = lane.data.get("step_start", 0) if scope == "step" else 0
    return [d.logprob for d in lane.described[start:]] or [d.logprob for d in lane.described]


class Confidence(Reward):
    """Self-certainty (its_hub's particle filter, no reward model): exp(mean token log-prob) of the step
    or the trace, the geometric-mean probability of its tokens. Free: the log-probs were kept while sampling."""

    name, label = "confidence", "exp(mean token log-prob), the model's own confidence"

    def score(self, lanes, rows, final):
        out = []
        for row in rows:
            logprobs = scope_logprobs(lanes, row, self.values.get("reward_scope", "step"))
            out.append(math.exp(sum(logprobs) / len(logprobs)) if logprobs else NEUTRAL)
        return out


class Certainty(Reward):
    """exp(-mean token entropy): 1 when every token was certain (entropy in nats, untempered)."""

    name, label = "certainty", "exp(-mean token entropy)"

    def score(self, lanes, rows, final):
        out = []
        for row in rows:
            lane = lanes.lanes[row]
            start = lane.data.get("step_start", 0) if self.values.get("reward_scope", "step") == "step" else 0
            entropies = [d.entropy for d in lane.described[start:]] or [d.entropy for d in lane.described]
            out.append(math.exp(-sum(entropies) / len(entropies)) if entropies else NEUTRAL)
        return out


class Checker(Reward):
    """A programmatic verifier for answers that can be checked: the final answer extracted from the text
    (the last \\boxed{} or number) against the reference answer. An outcome reward: it scores final answers
    only, and is neutral before."""

    name, label = "checker", "1 if the final answer equals the reference answer, else 0 (final answers only)"

    def __init__(self, values: dict):
        super().__init__(values)
        self.expected = extract_answer(values.get("reference", "")) or values.get("reference", "").strip()
        if not self.expected:
            raise InvalidParameter("the checker needs a reference answer (parameter 'reference')")

    def score(self, lanes, rows, final):
        if not final:
            return [NEUTRAL] * len(rows)
        return [1 - CLIP if extract_answer(lanes.lanes[r].text) == self.expected else CLIP for r in rows]


REWARDS: dict[str, type[Reward]] = {cls.name: cls for cls in (Confidence, Certainty, Checker)}


def reward_params(default: str = "confidence") -> tuple[Param, ...]:
    """The parameters every method that scores lanes takes (one schema, like the sampling family's)."""
    return (
        Param("reward", "choice", default, choices=tuple(REWARDS),
              help="How lanes are scored: " + "; ".join(f"{n}: {c.label}" for n, c in REWARDS.items()) + "."),
        Param("reward_scope", "choice", "step", choices=("step", "trace"),
              help="confidence / certainty over the latest step or the whole trace."),
        Param("reference", "text", "", high=2000,
              help="A reference answer (the checker compares final answers with it)."),
    )


def make_reward(values: dict) -> Reward:
    return REWARDS[values.get("reward", "confidence")](values)
