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
from .prompts import PROMPT_SETS
from .runner import GenerationRequest, execute, prepare, warm_up

PROMPTS = PROMPT_SETS["open-ended"]
# Methods that decode many sequences and pick one: their cost is N lanes, not tokens/s of one answer;
# `bench --scaling` measures them (bench_scaling.py).
SCALING = {name for name, cls in REGISTRY.items() if cls.many_sequences}
NOT_TIMED = SCALING | {name for name, cls in REGISTRY.items() if not cls.free_text}   # e.g. span extraction


# transformers' own speculative decoders, timed beside ours when the matching method is benched.
PEERS = {"prompt_lookup": ("generate(prompt_lookup_num_tokens=10)", {"prompt_lookup_num_tokens": 10})}


def hf_generate(loaded, prompt_ids: list[int], max_new_tokens: int, **kwargs) -> tuple[list[int], float, float]:
    """transformers greedy (or a greedy speculative mode via kwargs): (new ids, seconds, time to first token)."""
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
                                    do_sample=False, streamer=streamer, **kwargs)
    elapsed = time.perf_counter() - start
    return out[0, ids.shape[1]:].tolist(), elapsed, (streamer.first or time.perf_counter()) - start


def run_method(loaded, name: str, prompt: str, max_new_tokens: int):
    prepared = prepare(GenerationRequest(prompt=prompt, strategy=name, max_new_tokens=max_new_tokens), loaded)
    events = list(execute(prepared))
    metrics = events[-1]
    assert isinstance(metrics, MetricsEvent)
    return [e for e in events if isinstance(e, TokenEvent)], metrics, prepared.prompt_ids


def top2_logit_gap(token: TokenEvent) -> float:
    """log p1 - log p2 at a step (= the logit gap): how close a near-tie a divergence happened at."""
    import math

    first, second = token.alternatives[0].prob, token.alternatives[1].prob
    return math.log(first) - math.log(second) if second > 0 else float("inf")


def main(args) -> int:
    loaded = load_model(args.model, args.dtype)
    methods = args.methods.split(",") if args.methods else [m for m in REGISTRY if m not in NOT_TIMED]
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        print(f"error: unknown method {unknown[0]!r}; available: {', '.join(REGISTRY)}", file=sys.stderr)
        return 2
    methods = ["greedy"] + [m for m in methods if m != "greedy"]     # the "x greedy" column's reference
    # warm-up: first calls pay for allocation and kernel selection
    run_method(loaded, "greedy", PROMPTS[0], 8)
    warm_up(loaded)
    if getattr(args, "scaling", False):          # many sequences: cost and accuracy, not speed-ups
        from .bench_scaling import main as scaling_main

        report = scaling_main(args, loaded)
        if args.json:
            print(json.dumps(report, indent=2))
        return 0
    from .benchmarks.roofline import print_roofline, report as roofline_report

    roofline = roofline_report(loaded.model)
    if not args.json:
        print_roofline(roofline)
    if args.prompts not in PROMPT_SETS and args.prompts != "all":          # a prompt file
        return bench_file(loaded, methods, args, roofline)
    sets = list(PROMPT_SETS) if args.prompts == "all" else [args.prompts]
    report = {"model": loaded.model_id, "dtype": loaded.dtype, "threads": torch.get_num_threads(),
              "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "roofline": roofline,
              "sets": {name: bench_set(loaded, methods, PROMPT_SETS[name], args) for name in sets}}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model {loaded.model_id} ({loaded.dtype}), {report['threads']} threads, up to {args.max_new_tokens} "
          f"new tokens, {args.repeats} repeat(s)")
    for name, result in report["sets"].items():
        print_table(name, result)
    return 0


def bench_file(loaded, methods: list[str], args, roofline: dict) -> int:
    """Per-prompt best-of-repeats, per-category geomeans (benchmarks/per_prompt.py)."""
    from .benchmarks.per_prompt import measure, print_report, summarise
    from .benchmarks.prompt_file import PromptFileError, read_prompts

    try:
        prompts = read_prompts(args.prompts)
    except PromptFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    peers = {PEERS[m][0]: PEERS[m][1] for m in methods if m in PEERS}
    result = summarise(methods, prompts, measure(loaded, methods, prompts, args, peers), peers)
    report = {"model": loaded.model_id, "dtype": loaded.dtype, "threads": torch.get_num_threads(),
              "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "prompt_file": str(args.prompts),
              "roofline": roofline, **result}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model {loaded.model_id} ({loaded.dtype}), {report['threads']} threads, up to {args.max_new_tokens} "
          f"new tokens, best of {args.repeats} per prompt, {args.prompts}")
    print_report(result)
    return 0


