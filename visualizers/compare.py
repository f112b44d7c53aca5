"""Several runs side by side: the metrics table, the overlay traces and the token diff.

Pure functions of the runs' events (a live comparison and a saved one draw the same way). The numbers
in the table are the ones each run's own metrics panel shows (read from `metrics.metrics_rows`, so a
number is defined and formatted once); only the mean entropy is defined here.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import plotly.graph_objects as go

from playground.events import Event, MetricsEvent, RunStarted, TokenEvent

from .metrics import _fmt, metrics_rows
from .text import esc, plot_text, visible
from .traces import LAYOUT

LETTERS = "ABCDEFGH"
MEAN_ENTROPY = "mean entropy H(p) per token (nats)"
# (label in the comparison table, label in each run's own metrics panel): the same number, defined once there
SHARED_ROWS = (
    ("method", "method"),
    ("parameters", "parameters"),
    ("new tokens", "new tokens"),
    ("tokens / s (all time in the method)", "tokens / s (all time in the method)"),
    ("target forward passes", "target forward passes"),
    ("tokens / target pass", "tokens / target pass"),
    ("acceptance rate (speculative methods)", "acceptance rate"),
    ("time to first token (s)", "time to first token (s)"),
    ("stopped by", "stopped by"),
)
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")


@dataclass(frozen=True)
class DiffPiece:
    """One token of a diff against the reference column: kept in both, only in the reference
    (deleted), or only in the other run (inserted)."""
    op: str       # "equal" | "delete" | "insert"
    text: str


def tokens(events: list[Event]) -> list[TokenEvent]:
    return [e for e in events if isinstance(e, TokenEvent)]


def column_label(index: int, events: list[Event]) -> str:
    """'A: greedy' (the method of the run in that column; '-' before its RunStarted arrives)."""
    start = next((e for e in events if isinstance(e, RunStarted)), None)
    return f"{LETTERS[index]}: {start.strategy if start else '-'}"


def mean_entropy(events: list[Event]) -> float | None:
    """Mean over the committed tokens of the model's untempered entropy at that step (TokenEvent.entropy):
    how unsure the model was along the path each method took. None without tokens."""
    values = [t.entropy for t in tokens(events)]
    return sum(values) / len(values) if values else None


def table_rows(runs: list[list[Event]]) -> list[tuple[str, list[str]]]:
    """(label, one formatted value per run) for the side-by-side table; '-' where a run has no such number."""
    own = [dict(metrics_rows(events)) for events in runs]
    rows = [(label, [values.get(key, "-") for values in own]) for label, key in SHARED_ROWS]
    rows.insert(-1, (MEAN_ENTROPY, [_fmt(mean_entropy(events)) for events in runs]))
    return rows


def table_html(runs: list[list[Event]]) -> str:
    head = "".join(f"<th>{esc(column_label(i, events))}</th>" for i, events in enumerate(runs))
    body = "".join(f"<tr><td>{esc(label)}</td>{''.join(f'<td>{esc(v)}</td>' for v in values)}</tr>"
                   for label, values in table_rows(runs))
    running = "" if all(any(isinstance(e, MetricsEvent) for e in events) for events in runs) else \
        "<div><i>running…</i></div>"
    return f'{running}<table class="dp-metrics dp-compare-table"><tr><th></th>{head}</tr>{body}</table>'


def _overlay(runs: list[list[Event]], value, title: str, y_title: str, y_range=None) -> go.Figure | None:
    if not any(tokens(events) for events in runs):
        return None
    fig = go.Figure()
    for i, events in enumerate(runs):
        toks = tokens(events)
        fig.add_trace(go.Scatter(x=[t.index for t in toks], y=[value(t) for t in toks], mode="lines+markers",
                                 name=plot_text(column_label(i, events)), line=dict(color=COLOURS[i % len(COLOURS)]),
                                 text=[plot_text(repr(visible(t.text))) for t in toks],
                                 hovertemplate="step %{x} %{text}<br>%{y:.3f}<extra>%{fullData.name}</extra>"))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=y_title, **LAYOUT)
    if y_range:
        fig.update_layout(yaxis_range=y_range)
    return fig


def entropy_overlay_figure(runs: list[list[Event]]) -> go.Figure | None:
    """Every column's entropy per step on one plot (None before any column has a token)."""
    return _overlay(runs, lambda t: t.entropy, "Entropy per step, all columns", "nats")


def probability_overlay_figure(runs: list[list[Event]]) -> go.Figure | None:
    """Every column's p(chosen token) per step (the model's untempered p) on one plot."""
    return _overlay(runs, lambda t: math.exp(t.logprob), "Probability of each chosen token, all columns",
                    "probability", [0, 1.02])


def token_diff(reference: list[str], other: list[str]) -> list[DiffPiece]:
    """The token-level diff of `other` against `reference` (difflib over token texts, no junk
    heuristic: a short output must not have its common tokens treated as junk)."""
    pieces: list[DiffPiece] = []
    matcher = difflib.SequenceMatcher(None, reference, other, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            pieces += [DiffPiece("equal", t) for t in reference[i1:i2]]
            continue
        pieces += [DiffPiece("delete", t) for t in reference[i1:i2]]   # "replace" = the old tokens, then the new
        pieces += [DiffPiece("insert", t) for t in other[j1:j2]]
    return pieces


PIECE_HTML = {
    "equal": '<span class="dp-diff-eq">{}</span>',
    "delete": '<del class="dp-diff-del" style="background:#fbd3d3;color:#7a1010">{}</del>',
    "insert": '<ins class="dp-diff-ins" style="background:#cdeccd;color:#0d4d0d;text-decoration:none">{}</ins>',
}


def diff_html(runs: list[list[Event]]) -> str:
    """Each column after the first against column A, token by token: deleted tokens (in A only) struck
    through in red, inserted ones (in that column only) in green; all text escaped."""
    if len(runs) < 2:
        return ""
    reference = [t.text for t in tokens(runs[0])]
    blocks = []
    for i, events in enumerate(runs[1:], start=1):
        pieces = token_diff(reference, [t.text for t in tokens(events)])
        kept = sum(p.op == "equal" for p in pieces)
        body = "".join(PIECE_HTML[p.op].format(esc(visible(p.text)) or "&#8203;") for p in pieces)
        head = (f"{esc(column_label(0, runs[0]))} → {esc(column_label(i, events))}: "
                f"{kept} of {len(reference)} tokens of A kept")
        blocks.append(f'<div class="dp-diff"><div class="dp-lanes-title">{head}</div>'
                      f'<div class="dp-output">{body or "<i>(no tokens)</i>"}</div></div>')
    return f'<div class="dp-text">{"".join(blocks)}</div>'
