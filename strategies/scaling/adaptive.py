"""Adaptive inference-time compute (Manvi, Singh, Ermon, arXiv 2410.02725): spend samples only where the
model's own self-evaluation says a restart would help.

After a (partial) answer the model is asked whether it would do better if it started over; P("No"),
normalised over Yes/No, is the score: the estimated chance that the current sample is already the best.
The paper fine-tunes the model to answer this calibrated; SmolLM2 is not, so here the score is the raw
prompt's answer, uncalibrated (read it as a ranking at best). Asking costs one pass over the cached lanes.

Two modes:
  sampling  draw a sample, score it; stop once the score reaches the threshold, else draw another (up to
            max_samples), with the temperature rising across samples; return the best-scoring sample.
  pruning   start N lanes; after `prune_after` tokens score the partial answers and keep the top
            ceil(keep_fraction * N); finish those and return the best-scoring one.
"""

from __future__ import annotations

import math
from typing import Iterator

from playground.events import Event, LaneEvent, NoticeEvent, PopulationEvent
from playground.lanes import Lane, Lanes

from ..base import InvalidParameter, Param, StopRun, Strategy
from ..sampling.warpers import MIN_SAMPLING_TEMPERATURE, family_params
from .population import ess, extract_answer
from .rewards import Judge, yes_probability
from .steps import Sampler, grow, grow_to_end

RESTART_QUESTION = "Would you do better if you started over? Answer Yes or No."
UNCALIBRATED = "P(No) to 'would restarting do better?', uncalibrated (SmolLM2 is not fine-tuned for it)"


def temperatures(first: float, last: float, samples: int) -> list[float]:
    """Sample i's temperature: linear from `first` (the first sample, near greedy: the likeliest answer)
    to `last` (the last sample, the most diverse)."""
    if samples == 1:
        return [first]
    return [first + (last - first) * i / (samples - 1) for i in range(samples)]


def normalised(scores: list[float]) -> list[float]:
    """Scores as a simplex (uniform when all are 0), for the population views."""
    total = sum(scores)
    return [x / total for x in scores] if total > 0 else [1 / len(scores)] * len(scores)


def unstoppable(events: Iterator[Event]) -> Iterator[Event]:
    """Yield `events` to the end even if Stop arrives meanwhile: the run is already returning its answer."""
    for event in events:
        try:
            yield event
        except StopRun:
            pass


def best(lanes: list[Lane]) -> Lane:
    """The highest-scoring lane (ties: the earliest)."""
    return max(lanes, key=lambda lane: (lane.data["score"], -lanes.index(lane)))


