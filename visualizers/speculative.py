"""Speculative decoding views, from VerifyEvents only: acceptance over time and by draft position.

Per-position acceptance answers the question users of speculative decoding ask most ("how deep
do drafts survive?"): for depth d, the share of rounds that proposed a depth-d draft token and
whose accepted path reached depth d.
"""

from __future__ import annotations

import plotly.graph_objects as go

from playground.events import Event, VerifyEvent

from .text import plot_text

LAYOUT = dict(height=300, margin=dict(l=50, r=60, t=40, b=40), legend=dict(orientation="h", y=-0.25))


def _rounds(events: list[Event]) -> list[VerifyEvent]:
    return [e for e in events if isinstance(e, VerifyEvent)]


def acceptance_figure(events: list[Event]) -> go.Figure | None:
    """Accepted draft tokens per round (bars, with drafted as the hover), the running acceptance
    rate (accepted / drafted so far) and the running mean tokens committed per round."""
    rounds = _rounds(events)
    if not rounds:
        return None
    steps = list(range(1, len(rounds) + 1))
    drafted = accepted = emitted = 0
    rate, mean = [], []
    for i, r in enumerate(rounds, 1):
        drafted, accepted, emitted = drafted + r.drafted, accepted + r.accepted, emitted + r.emitted
        rate.append(accepted / drafted if drafted else 0.0)
        mean.append(emitted / i)
    hover = [f"round {i}<br>drafted {r.drafted}, accepted {r.accepted}, committed {r.emitted}"
             + (f"<br>{plot_text(r.source)}" if r.source else "") for i, r in zip(steps, rounds)]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=steps, y=[r.accepted for r in rounds], name="accepted draft tokens", text=hover,
                         hovertemplate="%{text}<extra></extra>", textposition="none", marker_color="#2ca02c"))
    fig.add_trace(go.Scatter(x=steps, y=mean, mode="lines", name="mean committed tokens per round",
                             line=dict(color="#9467bd"), hovertemplate="mean %{y:.2f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=steps, y=rate, mode="lines", name="running acceptance rate", yaxis="y2",
                             line=dict(color="#d62728", dash="dot"), hovertemplate="rate %{y:.2f}<extra></extra>"))
    fig.update_layout(title="Acceptance over time", xaxis_title="verification round", yaxis_title="tokens",
                      yaxis2=dict(title="acceptance rate", overlaying="y", side="right", range=[0, 1.02]),
                      **LAYOUT)
    return fig


def depth_acceptance(rounds: list[VerifyEvent]) -> tuple[list[int], list[int]]:
    """Per depth d (index d-1): rounds that drafted at depth d, and of them those accepted to d."""
    proposed: list[int] = []
    reached: list[int] = []
    for r in rounds:
        for d, ok in enumerate(r.depth_accepted):
            if d == len(proposed):
                proposed.append(0)
                reached.append(0)
            proposed[d] += 1
            reached[d] += bool(ok)
    return proposed, reached


def depth_figure(events: list[Event]) -> go.Figure | None:
    """Acceptance by position in the draft: share of rounds whose accepted path reached depth d."""
    proposed, reached = depth_acceptance(_rounds(events))
    if not proposed:
        return None
    depths = list(range(1, len(proposed) + 1))
    share = [r / p for r, p in zip(reached, proposed)]
    fig = go.Figure(go.Bar(x=depths, y=share, marker_color="#1f77b4", textposition="none",
                           text=[f"depth {d}: {r} of {p} rounds" for d, r, p in zip(depths, reached, proposed)],
                           hovertemplate="%{text}<br>%{y:.2f}<extra></extra>"))
    fig.update_layout(title="Acceptance by draft position", xaxis_title="depth in the draft",
                      yaxis_title="share of rounds accepted to this depth", yaxis_range=[0, 1.02], **LAYOUT)
    return fig
