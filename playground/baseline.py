"""Plain greedy's decode rate: the denominator of "speed-up vs greedy".

Decode rate = tokens after the first / seconds after the prompt pass (decoding.Stopwatch), one
definition for every method, greedy included. Which greedy run is the reference, first that exists:

1. the user's own last greedy run of the same model, dtype and thread count (at least MIN_TOKENS
   tokens). Per-user state never lives in this module: the caller keeps a `References` mapping (the
   UI in a gr.State per browser session, an API caller its own) and passes it to runner.execute;
   `remember` returns it updated after a run. So one visitor's run is never another's reference;
2. the server's start-up measurement (runner.warm_up, before any visitor, so conservative);
3. one greedy run measured now, once per process (the CLI, the API without a warm-up).

Every number is a measurement, and the metrics say which run it was.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from .decoding import DecodeSession, Stopwatch
from .events import Event, MetricsEvent, RunStarted, TokenEvent

MEASURE_TOKENS = 32          # a greedy run this long settles the rate to within a few percent here
MIN_TOKENS = 8               # shorter greedy runs are too noisy to stand as the reference

Key = tuple[str, str, int]   # model id, dtype, torch threads


@dataclass(frozen=True)
class GreedySpeed:
    tokens_per_s: float
    how: str                 # what was measured, shown next to the number


References = dict[Key, GreedySpeed]   # one user's own greedy runs, kept by the caller

# Measurements this process made itself (start-up or the first run that needed one): server
# state, the same for every visitor, never a visitor's run.
_SERVER: dict[Key, GreedySpeed] = {}
_LOCK = threading.Lock()


def decode_rate(new_tokens: int, decode_s: float | None) -> float | None:
    """Tokens after the first per second after the prompt pass; None when there is nothing to divide."""
    if decode_s is None or new_tokens < 2 or decode_s <= 0:
        return None
    return (new_tokens - 1) / decode_s


def key_of(loaded) -> Key:
    return loaded.model_id, loaded.dtype, torch.get_num_threads()


def qualifies(new_tokens: int, rate: float | None, stop_reason: str) -> bool:
    return rate is not None and new_tokens >= MIN_TOKENS and stop_reason != "error"


def own(references: References | None, loaded) -> GreedySpeed | None:
    return (references or {}).get(key_of(loaded))


def server_speed(loaded) -> GreedySpeed | None:
    with _LOCK:
        return _SERVER.get(key_of(loaded))


def remember(references: References | None, events: list[Event]) -> References:
    """`references` plus this run when it is a greedy run that can stand as the reference (a new
    mapping: the caller's copy is never changed behind its back)."""
    updated = dict(references or {})
    start = next((e for e in events if isinstance(e, RunStarted)), None)
    metrics = next((e for e in reversed(events) if isinstance(e, MetricsEvent)), None)
    if start is None or metrics is None or start.strategy != "greedy" or metrics.decode_s is None:
        return updated
    if qualifies(metrics.new_tokens, metrics.decode_tokens_per_s, metrics.stop_reason):
        updated[(start.model_id, start.dtype, start.torch_threads)] = GreedySpeed(
            metrics.decode_tokens_per_s, f"a greedy run by the same user before this one ({metrics.new_tokens} tokens)")
    return updated


def _greedy_rate(loaded, prompt_ids: list[int]) -> tuple[float, int]:
    """Run plain greedy for MEASURE_TOKENS tokens (EOS ignored) and time it as every run is timed."""
    from strategies import REGISTRY

    session = DecodeSession(loaded.model, loaded.tokenizer, prompt_ids, MEASURE_TOKENS, set(), 0)
    watch = Stopwatch(session)
    tokens = sum(isinstance(e, TokenEvent) for e in watch.run(REGISTRY["greedy"]().decode(session)))
    return decode_rate(tokens, watch.decode_s) or 0.0, tokens


def measure_at_start_up(loaded, prompt_ids: list[int]) -> GreedySpeed:
    """The server's reference for visitors without a greedy run of their own (runner.warm_up)."""
    rate, tokens = _greedy_rate(loaded, prompt_ids)
    speed = GreedySpeed(rate, f"server start-up measurement: {tokens}-token greedy run before any visitor")
    with _LOCK:
        _SERVER[key_of(loaded)] = speed
    return speed


def measure_once(loaded, prompt_ids: list[int]) -> GreedySpeed:
    """No start-up measurement (CLI, API without warm-up): measure on this prompt, once per process."""
    known = server_speed(loaded)
    if known:
        return known
    rate, tokens = _greedy_rate(loaded, prompt_ids)
    speed = GreedySpeed(rate, f"a {tokens}-token greedy run this process measured on the first prompt "
                              f"that needed one (no start-up measurement)")
    with _LOCK:
        return _SERVER.setdefault(key_of(loaded), speed)
