"""Best-of-N: sample N full answers in one batch, score each, return one.

Selection is the reward's argmax (ties go to the lowest lane), or, as in the analytic LLM-as-a-judge
paper, a draw from softmax(reward / tau): tau -> 0 is the argmax, tau -> infinity a uniform pick.
"""

from __future__ import annotations

import torch

from playground.events import LaneEvent, PopulationEvent

from ..base import Param, Strategy
from ..sampling.warpers import MIN_SAMPLING_TEMPERATURE, family_params
from .population import ess, extract_answer, softmax_weights
from .rewards import make_reward, reward_params
from .steps import sample_to_end


class BestOfN(Strategy):
    name = "best_of_n"
    title = "Best-of-N (reward argmax or softmax selection)"
    summary = ("Sample N answers at once (one batched forward per token), score each with the reward, and return "
               "the best, or draw one from softmax(reward / tau).")
    paper = "https://arxiv.org/abs/2407.21787"
    many_sequences = True
    row_params = ("n",)   # memory bound: Strategy.footprint
    params = (
        Param("n", "int", 4, 1, 16, help="Samples N, decoded together as lanes.", step=1),
        Param("selection", "choice", "argmax", choices=("argmax", "softmax"),
              help="argmax: the highest reward (ties: lowest lane); softmax: draw from softmax(reward / tau)."),
        Param("selection_temperature", "float", 0.1, 0.01, 10.0, help="tau for softmax selection.", step=0.01),
        *reward_params(),
        *family_params(temperature_default=0.8, temperature_low=MIN_SAMPLING_TEMPERATURE),
    )

    def check(self):
        make_reward(self.p)

    def decode(self, s):
        reward = make_reward(self.p)
        lanes = yield from sample_to_end(s, self.p["n"], self.p, "Stopped: the samples are scored as they stand.")
        rows = list(range(len(lanes)))
        scores = reward.score(lanes, rows, final=True)
        if self.p["selection"] == "softmax":
            weights = softmax_weights(scores, self.p["selection_temperature"])
            pick = int(torch.multinomial(torch.tensor(weights), 1, generator=s.side_generator(0)))
        else:
            weights = [1.0 if r == max(scores) else 0.0 for r in scores]
            weights = [w / sum(weights) for w in weights]
            pick = scores.index(max(scores))
        ids = [lane.id for lane in lanes.lanes]
        for lane, score in zip(lanes.lanes, scores):
            yield LaneEvent("score", lane.id, 1, parent=lane.parent, reward=score, text=lane.text,
                            answer=extract_answer(lane.text))
        yield PopulationEvent(step=1, lanes=ids, rewards=scores, weights=weights, ess=ess(weights),
                              finished=[bool(lane.finished) for lane in lanes.lanes],
                              note=f"{reward.label}; chosen: lane {ids[pick]}")
        chosen = lanes.lanes[pick]
        yield LaneEvent("chosen", chosen.id, 1, reward=scores[pick], text=chosen.text, answer=extract_answer(chosen.text))
        yield from lanes.commit(chosen)
