"""Per-step traces: entropy (with the kept-set size where a truncation rule applies),
token probability, and any method-specific per-step numbers a strategy reports."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from playground.events import Event, TokenEvent

from .text import plot_text, visible

LAYOUT = dict(height=280, margin=dict(l=50, r=50, t=40, b=40), legend=dict(orientation="h", y=-0.25))


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
    tokens = [t for t in _tokens(events) if t.extra]
    if not tokens:
        return None
    fig = go.Figure()
    for key in dict.fromkeys(k for t in tokens for k in t.extra):
        pts = [(t.index, t.extra[key]) for t in tokens if key in t.extra]
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=plot_text(key)))
    fig.update_layout(title="Method trace", xaxis_title="step", **LAYOUT)
    return fig
