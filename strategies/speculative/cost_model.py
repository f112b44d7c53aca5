"""What a verification pass costs on this machine, measured: the denominator of every
"how big a draft" decision (Token Recycling's tree size, prompt lookup's draft length).

A pass over n tokens is not n times a one-token pass: on a 2-core CPU a 3-token pass costs
about 1.1x a 1-token one and an 11-token pass about 2x (MKL switches kernels at 4 rows), and
the curve differs on every machine, so it is measured, per model and thread count, by the
passes the methods run anyway, and shared by every run in the process.
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
        self.seconds: dict[int, float] = {}          # the median of the recent passes of each size
        self.recent: dict[int, list[float]] = {}
        self.tried: set[int] = set()
        self.passes = 0
        self.last: dict[int, int] = {}                # size -> the pass count when it was last timed

    def record(self, n_tokens: int, seconds: float) -> None:
        # A median of the last few follows drift but ignores one-off stalls (another process, a GC pause).
        recent = self.recent.setdefault(n_tokens, [])
        recent.append(seconds)
        del recent[:-self.WINDOW]
        self.seconds[n_tokens] = sorted(recent)[(len(recent) - 1) // 2]   # the lower median: stalls only add time
        self.passes += 1
        self.last[n_tokens] = self.passes

    def untried(self, sizes) -> list[int]:
        return [n for n in sizes if n not in self.tried and n not in self.seconds]

    def stale(self, sizes) -> list[int]:
        """Timed sizes not timed again for STALE passes: a size timed while the machine was busy
        (a browser drawing on the same cores) would otherwise look slow, and go unused, for good."""
        return [n for n in sizes if n in self.last and self.passes - self.last[n] > self.STALE]

    def cost(self, n_tokens: int) -> float:
        """Piecewise-linear through the measured sizes, made non-decreasing (a bigger pass never
        costs less; noise can say so); extrapolated flat-then-linear beyond the ends."""
        sizes = sorted(self.seconds)
        times = []
        for m in sizes:
            times.append(max([self.seconds[m]] + times[-1:]))
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


def best_size(gains: list[float], costs: CostModel, sizes: list[int]) -> int:
    """The draft size k in `sizes` with the most expected tokens per second, (1 + gains[k]) /
    cost(k + 1), where gains[k] is the expected number of accepted drafts when k are proposed.

    A size whose pass was never timed, or not for a while, is tried (again) first, but only if it
    could win: its expected tokens over a lower bound of its cost (the slowest timed size below it;
    a bigger pass never costs less) must beat the best timed size. So a 65-token tree is never run
    just to learn that it is slow while drafts are rarely accepted."""
    def gain(k: int) -> float:
        return gains[min(k, len(gains) - 1)]

    timed = [k for k in sizes if k + 1 in costs.seconds]
    if not timed:
        todo = costs.untried([k + 1 for k in sizes])
        if todo:
            costs.tried.add(todo[0])
            return todo[0] - 1
        return sizes[0]
    best = max(timed, key=lambda k: (1 + gain(k)) / costs.cost(k + 1))
    best_rate = (1 + gain(best)) / costs.cost(best + 1)
    for n in sorted(costs.untried([k + 1 for k in sizes]) + costs.stale([k + 1 for k in sizes if k != best])):
        floor = max((t for m, t in costs.seconds.items() if m < n), default=0.0)
        if floor > 0 and (1 + gain(n - 1)) / floor > best_rate:
            costs.tried.add(n)
            costs.recent.pop(n, None)                  # a re-check starts afresh: old timings may be the reason
            return n - 1
    return best


def warm_up(session, sizes=range(1, 17), prefix: int = 32) -> CostModel:
    """Run and time one pass of each size on a short prefix, so that a fresh process's first
    runs neither pay for first-call kernel setup (each new shape's first matmul is slow) nor
    spend their rounds trying sizes: every size is passed twice and the second is recorded."""
    from .tree import keep_prefix

    costs = cost_model_for(session.model)
    cache = session.new_cache()
    session.forward(list(range(1, prefix + 1)), cache)
    for n in sizes:
        for timed in (False, True):
            start = time.perf_counter()
            session.forward(list(range(2, n + 2)), cache, last_only=False)
            if timed:
                costs.record(n, time.perf_counter() - start)
            keep_prefix(cache, prefix)
    return costs
