"""Measured memory bandwidth of this machine, the roofline for a memory-bound decoder.

Decoding one token reads every weight once, so (model bytes x forward passes / s) against
what this machine can stream shows how close a method gets to the hardware (gpt-fast prints
the same number). Measured once per machine with a large tensor copy, cached on disk.
"""

from __future__ import annotations

import json
import platform
import time

import torch

from .config import settings

_measured: float | None = None


def measure_bandwidth_gb_s(n_bytes: int = 256 * 2**20, repeats: int = 5) -> float:
    src = torch.ones(n_bytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * n_bytes / best / 1e9          # a copy reads and writes every byte


def machine_bandwidth_gb_s() -> float:
    global _measured
    if _measured is None:
        key = f"{platform.node()}-{torch.get_num_threads()}"
        path = settings().cache_dir / "bandwidth.json"
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = {}
        if key not in cached:
            cached[key] = measure_bandwidth_gb_s()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(cached))
            except OSError:
                pass
        _measured = float(cached[key])
    return _measured
