"""Superposed decoding's views, drawn from SuperposedStepEvent only: the k drafts side by side as they
grow (with their scores and superposition weights), the weights per step as stacked bars (with the
number of distinct drafts, where collapse shows), and the latest step's k x m candidate table with the
model's and the n-gram's log-probabilities. Every model string is escaped (plot_text of visible text)."""

from __future__ import annotations

import plotly.graph_objects as go

from playground.events import Event, SuperposedStepEvent

from strategies.single_pass.superposed import SUFFIX

from .layout import LEGEND_BELOW, margins
from .text import plot_text, visible

LAYOUT = dict(margin=margins(top=50), legend=LEGEND_BELOW)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
TEXT_CHARS = 600           # a draft's text in the table: its last characters


def _steps(events: list[Event]) -> list[SuperposedStepEvent]:
    return [e for e in events if isinstance(e, SuperposedStepEvent)]


def _show(text: str, limit: int = TEXT_CHARS) -> str:
    text = visible(text)
    if len(text) > limit:
        text = "…" + text[-limit:]
    return plot_text(text)


def _num(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def drafts_figure(events: list[Event]) -> go.Figure | None:
    """The k drafts side by side, best first: text so far, cumulative score, weight in the next input, and
    perplexity (exp of minus the mean log p of its tokens under the model's untempered distribution in the
    one superposed stream)."""
    steps = _steps(events)
    if not steps:
        return None
    last = steps[-1]
    ppl = last.perplexities or [None] * len(last.drafts)
    headers = [f"<b>draft {i + 1}</b><br>score {s:.2f} · weight {w:.3f}" + ("" if p is None else f" · ppl {p:.1f}")
               for i, (s, w, p) in enumerate(zip(last.scores, last.weights, ppl))]
    cells = [[_show(t)] for t in last.drafts]
    fig = go.Figure(go.Table(header=dict(values=headers, align="left", fill_color="#eef2f7"),
                             cells=dict(values=cells, align="left", height=30)))
    state = "finished (EOS)" if last.finished else f"step {last.step + 1}"
    fig.update_layout(title=f"Drafts ({state}; n-gram {'on' if last.ngram else 'off'})<br><sup>{last.distinct} "
                            f"of {len(last.drafts)} differ in their last {SUFFIX} tokens</sup>",
                      height=260 + 14 * max(len(t) for t in last.drafts) // 60, **LAYOUT)
    return fig


def superposition_figure(events: list[Event]) -> go.Figure | None:
    """The weights each draft's last token gets in the input, per step (stacked to 1), and the number of
    distinct drafts (by their last tokens) on a second axis."""
    steps = _steps(events)
    if not steps:
        return None
    k = max(len(e.weights) for e in steps)
    fig = go.Figure()
    x = [e.step for e in steps]
    for d in range(k):
        y = [e.weights[d] if d < len(e.weights) else None for e in steps]
        hover = [plot_text(repr(visible(e.last_tokens[d]))) if d < len(e.last_tokens) else "" for e in steps]
        fig.add_bar(x=x, y=y, name=f"draft {d + 1}", marker_color=PALETTE[d % len(PALETTE)], customdata=hover,
                    hovertemplate="step %{x}<br>weight %{y:.3f}<br>last token %{customdata}<extra></extra>")
    fig.add_scatter(x=x, y=[e.distinct for e in steps], name=f"distinct drafts (last {SUFFIX} tokens)", yaxis="y2", mode="lines+markers",
                    line=dict(color="black", width=1.5), hovertemplate="step %{x}<br>%{y} distinct<extra></extra>")
    fig.update_layout(barmode="stack", title="Superposition weights per step<br><sup>softmax of the drafts' cumulative "
                                             "scores: at a low temperature one draft soon takes nearly all</sup>",
                      xaxis_title="step", yaxis=dict(title="weight", range=[0, 1]),
                      yaxis2=dict(title="distinct drafts", overlaying="y", side="right", range=[0, k + 0.5],
                                  dtick=1), height=340, **LAYOUT)
    return fig


def candidates_figure(events: list[Event]) -> go.Figure | None:
    """The latest step's k x m candidates, by total score: model and n-gram log-probabilities, the
    interpolated score, and which became the next drafts."""
    steps = _steps(events)
    if not steps:
        return None
    last = steps[-1]
    rows = sorted(last.candidates, key=lambda c: -c["total"] if c["total"] is not None else float("inf"))
    fill = ["#d8f0d8" if c["kept"] else "white" for c in rows]
    columns = [
        [str(c["draft"] + 1) for c in rows],
        [plot_text(repr(visible(c["text"]))) for c in rows],
        [_num(c["lm_logprob"]) for c in rows],
        [_num(c["ngram_logprob"]) if last.ngram else "off" for c in rows],
        [_num(c["score"]) for c in rows],
        [_num(c["total"]) for c in rows],
        ["kept" if c["kept"] else "" for c in rows],
    ]
    header = ["draft", "token", "LM log p", "n-gram log p", "score", "draft total", ""]
    fig = go.Figure(go.Table(header=dict(values=[f"<b>{h}</b>" for h in header], fill_color="#eef2f7"),
                             cells=dict(values=columns, fill_color=[fill] * len(columns))))
    fig.update_layout(title=f"Candidates at step {last.step + 1} (draft x top-m; green: kept)",
                      height=min(900, 120 + 24 * len(rows)), **LAYOUT)
    return fig
