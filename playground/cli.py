"""Command line: `python -m playground {strategies,generate,serve,bench}`.

Errors print one line to stderr and exit 2 (bad input) or 1 (anything else).
"""

from __future__ import annotations

import argparse
import json
import sys

from strategies import REGISTRY

from .events import MetricsEvent, TokenEvent, notices, to_dicts


def _parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param expects key=value, got {item!r}")
        params[key.strip()] = value.strip()
    return params


def cmd_strategies(args) -> int:
    schemas = [cls.schema() for cls in REGISTRY.values()]
    if args.json:
        print(json.dumps(schemas, indent=2))
        return 0
    for s in schemas:
        print(f"{s['name']:<16} {s['title']}")
        for p in s["params"]:
            rng = f" [{p['low']}, {p['high']}]" if p["low"] is not None else ""
            choices = f" {{{', '.join(p['choices'])}}}" if p["choices"] else ""
            print(f"    --param {p['name']}={p['default']}{rng}{choices}  {p['help']}")
    return 0


def cmd_generate(args) -> int:
    from .runner import GenerationRequest, InvalidRequest, execute, prepare

    try:
        params = _parse_params(args.param)
        request = GenerationRequest(prompt=args.prompt, strategy=args.strategy, params=params, model_id=args.model,
                                    dtype=args.dtype, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                    chat=not args.raw, draft_model_id=args.draft_model)
        prepared = prepare(request)
    except (InvalidRequest, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    events = []
    for event in execute(prepared):
        events.append(event)
        if not args.json and isinstance(event, TokenEvent):
            print(event.text, end="", flush=True)
    run_id, save_error = None, None
    if not args.no_save:
        run_id, save_error = _save(events)
    metrics = events[-1]
    assert isinstance(metrics, MetricsEvent)
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    if args.json:
        print(json.dumps({
            "run_id": run_id,
            "save_error": save_error,
            "text": "".join(t.text for t in tokens),
            "token_ids": [t.token_id for t in tokens],
            "notices": notices(events),
            "metrics": metrics.to_dict(),
            "events": to_dicts(events),
        }))
    else:
        print()
        for notice in notices(events):
            print(f"note: {notice}", file=sys.stderr)
        print(f"[{metrics.new_tokens} tokens, {metrics.tokens_per_s:.1f} tok/s, {metrics.forward_passes} forward passes,"
              f" stopped by {metrics.stop_reason}{', run ' + run_id if run_id else ''}]", file=sys.stderr)
    if save_error:
        print(f"error: {save_error}", file=sys.stderr)
    return 1 if metrics.stop_reason == "error" or save_error else 0


def _save(events) -> tuple[str | None, str | None]:
    """(run id, None), or (None, why) when the database refused the run: its output is printed either way."""
    from storage import default_repository
    from storage.db import where

    from .config import settings

    try:
        return default_repository().save(events), None
    except Exception as exc:  # locked, read-only, full, corrupt: say so, keep the printed output
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return None, f"the run was not saved to {where(settings().database_url)}: {reason}"


def cmd_serve(args) -> int:
    from .server import launch

    launch(host=args.host, port=args.port)
    return 0


def cmd_bench(args) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m playground", description="Decoding Playground")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("strategies", help="list decoding methods and their parameters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_strategies)

    p = sub.add_parser("generate", help="run one method on one prompt")
    p.add_argument("--strategy", default="greedy", help=f"one of: {', '.join(REGISTRY)}")
    p.add_argument("--prompt", required=True)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--model", default=None, help="'embedded' (default), a Hub id or a local folder")
    p.add_argument("--draft-model", default=None, help="draft model for speculative methods (same tokenizer)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="no chat template: continue the prompt as plain text")
    p.add_argument("--no-save", action="store_true", help="do not save the run to the database")
    p.add_argument("--json", action="store_true", help="print text, token ids, metrics and events as JSON")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("serve", help="start the web app (same as python app.py)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench", help="tokens/s of every method against transformers' generate, same process")
    p.add_argument("--json", action="store_true")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--methods", default=None, help="comma-separated subset of methods (greedy always runs)")
    p.add_argument("--prompts", default="all",
                   help="prompt set: open-ended answers, grounded edits of a given text, all (both), or a "
                        "JSONL file (one {\"prompt\": ..., \"category\": ...} per line; Spec-Bench's "
                        "\"turns\" also work): per-category geomeans, e.g. playground/benchmarks/spec_bench_18.jsonl")
    p.add_argument("--scaling", action="store_true",
                   help="many sequences instead: N lanes' cost against one sample, and accuracy on the "
                        "arithmetic task set (greedy, best-of-N, self-consistency, particle filtering)")
    p.add_argument("--scaling-length", type=int, default=64, help="tokens per lane in the --scaling cost check")
    p.add_argument("--tasks", type=int, default=12, help="arithmetic tasks in the --scaling accuracy check")
    p.add_argument("--model", default=None)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line, not a traceback
        from .models import ModelLoadError

        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ModelLoadError) else 1
