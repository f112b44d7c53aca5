"""What a verification pass costs on this machine, measured: the denominator of every
"how big a draft" decision (Token Recycling's tree size, prompt lookup's draft length).

A pass over n tokens is not n times a one-token pass, and the curve differs on every machine and
kernel (playground/cpu_linear.py picks the product kernel by row count: on our 2-core CPU the
products of a 2-row pass cost ~1.2x one row, 4 rows ~2x, 8-11 rows ~3x), so it is measured, per
model and thread count, and shared by every run in the process.

Measured ONCE, at warm-up, as the fastest of several sweeps over the sizes, at a short and at a long
context, and then frozen: sizes that followed every pass timed in the process stuck wherever a
busy moment left them (the same prompt took 78, 33 and 85 target passes in three runs with the
same output). Only a process that never warmed up (tests, a library user) learns the curve from
its runs' own passes, as before.
"""

from __future__ import annotations

import time
import weakref

import torch


class CostModel:
    """Seconds per verification pass as a function of the number of tokens fed, measured here."""

    WINDOW = 7
    STALE = 50        # passes after which a size's timing is re-checked (it may have been taken under load)

    def __init__(self):
        self.frozen = False                           # measured at warm-up: runs no longer change it (below)
        self.long: dict[int, float] = {}              # the same sizes timed after LONG_CONTEXT tokens
        self.seconds: dict[int, float] = {}          # the median of the recent passes of each size
        self.recent: dict[int, list[float]] = {}
        self.tried: set[int] = set()
        self.passes = 0
        self.last: dict[int, int] = {}                # size -> the pass count when it was last timed

    def record(self, n_tokens: int, seconds: float | None) -> None:
        """A pass over n_tokens took `seconds` (None: no pass of that size ran, e.g. a first round whose root
        ran in the prompt pass)."""
        if self.frozen or seconds is None:
            return
        # A median of the last few follows drift but ignores one-off stalls (another process, a GC pause).
        recent = self.recent.setdefault(n_tokens, [])
        recent.append(seconds)
        del recent[:-self.WINDOW]
        self.seconds[n_tokens] = sorted(recent)[(len(recent) - 1) // 2]   # the lower median: stalls only add time
        self.passes += 1
        self.last[n_tokens] = self.passes

    @property
    def frozen(self) -> bool:
        """Measured at warm-up: runs no longer change the curves, which are then read, and remembered."""
        return self._is_frozen

    @frozen.setter
    def frozen(self, value: bool) -> None:
        self._is_frozen = value
        self._remembered: dict[int, tuple[float, float | None]] = {}   # n -> both curves, while frozen

    def untried(self, sizes) -> list[int]:
        return [n for n in sizes if n not in self.tried and n not in self.seconds]

    def stale(self, sizes) -> list[int]:
        """Timed sizes not timed again for STALE passes: a size timed while the machine was busy
        (a browser drawing on the same cores) would otherwise look slow, and go unused, for good."""
        return [n for n in sizes if n in self.last and self.passes - self.last[n] > self.STALE]

    def cost(self, n_tokens: int, context: int = 0) -> float:
        """Seconds for a pass of n_tokens after `context` cached tokens: between the short-context and
        the long-context curve, linear in the context (attention grows with it), where both were timed."""
        short, long = self._curves(n_tokens)
        if long is None or context <= SHORT_CONTEXT:
            return short
        weight = (context - SHORT_CONTEXT) / (LONG_CONTEXT - SHORT_CONTEXT)     # > 1: extrapolated
        return max(short, short + weight * (long - short))

    def round_cost(self, n_tokens: int, context: int = 0) -> float:
        """Seconds for a round whose pass feeds n_tokens: the pass, and when it drafts (n_tokens > 1)
        ROUND_WORK one-token passes more for the work outside it."""
        extra = ROUND_WORK * self.cost(1, context) if n_tokens > 1 else 0.0
        return self.cost(n_tokens, context) + extra

    def round_costs(self, sizes: list[int], context: int = 0) -> list[float]:
        """[round_cost(n, context) for n in sizes], with the one-token pass's cost read once (Token
        Recycling asks for a dozen sizes every round, plain rounds included)."""
        extra = ROUND_WORK * self.cost(1, context)
        return [self.cost(n, context) + (extra if n > 1 else 0.0) for n in sizes]

    def _curves(self, n_tokens: int) -> tuple[float, float | None]:
        """Both curves at n_tokens; once frozen, remembered (a method asks for a dozen sizes every round)."""
        if self.frozen and n_tokens in self._remembered:
            return self._remembered[n_tokens]
        both = curve_cost(self.seconds, n_tokens), curve_cost(self.long, n_tokens) if self.long else None
        if self.frozen:
            self._remembered[n_tokens] = both
        return both


SHORT_CONTEXT, LONG_CONTEXT = 32, 640      # the warm-up's two contexts (summaries and RAG prompts: 600-700)
# A drafting round's work outside its pass, in one-token passes: building the draft, its mask, moving
# cache rows, scoring and showing more rows (about 1-2 ms of a ~24 ms step on the 2-core test machine).
# Left out, a draft that paid a few percent on paper ran at a loss (Token Recycling at 0.93x plain steps
# on open-ended prompts, drafting one node a round).
ROUND_WORK = 0.1


def curve_cost(seconds: dict[int, float], n_tokens: int) -> float:
    """Piecewise-linear through the measured sizes, made non-decreasing (a bigger pass never
    costs less; noise can say so); extrapolated flat-then-linear beyond the ends."""
    sizes = sorted(seconds)
    times = []
    for m in sizes:
        times.append(max([seconds[m]] + times[-1:]))
    if n_tokens <= sizes[0]:
        return times[0]
    for (a, ta), (b, tb) in zip(zip(sizes, times), zip(sizes[1:], times[1:])):
        if n_tokens <= b:
            return ta + (tb - ta) * (n_tokens - a) / (b - a)
    slope = (times[-1] - times[-2]) / (sizes[-1] - sizes[-2]) if len(sizes) > 1 else 0.0
    return times[-1] + slope * (n_tokens - sizes[-1])


# One cost model per (model, thread count), shared by every run in this process.
_COSTS: "weakref.WeakKeyDictionary[torch.nn.Module, dict[int, CostModel]]" = weakref.WeakKeyDictionary()


def cost_model_for(model) -> CostModel:
    return _COSTS.setdefault(model, {}).setdefault(torch.get_num_threads(), CostModel())


def best_size(gains: list[float], costs: CostModel, sizes: list[int], context: int = 0) -> int:
    """The draft size k in `sizes` with the most expected tokens per second, (1 + gains[k]) /
    cost(k + 1), where gains[k] is the expected number of accepted drafts when k are proposed.

    A size whose pass was never timed, or not for a while, is tried (again) first, but only if it
    could win: its expected tokens over a lower bound of its cost (the slowest timed size below it;
    a bigger pass never costs less) must beat the best timed size. So a 65-token tree is never run
    just to learn that it is slow while drafts are rarely accepted."""
    def gain(k: int) -> float:
        return gains[min(k, len(gains) - 1)]

    if costs.frozen:                                   # measured at warm-up: every size has a cost
        return max(sizes, key=lambda k: (1 + gain(k)) / costs.round_cost(k + 1, context))
    timed = [k for k in sizes if k + 1 in costs.seconds]
    if not timed:
        todo = costs.untried([k + 1 for k in sizes])
        if todo:
            costs.tried.add(todo[0])
            return todo[0] - 1
        return sizes[0]
    best = max(timed, key=lambda k: (1 + gain(k)) / costs.round_cost(k + 1))
    best_rate = (1 + gain(best)) / costs.round_cost(best + 1)
    for n in sorted(costs.untried([k + 1 for k in sizes]) + costs.stale([k + 1 for k in sizes if k != best])):
        floor = max((t for m, t in costs.seconds.items() if m < n), default=0.0)
        if floor > 0 and (1 + gain(n - 1)) / floor > best_rate:
            costs.tried.add(n)
            costs.recent.pop(n, None)                  # a re-check starts afresh: old timings may be the reason
            return n - 1
    return best


WARM_UP_SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 17, 25, 33, 49, 65)   # every size the methods ask for lies between


