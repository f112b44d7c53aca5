"""Particle filtering for inference-time scaling (Puri et al. 2025): N partial traces ("particles") grow one
reasoning step at a time; after each step every particle is scored, weighted by the odds of its reward, and
the population is resampled in proportion to the weights, so promising traces are copied and weak ones
dropped while the set still explores (a draw, not a beam's argmax).

Weights use only the latest reward (they reset at every resampling, as in the authors' code). A finished
particle stays in the pool with its final reward: it can be copied, never extended. `weigh` and
`log_weights` are the hooks Entropic PF (entropic_pf.py) overrides.
"""

from __future__ import annotations

from typing import Iterator

from playground.events import Event, LaneEvent, NoticeEvent, PopulationEvent, StatsEvent
from playground.lanes import Lanes

from ..base import Param, StopRun, Strategy
from ..sampling.warpers import MIN_SAMPLING_TEMPERATURE, family_params
from .population import RESAMPLERS, ess, extract_answer, logit, softmax_weights, vote
from .rewards import NEUTRAL, Reward, make_reward, reward_params
from .steps import Sampler, grow_step

STEP_LIMIT = "step limit"


def particle_params(resampling: str) -> tuple[Param, ...]:
    """The schema particle filters share (Entropic PF only changes the resampling default)."""
    return (
        Param("n", "int", 4, 1, 16, help="Particles N, decoded together as lanes.", step=1),
        Param("max_steps", "int", 40, 1, 200, help="Reasoning steps at most (the authors' 40); then every "
              "particle still running is finished.", step=1),
        Param("step_tokens", "int", 64, 1, 512, step=1,
              help="A step ends at a blank line ('\\n\\n', the authors' delimiter) or after this many tokens "
                   "(ours: SmolLM2 does not always write blank lines)."),
        Param("softmax_temperature", "float", 1.0, 0.01, 1000.0, step=0.01,
              help="weights = softmax(logit(reward) / this) (the authors' 1). Large: equal weights, i.e. "
                   "independent samples; small: every copy of the best particle."),
        Param("resampling", "choice", resampling, choices=tuple(RESAMPLERS),
              help="multinomial: N independent draws (Puri et al.); systematic: one offset, N even pointers "
                   "(each particle kept floor or ceil of N*w times; ePF's default)."),
        Param("resample_when", "choice", "always", choices=("always", "ess"),
              help="always: after every step (the authors' default); ess: only when ESS < N/2, and between "
                   "resamplings the log-weights add up (ours, standard SMC)."),
        Param("selection", "choice", "max_reward", choices=("max_reward", "weighted_vote"),
              help="max_reward: the particle with the highest final reward (the authors' default); "
                   "weighted_vote: the answer with the most summed reward, then its best particle."),
        *reward_params(),
        *family_params(temperature_default=0.8, temperature_low=MIN_SAMPLING_TEMPERATURE),
    )


