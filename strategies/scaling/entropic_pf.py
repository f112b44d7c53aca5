"""Entropic particle filtering (ePF, Giannone et al. 2025): particle filtering that resists "particle
impoverishment", an overconfident reward collapsing the set onto one trace early.

Entropic annealing (its_hub's EntropicParticleFiltering): when ESS/N < 0.5 in the first half of the run,
the weights are tempered with temperature max(1, (N/ESS)(1 - t/T_max)) before resampling, so more distinct
particles survive; the temperature fades to 1 as the run goes on. Systematic resampling by default.

Look-ahead modulation (optional, lambda > 0) is OUR reconstruction (the paper's formula was not verified):
logw = logit(r_t) + lambda * logit(r_lookahead), where r_lookahead scores one look-ahead step: each live
particle is forked, the copy grows one more step (drawn from a side generator, so the particles' own token
draws are unchanged), is scored with the same reward, and is then discarded (Lanes.select). The copies'
tokens are real model work: they count in the run's token and forward totals, never in the answer.
"""

from __future__ import annotations

from playground.lanes import Lanes

from ..base import Param
from .particle_filter import ParticleFilter, particle_params
from .population import entropic_temperature, ess, logit, softmax_weights
from .rewards import Reward
from .steps import Sampler, grow_step


class EntropicParticleFilter(ParticleFilter):
    name = "entropic_pf"
    title = "Entropic particle filtering (annealed weights against collapse)"
    summary = ("Particle filtering whose weights are flattened when the population collapses early: if ESS/N < 0.5 "
               "and t/T_max < 0.5, weights = softmax(logw / tau) with tau = max(1, (N/ESS)(1 - t/T_max)). Systematic "
               "resampling by default. The final particle is the argmax of the untempered weights, i.e. the highest "
               "final reward. Optional look-ahead: each particle is also scored by one extra step grown on a "
               "discarded copy (ours: the paper's exact formula was not verified). No PRM offline: the default "
               "reward is the model's own confidence over the step.")
    paper = "https://arxiv.org/abs/2510.05825"
    params = (
        *particle_params("systematic"),
        Param("annealing", "bool", True, help="Entropic annealing of the weights (off: plain particle filtering)."),
        Param("lookahead", "float", 0.0, 0.0, 4.0, step=0.05,
              help="lambda in logw = logit(r) + lambda * logit(r of one look-ahead step) (0 = off; ours). Each "
                   "step then costs up to twice the tokens."),
    )

    def decode(self, s):
        self.lookahead_sampler = Sampler(self.p, s.side_generator(1))
        yield from super().decode(s)

    def weigh(self, log_weights, step):
        base = self.p["softmax_temperature"]
        weights = softmax_weights(log_weights, base)
        before = ess(weights)
        tau = 1.0
        if self.p["annealing"]:
            tau = entropic_temperature(before, len(log_weights), step, self.p["max_steps"])
        if tau > 1.0:
            weights = softmax_weights(log_weights, base * tau)
        return weights, tau, {"EA temperature": tau, "ESS/N before annealing": before / len(log_weights)}

    def log_weights(self, lanes, reward, grown, step):
        out = super().log_weights(lanes, reward, grown, step)
        rows = [r for r in grown if not lanes.lanes[r].finished]
        if self.p["lookahead"] > 0 and rows:
            ahead = lookahead_rewards(lanes, rows, reward, self.lookahead_sampler, step, self.p["step_tokens"])
            for row, value in zip(rows, ahead):
                lanes.lanes[row].data["lookahead_reward"] = value
                lanes.lanes[row].data["logw"] += self.p["lookahead"] * logit(value)
                out[row] = lanes.lanes[row].data["logw"]
        return out


def lookahead_rewards(lanes: Lanes, rows: list[int], reward: Reward, sampler: Sampler, step: int,
                      cap: int) -> list[float]:
    """The reward of one more step for each of `rows`: fork each row, grow the copies one step (the
    originals sit out), score the copies, and drop them, leaving the lanes as they were."""
    n = len(lanes)
    lanes.select(list(range(n)) + rows)                      # rows n.. are the copies, in the order of `rows`
    copies = list(range(n, n + len(rows)))
    for _ in grow_step(lanes, sampler, step, cap, rows=copies):   # the copies' events are not part of the run
        pass
    scores = reward.score(lanes, copies, final=False)
    lanes.select(list(range(n)))
    return scores
