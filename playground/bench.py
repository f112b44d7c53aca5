"""`python -m playground bench`: every method against transformers' `generate` greedy, same
model, dtype, prompts and thread count, measured in this process (speed lives here, not in tests).

Each method's tokens/s is total new tokens over total decode time across the prompt set; the
ratio divides by `generate` greedy's tokens/s measured the same way, interleaved per prompt so
machine noise hits both alike.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from strategies import REGISTRY

from .events import MetricsEvent, TokenEvent
from .models import load_model
from .runner import GenerationRequest, execute, prepare

PROMPTS = [
    "What is the capital of France?",
    "Write a short story about a robot who learns to paint.",
    "Explain in three sentences why the sky is blue.",
    "List five fruits and one fact about each.",
]


def hf_generate(loaded, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], float, float]:
    """transformers greedy: (new ids, seconds, time to first token)."""
    from transformers import TextStreamer

    class FirstToken(TextStreamer):
        def __init__(self):
            self.first = None
            self.calls = 0

        def put(self, value):
            self.calls += 1
            if self.calls == 2 and self.first is None:      # first call is the prompt
                self.first = time.perf_counter()

        def end(self):
            pass

    ids = torch.tensor([prompt_ids])
    streamer = FirstToken()
    start = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                    do_sample=False, streamer=streamer)
    elapsed = time.perf_counter() - start
    return out[0, ids.shape[1]:].tolist(), elapsed, (streamer.first or time.perf_counter()) - start


def run_method(loaded, name: str, prompt: str, max_new_tokens: int):
    prepared = prepare(GenerationRequest(prompt=prompt, strategy=name, max_new_tokens=max_new_tokens), loaded)
    events = list(execute(prepared))
    metrics = events[-1]
    assert isinstance(metrics, MetricsEvent)
    return [e.token_id for e in events if isinstance(e, TokenEvent)], metrics, prepared.prompt_ids


def main(args) -> int:
    loaded = load_model(args.model, args.dtype)
    methods = args.methods.split(",") if args.methods else list(REGISTRY)
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        print(f"error: unknown method {unknown[0]!r}; available: {', '.join(REGISTRY)}", file=sys.stderr)
        return 2
    # warm-up: first calls pay for allocation and kernel selection
    run_method(loaded, "greedy", PROMPTS[0], 8)
    totals = {m: {"tokens": 0, "seconds": 0.0, "ttft": [], "passes": 0, "equal_greedy": True} for m in methods}
    base = {"tokens": 0, "seconds": 0.0, "ttft": []}
    for _ in range(args.repeats):
        for prompt in PROMPTS:
            greedy_ids = None
            for name in methods:
                ids, m, prompt_ids = run_method(loaded, name, prompt, args.max_new_tokens)
                if greedy_ids is None:
                    ref, seconds, ttft = hf_generate(loaded, prompt_ids, args.max_new_tokens)
                    base["tokens"] += len(ref)
                    base["seconds"] += seconds
                    base["ttft"].append(ttft)
                    greedy_ids = ref
                t = totals[name]
                t["tokens"] += m.new_tokens
                t["seconds"] += m.elapsed_s
                t["ttft"].append(m.time_to_first_token_s or 0.0)
                t["passes"] += m.forward_passes
                t["equal_greedy"] &= ids == greedy_ids
    base_tps = base["tokens"] / base["seconds"]
    rows = []
    for name in methods:
        t = totals[name]
        tps = t["tokens"] / t["seconds"] if t["seconds"] else 0.0
        rows.append({"method": name, "tokens_per_s": tps, "ratio_to_generate": tps / base_tps,
                     "ttft_s": sum(t["ttft"]) / len(t["ttft"]), "tokens_per_forward": t["tokens"] / max(t["passes"], 1),
                     "equals_greedy": t["equal_greedy"], "lossless": REGISTRY[name].lossless})
    report = {"model": loaded.model_id, "dtype": loaded.dtype, "threads": torch.get_num_threads(),
              "max_new_tokens": args.max_new_tokens, "prompts": len(PROMPTS), "repeats": args.repeats,
              "generate_greedy": {"tokens_per_s": base_tps, "ttft_s": sum(base["ttft"]) / len(base["ttft"])},
              "methods": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model {loaded.model_id} ({loaded.dtype}), {report['threads']} threads, {len(PROMPTS)} prompts x "
          f"{args.repeats}, up to {args.max_new_tokens} new tokens")
    print(f"transformers generate greedy: {base_tps:.2f} tok/s, ttft {report['generate_greedy']['ttft_s'] * 1000:.0f} ms")
    print(f"{'method':<16}{'tok/s':>9}{'x generate':>12}{'ttft ms':>9}{'tok/pass':>10}  equals greedy")
    for r in rows:
        print(f"{r['method']:<16}{r['tokens_per_s']:>9.2f}{r['ratio_to_generate']:>11.2f}x{r['ttft_s'] * 1000:>9.0f}"
              f"{r['tokens_per_forward']:>10.2f}  {'yes' if r['equals_greedy'] else 'no'}"
              f"{' (lossless)' if r['lossless'] else ''}")
    return 0
