"""Self-consistency: sample n chains of thought in one batch, extract each final answer, return the mode.

Wang et al. (arXiv 2203.11171) marginalise the reasoning out: many chains that reach the same answer are
evidence for it. The unweighted vote is their default; the weighted variants sum a reward, or the chain's
length-normalised likelihood exp(mean token log-prob) (their "normalized weighted sum"), per answer.
"""

from __future__ import annotations

import math

from playground.events import LaneEvent, NoticeEvent, PopulationEvent, StatsEvent
from playground.lanes import Lanes

from ..base import Param, Strategy
from ..sampling.warpers import MIN_SAMPLING_TEMPERATURE, family_params
from .population import ess, extract_answer, vote
from .rewards import make_reward, reward_params
from .steps import sample_to_end

WEIGHTINGS = ("none", "reward", "likelihood")


def likelihood(lane) -> float:
    """exp(mean token log-prob) of the whole chain: its length-normalised probability (0 if empty)."""
    logprobs = [d.logprob for d in lane.described]
    return math.exp(sum(logprobs) / len(logprobs)) if logprobs else 0.0


def vote_weights(lanes: Lanes, answers: list[str], scores: list[float], weighting: str) -> list[float]:
    """Each lane's vote: 1, its reward or its likelihood; 0 for a lane with no answer (it does not vote)."""
    raw = {"none": [1.0] * len(answers), "reward": scores,
           "likelihood": [likelihood(lane) for lane in lanes.lanes]}[weighting]
    return [w if answer else 0.0 for w, answer in zip(raw, answers)]


class SelfConsistency(Strategy):
    name = "self_consistency"
    title = "Self-consistency (majority vote over sampled answers)"
    summary = ("Sample n chains at once (one batched forward per token), extract each final answer (the last "
               "\\boxed{} or number), and return a chain whose answer has the most votes (ties: the answer seen "
               "first, then its first chain). Weighted variants sum the reward or exp(mean log-prob) per answer. "
               "The vote needs answers: on free text with no number there is nothing to count.")
    paper = "https://arxiv.org/abs/2203.11171"
    many_sequences = True
    row_params = ("n",)   # memory bound: Strategy.footprint
    params = (
        Param("n", "int", 5, 1, 16, help="Chains sampled, decoded together as lanes (Wang et al. use up to 40).",
              step=1),
        Param("weighting", "choice", "none", choices=WEIGHTINGS,
              help="none: one vote per chain (the paper's majority vote); reward: sum the reward per answer; "
                   "likelihood: sum exp(mean token log-prob) per answer (the paper's normalized weighted sum)."),
        *reward_params(),
        *family_params(temperature_default=0.7, temperature_low=MIN_SAMPLING_TEMPERATURE),
    )

    def check(self):
        make_reward(self.p)

    def decode(self, s):
        reward = make_reward(self.p)
        lanes = yield from sample_to_end(s, self.p["n"], self.p, "Stopped: the chains vote as they stand.")
        yield from self.choose(lanes, reward)

    def choose(self, lanes: Lanes, reward):
        rows = list(range(len(lanes)))
        scores = reward.score(lanes, rows, final=True)
        answers = [extract_answer(lane.text) for lane in lanes.lanes]
        weights = vote_weights(lanes, answers, scores, self.p["weighting"])
        winner, tally = vote(answers, None if self.p["weighting"] == "none" else weights)
        pick = answers.index(winner) if winner else 0
        answered = sum(1 for a in answers if a)
        if not winner:
            yield NoticeEvent("no answers", "No chain has an answer to vote on (no \\boxed{} or number): "
                                            "the first chain is returned.")
        total = sum(weights)
        shares = [w / total for w in weights] if total > 0 else [1.0 / len(rows)] * len(rows)
        ids = [lane.id for lane in lanes.lanes]
        for lane, score, answer, share in zip(lanes.lanes, scores, answers, shares):
            yield LaneEvent("score", lane.id, 1, parent=lane.parent, weight=share, reward=score,
                            text=lane.text, answer=answer)
        yield PopulationEvent(step=1, lanes=ids, rewards=scores, weights=shares, ess=ess(shares),
                              finished=[bool(lane.finished) for lane in lanes.lanes],
                              note=f"{self.p['weighting']} vote; winner: {winner or 'none'}; chosen: lane {ids[pick]}")
        agreement = sum(1 for a in answers if a == winner) / answered if answered else 0.0
        yield StatsEvent({"agreement": agreement, "answered lanes": float(answered),
                          "distinct answers": float(len(tally))})
        chosen = lanes.lanes[pick]
        yield LaneEvent("chosen", chosen.id, 1, reward=scores[pick], weight=shares[pick], text=chosen.text,
                        answer=answers[pick])
        yield from lanes.commit(chosen)
