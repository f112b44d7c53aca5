"""`bench --prompts FILE.jsonl`: every method against transformers' `generate` greedy, prompt by prompt.

Every path (our methods, `generate`, transformers' own speculative peers) runs on each prompt in
turn before the next prompt starts, and the whole set is repeated: machine noise hits every path
alike, and each (prompt, path) keeps its best wall and best CPU time over the repeats (a stall only
ever adds time). CPU time is the process's (time.process_time: every thread, torch's included): on a
machine shared with other work it moves less than wall time, so both ratios are reported. A
method's ratio on a prompt is its speed there over `generate`'s (ratios.py); a category's and the
whole set's figure is the geometric mean of its prompts' ratios.
"""

from __future__ import annotations

import time
from collections import defaultdict

from strategies import REGISTRY

from .prompt_file import BenchPrompt
from .ratios import geomean, speed_ratio

GENERATE = "generate"


def timed(call):
    """(result, wall seconds, CPU seconds of the process) of call()."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def measure(loaded, methods: list[str], prompts: list[BenchPrompt], args, peers: dict) -> dict:
    """best[(prompt index, path)] = {"tokens", "ids", "wall", "cpu", "passes"}; paths: methods, GENERATE, peers."""
    from ..bench import hf_generate, run_method

    best: dict = {}

    def keep(key, ids, wall, cpu, passes):
        old = best.get(key)
        best[key] = {"ids": ids, "tokens": len(ids), "passes": passes,
                     "wall": min(wall, old["wall"]) if old else wall, "cpu": min(cpu, old["cpu"]) if old else cpu}

    for _ in range(args.repeats):
        for i, item in enumerate(prompts):
            for name in methods:
                (tokens, metrics, prompt_ids), wall, cpu = timed(
                    lambda: run_method(loaded, name, item.prompt, args.max_new_tokens))
                keep((i, name), [t.token_id for t in tokens], wall, cpu, metrics.forward_passes)
            for path, kwargs in [(GENERATE, {})] + list(peers.items()):
                with PassCounter(loaded.model) as passes:
                    (ids, _, _), wall, cpu = timed(
                        lambda: hf_generate(loaded, prompt_ids, args.max_new_tokens, **kwargs))
                keep((i, path), ids, wall, cpu, passes.count)   # counted like ours: the prompt's pass included
    return best


class PassCounter:
    """Counts the target's forward calls inside `generate` (a speculative peer's tokens per pass)."""

    def __init__(self, model):
        self.model, self.count = model, 0

    def __enter__(self):
        self.hook = self.model.register_forward_hook(lambda *_: setattr(self, "count", self.count + 1))
        return self

    def __exit__(self, *exc):
        self.hook.remove()


def summarise(methods: list[str], prompts: list[BenchPrompt], best: dict, peers: dict) -> dict:
    """Per category and overall: geomean wall and CPU ratios to generate and to our greedy, tokens
    per target pass, and which prompts a lossless path did not equal `generate` on."""
    paths = methods + list(peers)
    categories = defaultdict(list)
    for i, item in enumerate(prompts):
        categories[item.category].append(i)
    categories["all"] = list(range(len(prompts)))

    def ratios(path, ref, clock, indices):
        return [speed_ratio(best[i, path]["tokens"], best[i, path][clock], best[i, ref]["tokens"], best[i, ref][clock])
                for i in indices]

    rows = {}
    for name, indices in categories.items():
        rows[name] = []
        for path in paths:
            passes = [best[i, path]["passes"] for i in indices]
            rows[name].append({
                "method": path,
                "x_generate_wall": geomean(ratios(path, GENERATE, "wall", indices)),
                "x_generate_cpu": geomean(ratios(path, GENERATE, "cpu", indices)),
                "x_greedy_wall": geomean(ratios(path, "greedy", "wall", indices)),
                "x_greedy_cpu": geomean(ratios(path, "greedy", "cpu", indices)),
                "tokens_per_pass": (sum(best[i, path]["tokens"] for i in indices) / sum(passes)
                                    if None not in passes else None),
                "not_equal": [prompts[i].label for i in indices if best[i, path]["ids"] != best[i, GENERATE]["ids"]],
                "lossless": path in peers or REGISTRY[path].lossless,
            })
    generate_tps = {name: sum(best[i, GENERATE]["tokens"] for i in idx) / sum(best[i, GENERATE]["wall"] for i in idx)
                    for name, idx in categories.items()}
    return {"prompts": len(prompts), "categories": rows, "generate_tokens_per_s": generate_tps}


def print_report(result: dict) -> None:
    for name, rows in result["categories"].items():
        count = result["prompts"] if name == "all" else None
        print(f"\n[{name}{f': {count} prompts' if count else ''}] generate greedy "
              f"{result['generate_tokens_per_s'][name]:.2f} tok/s (best wall times)")
        print(f"{'method':<40}{'x gen wall':>11}{'x gen cpu':>10}{'x greedy':>9}{'tok/pass':>9}  equals generate")
        for r in rows:
            equal = "-" if not r["lossless"] else ("yes" if not r["not_equal"] else f"NO on {', '.join(r['not_equal'])}")
            per_pass = f"{r['tokens_per_pass']:>9.2f}" if r["tokens_per_pass"] is not None else f"{'-':>9}"
            print(f"{r['method']:<40}{r['x_generate_wall']:>10.2f}x{r['x_generate_cpu']:>9.2f}x"
                  f"{r['x_greedy_wall']:>8.2f}x{per_pass}  {equal}")
