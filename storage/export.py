"""Export a saved run or comparison as JSON (its record and the full event trace) or CSV (one row
per committed token), and import a JSON export back as new runs owned by the importer.

An import is untrusted input: it is size-capped, parsed strictly (known event types, every field
of the JSON type its dataclass declares, a run framed by RunStarted ... MetricsEvent) and given
fresh ids, so it can neither overwrite a saved run nor smuggle values the renderers never expect."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import typing
import uuid
from typing import Any, Callable

from playground.events import EVENT_TYPES, Event, MetricsEvent, RunStarted, TokenEvent, from_dicts, to_dicts

from .repository import RunRepository, run_as_dict

FORMAT_RUN = "decoding-playground/run"
FORMAT_COMPARISON = "decoding-playground/comparison"
VERSION = 1
MAX_IMPORT_BYTES = 8_000_000       # a 64-token Token Recycling run is ~343 KB; the server cap is 256 tokens
MAX_IMPORT_EVENTS = 50_000
MAX_COMPARISON_RUNS = 4
CSV_COLUMNS = ["run_id", "index", "token_id", "text", "logprob", "prob", "entropy", "rank", "kept", "sampled_prob"]


class InvalidExport(ValueError):
    """The pasted text is not an export this app wrote; the message says what is wrong, in one line."""


# --- export ---------------------------------------------------------------------------------------

def run_export(row, events: list[Event]) -> dict[str, Any]:
    """One run as a JSON-ready dict: what History shows of it plus every event, in order."""
    record = run_as_dict(row)
    record.update(owner=None, public=bool(row.public), parent_id=row.parent_id, parent_position=row.parent_position)
    return {"format": FORMAT_RUN, "version": VERSION, "run": record, "events": to_dicts(events)}


def comparison_export(comparison, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A comparison: its title and shared settings, then each run's export in column order."""
    return {"format": FORMAT_COMPARISON, "version": VERSION,
            "comparison": {"id": comparison.id, "title": comparison.title, "config": comparison.config,
                           "run_ids": list(comparison.run_ids), "created_at": comparison.created_at.isoformat()
                           if comparison.created_at else None},
            "runs": runs}


def dumps(export: dict[str, Any]) -> str:
    return json.dumps(export, ensure_ascii=False, indent=1)


def token_rank(token: TokenEvent) -> int | None:
    """The chosen token's rank in the model's distribution (1 = most probable), when the stored
    alternatives decide it: the token is among them, or the least probable of them is below it
    (then every token above it is listed). None when the top-k list stops above the token."""
    prob = math.exp(token.logprob)
    above = sum(1 for a in token.alternatives if a.token_id != token.token_id and a.prob > prob)
    listed = any(a.token_id == token.token_id for a in token.alternatives)
    if listed or any(a.prob < prob for a in token.alternatives):
        return above + 1
    return None


def safe_cell(text: str) -> str:
    """A token's text as a spreadsheet shows it, not as a formula it runs (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_text(runs: list[tuple[str, list[Event]]]) -> str:
    """Per-token rows of one or more runs: the columns in CSV_COLUMNS, then each method's own
    per-step numbers (TokenEvent.extra), one column per key any token carried."""
    extras = sorted({k for _, events in runs for e in events if isinstance(e, TokenEvent) for k in e.extra})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + extras)
    for run_id, events in runs:
        for e in events:
            if isinstance(e, TokenEvent):
                rank = token_rank(e)
                writer.writerow([run_id, e.index, e.token_id, safe_cell(e.text), repr(e.logprob),
                                 repr(math.exp(e.logprob)), repr(e.entropy), "" if rank is None else rank,
                                 "" if e.kept is None else e.kept, "" if e.sampled_prob is None else repr(e.sampled_prob),
                                 *[repr(e.extra[k]) if k in e.extra else "" for k in extras]])
    return out.getvalue()


# --- strict parsing -------------------------------------------------------------------------------

def _fits(value: Any, hint: Any) -> bool:
    """Does a JSON value have the type a dataclass field declares? (int for float is fine, bool for
    int is not; nested dataclasses are dicts whose fields fit in turn.)"""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and _fits(v, args[1]) for k, v in value.items())
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict) and _fields_fit(hint, value)
    return False


def _fields_fit(cls: type, data: dict[str, Any]) -> bool:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in data:
            if not _fits(data[f.name], hints[f.name]):
                return False
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            return False
    return all(k in hints or k == "type" for k in data)


def parse_events(items: Any, where: str) -> list[Event]:
    """A run's events from an export, checked field by field; raises InvalidExport."""
    if not isinstance(items, list) or len(items) < 2:
        raise InvalidExport(f"{where}: 'events' must be a list of at least two events.")
    for i, item in enumerate(items):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind not in EVENT_TYPES:
            raise InvalidExport(f"{where}: event {i} has an unknown type {str(kind)[:40]!r}.")
        if not _fields_fit(EVENT_TYPES[kind], item):
            raise InvalidExport(f"{where}: event {i} ({kind}) has a missing, unknown or mistyped field.")
    events = from_dicts(items)
    if not isinstance(events[0], RunStarted) or not isinstance(events[-1], MetricsEvent):
        raise InvalidExport(f"{where}: a run's events go from run_started to metrics.")
    if any(isinstance(e, (RunStarted, MetricsEvent)) for e in events[1:-1]):
        raise InvalidExport(f"{where}: one run per event list.")
    return events


