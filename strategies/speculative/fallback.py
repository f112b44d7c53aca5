"""Plain steps when drafts do not pay: the speculative family's shared fallback.

A method sizes its drafts from its own estimate of how many will be accepted (Token Recycling's
rank rates, DEL's per-layer agreement); an estimate can stay optimistic for a whole run (Token
Recycling's tree values multiply rank rates as if they were independent), and then every round
pays for a multi-token pass that commits little more than a plain step would. So what the drafting
rounds actually committed is compared with what they cost, in the frozen warm-up costs at the
context length of each round (cost_model.py; no wall-clock timing, so the same run decides the same
way on any machine load): when drafting commits fewer tokens per second than plain steps, the method
takes plain one-token steps, probing with one drafting round now and then (after 8 rounds, then 16,
up to 64) so it resumes when the text turns copyable. One NoticeEvent says it fell back, with the
numbers; one says it resumed.
"""

from __future__ import annotations

from playground.events import NoticeEvent

KEY = "drafting"     # the key of the methods' own plain-step notice: one notice of this kind at a time


def drafting_pays(tokens_per_round: float, round_cost: float, step_cost: float) -> bool:
    """Drafting pays when a drafting round commits more tokens per second than plain steps do:
    tokens_per_round / round_cost > 1 / step_cost (a plain step commits exactly one token)."""
    return tokens_per_round * step_cost > round_cost


class PlainFallback:
    """Decayed totals over the recent DRAFTING rounds: tokens committed, and cost in plain steps
    (the round's pass cost plus its drafting cost, over a one-token pass's cost at the same context)."""

    DECAY = 0.7          # per drafting round: the last ~3 rounds weigh most (copyable stretches come and go)
    JUDGE_AFTER = 4      # drafting rounds seen before the first verdict (one unlucky round says little)
    FIRST_GAP, MAX_GAP = 8, 64

    def __init__(self):
        self.tokens = self.cost = self.rounds = 0.0
        self.seen = 0
        self.fallen, self.gap, self.probe_at = False, self.FIRST_GAP, 0

    def plain(self, step: int) -> bool:
        """Must round `step` take a plain step? While fallen back, yes, except from each probe round on
        until a round has drafted (a probe round whose method proposes nothing says nothing)."""
        return self.fallen and step < self.probe_at

    def record(self, step: int, drafted: int, emitted: int, round_cost: float, step_cost: float):
        """After round `step`: `drafted` tokens proposed, `emitted` committed, round_cost seconds (pass +
        drafting) against step_cost seconds for a one-token pass. Yields a NoticeEvent when the state changes."""
        if drafted <= 0 or step_cost <= 0:
            return
        self.tokens = self.DECAY * self.tokens + emitted
        self.cost = self.DECAY * self.cost + round_cost / step_cost
        self.rounds = self.DECAY * self.rounds + 1
        self.seen += 1
        pays = drafting_pays(self.tokens / self.rounds, self.cost / self.rounds, 1.0)
        numbers = (f"drafting rounds committed {self.tokens / self.rounds:.2f} tokens for the cost of "
                   f"{self.cost / self.rounds:.2f} plain steps (recent rounds, measured pass costs)")
        if self.fallen and pays:
            self.fallen, self.gap = False, self.FIRST_GAP
            yield NoticeEvent(KEY, f"drafting again from round {step + 2}: {numbers}", active=False)
        elif self.fallen:
            self.gap = min(self.gap * 2, self.MAX_GAP)
            self.probe_at = step + 1 + self.gap
        elif not pays and self.seen >= self.JUDGE_AFTER:
            self.fallen, self.gap = True, self.FIRST_GAP
            self.probe_at = step + 1 + self.gap
            yield NoticeEvent(KEY, f"fell back to plain steps (one token per target pass) from round {step + 2}: "
                                   f"{numbers}; trying a draft again every {self.FIRST_GAP}-{self.MAX_GAP} rounds")
