"""Measured memory bandwidth of this machine, the roofline for a memory-bound decoder.

Decoding one token reads every weight once, so (weight bytes read / s) against what this machine
can stream shows how close a method gets to the hardware (gpt-fast prints the same number).

Measured two ways over a buffer far larger than the caches, best of several timings spread over a
fraction of a second (other work on the machine only ever makes a stream slower), keeping the faster:
a tensor copy (reads and writes every byte), and a read stream shaped like a decode step's (a large
weight times one vector, its rows split over the cores as playground/row_split.py does; a copy can
under-state what a read stream gets, as writes cost extra traffic). Cached on disk with its date;
measured again at start-up once over MAX_AGE old, and whenever a run reads weights faster than it says
(a figure measured under load is too low; the re-measurement keeps the higher of the two).
"""

from __future__ import annotations

import json
import platform
import threading
import time
from datetime import datetime, timedelta, timezone

import torch

from . import huge_pages
from .config import settings

CACHE_FILE = "memory-bandwidth-v3.json"  # {key: {"gb_s", "measured_at"}}; v2: copy or read stream, the faster; v3: in 2 MiB pages
MAX_AGE = timedelta(days=7)
RECHECK_EVERY_S = 600.0      # an implausible run re-measures at most this often (small models fit in cache)

# A property of the machine, the same for every visitor: per process, per thread count.
_figures: dict[str, float] = {}
_checked_at: dict[str, float] = {}
_LOCK = threading.Lock()


def _best_seconds(work, rounds: int, repeats: int, pause_s: float) -> float:
    best = float("inf")
    for round_ in range(rounds):
        if round_:
            time.sleep(pause_s)              # a burst of other work rarely spans every round
        for _ in range(repeats):
            start = time.perf_counter()
            work()
            best = min(best, time.perf_counter() - start)
    return best


def measure_bandwidth_gb_s(n_bytes: int = 256 * 2**20, rounds: int = 3, repeats: int = 4,
                           pause_s: float = 0.05) -> float:
    src = huge_pages.empty((n_bytes // 4,), torch.float32).fill_(1.0)     # in 2 MiB pages, as the weights are
    dst = huge_pages.empty((n_bytes // 4,), torch.float32)
    copy_gb_s = 2 * n_bytes / _best_seconds(lambda: dst.copy_(src), rounds, repeats, pause_s) / 1e9
    parts = max(torch.get_num_threads(), 1)
    weight = src.view(parts, -1, 1024)                   # (parts, rows/parts, 1024): one block per core
    vector = torch.ones(parts, 1024, 1)
    read_gb_s = n_bytes / _best_seconds(lambda: torch.bmm(weight, vector), rounds, repeats, pause_s) / 1e9
    return max(copy_gb_s, read_gb_s)


def _key() -> str:
    return f"{platform.node()}-{torch.get_num_threads()}"


def _read_cache() -> dict:
    try:
        cached = json.loads((settings().cache_dir / CACHE_FILE).read_text())
        return cached if isinstance(cached, dict) else {}
    except (OSError, ValueError):
        return {}


def _fresh(entry) -> bool:
    """A dated entry younger than MAX_AGE (an undated one, from before dates were kept, is stale)."""
    try:
        measured_at = datetime.fromisoformat(entry["measured_at"])
        return float(entry["gb_s"]) > 0 and datetime.now(timezone.utc) - measured_at < MAX_AGE
    except (TypeError, KeyError, ValueError):
        return False


def _store(key: str, gb_s: float) -> None:
    cached = _read_cache()
    cached[key] = {"gb_s": gb_s, "measured_at": datetime.now(timezone.utc).isoformat()}
    path = settings().cache_dir / CACHE_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cached))
    except OSError:
        pass


def _load_or_measure(key: str) -> float:
    entry = _read_cache().get(key)
    if _fresh(entry):
        return float(entry["gb_s"])
    gb_s = measure_bandwidth_gb_s()
    _store(key, gb_s)
    _checked_at[key] = time.monotonic()
    return gb_s


def machine_bandwidth_gb_s(at_least: float | None = None) -> float:
    """This machine's measured bandwidth (GB/s). `at_least`: a run's achieved weight traffic; when
    it beats the figure, the figure is implausible and is measured again (rate-limited)."""
    key = _key()
    with _LOCK:
        if key not in _figures:
            _figures[key] = _load_or_measure(key)
        recheck_due = time.monotonic() - _checked_at.get(key, float("-inf")) > RECHECK_EVERY_S
        if at_least is not None and at_least > _figures[key] and recheck_due:
            _checked_at[key] = time.monotonic()
            _figures[key] = max(_figures[key], measure_bandwidth_gb_s())
            _store(key, _figures[key])
        return _figures[key]
