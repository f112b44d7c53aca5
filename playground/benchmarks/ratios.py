"""The arithmetic of a per-prompt bench: speed ratios and their geometric mean, defined once.

A method's speed on a prompt is new tokens over seconds (best of the repeats, so a stall from
another process counts against nobody); its ratio to a reference is that speed over the
reference's speed on the SAME prompt. Ratios are combined by their geometric mean: a 2x on one
prompt and a 0.5x on another average to 1x, as they should (their arithmetic mean says 1.25x),
and a long prompt does not outweigh a short one as a ratio of summed times would.
"""

from __future__ import annotations

import math


def speed_ratio(tokens: int, seconds: float, ref_tokens: int, ref_seconds: float) -> float:
    """(tokens / seconds) / (ref_tokens / ref_seconds): how many times faster than the reference."""
    if min(tokens, ref_tokens) <= 0 or min(seconds, ref_seconds) <= 0:
        raise ValueError("a speed ratio needs tokens and time on both sides")
    return (tokens / seconds) / (ref_tokens / ref_seconds)


def geomean(values: list[float]) -> float:
    """exp(mean(log v)); every value must be positive."""
    if not values or min(values) <= 0:
        raise ValueError("a geometric mean needs positive values")
    return math.exp(sum(math.log(v) for v in values) / len(values))
