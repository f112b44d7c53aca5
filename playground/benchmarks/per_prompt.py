"""`bench --prompts FILE.jsonl`: every method against transformers' `generate` greedy, prompt by prompt.

Every path (our methods, `generate`, transformers' own speculative peers) runs on one prompt, all its
repeats, before the next prompt starts, so a prompt's timings all come from the same minute of the
machine; each repeat starts one path later in the order (run_order), so no path always runs first
after another prompt's, or right after the same neighbour. Each (prompt, path) keeps its best wall and
best CPU time over the repeats (a stall only ever adds time) and its spread (median wall over best:
how much the machine moved while it ran; with a single repeat, none). CPU time is the process's
(time.process_time: every thread, torch's included): on a machine shared with other work it moves
less than wall time, so both ratios are reported. A method's ratio on a prompt is its speed there
over `generate`'s (ratios.py); a category's and the whole set's figure is the geometric mean of its
prompts' ratios. Against our greedy, also paired (paired_ratio): the median over repeats of the two
paths' ratio within one repeat, which cancels the machine's drift between minutes.
"""

from __future__ import annotations

import statistics
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


def run_order(paths: list[str], repeat: int) -> list[str]:
    """The paths in the order of repeat `repeat` (0-based): rotated by one per repeat, so over len(paths)
    repeats every path runs once in every slot."""
    shift = repeat % len(paths)
    return paths[shift:] + paths[:shift]


def measure(loaded, methods: list[str], prompts: list[BenchPrompt], args, peers: dict) -> dict:
    """best[(prompt index, path)] = {"tokens", "ids", "wall", "cpu", "passes", "walls"}; paths: methods,
    GENERATE, peers; walls: every repeat's wall time."""
    from ..bench import hf_generate, run_method
    from ..runner import GenerationRequest, prepare

    best: dict = {}

    def keep(key, ids, wall, cpu, passes):
        old = best.get(key)
        best[key] = {"ids": ids, "tokens": len(ids), "passes": passes, "walls": (old["walls"] if old else []) + [wall],
                     "wall": min(wall, old["wall"]) if old else wall, "cpu": min(cpu, old["cpu"]) if old else cpu}

    def run(i, item, path, prompt_ids):
        if path in methods:
            (tokens, metrics, _), wall, cpu = timed(lambda: run_method(loaded, path, item.prompt, args.max_new_tokens))
            keep((i, path), [t.token_id for t in tokens], wall, cpu, metrics.forward_passes)
            return
        with PassCounter(loaded.model) as passes:
            (ids, _, _), wall, cpu = timed(
                lambda: hf_generate(loaded, prompt_ids, args.max_new_tokens, **peers.get(path, {})))
        keep((i, path), ids, wall, cpu, passes.count)      # counted like ours: the prompt's pass included

    paths = methods + [GENERATE] + list(peers)
    for i, item in enumerate(prompts):
        request = GenerationRequest(prompt=item.prompt, strategy=methods[0], max_new_tokens=args.max_new_tokens)
        prompt_ids = prepare(request, loaded).prompt_ids             # what our methods are fed, for `generate`
        for repeat in range(args.repeats):
            for path in run_order(paths, repeat):
                run(i, item, path, prompt_ids)
    return best


def median_spread(timings: list[list[float]]) -> float | None:
    """The median over prompts of spread(walls) (None where no prompt was timed twice)."""
    values = [v for v in map(spread, timings) if v is not None]
    return statistics.median_high(values) if values else None


def spread(walls: list[float]) -> float | None:
    """median / best - 1 of one path's wall times on one prompt (None with one timing): how far a typical
    repeat was from the best one, i.e. how much the machine moved under this measurement."""
    return statistics.median(walls) / min(walls) - 1 if len(walls) > 1 else None


def paired_ratio(path: dict, ref: dict) -> float | None:
    """The median over repeats of path's speed over ref's in the SAME repeat (None unless both were timed
    in every one of two or more repeats). The two ran back to back, so a slow minute of the machine
    slows both and cancels here, where a best-of ratio can pair one path's fast minute with the other's
    slow one."""
    walls, ref_walls = path.get("walls", []), ref.get("walls", [])
    if len(walls) < 2 or len(walls) != len(ref_walls):
        return None
    return statistics.median(speed_ratio(path["tokens"], wall, ref["tokens"], ref_wall)
                             for wall, ref_wall in zip(walls, ref_walls))


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
    per target pass, the median spread of its timings, and which prompts a lossless path did not equal
    `generate` on."""
    paths = methods + list(peers)
    categories = defaultdict(list)
    for i, item in enumerate(prompts):
        categories[item.category].append(i)
    categories["all"] = list(range(len(prompts)))

    def ratios(path, ref, clock, indices):
        return [speed_ratio(best[i, path]["tokens"], best[i, path][clock], best[i, ref]["tokens"], best[i, ref][clock])
                for i in indices]

    def paired(path, indices):
        values = [paired_ratio(best[i, path], best[i, "greedy"]) for i in indices]
        return geomean(values) if None not in values else None

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
                "x_greedy_paired": paired(path, indices),
                "tokens_per_pass": (sum(best[i, path]["tokens"] for i in indices) / sum(passes)
                                    if None not in passes else None),
                "not_equal": [prompts[i].label for i in indices if best[i, path]["ids"] != best[i, GENERATE]["ids"]],
                "spread": median_spread([best[i, path].get("walls", []) for i in indices]),
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
        print(f"{'method':<40}{'x gen wall':>11}{'x gen cpu':>10}{'x greedy':>9}{'paired':>8}{'tok/pass':>9}"
              f"{'spread':>8}  equals generate")
        for r in rows:
            equal = "-" if not r["lossless"] else ("yes" if not r["not_equal"] else f"NO on {', '.join(r['not_equal'])}")
            per_pass = f"{r['tokens_per_pass']:>9.2f}" if r["tokens_per_pass"] is not None else f"{'-':>9}"
            noise = f"{r['spread']:>8.1%}" if r.get("spread") is not None else f"{'-':>8}"
            paired = f"{r['x_greedy_paired']:>7.2f}x" if r.get("x_greedy_paired") is not None else f"{'-':>8}"
            print(f"{r['method']:<40}{r['x_generate_wall']:>10.2f}x{r['x_generate_cpu']:>9.2f}x"
                  f"{r['x_greedy_wall']:>8.2f}x{paired}{per_pass}{noise}  {equal}")
    print("\nspread: median over the prompts of (median wall time over the repeats / the best one) - 1, "
          "how much the machine moved while each path ran; a ratio between two paths is only as sure as that."
          "\npaired: x our greedy as the median over the repeats of the two paths' ratio within one repeat (they ran "
          "back to back), whose drifts cancel; x greedy divides each path's best time.")
