"""Speculative decoding views, from VerifyEvents only: acceptance over time and by draft position.

Per-position acceptance answers the question users of speculative decoding ask most ("how deep
do drafts survive?"): for depth d, the share of rounds that proposed a depth-d draft token and
whose accepted path reached depth d.
"""

from __future__ import annotations

import plotly.graph_objects as go

from playground.events import Event, TreeEvent, VerifyEvent

from .text import plot_text

LAYOUT = dict(height=300, margin=dict(l=50, r=60, t=40, b=40), legend=dict(orientation="h", y=-0.25))


def _rounds(events: list[Event]) -> list[VerifyEvent]:
    return [e for e in events if isinstance(e, VerifyEvent)]


def acceptance_figure(events: list[Event]) -> go.Figure | None:
    """Accepted draft tokens per round (bars, with drafted as the hover), the running acceptance
    rate (accepted / drafted so far) and the running mean tokens committed per round."""
    rounds = _rounds(events)
    if not any(r.drafted for r in rounds):
        return None                     # plain steps only: an acceptance rate of nothing is no number
    steps = list(range(1, len(rounds) + 1))
    drafted = accepted = emitted = 0
    rate, mean = [], []
    for i, r in enumerate(rounds, 1):
        drafted, accepted, emitted = drafted + r.drafted, accepted + r.accepted, emitted + r.emitted
        rate.append(accepted / drafted if drafted else None)          # a gap until something was drafted
        mean.append(emitted / i)
    hover = [f"round {i}<br>" + (f"drafted {r.drafted}, accepted {r.accepted}" if r.drafted else
                                 "plain step (nothing drafted)") + f", committed {r.emitted}"
             + (f"<br>{plot_text(r.source)}" if r.source else "") for i, r in zip(steps, rounds)]
    drafting = sum(1 for r in rounds if r.drafted)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=steps, y=[r.accepted for r in rounds], name="accepted draft tokens", text=hover,
                         hovertemplate="%{text}<extra></extra>", textposition="none", marker_color="#2ca02c"))
    fig.add_trace(go.Scatter(x=steps, y=mean, mode="lines", name="mean committed tokens per round",
                             line=dict(color="#9467bd"), hovertemplate="mean %{y:.2f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=steps, y=rate, mode="lines", name="running acceptance rate", yaxis="y2",
                             line=dict(color="#d62728", dash="dot"), hovertemplate="rate %{y:.2f}<extra></extra>"))
    fig.update_layout(title=f"Acceptance over time (drafted in {drafting} of {len(rounds)} rounds)",
                      xaxis_title="verification round", yaxis_title="tokens",
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
    # the counts are printed on the bars: a share of 0 (0 of 1 rounds) otherwise reads as an empty plot
    fig = go.Figure(go.Bar(x=depths, y=share, marker_color="#1f77b4", textposition="outside",
                           text=[f"{r}/{p}" for r, p in zip(reached, proposed)],
                           customdata=[f"depth {d}: {r} of {p} rounds" for d, r, p in zip(depths, reached, proposed)],
                           hovertemplate="%{customdata}<br>%{y:.2f}<extra></extra>"))
    fig.update_layout(title="Acceptance by draft position", xaxis_title="depth in the draft", xaxis_dtick=1,
                      yaxis_title="share of rounds accepted to this depth", yaxis_range=[0, 1.02], **LAYOUT)
    return fig


def draft_probability_figure(events: list[Event], bins: int = 10) -> go.Figure | None:
    """Acceptance rate against the draft's own probability q of a token (DySpec's premise: q
    predicts acceptance, so grow the tree where q is high). A node counts once it was reached,
    i.e. its parent was accepted; it is accepted if the target kept it."""
    reached = [0] * bins
    kept = [0] * bins
    for tree in (e for e in events if isinstance(e, TreeEvent) and e.reset):
        status = {n.id: n.status for n in tree.nodes}
        for n in tree.nodes:
            if n.draft_prob is None or status.get(n.parent) != "accepted" or n.status not in ("accepted", "rejected"):
                continue
            b = min(int(n.draft_prob * bins), bins - 1)
            reached[b] += 1
            kept[b] += n.status == "accepted"
    if not any(reached):
        return None
    centers = [(b + 0.5) / bins for b in range(bins)]
    used = [b for b in range(bins) if reached[b]]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[centers[b] for b in used], y=[kept[b] / reached[b] for b in used],
                             mode="lines+markers", name="acceptance rate",
                             text=[f"q in [{b / bins:.1f}, {(b + 1) / bins:.1f}): {kept[b]} of {reached[b]} accepted"
                                   for b in used],
                             hovertemplate="%{text}<extra></extra>", marker=dict(size=[6 + min(reached[b], 40) / 3
                                                                                       for b in used])))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="acceptance = q",
                             line=dict(dash="dot", color="#999"), hoverinfo="skip"))
    fig.update_layout(title="Acceptance vs draft probability q (marker size: nodes reached)",
                      xaxis=dict(title="draft probability q", range=[0, 1]),
                      yaxis=dict(title="accepted / reached", range=[0, 1.05]), **LAYOUT)
    return fig
