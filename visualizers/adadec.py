"""AdaDec's views: the entropy trace against the threshold with the paused steps marked, and each
pause's candidates with their rollouts and scores (a slider picks the pause; the latest is shown)."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from playground.events import Event, PauseEvent, TokenEvent

from .layout import LEGEND_BELOW, margins
from .text import plot_text, visible

LAYOUT = dict(margin=margins(right=30, top=50), legend=LEGEND_BELOW)
MAX_PAUSES_SHOWN = 60          # the slider holds the latest pauses (a long run keeps its figure small)


def _adadec_tokens(events: list[Event]) -> list[TokenEvent]:
    return [e for e in events if isinstance(e, TokenEvent) and "paused" in e.extra]


def entropy_threshold_figure(events: list[Event]) -> go.Figure | None:
    tokens = _adadec_tokens(events)
    if not tokens:
        return None
    steps = [t.index for t in tokens]
    hover = [plot_text(repr(visible(t.text))) for t in tokens]
    entropy = [t.extra.get("entropy", t.entropy) for t in tokens]
    fig = go.Figure(go.Scatter(x=steps, y=entropy, mode="lines+markers", name="entropy H (nats)", text=hover,
                               marker=dict(size=5, color="#1f77b4"),
                               hovertemplate="step %{x} %{text}<br>H = %{y:.3f}<extra></extra>"))
    thresholds = [t.extra.get("threshold") for t in tokens]
    if any(v is not None for v in thresholds):
        fig.add_trace(go.Scatter(x=steps, y=thresholds, mode="lines", name="threshold theta",
                                 line=dict(color="#d62728", dash="dash"),
                                 hovertemplate="theta = %{y:.3f}<extra></extra>"))
    paused = [(t.index, e, h) for t, e, h in zip(tokens, entropy, hover) if t.extra.get("paused")]
    if paused:
        fig.add_trace(go.Scatter(x=[p[0] for p in paused], y=[p[1] for p in paused], mode="markers",
                                 name="paused: lookahead rerank", text=[p[2] for p in paused],
                                 marker=dict(symbol="diamond", size=11, color="#ff7f0e", line=dict(color="#333", width=1)),
                                 hovertemplate="step %{x} %{text}<br>paused, H = %{y:.3f}<extra></extra>"))
    fraction = len(paused) / len(tokens)
    fig.update_layout(title=f"Entropy against the threshold: {len(paused)} of {len(tokens)} steps paused ({fraction:.0%})",
                      xaxis_title="step", yaxis_title="nats", height=300, **LAYOUT)
    return fig


def _pause_table(pause: PauseEvent, visible_now: bool) -> go.Table:
    rows = sorted(pause.candidates, key=lambda c: -c["score"])
    colour = ["#dff3df" if c["chosen"] else "white" for c in rows]
    return go.Table(
        visible=visible_now,
        columnwidth=[40, 70, 60, 220, 60],
        header=dict(values=["", "candidate", "log p", "greedy rollout (discarded)", "score"], fill_color="#eee",
                    align="left"),
        cells=dict(values=[
            ["\u2713 chosen" if c["chosen"] else "" for c in rows],
            [plot_text(repr(visible(c["text"]))) for c in rows],
            [f"{c['logprob']:.3f}" for c in rows],
            [plot_text(visible(c["rollout_text"])) + f"  ({len(c['rollout_ids'])} tok)" for c in rows],
            [f"{c['score']:.3f}" for c in rows],
        ], fill_color=[colour] * 5, align="left", height=26),
    )


def pauses_figure(events: list[Event]) -> go.Figure | None:
    pauses = [e for e in events if isinstance(e, PauseEvent)]
    if not pauses:
        return None
    total = len(pauses)
    pauses = pauses[-MAX_PAUSES_SHOWN:]
    fig = go.Figure([_pause_table(p, i == len(pauses) - 1) for i, p in enumerate(pauses)])

    def title(p: PauseEvent) -> str:
        theta = "inf" if p.threshold is None or not math.isfinite(p.threshold) else f"{p.threshold:.3f}"
        return (f"Pause at step {p.step}: H = {p.entropy:.3f} >= theta = {theta} nats; {p.forward_passes} rollout passes"
                "<br><sup>score = mean log p of the candidate and its greedy rollout</sup>")

    if len(pauses) > 1:
        fig.update_layout(sliders=[dict(
            active=len(pauses) - 1, currentvalue=dict(prefix="pause at step "), pad=dict(t=30),
            steps=[dict(label=str(p.step), method="update",
                        args=[{"visible": [j == i for j in range(len(pauses))]}, {"title": title(p)}])
                   for i, p in enumerate(pauses)])])
    shown = "" if total == len(pauses) else f" (latest {len(pauses)} of {total})"
    fig.update_layout(title=title(pauses[-1]) + shown, height=260 + 30 * max(len(p.candidates) for p in pauses),
                      margin=dict(l=20, r=20, t=70, b=20))
    return fig
