"""First Finish Search (Sync-FFS): n samples in lockstep, the first to reach end-of-sequence is the answer.

Agarwal, Sengupta and Chakraborty (arXiv 2505.18149) observe that on reasoning tasks shorter traces are
more often correct, so stopping at the first finished sample is both cheaper and a selection rule (the
shortest trace wins). Every step is one batched forward over the n lanes; decoding stops in the step in
which some lane emits EOS, so the tokens spent are at most n times the winner's length.
"""

from __future__ import annotations

from playground.events import LaneEvent, NoticeEvent, StatsEvent
from playground.lanes import Lanes

from ..base import Param, StopRun, Strategy
from ..sampling.warpers import MIN_SAMPLING_TEMPERATURE, family_params
from .population import extract_answer
from .steps import Sampler, grow_to_end


def first_finished(lanes: Lanes) -> int | None:
    """The lowest row that ended with EOS (lanes that finished in the same step tie; the lowest wins)."""
    return next((row for row, lane in enumerate(lanes.lanes) if lane.finished == "eos"), None)


class FirstFinish(Strategy):
    name = "first_finish"
    title = "First Finish Search (the first sample to finish wins)"
    summary = ("Sample n answers in lockstep (one batched forward per token) and return the first to emit "
               "end-of-sequence (ties: the lowest lane); the others are stopped there. If none finishes within "
               "the length limit, lane 0 is returned. The paper's 'shorter is more often correct' was measured "
               "on large reasoning models; a 135M model may not follow it.")
    paper = "https://arxiv.org/abs/2505.18149"
    many_sequences = True
    row_params = ("n",)   # memory bound: Strategy.footprint
    params = (
        Param("n", "int", 4, 1, 16, help="Samples n, decoded together as lanes (the paper uses 4 to 16).", step=1),
        *family_params(temperature_default=0.8, temperature_low=MIN_SAMPLING_TEMPERATURE),
    )

    def decode(self, s):
        lanes = Lanes(s, self.p["n"])
        for lane in lanes.lanes:
            yield LaneEvent("spawn", lane.id, 0)
        try:
            yield from grow_to_end(lanes, Sampler(self.p, s.generator), stop_when_any_finishes=True)
        except StopRun:
            yield NoticeEvent("stopped", "Stopped: the first finished sample, else lane 0 as it stands, is returned.")
        pick = first_finished(lanes)
        reason = "another lane finished first" if pick is not None else "none finished; lane 0 is returned"
        if pick is None:
            pick = 0
            yield NoticeEvent("none finished", "No sample reached end-of-sequence within the length limit: "
                                               "lane 0 is returned.")
        chosen = lanes.lanes[pick]
        for lane in lanes.lanes:
            if lane is not chosen:
                yield LaneEvent("prune", lane.id, 0, parent=lane.parent, reason=reason,
                                text=lane.text)
        yield StatsEvent({"winner length": float(len(chosen.tokens)), "lane tokens": float(s.lane_tokens),
                          "lanes": float(len(lanes))})
        yield LaneEvent("chosen", chosen.id, 0, text=chosen.text, answer=extract_answer(chosen.text))
        yield from lanes.commit(chosen)