class ParticleFilter(Strategy):
    name = "particle_filter"
    title = "Particle filtering (resample reasoning steps by reward)"
    summary = ("N particles grow one reasoning step at a time (to a blank line or the step cap); each is scored, "
               "weighted by softmax(logit(reward) / T) and the set is resampled, so good partial traces are "
               "copied and weak ones dropped. No process reward model runs offline: the default reward is the "
               "model's own confidence over the step (a substitute for the authors' PRM). Once every particle "
               "has finished the pool is kept as it is (ours: a last resampling could only drop the best).")
    paper = "https://arxiv.org/abs/2502.01618"
    many_sequences = True
    row_params = ("n",)   # memory bound: Strategy.footprint
    params = particle_params("multinomial")

    def check(self):
        make_reward(self.p)

    # --- hooks (Entropic PF) -----------------------------------------------------------------------
    def log_weights(self, lanes: Lanes, reward: Reward, grown: list[int], step: int) -> list[float]:
        """Each particle's log-weight: logit of its latest reward (plus what it carried since the last
        resampling under resample_when=ess). Finished particles keep the one they finished with."""
        for row in grown:
            data = lanes.lanes[row].data
            data["logw"] = data.get("carry", 0.0) + logit(data["reward"])
        return [lane.data["logw"] for lane in lanes.lanes]

    def weigh(self, log_weights: list[float], step: int) -> tuple[list[float], float, dict]:
        """(weights, the annealing temperature they were tempered with on top of softmax_temperature (1: none;
        PopulationEvent.temperature), stats)."""
        return softmax_weights(log_weights, self.p["softmax_temperature"]), 1.0, {}

    # --- the run -----------------------------------------------------------------------------------
    def decode(self, s):
        reward = make_reward(self.p)
        lanes = Lanes(s, self.p["n"])
        sampler, draws, done = Sampler(self.p, s.generator), s.side_generator(0), 0
        try:
            for lane in lanes.lanes:
                lane.data["root"] = lane.id
                yield LaneEvent("spawn", lane.id, 0)
            for step in range(1, self.p["max_steps"] + 1):
                if not lanes.live():
                    break
                grown = lanes.live()
                yield from grow_step(lanes, sampler, step, self.p["step_tokens"])
                if step == self.p["max_steps"]:
                    yield from finish_all(lanes, step)
                score(lanes, reward, grown)
                yield from self.resample_step(lanes, reward, grown, step, draws)
                done = step
        except StopRun:
            yield NoticeEvent("stopped", "Stopped: the output is the particle with the highest reward so far "
                                         "(its latest reward; unscored particles count as neutral).")
        yield from self.choose(lanes, done)

    def resample_step(self, lanes: Lanes, reward: Reward, grown: list[int], step: int, draws) -> Iterator[Event]:
        n, before = len(lanes), list(lanes.lanes)
        log_weights = self.log_weights(lanes, reward, grown, step)
        weights, temperature, stats = self.weigh(log_weights, step)
        effective = ess(weights)
        for row in grown:
            lane = lanes.lanes[row]
            yield LaneEvent("score", lane.id, step, parent=lane.parent, weight=weights[row],
                            reward=lane.data["reward"], text=lane.text, answer=extract_answer(lane.text))
        rows, note = self.resampled_rows(lanes, weights, effective, draws)
        kept = lanes.select(rows) if rows else lanes.lanes
        for lane in kept:
            lane.data["carry"] = 0.0 if rows else lane.data["logw"]
        yield PopulationEvent(
            step=step, lanes=[lane.id for lane in before], rewards=[lane.data["reward"] for lane in before],
            weights=weights, ess=effective, temperature=temperature,
            survivors=[before[r].id for r in rows], finished=[bool(lane.finished) for lane in before],
            note=f"{note}; reward: {reward.label}")
        survivors = {lane.id for lane in kept}
        for row, lane in enumerate(before):
            if lane.id not in survivors:
                yield LaneEvent("prune", lane.id, step, parent=lane.parent, weight=weights[row],
                                reward=lane.data["reward"], reason="resampled away", text=lane.text)
        old = {lane.id for lane in before}
        for lane in kept:
            if lane.id not in old:
                yield LaneEvent("spawn", lane.id, step, parent=lane.parent, reward=lane.data["reward"], text=lane.text)
        yield StatsEvent({"step": step, "ESS/N": effective / n,
                          "unique ancestors": len({lane.data["root"] for lane in kept}),
                          "live particles": len(lanes.live()),
                          "weight temperature": self.p["softmax_temperature"] * temperature, **stats})

    def resampled_rows(self, lanes: Lanes, weights: list[float], effective: float, draws) -> tuple[list[int], str]:
        """The rows drawn (copies of one row sit together), or [] when the population is kept as it is."""
        n = len(lanes)
        if not lanes.live():
            return [], "every particle finished: the pool is kept as it is"
        if self.p["resample_when"] == "ess" and effective >= n / 2:
            return [], f"kept (ESS {effective:.2f} >= N/2); weights carry over"
        rows = RESAMPLERS[self.p["resampling"]](weights, n, draws)
        why = f"ESS {effective:.2f} < N/2" if self.p["resample_when"] == "ess" else "every step"
        return rows, f"{self.p['resampling']} resampling ({why}): {len(set(rows))} of {n} particles drawn"

    def choose(self, lanes: Lanes, step: int) -> Iterator[Event]:
        rewards = [lane.data.get("reward", NEUTRAL) for lane in lanes.lanes]
        answers = [extract_answer(lane.text) for lane in lanes.lanes]
        pick = rewards.index(max(rewards))
        if self.p["selection"] == "weighted_vote":
            winner, _ = vote(answers, rewards)
            if winner:
                pick = max((r for r, a in enumerate(answers) if a == winner), key=lambda r: rewards[r])
        chosen = lanes.lanes[pick]
        yield LaneEvent("chosen", chosen.id, step, parent=chosen.parent, reward=rewards[pick], text=chosen.text,
                        answer=answers[pick])
        yield from lanes.commit(chosen)


def score(lanes: Lanes, reward: Reward, grown: list[int]) -> None:
    """Store each grown particle's reward in its data: particles that finished in this step are scored as
    final answers (an outcome reward sees them), the others as partial traces."""
    for final in (False, True):
        rows = [r for r in grown if bool(lanes.lanes[r].finished) == final]
        if rows:
            for row, value in zip(rows, reward.score(lanes, rows, final=final)):
                lanes.lanes[row].data["reward"] = value


def finish_all(lanes: Lanes, step: int) -> Iterator[Event]:
    """The step limit: every particle still running is finished."""
    for row in lanes.live():
        lanes.finish(row, STEP_LIMIT)
        lane = lanes.lanes[row]
        yield LaneEvent("finish", lane.id, step, parent=lane.parent, reason=STEP_LIMIT, text=lane.text)
