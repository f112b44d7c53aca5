"""Momentum decoding's views, drawn from MomentumStepEvents only (a saved run re-renders the same):
the token graph growing (revisited edges highlighted), the latest step's top-k bars of p against the
penalised score (alpha * R(l) as a negative bar), and the per-step label trace."""

from __future__ import annotations

import networkx as nx
import plotly.graph_objects as go

from playground.events import Event, MomentumStepEvent

from .layout import LEGEND_BELOW, margins
from .text import plot_text, visible

LAYOUT = dict(height=340, margin=margins(right=30), legend=LEGEND_BELOW)
MAX_GRAPH_NODES = 400          # beyond this the drawing is unreadable and the layout slow: keep the newest nodes
LABELS = {0: "greedy token new", 1: "greedy kept, a repeat", 2: "greedy overridden"}


def _steps(events: list[Event]) -> list[MomentumStepEvent]:
    return [e for e in events if isinstance(e, MomentumStepEvent)]


def _label(text: str) -> str:
    return plot_text(visible(text))


def token_graph(steps: list[MomentumStepEvent]) -> tuple[nx.DiGraph, dict[int, str], set[int]]:
    """The graph the events describe: nodes (token ids, with their text), edges with visit counts; and
    which nodes the output added."""
    graph = nx.DiGraph()
    texts: dict[int, str] = {}
    generated: set[int] = set()
    for step in steps:
        for token_id, text in step.prompt_nodes:
            graph.add_node(token_id, order=len(texts))
            texts.setdefault(token_id, text)
        for a, b, visits in step.prompt_edges:
            graph.add_edge(a, b, visits=visits, last=-1)
        chosen = step.candidates[step.chosen] if step.candidates else {"text": ""}
        if step.target not in graph:
            graph.add_node(step.target, order=len(texts))
            generated.add(step.target)
        texts.setdefault(step.target, chosen.get("text", ""))
        if step.source >= 0:
            graph.add_edge(step.source, step.target, visits=step.edge_visits, last=step.step)
    return graph, texts, generated


def momentum_graph_figure(events: list[Event]) -> go.Figure | None:
    steps = _steps(events)
    if not steps:
        return None
    graph, texts, generated = token_graph(steps)
    # the prompt's tokens the output never walked through (a chat template's system text) only crowd the view
    walked = {n for a, b, d in graph.edges(data=True) if d["last"] >= 0 for n in (a, b)} | generated
    hidden = graph.number_of_nodes() - len(walked)
    graph = graph.subgraph(walked).copy()
    if graph.number_of_nodes() > MAX_GRAPH_NODES:
        keep = sorted(graph.nodes, key=lambda n: graph.nodes[n].get("order", 0))[-MAX_GRAPH_NODES:]
        graph = graph.subgraph(keep).copy()
    pos = nx.spring_layout(graph, seed=0, iterations=40)
    latest = steps[-1]
    fig = go.Figure()
    groups = (("first visit", "#bbbbbb", 1, lambda d: d["visits"] <= 1),
              ("revisited edge", "#d62728", 2.5, lambda d: d["visits"] > 1))
    for name, colour, width, keep_edge in groups:
        xs, ys = [], []
        for a, b, d in graph.edges(data=True):
            if keep_edge(d):
                xs += [pos[a][0], pos[b][0], None]
                ys += [pos[a][1], pos[b][1], None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, hoverinfo="skip",
                                 line=dict(color=colour, width=width)))
    if latest.source in pos and latest.target in pos:
        a, b = pos[latest.source], pos[latest.target]
        fig.add_annotation(x=b[0], y=b[1], ax=a[0], ay=a[1], xref="x", yref="y", axref="x", ayref="y",
                           showarrow=True, arrowhead=3, arrowwidth=2, arrowcolor="#2ca02c")
    for name, colour, members in (("prompt token", "#1f77b4", [n for n in graph if n not in generated]),
                                  ("new in the output", "#ff7f0e", [n for n in graph if n in generated])):
        fig.add_trace(go.Scatter(
            x=[pos[n][0] for n in members], y=[pos[n][1] for n in members], mode="markers+text", name=name,
            text=[_label(texts.get(n, "")) for n in members], textposition="top center", textfont=dict(size=9),
            marker=dict(size=9, color=colour, line=dict(width=[3 if n == latest.target else 0 for n in members],
                                                         color="#2ca02c")),
            customdata=[[n, graph.in_degree(n)] for n in members],
            hovertemplate="%{text} (id %{customdata[0]})<br>entered from %{customdata[1]} token(s)<extra></extra>"))
    revisits = sum(1 for _, _, d in graph.edges(data=True) if d["visits"] > 1)
    fig.update_layout(title=f"Token graph: {graph.number_of_nodes()} nodes, {revisits} revisited edges "
                            f"(green arrow: step {latest.step})<br><sup>{hidden} prompt tokens the output never "
                            "passed through are not drawn</sup>",
                      xaxis=dict(visible=False), yaxis=dict(visible=False),
                      **{**LAYOUT, "height": 420, "margin": margins(right=30, top=60)})
    return fig