class Adaptive(Strategy):
    name = "adaptive"
    title = "Adaptive inference-time compute (self-evaluation: adaptive sampling / early pruning)"
    summary = ("After each answer (or partial answer) the model is asked 'would you do better if you started "
               "over?'; P(No) normalised over Yes/No scores it. Sampling mode draws samples until a score "
               "reaches the threshold; pruning mode starts N lanes and keeps the best ceil(keep_fraction*N) "
               "after prune_after tokens. Deviations: the paper fine-tunes the model so this score is "
               "calibrated; SmolLM2 is not, so the score is uncalibrated. The temperature rises linearly "
               "across samples from first_temperature to temperature (our schedule).")
    paper = "https://arxiv.org/abs/2410.02725"
    many_sequences = True
    row_params = ("n",)   # memory bound: Strategy.footprint
    params = (
        Param("mode", "choice", "sampling", choices=("sampling", "pruning"),
              help="sampling: one sample at a time until the score reaches the threshold; pruning: N lanes, "
                   "the low scorers dropped after prune_after tokens."),
        Param("threshold", "float", 0.9, 0.0, 1.0, step=0.01,
              help="sampling: stop once a sample's score is at least this (0: always 1 sample; 1: never "
                   "reached, max_samples samples). Uncalibrated scores: pick it by eye."),
        Param("max_samples", "int", 4, 1, 16, step=1, help="sampling: at most this many samples (paper: 16)."),
        Param("first_temperature", "float", 0.4, 0.0, 5.0, step=0.05,
              help="sampling: the first sample's temperature (0 = greedy); later samples rise linearly to "
                   "`temperature`."),
        Param("n", "int", 4, 1, 16, step=1, help="pruning: lanes started together."),
        Param("prune_after", "int", 64, 1, 1024, step=1,
              help="pruning: tokens each lane grows before the partial answers are scored (paper: 64 or 128)."),
        Param("keep_fraction", "float", 0.5, 0.05, 1.0, step=0.05,
              help="pruning: the share of lanes kept, ceil(keep_fraction * n) (paper prunes 50-75%)."),
        Param("question", "text", RESTART_QUESTION, high=500,
              help="The self-evaluation question; the score is P(No) normalised over Yes/No (uncalibrated)."),
        *family_params(temperature_default=0.8, temperature_low=MIN_SAMPLING_TEMPERATURE),
    )

    def check(self):
        if not self.p["question"].strip():
            raise InvalidParameter("question must not be empty")

    def judge(self, session) -> Judge:
        """The question as token ids (tests with a tokenizer that cannot encode override this)."""
        return Judge.build(session.tokenizer, session.prompt_ids, self.p["question"].strip())

    def decode(self, s):
        judge = self.judge(s)
        if self.p["mode"] == "sampling":
            yield from self.adaptive_sampling(s, judge)
        else:
            yield from self.early_pruning(s, judge)

    def score(self, lanes: Lanes, rows: list[int], judge: Judge) -> list[float]:
        """P(No) = 1 - P(Yes), normalised over Yes/No: 'restarting would not help'."""
        scores = [1.0 - p for p in yes_probability(lanes, rows, judge)]
        for row, score in zip(rows, scores):
            lanes.lanes[row].data["score"] = score
        return scores

    # --- adaptive sampling ----------------------------------------------------------------------------
    def adaptive_sampling(self, s, judge: Judge) -> Iterator[Event]:
        """Samples one at a time. Row 0 stays the bare prompt: each new sample forks it (no second prompt
        pass), grows to its end, is scored, and is freed."""
        lanes = Lanes(s, 1)
        s.lanes_started -= 1                              # the bare prompt row is not a sample
        schedule = temperatures(self.p["first_temperature"], self.p["temperature"], self.p["max_samples"])
        done: list[Lane] = []
        current: Lane | None = None
        try:
            for i, temperature in enumerate(schedule):
                lanes.select([0, 0])
                current = lanes.lanes[1]
                current.parent = None                     # a fresh sample, not a copy of the bare prompt
                yield LaneEvent("spawn", current.id, i)
                sampler = Sampler({**self.p, "temperature": temperature}, s.generator)
                while not current.finished:
                    yield from grow(lanes, {1}, sampler, i)
                score = self.score(lanes, [1], judge)[0]
                lanes.free([1])
                done.append(current)
                current = None
                yield from self.scored(done, i, temperature)
                if score >= self.p["threshold"]:
                    yield NoticeEvent("adaptive", f"Sample {i + 1} scored {score:.3f} >= threshold "
                                                  f"{self.p['threshold']:g}: stopped after {i + 1} of "
                                                  f"{len(schedule)} samples.")
                    break
            else:
                yield NoticeEvent("adaptive", f"No sample reached the threshold {self.p['threshold']:g}: "
                                              f"all {len(schedule)} drawn; the best-scoring one is returned.")
        except StopRun:
            yield NoticeEvent("stopped", "Stopped: the best-scoring sample so far is returned"
                                         + ("" if done else " (the unscored partial sample)") + ".")
        chosen = best(done) if done else current
        yield from unstoppable(self.choose(lanes, chosen, len(done)))

    def scored(self, done: list[Lane], step: int, temperature: float) -> Iterator[Event]:
        lane = done[-1]
        yield LaneEvent("score", lane.id, step, reward=lane.data["score"], text=lane.text,
                        answer=extract_answer(lane.text))
        scores = [d.data["score"] for d in done]
        weights = normalised(scores)
        yield PopulationEvent(step=step, lanes=[d.id for d in done], rewards=scores, weights=weights,
                              ess=ess(weights), finished=[True] * len(done),   # weights untempered
                              note=f"{UNCALIBRATED}; sample {step + 1} at temperature {temperature:.2f}")

    # --- early pruning --------------------------------------------------------------------------------
    def early_pruning(self, s, judge: Judge) -> Iterator[Event]:
        """N lanes to prune_after tokens, scored; the best ceil(keep_fraction * N) finish; the best wins."""
        lanes = Lanes(s, self.p["n"])
        sampler = Sampler(self.p, s.generator)
        for lane in lanes.lanes:
            yield LaneEvent("spawn", lane.id, 0)
        try:
            for _ in range(self.p["prune_after"]):
                if not lanes.live():
                    break
                yield from grow(lanes, set(lanes.live()), sampler, 0)
            yield from self.prune(lanes, judge)
            yield from grow_to_end(lanes, sampler, step=1)
        except StopRun:
            yield NoticeEvent("stopped", "Stopped: the lanes are scored as they stand.")
        yield from unstoppable(self.final(lanes, judge))

    def final(self, lanes: Lanes, judge: Judge) -> Iterator[Event]:
        scores = self.score(lanes, list(range(len(lanes))), judge)
        yield from self.population(lanes, scores, 2, "final answers")
        yield from self.choose(lanes, best(lanes.lanes), 2)

    @staticmethod
    def choose(lanes: Lanes, chosen: Lane, step: int) -> Iterator[Event]:
        yield LaneEvent("chosen", chosen.id, step, reward=chosen.data.get("score"), text=chosen.text,
                        answer=extract_answer(chosen.text))
        yield from lanes.commit(chosen)

    def prune(self, lanes: Lanes, judge: Judge) -> Iterator[Event]:
        """Score the partial answers and free all but the top ceil(keep_fraction * N) (ties: lower row)."""
        rows = list(range(len(lanes)))
        scores = self.score(lanes, rows, judge)
        keep = math.ceil(self.p["keep_fraction"] * len(rows) - 1e-9)
        kept = sorted(sorted(rows, key=lambda r: (-scores[r], r))[:keep])
        dropped = [r for r in rows if r not in kept]
        yield from self.population(lanes, scores, 1, f"after {self.p['prune_after']} tokens: kept {keep} of "
                                                     f"{len(rows)}", survivors=[lanes.lanes[r].id for r in kept])
        for row in dropped:
            lane = lanes.lanes[row]
            yield LaneEvent("prune", lane.id, 1, reward=scores[row], text=lane.text,
                            reason=f"score {scores[row]:.3f} outside the top {keep}")
        lanes.free(dropped)

    def population(self, lanes: Lanes, scores: list[float], step: int, note: str,
                   survivors: list[int] | None = None) -> Iterator[Event]:
        for lane, score in zip(lanes.lanes, scores):
            yield LaneEvent("score", lane.id, step, reward=score, text=lane.text, answer=extract_answer(lane.text))
        weights = normalised(scores)
        yield PopulationEvent(step=step, lanes=[lane.id for lane in lanes.lanes], rewards=scores,
                              weights=weights, ess=ess(weights), survivors=survivors or [],
                              finished=[bool(lane.finished) for lane in lanes.lanes], note=f"{UNCALIBRATED}; {note}")
