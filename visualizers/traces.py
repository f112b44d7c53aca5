"""Per-step traces: entropy (with the kept-set size where a truncation rule applies),
token probability, and any method-specific per-step numbers a strategy reports."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from playground.events import Event, TokenEvent

from .layout import LEGEND_BELOW, margins
from .text import plot_text, visible

LAYOUT = dict(height=320, margin=margins(), legend=LEGEND_BELOW)


def _tokens(events: list[Event]) -> list[TokenEvent]:
    return [e for e in events if isinstance(e, TokenEvent)]


def _hover(tokens: list[TokenEvent]) -> list[str]:
    return [plot_text(repr(visible(t.text))) for t in tokens]


def entropy_figure(events: list[Event]) -> go.Figure | None:
    tokens = _tokens(events)
    if not tokens:
        return None
    steps = [t.index for t in tokens]
    fig = go.Figure(go.Scatter(x=steps, y=[t.entropy for t in tokens], mode="lines+markers", name="entropy H(p) (nats)",
                               text=_hover(tokens), hovertemplate="step %{x} %{text}<br>H = %{y:.3f}<extra></extra>"))
    if any(t.kept is not None for t in tokens):
        fig.add_trace(go.Scatter(x=steps, y=[t.kept for t in tokens], mode="lines", name="kept-set size",
                                 yaxis="y2", line=dict(dash="dot")))
        fig.update_layout(yaxis2=dict(title="kept tokens", overlaying="y", side="right", type="log"))
    fig.update_layout(title="Entropy per step", xaxis_title="step", yaxis_title="nats", **LAYOUT)
    return fig


def probability_figure(events: list[Event]) -> go.Figure | None:
    tokens = _tokens(events)
    if not tokens:
        return None
    steps = [t.index for t in tokens]
    fig = go.Figure(go.Bar(x=steps, y=[math.exp(t.logprob) for t in tokens], name="p(chosen token)",
                           text=_hover(tokens), hovertemplate="step %{x} %{text}<br>p = %{y:.3f}<extra></extra>",
                           marker_color=[f"hsl({int(120 * math.exp(t.logprob))},60%,55%)" for t in tokens], textposition="none"))
    if any(t.sampled_prob is not None for t in tokens):
        fig.add_trace(go.Scatter(x=steps, y=[t.sampled_prob for t in tokens], mode="markers",
                                 name="p in the sampled (truncated) distribution", marker=dict(symbol="x", color="#333")))
    fig.update_layout(title="Probability of each chosen token", xaxis_title="step", yaxis_title="probability",
                      yaxis_range=[0, 1.02], **LAYOUT)
    return fig


def method_trace_figure(events: list[Event]) -> go.Figure | None:
    """A method's own per-step numbers (TokenEvent.extra), one small panel each over a shared step axis:
    a count (1-3 drafts) and a score (down to -170) on one axis would flatten one of them."""
    tokens = [t for t in _tokens(events) if t.extra]
    if not tokens:
        return None
    keys = list(dict.fromkeys(k for t in tokens for k in t.extra))
    fig = make_subplots(rows=len(keys), cols=1, shared_xaxes=True, vertical_spacing=0.06 if len(keys) > 1 else 0,
                        subplot_titles=[plot_text(k) for k in keys])
    for row, key in enumerate(keys, 1):
        pts = [(t.index, t.extra[key]) for t in tokens if key in t.extra]
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                 name=plot_text(key), marker=dict(size=4),
                                 hovertemplate="step %{x}<br>%{y:.4g}<extra>" + plot_text(key) + "</extra>"),
                      row=row, col=1)
    fig.update_xaxes(title_text="step", row=len(keys), col=1)
    fig.update_annotations(font_size=12)
    fig.update_layout(title="Method trace<br><sup>the method's own per-step numbers</sup>", showlegend=False,
                      **{**LAYOUT, "height": 120 + 110 * len(keys), "margin": dict(l=50, r=30, t=60, b=40)})
    return fig
