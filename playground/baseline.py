"""Plain greedy's decode speed for a model in this process: the denominator of "speed-up vs greedy".

Decode rate = tokens after the first / seconds after the first token, so a long prompt's prefill
does not blur the comparison. The server measures one at start (a short greedy run while no
browser is drawing, so speed-ups shown against it are conservative); every greedy run of a model
replaces it (then both sides ran under the same load); and when another method's run ends and
there is no rate for that model yet, a short greedy run on the same prompt measures one (once
per model, dtype and thread count). The number is always a measurement; the metrics say which.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from .decoding import DecodeSession

MEASURE_TOKENS = 32          # a greedy run this long settles the rate to within a few percent here
MIN_TOKENS = 8               # shorter greedy runs are too noisy to stand as the reference


@dataclass(frozen=True)
class GreedySpeed:
    tokens_per_s: float
    how: str                 # what was measured, shown next to the number


_SPEEDS: dict[tuple[str, str, int], GreedySpeed] = {}
_LOCK = threading.Lock()


def decode_rate(new_tokens: int, elapsed_s: float, first_token_s: float | None) -> float | None:
    """Tokens per second after the first token; None when there is nothing after it."""
    if first_token_s is None or new_tokens < 2 or elapsed_s <= first_token_s:
        return None
    return (new_tokens - 1) / (elapsed_s - first_token_s)


def _key(loaded) -> tuple[str, str, int]:
    return loaded.model_id, loaded.dtype, torch.get_num_threads()


def record_greedy(loaded, new_tokens: int, elapsed_s: float, first_token_s: float | None) -> None:
    rate = decode_rate(new_tokens, elapsed_s, first_token_s)
    if rate and new_tokens >= MIN_TOKENS:
        with _LOCK:
            _SPEEDS[_key(loaded)] = GreedySpeed(rate, f"your last greedy run ({new_tokens} tokens)")


def known_speed(loaded) -> GreedySpeed | None:
    with _LOCK:
        return _SPEEDS.get(_key(loaded))


def greedy_speed(loaded, prompt_ids: list[int], where: str = "on this prompt") -> GreedySpeed:
    """This process's greedy decode rate for the model, measuring it now if there is none."""
    known = known_speed(loaded)
    if known:
        return known
    from strategies.greedy import Greedy

    session = DecodeSession(loaded.model, loaded.tokenizer, prompt_ids, MEASURE_TOKENS, set(), 0)
    start, first, tokens = time.perf_counter(), None, 0
    for _ in Greedy().decode(session):
        tokens += 1
        first = time.perf_counter() - start if first is None else first
    rate = decode_rate(tokens, time.perf_counter() - start, first)
    speed = GreedySpeed(rate or 0.0, f"a {tokens}-token greedy run {where}, measured in this session")
    with _LOCK:
        _SPEEDS.setdefault(_key(loaded), speed)
    return speed
