"""Growing lanes by sampling: token by token, to the end of a reasoning step, or to the end.

Every function here advances all the lanes it grows in ONE batched forward per token (playground/lanes.py);
a lane whose step is over sits out while the others finish theirs. Draws go row by row through one seeded
generator, so a seeded run repeats, and one lane draws exactly what plain sampling would.
"""

from __future__ import annotations

from typing import Iterator

import torch

from playground.decoding import StopRun
from playground.events import Event, LaneEvent, NoticeEvent
from playground.lanes import Lanes

from ..sampling.warpers import chain_or_greedy

STEP_DELIMITER = "\n\n"       # Puri et al.'s step boundary


class Sampler:
    """Draws each lane's next token from its warped logits (the sampling family's chain; argmax at
    temperature 0)."""

    def __init__(self, values: dict, generator: torch.Generator):
        self.warp = chain_or_greedy(values)
        self.generator = generator

    def draw(self, logits: torch.Tensor) -> int:
        """logits: (V,) one lane's next-token logits."""
        if self.warp is None:
            return int(torch.argmax(logits))
        probs = torch.softmax(self.warp(logits.double()), -1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def ended(lanes: Lanes, row: int, token: int) -> str:
    """Why this token ends its lane ("" if it does not): eos, or the run's length limit."""
    s = lanes.session
    if s.is_eos(token):
        return "eos"
    if len(lanes.lanes[row].tokens) >= s.max_new_tokens:
        return "length"
    return ""


def grow(lanes: Lanes, rows: set[int], sampler: Sampler, step: int) -> Iterator[Event]:
    """One token for each of `rows` (one batched forward); a lane that ends is marked finished."""
    tokens = [sampler.draw(lanes.logits[r]) if r in rows else None for r in range(len(lanes))]
    yield from lanes.push(tokens, step)
    for row in sorted(rows):
        reason = ended(lanes, row, tokens[row])
        if reason:
            lanes.finish(row, reason)
            lane = lanes.lanes[row]
            yield LaneEvent("finish", lane.id, step, parent=lane.parent, reason=reason, text=lane.text)


def step_text(lanes: Lanes, row: int) -> str:
    """The text of the lane's current step (the tokens since `data['step_start']`)."""
    lane = lanes.lanes[row]
    return lanes.session.tokenizer.decode(lane.tokens[lane.data.get("step_start", 0):], skip_special_tokens=False)


def grow_step(lanes: Lanes, sampler: Sampler, step: int, cap: int, delimiter: str = STEP_DELIMITER,
              rows: list[int] | None = None) -> Iterator[Event]:
    """Extend every live lane (or just `rows`) by one reasoning step: tokens until the step's text contains
    `delimiter`, the lane finishes (eos, length), or the step has `cap` tokens (SmolLM2 does not always
    write blank lines)."""
    going = set(lanes.live() if rows is None else rows)
    for row in going:
        lanes.lanes[row].data["step_start"] = len(lanes.lanes[row].tokens)
    while going:
        yield from grow(lanes, going, sampler, step)
        for row in list(going):
            lane = lanes.lanes[row]
            done = len(lane.tokens) - lane.data["step_start"] >= cap or delimiter in step_text(lanes, row)
            if lane.finished or done:
                going.discard(row)


def grow_to_end(lanes: Lanes, sampler: Sampler, step: int = 0, stop_when_any_finishes: bool = False
                ) -> Iterator[Event]:
    """Extend every live lane until it finishes (eos or length); with `stop_when_any_finishes`, stop at
    the first step in which some lane finished (First Finish Search)."""
    while lanes.live():
        before = len(lanes.live())
        yield from grow(lanes, set(lanes.live()), sampler, step)
        if stop_when_any_finishes and len(lanes.live()) < before:
            return


def sample_to_end(s, n: int, values: dict, stopped: str):
    """n lanes sampled to the end in one batch, with their spawn events (`lanes = yield from ...`). A Stop
    ends the sampling; the method then uses the lanes as they stand, and `stopped` tells the user so."""
    lanes = Lanes(s, n)
    for lane in lanes.lanes:
        yield LaneEvent("spawn", lane.id, 0)
    try:
        yield from grow_to_end(lanes, Sampler(values, s.generator))
    except StopRun:
        yield NoticeEvent("stopped", stopped)
    return lanes