def parse_export(text: str) -> tuple[list[list[Event]], dict[str, Any] | None]:
    """The runs in a pasted export (each a checked event list) and, for a comparison, its title and
    config. Raises InvalidExport with one line saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidExport("Paste a JSON export (from 'Export JSON') first.")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_IMPORT_BYTES:
        raise InvalidExport(f"The export is {size:,} bytes; the limit is {MAX_IMPORT_BYTES:,}.")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidExport(f"Not JSON: {str(exc)[:120]}") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise InvalidExport(f"Not an export of this app (expected format {FORMAT_RUN!r}, version {VERSION}).")
    if data.get("format") == FORMAT_RUN:
        return [_run_events(data, "run")], None
    if data.get("format") == FORMAT_COMPARISON:
        runs = data.get("runs")
        if not isinstance(runs, list) or not 1 <= len(runs) <= MAX_COMPARISON_RUNS:
            raise InvalidExport(f"A comparison holds 1 to {MAX_COMPARISON_RUNS} runs.")
        meta = data.get("comparison") if isinstance(data.get("comparison"), dict) else {}
        title = meta.get("title") if isinstance(meta.get("title"), str) else ""
        config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        return [_run_events(r, f"run {i + 1}") for i, r in enumerate(runs)], {"title": title[:200], "config": config}
    raise InvalidExport(f"Not an export of this app (expected format {FORMAT_RUN!r}, version {VERSION}).")


def _run_events(data: Any, where: str) -> list[Event]:
    if not isinstance(data, dict) or data.get("format") != FORMAT_RUN:
        raise InvalidExport(f"{where}: not a run export.")
    items = data.get("events")
    if isinstance(items, list) and len(items) > MAX_IMPORT_EVENTS:
        raise InvalidExport(f"{where}: {len(items):,} events; the limit is {MAX_IMPORT_EVENTS:,}.")
    return parse_events(items, where)


# --- import ---------------------------------------------------------------------------------------

def import_export(repository: RunRepository, text: str, owner: str | None,
                  check: Callable[[list[Event]], Any] | None = None) -> tuple[list[str], str | None]:
    """Save the runs of an export as new runs of `owner` (fresh ids: nothing is overwritten; branch
    links are dropped, the parent is not imported) and, for a comparison, a new comparison of them.
    `check` (the page passes its renderer) must accept each run first: well-typed events can still be
    inconsistent (a tree node naming a parent that is not there). Returns (new run ids, new comparison
    id or None). Nothing is saved when any run is invalid."""
    runs, comparison = parse_export(text)
    for i, events in enumerate(runs):
        try:
            if check is not None:
                check(events)
        except Exception as exc:  # whatever the drawing tripped on: the import is refused, not saved
            raise InvalidExport(f"run {i + 1} cannot be drawn ({type(exc).__name__}): not saved.") from None
    new_ids = []
    for events in runs:
        events[0].run_id = uuid.uuid4().hex
        new_ids.append(repository.save(events, owner=owner))
    comparison_id = None
    if comparison is not None:
        comparison_id = repository.save_comparison(new_ids, owner=owner, config=comparison["config"],
                                                   title=comparison["title"])
    return new_ids, comparison_id
