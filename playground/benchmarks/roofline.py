"""The decode step against the memory roofline: how long one token takes, and how long it must take.

A one-token pass reads every weight once, so it cannot beat (weight bytes / memory bandwidth): the
roofline. Where the weights are exact low-bit codes (low_bit.py) our step reads those, so two floors are
shown: the bytes it reads, and the float32 weights' bytes (the floor of any step that streams them). This times one-token passes after a short and a long context, through our forward
(playground/lean_forward.py) and through transformers' call, and sets them beside that floor, with
the bandwidth measured by playground/hardware.py (the faster of a copy and a read stream) right before
and after the timings. Printed at the top of every `bench` report.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
from transformers import DynamicCache

from .. import compiled_step, cpu_linear, lean_forward
from ..kv_cache import GrowingCache
from ..decoding import weight_bytes
from ..hardware import measure_bandwidth_gb_s

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


def products_seconds(model, steps: int = 24) -> float:
    """Median seconds of the step's weight products alone (every layer's and the head's, one row each,
    through the kernel the step uses): what reading the weights costs through it, without the rest."""
    weights = [w for plan in lean_forward.layer_plans(model.model) for w, _ in (plan.qkv, plan.o, plan.gate_up, plan.down)]
    weights.append(model.lm_head.weight)
    rows = {w.shape[1]: torch.randn(1, 1, w.shape[1], dtype=w.dtype) for w in weights}
    times = []
    with torch.inference_mode():
        for step in range(steps + 2):
            start = time.perf_counter()
            for weight in weights:
                cpu_linear.linear(rows[weight.shape[1]], weight)
            if step >= 2:
                times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def report(model) -> dict:
    """{"weight_mb", "float32_mb", "bandwidth_gb_s", "floor_ms", "float32_floor_ms",
    "steps": [{"context", "path", "ms", "of_roofline", "of_float32_roofline"}]}:
    our step compiled (where compiled_step.prepare made it) and eager, transformers' call, and the
    weight products alone. Two floors: the bytes our step reads (weight_bytes: weights held as exact
    low-bit codes count at the codes' size, low_bit.py) and the float32 weights' bytes (what transformers'
    pass reads, and the floor of a step that streams them). The bandwidth is measured right before and
    right after the timings (the faster of the two), not read from the machine's cached figure: on a
    shared machine it moves by half from one minute to the next, and a floor from another minute put a
    step at 119 % of it."""
    before = measure_bandwidth_gb_s()
    lean = lean_forward.supports(model)
    paths = [("ours", lean, False)]
    if compiled_step.for_model(model) is not None:
        paths = [("ours, compiled", True, False), ("ours, eager", True, True)]
    paths += [("transformers", False, False)] if lean else []
    timed = []
    for context in CONTEXTS:
        for name, through_lean, eager in paths:
            with compiled_step.paused(model) if eager else nullcontext():
                timed.append((context, name, step_seconds(model, context, through_lean)))
    if lean:
        timed.append((0, "products only", products_seconds(model)))
    gb_s = max(before, measure_bandwidth_gb_s())
    floor = weight_bytes(model) / (gb_s * 1e9)
    float32 = float32_bytes(model)
    float32_floor = float32 / (gb_s * 1e9)
    steps = [{"context": context, "path": name, "ms": seconds * 1e3, "of_roofline": floor / seconds,
              "of_float32_roofline": float32_floor / seconds} for context, name, seconds in timed]
    return {"weight_mb": weight_bytes(model) / 1e6, "float32_mb": float32 / 1e6, "bandwidth_gb_s": gb_s,
            "floor_ms": floor * 1e3, "float32_floor_ms": float32_floor * 1e3, "steps": steps}


def float32_bytes(model) -> int:
    """The model's parameters at their own size, each shared tensor once (no codes)."""
    return sum({p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}.values())


def print_roofline(result: dict) -> None:
    print(f"decode step: {result['weight_mb']:.0f} MB of weights read at {result['bandwidth_gb_s']:.1f} GB/s "
          f"(measured before and after the timings, the faster) = {result['floor_ms']:.1f} ms floor per token; "
          f"the float32 weights ({result['float32_mb']:.0f} MB): {result['float32_floor_ms']:.1f} ms")
    for step in result["steps"]:
        where = f"forward after {step['context']:4d} tokens" if step["context"] else "(its weight products alone)"
        print(f"  {step['path']:>15} {where}: {step['ms']:6.1f} ms = {step['of_roofline']:.0%} of the roofline, "
              f"{step['of_float32_roofline']:.0%} of the float32 one")