def bench_set(loaded, methods: list[str], prompts: list[str], args) -> dict:
    """Every method and generate greedy on each prompt, interleaved so machine noise hits all alike."""
    totals = {m: {"tokens": 0, "seconds": 0.0, "ttft": [], "passes": 0, "equal_greedy": True} for m in methods}
    base = {"tokens": 0, "seconds": 0.0, "ttft": []}
    peers = {PEERS[m][0]: {"tokens": 0, "seconds": 0.0, "equal_greedy": True} for m in methods if m in PEERS}
    divergences = []
    for _ in range(args.repeats):
        for number, prompt in enumerate(prompts):
            greedy_ids = None
            for name in methods:
                tokens, m, prompt_ids = run_method(loaded, name, prompt, args.max_new_tokens)
                ids = [t.token_id for t in tokens]
                if greedy_ids is None:                       # methods[0] is our greedy: the reference path
                    ref, seconds, ttft = hf_generate(loaded, prompt_ids, args.max_new_tokens)
                    base["tokens"] += len(ref)
                    base["seconds"] += seconds
                    base["ttft"].append(ttft)
                    greedy_ids, greedy_tokens = ref, tokens
                    for peer, kwargs in (PEERS[m] for m in methods if m in PEERS):
                        peer_ids, seconds, _ = hf_generate(loaded, prompt_ids, args.max_new_tokens, **kwargs)
                        peers[peer]["tokens"] += len(peer_ids)
                        peers[peer]["seconds"] += seconds
                        peers[peer]["equal_greedy"] &= peer_ids == ref
                if ids != greedy_ids and REGISTRY[name].lossless and m.stop_reason != "error":
                    at = next((i for i, (a, b) in enumerate(zip(ids, greedy_ids)) if a != b), min(len(ids), len(ref)))
                    gap = top2_logit_gap(greedy_tokens[at]) if at < len(greedy_tokens) else None
                    divergences.append({"method": name, "prompt": number, "token": at, "top2_logit_gap": gap})
                t = totals[name]
                t["tokens"] += m.new_tokens
                t["seconds"] += m.elapsed_s
                t["ttft"].append(m.time_to_first_token_s or 0.0)
                t["passes"] += m.forward_passes
                t["equal_greedy"] &= ids == greedy_ids
    base_tps = base["tokens"] / base["seconds"]
    rates = {name: t["tokens"] / t["seconds"] if t["seconds"] else 0.0 for name, t in totals.items()}
    rows = []
    for name in methods:
        t = totals[name]
        rows.append({"method": name, "tokens_per_s": rates[name], "ratio_to_generate": rates[name] / base_tps,
                     "ratio_to_greedy": rates[name] / rates["greedy"] if rates.get("greedy") else None,
                     "ttft_s": sum(t["ttft"]) / len(t["ttft"]), "tokens_per_forward": t["tokens"] / max(t["passes"], 1),
                     "equals_greedy": t["equal_greedy"], "lossless": REGISTRY[name].lossless})
    references = [{"name": name, "tokens_per_s": p["tokens"] / p["seconds"],
                   "ratio_to_generate": p["tokens"] / p["seconds"] / base_tps, "equals_greedy": p["equal_greedy"]}
                  for name, p in peers.items()]
    return {"prompts": len(prompts), "divergences": divergences, "transformers_references": references,
            "generate_greedy": {"tokens_per_s": base_tps, "ttft_s": sum(base["ttft"]) / len(base["ttft"])},
            "methods": rows}


def print_table(name: str, result: dict) -> None:
    base = result["generate_greedy"]
    print(f"\n[{name}: {result['prompts']} prompts] transformers generate greedy: {base['tokens_per_s']:.2f} tok/s, "
          f"ttft {base['ttft_s'] * 1000:.0f} ms")
    print(f"{'method':<16}{'tok/s':>9}{'x generate':>12}{'x greedy':>10}{'ttft ms':>9}{'tok/pass':>10}  equals greedy")
    for r in result["methods"]:
        vs_greedy = f"{r['ratio_to_greedy']:>9.2f}x" if r["ratio_to_greedy"] is not None else f"{'-':>10}"
        print(f"{r['method']:<16}{r['tokens_per_s']:>9.2f}{r['ratio_to_generate']:>11.2f}x{vs_greedy}"
              f"{r['ttft_s'] * 1000:>9.0f}{r['tokens_per_forward']:>10.2f}  {'yes' if r['equals_greedy'] else 'no'}"
              f"{' (lossless)' if r['lossless'] else ''}")
    for r in result["transformers_references"]:
        print(f"  transformers {r['name']}: {r['tokens_per_s']:.2f} tok/s, {r['ratio_to_generate']:.2f}x generate, "
              f"equals greedy: {'yes' if r['equals_greedy'] else 'no'}")
    for d in result["divergences"]:
        gap = f"{d['top2_logit_gap']:.2e}" if d["top2_logit_gap"] is not None else "-"
        print(f"  {d['method']} left greedy on prompt {d['prompt']} at token {d['token']}: top-2 logit gap there {gap}")