MAX_STEPS_SHOWN = 60          # the bars' slider holds the latest steps (a long run keeps its figure small)


def _bars(step: MomentumStepEvent, shown: bool) -> list[go.BaseTraceType]:
    """One step's candidates at x = 0..k-1: p, the resistance -alpha*R(l) stacked below zero, the score."""
    cands, x = step.candidates, list(range(len(step.candidates)))
    penalty = [-(c["penalty"] if c["penalty"] is not None else 1.0) for c in cands]
    blocked = ["blocked (R = inf)" if c["penalty"] is None else f"alpha*R(l) = {c['penalty']:.3f}" for c in cands]
    return [go.Bar(x=x, y=[c["p"] for c in cands], name="p (model)", marker_color="#1f77b4", visible=shown,
                   hovertemplate="p = %{y:.3f}<extra></extra>"),
            go.Bar(x=x, y=penalty, name="- alpha*R(l) (resistance)", marker_color="#d62728", visible=shown,
                   text=blocked, textposition="none", hovertemplate="%{text}<extra></extra>"),
            go.Scatter(x=x, y=[c["score"] for c in cands], mode="markers", name="score p - alpha*R(l)", visible=shown,
                       marker=dict(symbol="diamond", size=12, color="#2ca02c"),
                       hovertemplate="score = %{y:.3f}<extra></extra>")]


def _bars_axis(step: MomentumStepEvent) -> dict:
    names = [f"{i + 1}. {'▶ ' if i == step.chosen else ''}{_label(c['text'])} (l={c['l']})"
             for i, c in enumerate(step.candidates)]
    note = " every candidate blocked: greedy taken;" if step.blocked else ""
    return {"title.text": f"Step {step.step}: {LABELS.get(step.label, step.label)};{note} ▶ chosen",
            "xaxis.tickvals": list(range(len(names))), "xaxis.ticktext": names}


def momentum_bars_figure(events: list[Event]) -> go.Figure | None:
    """Each step's top-k candidates: p, the resistance below zero, and the score; a slider walks the steps
    (the latest shown)."""
    steps = [s for s in _steps(events) if s.candidates][-MAX_STEPS_SHOWN:]
    if not steps:
        return None
    fig = go.Figure([trace for i, step in enumerate(steps) for trace in _bars(step, i == len(steps) - 1)])
    fig.update_layout(barmode="relative", yaxis_title="probability / score", **LAYOUT)
    fig.update_layout(_bars_axis(steps[-1]))
    if len(steps) > 1:
        fig.update_layout(sliders=[dict(
            active=len(steps) - 1, currentvalue=dict(prefix="step "), pad=dict(t=50),
            steps=[dict(label=str(step.step), method="update",
                        args=[{"visible": [j // 3 == i for j in range(3 * len(steps))]}, _bars_axis(step)])
                   for i, step in enumerate(steps)])], height=LAYOUT["height"] + 80)
    return fig


def momentum_label_figure(events: list[Event]) -> go.Figure | None:
    steps = _steps(events)
    if not steps:
        return None
    colours = {0: "#1f77b4", 1: "#ff7f0e", 2: "#d62728"}
    fig = go.Figure()
    for label, name in LABELS.items():
        pts = [s for s in steps if s.label == label]
        fig.add_trace(go.Scatter(
            x=[s.step for s in pts], y=[label] * len(pts), mode="markers", name=f"{label}: {name}",
            marker=dict(color=colours[label], size=9, symbol="square"),
            text=[_label(s.candidates[s.chosen]["text"]) if s.candidates else "" for s in pts],
            customdata=[s.candidates[s.chosen]["l"] if s.candidates else 0 for s in pts],
            hovertemplate="step %{x}: %{text} (l = %{customdata})<extra></extra>"))
    fig.update_layout(title="Per-step label (official code's): 0 new, 1 repeat kept, 2 overridden",
                      xaxis_title="step", yaxis=dict(tickvals=[0, 1, 2], range=[-0.5, 2.5]), **LAYOUT)
    return fig
