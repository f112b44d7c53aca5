"""Beam search over reasoning steps with a step reward (compute-optimal scaling: Snell et al., arXiv 2408.03314).

N beams; each live beam proposes M candidate next steps (N*M lanes grown together, one batched forward per
token); every new candidate is scored by the step reward and the top N candidates are kept. A finished beam
(eos or the length limit) stays in the pool with its last reward and competes, but proposes nothing. Search
stops when every kept beam is finished or after max_steps steps; the answer is the best kept beam (finished
ones first). The paper scores with a trained PRM and samples N first steps; here the reward is an offline
substitute and the first step already draws N*M candidates from the prompt (the pool is always N*M wide).
"""

from __future__ import annotations

from playground.events import LaneEvent, NoticeEvent, PopulationEvent, StatsEvent
from playground.lanes import Lanes

from ..base import InvalidParameter, Param, StopRun, Strategy
from ..sampling.warpers import MIN_SAMPLING_TEMPERATURE, family_params
from ..scaling.population import ess, extract_answer
from ..scaling.rewards import make_reward, reward_params
from ..scaling.steps import Sampler, grow_step

MAX_LANES = 16


def top_rows(rewards: list[float], n: int) -> list[int]:
    """The n best rows by reward (ties: the lower row), in row order."""
    order = sorted(range(len(rewards)), key=lambda r: (-rewards[r], r))[:n]
    return sorted(order)


def normalised(rewards: list[float]) -> list[float]:
    """Rewards scaled to sum 1 (uniform if all are 0): a simplex for the population views."""
    total = sum(rewards)
    return [r / total for r in rewards] if total > 0 else [1.0 / len(rewards)] * len(rewards)


class StepBeam(Strategy):
    name = "step_beam"
    title = "Beam search over steps (step reward)"
    summary = ("Compute-optimal scaling's beam search: keep N partial solutions; each proposes M next reasoning "
               "steps (grown together as lanes), every candidate is scored by the step reward, and the top N "
               "survive. The paper's reward is a trained PRM; here an offline substitute.")
    paper = "https://arxiv.org/abs/2408.03314"
    many_sequences = True
    row_params = ("beams", "candidates")   # memory bound: Strategy.footprint
    params = (
        Param("beams", "int", 4, 1, 16, help="Beams N kept after each step.", step=1),
        Param("candidates", "int", 4, 1, 16, help=f"Candidates M per beam per step (N*M <= {MAX_LANES}).", step=1),
        Param("max_steps", "int", 8, 1, 64, help="Steps at most; then the best kept beam.", step=1),
        Param("step_tokens", "int", 48, 1, 256, help="A step ends at a blank line or after this many tokens.",
              step=1),
        *reward_params(),
        *family_params(temperature_default=0.8, temperature_low=MIN_SAMPLING_TEMPERATURE),
    )

    def check(self):
        if self.p["beams"] * self.p["candidates"] > MAX_LANES:
            raise InvalidParameter(f"beams x candidates is {self.p['beams'] * self.p['candidates']}; "
                                   f"at most {MAX_LANES} lanes")
        make_reward(self.p)

    def decode(self, s):
        n, m = self.p["beams"], self.p["candidates"]
        reward, sampler = make_reward(self.p), Sampler(self.p, s.generator)
        lanes = Lanes(s, n * m)
        for lane in lanes.lanes:
            yield LaneEvent("spawn", lane.id, 0)
        calls, step = 0, 0
        try:
            for step in range(1, self.p["max_steps"] + 1):
                growing = lanes.live()
                yield from grow_step(lanes, sampler, step, self.p["step_tokens"])
                for row, r in zip(growing, reward.score(lanes, growing, final=False)):
                    lanes.lanes[row].data["reward"] = r
                calls += len(growing)
                yield from self.keep_best(lanes, n, m if step < self.p["max_steps"] else 1, step)
                yield StatsEvent({"steps": step, "reward calls": calls, "lanes": len(lanes)})
                if not lanes.live():
                    break
        except StopRun:
            yield NoticeEvent("step_beam", "Stopped: the output is the best beam so far.")
        yield from self.answer(lanes, step)

    def keep_best(self, lanes: Lanes, n: int, m: int, step: int):
        """Keep the top n lanes by reward; each live survivor is forked into m lanes for the next step
        (m = 1 after the last step)."""
        rewards = [lane.data.get("reward", 0.0) for lane in lanes.lanes]
        finished = [bool(lane.finished) for lane in lanes.lanes]
        ids = [lane.id for lane in lanes.lanes]
        kept = top_rows(rewards, n)
        for row in range(len(lanes)):
            if row not in kept:
                yield LaneEvent("prune", ids[row], step, reward=rewards[row], reason="not in the top N",
                                text=lanes.lanes[row].text)
        weights = normalised(rewards)
        yield PopulationEvent(step=step, lanes=ids, rewards=rewards, weights=weights, ess=ess(weights),
                              survivors=[ids[r] for r in kept], finished=finished,
                              note=f"kept the top {len(kept)} of {len(ids)} by step reward")
        rows = [r for r in kept for _ in range(1 if finished[r] or not lanes.live() else m)]
        before = set(ids)
        for lane in lanes.select(rows):
            if lane.id not in before:
                yield LaneEvent("spawn", lane.id, step, parent=lane.parent)

    def answer(self, lanes: Lanes, step: int):
        """Commit the best lane: finished lanes first, then the highest reward (ties: the lower row)."""
        best = min(range(len(lanes)), key=lambda r: (not lanes.lanes[r].finished,
                                                    -lanes.lanes[r].data.get("reward", 0.0), r))
        lane = lanes.lanes[best]
        if not lane.finished:
            yield NoticeEvent("step_beam", f"No beam finished within {step} steps: the output is the best "
                                           "unfinished beam.")
        yield LaneEvent("chosen", lane.id, step, reward=lane.data.get("reward"), text=lane.text,
                        answer=extract_answer(lane.text))
        yield from lanes.commit(lane)
