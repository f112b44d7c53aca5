"""The decode step against the memory roofline: how long one token takes, and how long it must take.

A one-token pass reads every weight once, so it cannot beat (weight bytes / memory bandwidth): the
roofline. This times one-token passes after a short and a long context, through our forward
(playground/lean_forward.py) and through transformers' call, and sets them beside that floor, with
the bandwidth measured by playground/hardware.py (the faster of a copy and a read stream). Printed
at the top of every `bench` report.
"""

from __future__ import annotations

import time

import torch
from transformers import DynamicCache

from .. import lean_forward
from ..kv_cache import GrowingCache
from ..decoding import weight_bytes
from ..hardware import machine_bandwidth_gb_s

CONTEXTS = (32, 640)


def step_seconds(model, context: int, lean: bool, steps: int = 24) -> float:
    """Median seconds of a one-token pass after `context` cached tokens."""
    call = (lambda ids, cache: lean_forward.forward(model, ids, cache)) if lean else \
        (lambda ids, cache: model(input_ids=ids, cache=cache, use_cache=True))
    cache = GrowingCache(model.config) if lean else DynamicCache(config=model.config)
    times = []
    with torch.inference_mode():
        call(torch.arange(1, context + 1)[None] % 1000 + 5, cache)
        token = torch.tensor([[7]])
        for step in range(steps + 2):
            start = time.perf_counter()
            call(token, cache)
            if step >= 2:                       # the first passes pay for kernel set-up
                times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def report(model) -> dict:
    """{"weight_mb", "bandwidth_gb_s", "floor_ms", "steps": [{"context", "path", "ms", "of_roofline"}]}."""
    gb_s = machine_bandwidth_gb_s()
    floor = weight_bytes(model) / (gb_s * 1e9)
    paths = [("ours", True)] + ([("transformers", False)] if lean_forward.supports(model) else [])
    steps = []
    for context in CONTEXTS:
        for name, lean in paths:
            seconds = step_seconds(model, context, lean and lean_forward.supports(model))
            steps.append({"context": context, "path": name, "ms": seconds * 1e3, "of_roofline": floor / seconds})
    return {"weight_mb": weight_bytes(model) / 1e6, "bandwidth_gb_s": gb_s, "floor_ms": floor * 1e3, "steps": steps}


def print_roofline(result: dict) -> None:
    print(f"decode step: {result['weight_mb']:.0f} MB of weights at {result['bandwidth_gb_s']:.1f} GB/s "
          f"(measured) = {result['floor_ms']:.1f} ms floor per token")
    for step in result["steps"]:
        print(f"  {step['path']:>12} forward after {step['context']:4d} tokens: {step['ms']:6.1f} ms "
              f"= {step['of_roofline']:.0%} of the roofline")