def warm_up(session, sizes=WARM_UP_SIZES, repeats: int = 3) -> CostModel:
    """Time each pass size `repeats` times after a short and after a long context and keep the
    fastest, then freeze the model (see the module notes). A first, untimed sweep pays for first-call
    kernel setup (each new shape's first matmul is slow). About 130 passes: a few seconds at start-up.

    Each repeat is a sweep over all sizes, and each size keeps its FASTEST pass: load only ever adds
    time, and a busy spell of a few seconds then spoils one sweep, not every repeat of the sizes it
    fell on. (Timed size by size with medians, a warm-up under load 13 froze a one-token pass at 3.5 s,
    55x its real cost, and passes of 9 to 65 tokens at 4.3 one-token passes where they cost 1-3.)"""
    from .tree import keep_prefix

    costs = cost_model_for(session.model)
    for prefix, table in ((SHORT_CONTEXT, costs.seconds), (LONG_CONTEXT, costs.long)):
        cache = session.new_cache()
        session.forward([1 + i % 90 for i in range(prefix)], cache)
        times: dict[int, list[float]] = {n: [] for n in sizes}
        for attempt in range(repeats + 1):
            for n in sizes:
                start = time.perf_counter()
                session.forward(list(range(2, n + 2)), cache, last_only=False)
                if attempt:
                    times[n].append(time.perf_counter() - start)
                keep_prefix(cache, prefix)
        table.update({n: min(times[n]) for n in sizes})
    costs.frozen = True
    return costs
