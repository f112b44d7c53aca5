"""Exact extract's view: the passage with the chosen span highlighted, the top spans ranked by score,
and greedy's free answer beside them. Everything from the user or the model is escaped."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from playground.events import Event, ExtractEvent

from .text import esc, plot_text, visible
from .traces import LAYOUT

BOX = "border:1px solid #ddd;border-radius:6px;padding:6px 8px;margin:6px 0;"


def latest(events: list[Event]) -> ExtractEvent | None:
    found = [e for e in events if isinstance(e, ExtractEvent)]
    return found[-1] if found else None


def _chosen(event: ExtractEvent) -> dict | None:
    if event.chosen is None or not 0 <= event.chosen < len(event.spans):
        return None
    return event.spans[event.chosen]


def _count(n: int, noun: str, plural: str = "s") -> str:
    return f"{n} {noun}{'' if n == 1 else plural}"


def extract_html(events: list[Event]) -> str:
    """The passage, its chosen span marked, the ranked spans and greedy's free answer. "" without an extract."""
    event = latest(events)
    if event is None:
        return ""
    chosen = _chosen(event)
    passage = event.passage
    if chosen is not None:
        a, b = int(chosen["start_char"]), int(chosen["end_char"])
        marked = (esc(passage[:a]) + f'<mark class="dp-extract-chosen" style="background:#b7e4b7;padding:0 1px;">'
                  f'{esc(passage[a:b])}</mark>' + esc(passage[b:]))
    else:
        marked = esc(passage)
    state = "best span (exact)" if event.done else "searching: best span so far"
    progress = (f"{event.starts_scored} of {event.starts} start positions scored, {event.pruned} pruned by the "
                f"bound, {_count(event.spans_scored, 'span')}, {_count(event.search_passes, 'batched pass', 'es')}")
    rows = []
    for index, span in enumerate(event.spans):
        style = "font-weight:600;background:#f1faf1;" if index == event.chosen else ""
        rows.append(f'<tr style="{style}"><td>{int(span["rank"])}</td><td>{esc(visible(span["text"]))}</td>'
                    f'<td style="text-align:right">{float(span["logprob"]):.3f}</td>'
                    f'<td style="text-align:right">{float(span.get("end_logprob", float("nan"))):.3f}</td></tr>')
    table = ('<table class="dp-extract-spans" style="border-collapse:collapse;font-size:0.9em;">'
             '<tr><th>#</th><th>span</th><th>log p(span) + log p(end)</th><th>log p(end)</th></tr>'
             + "".join(rows) + "</table>")
    question = f'<div><b>Question:</b> {esc(event.question)}</div>' if event.question else ""
    answer = esc(visible(chosen["text"])) if chosen is not None else "(none)"
    return (f'<div class="dp-extract" style="{BOX}">'
            f'<div style="color:#444;font-weight:600;">Exact extract: {esc(state)} ({esc(progress)})</div>'
            f'{question}'
            f'<div class="dp-extract-passage" style="white-space:pre-wrap;line-height:1.5;margin:4px 0;">{marked}</div>'
            f'<div style="display:flex;gap:16px;flex-wrap:wrap;">'
            f'<div class="dp-extract-answer"><b>Best span:</b> {answer}</div>'
            f'<div class="dp-extract-free"><b>Greedy\'s free answer:</b> {esc(visible(event.free_answer)) or "(empty)"}</div>'
            f'</div>{table}</div>')


def extract_figure(events: list[Event]) -> go.Figure | None:
    """The top spans' scores as bars, best at the top; the chosen span in green."""
    event = latest(events)
    if event is None or not event.spans:
        return None
    spans = event.spans[::-1]
    labels = [f'#{int(s["rank"])} {plot_text(visible(s["text"]))[:60]}' for s in spans]
    colours = ["#2ca02c" if s is _chosen(event) else "#9ecae1" for s in spans]
    # probabilities on a log axis: the best span has the longest bar (log-probabilities hung down from 0)
    fig = go.Figure(go.Bar(x=[math.exp(max(float(s["logprob"]), -690.0)) for s in spans], y=labels, orientation="h",
                           marker_color=colours, textposition="none", customdata=[float(s["logprob"]) for s in spans],
                           hovertemplate="%{y}<br>p(span) p(end) = %{x:.3g}<br>log = %{customdata:.3f} nats"
                                         "<extra></extra>"))
    title = "Top spans: p(span) x p(end of answer)" + ("" if event.done else " (searching)")
    layout = dict(LAYOUT, height=max(280, 60 + 24 * len(spans)))
    fig.update_layout(title=title, xaxis_title="probability (log scale)", xaxis_type="log", yaxis_type="category",
                      yaxis_dtick=1, **layout)          # every span labelled (plotly skipped every other one)
    return fig
