"""Token trees (beam search, draft trees): networkx holds the structure, plotly draws it.

A TreeEvent with reset=True starts a new tree; reset=False adds nodes to the current one
(beam search grows one tree over the run). Nodes are coloured by status; the root path of
`chosen` is drawn thick. A slider steps through every round's tree (the last one shows first):
one group of traces per round, a step making its group the visible one.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import plotly.graph_objects as go

from playground.events import Event, TreeEvent, TreeNode

from .text import plot_text
from .text import visible as visible_text

STATUS_COLOURS = {
    "kept": "#1f77b4", "open": "#aec7e8", "pruned": "#c7c7c7", "finished": "#ff7f0e", "chosen": "#2ca02c",
    "accepted": "#2ca02c", "rejected": "#d62728", "bonus": "#9467bd",
}
MAX_NODES = 1500  # beyond this the drawing is unreadable anyway; keep the newest nodes
MAX_SLIDER_NODES = 12_000   # nodes drawn over all of a figure's rounds: the page redraws it while a run streams


def drafted_nothing(event: TreeEvent) -> bool:
    """A speculative round that drafted nothing: its "tree" is the root and the target's own token."""
    roots = [n for n in event.nodes if n.parent is None]
    return event.reset and len(roots) == 1 and all(n.status == "bonus" for n in event.nodes if n.parent is not None)


@dataclass
class Round:
    """The tree as one round (a speculative round, a beam step) left it."""
    step: int
    nodes: dict[int, TreeNode]
    chosen: int | None
    title: str


def tree_rounds(events: list[Event]) -> list[Round]:
    """Every round's tree, in order; plain steps (drafted nothing) have no tree and are skipped. A
    TreeEvent with reset=False grows the previous round's tree (beam search), one round per event."""
    rounds: list[Round] = []
    nodes: dict[int, TreeNode] = {}
    chosen, title = None, ""
    for event in events:
        if isinstance(event, TreeEvent) and not drafted_nothing(event):
            if event.reset:
                nodes, chosen = {}, None
            else:
                nodes = dict(nodes)          # the earlier round keeps its own snapshot
            for node in event.nodes:
                nodes[node.id] = node
            chosen = event.chosen if event.chosen is not None else chosen
            title = event.title or title
            rounds.append(Round(event.step, nodes, chosen, title))
    return rounds


def current_tree(events: list[Event]) -> tuple[dict[int, TreeNode], int | None, str]:
    """The latest tree; a plain step (drafted nothing) leaves the last real tree in view."""
    rounds = tree_rounds(events)
    if not rounds:
        return {}, None, ""
    last = rounds[-1]
    return last.nodes, last.chosen, last.title


def tidy_layout(graph: nx.DiGraph) -> dict[int, tuple[float, float]]:
    """Depth on x; leaves stacked on y in DFS order, parents centred over their children."""
    pos: dict[int, tuple[float, float]] = {}
    next_leaf = [0.0]

    def place(node, depth):
        children = sorted(graph.successors(node))
        if not children:
            pos[node] = (depth, next_leaf[0])
            next_leaf[0] += 1
        else:
            for child in children:
                place(child, depth + 1)
            pos[node] = (depth, sum(pos[c][1] for c in children) / len(children))

    for root in sorted(n for n in graph.nodes if graph.in_degree(n) == 0):
        place(root, 0)
    return pos


def wrapped(text: str, width: int = 80) -> str:
    """Hover text in lines of `width` characters (a search step can be a paragraph), escaped line by line."""
    return "<br>".join(plot_text(text[i:i + width]) for i in range(0, len(text), width)) or plot_text(text)


def hover_logprob(node: TreeNode) -> str:
    return "" if node.logprob is None else f"<br>logprob {node.logprob:.3f}"


def shown_rounds(rounds: list[Round]) -> list[Round]:
    """The rounds the slider steps through: all of them, unless together they hold more than
    MAX_SLIDER_NODES nodes (a long beam search); then every k-th, the last always kept."""
    total = sum(min(len(r.nodes), MAX_NODES) for r in rounds)
    every = max(1, -(-total // MAX_SLIDER_NODES))
    return [r for i, r in enumerate(rounds) if (len(rounds) - 1 - i) % every == 0]


def tree_figure(events: list[Event]) -> go.Figure | None:
    """The last round's tree, with a slider stepping through every round's (traces toggled per step)."""
    rounds = tree_rounds(events)
    if not rounds:
        return None
    shown = shown_rounds(rounds)
    fig = go.Figure()
    heights, depths, steps = [], [], []
    for i, rnd in enumerate(shown):
        first = len(fig.data)
        size, depth = add_round(fig, rnd, i, visible=i == len(shown) - 1)
        heights.append(size)
        depths.append(depth)
        steps.append((first, len(fig.data), rnd))
    last = shown[-1]
    fig.update_layout(title=plot_text(last.title or "Tree"), height=max(300, min(900, 18 * max(heights) ** 0.8)),
                      margin=dict(l=40, r=40, t=40, b=120 if len(shown) > 1 else 80),
                      xaxis=dict(title="depth", dtick=1, range=[-0.9, max(depths) + 1.2]),
                      yaxis=dict(visible=False), legend=dict(orientation="h", y=-0.25))   # room for labels, legend under the axis
    if len(shown) > 1:
        fig.update_layout(sliders=[round_slider(steps, len(fig.data), len(rounds))])
    return fig


def round_slider(steps: list[tuple[int, int, Round]], n_traces: int, n_rounds: int) -> dict:
    """One slider step per round shown: it makes that round's traces (first..end) the visible ones."""
    entries = []
    for first, end, rnd in steps:
        visible = [first <= t < end for t in range(n_traces)]
        entries.append(dict(method="update", label=str(rnd.step),
                            args=[{"visible": visible}, {"title.text": plot_text(rnd.title or "Tree")}]))
    every = "" if len(steps) == n_rounds else f" ({len(steps)} of {n_rounds} rounds shown)"
    return dict(active=len(steps) - 1, steps=entries, y=-0.32, pad=dict(t=10),
                currentvalue=dict(prefix=f"round{every}: "))


def add_round(fig: go.Figure, rnd: Round, index: int, visible: bool) -> tuple[int, float]:
    """One round's tree as traces tagged meta=index; returns (nodes drawn, depth) for the layout."""
    nodes, chosen = rnd.nodes, rnd.chosen
    if len(nodes) > MAX_NODES:
        keep = sorted(nodes)[-MAX_NODES:]
        nodes = {i: nodes[i] for i in keep}
    # The prompt is the root: a search's own root node (no token) stands for it, else one is added.
    own = [n.id for n in nodes.values() if n.parent is None and n.token_id < 0]
    root = own[0] if len(own) == 1 else -1
    graph = nx.DiGraph()
    graph.add_node(root)
    for node in nodes.values():
        if node.id != root:
            graph.add_edge(node.parent if node.parent in nodes else root, node.id)
    pos = tidy_layout(graph)
    on_path = set(nx.ancestors(graph, chosen)) | {chosen} if chosen in graph else set()
    tag = dict(meta=index, visible=visible)

    for highlighted in (False, True):
        xs, ys = [], []
        for a, b in graph.edges:
            if (b in on_path) == highlighted:
                xs += [pos[a][0], pos[b][0], None]
                ys += [pos[a][1], pos[b][1], None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False, **tag,
                                 line=dict(color="#2ca02c" if highlighted else "#bbb", width=4 if highlighted else 1)))
    shown = [n for n in nodes.values() if n.id in pos]
    for status in dict.fromkeys(("chosen" if n.id in on_path else n.status) for n in shown):
        group = [n for n in shown if ("chosen" if n.id in on_path else n.status) == status]
        fig.add_trace(go.Scatter(
            x=[pos[n.id][0] for n in group], y=[pos[n.id][1] for n in group], mode="markers+text", name=status,
            text=[plot_text(visible_text(n.text)[:12]) for n in group], textposition="middle right",
            ids=[f"{index}:{n.id}" for n in group], **tag,
            marker=dict(size=10, color=STATUS_COLOURS.get(status, "#7f7f7f"), line=dict(width=1, color="#333")),
            customdata=[[wrapped(visible_text(n.text)), n.score, plot_text(n.label), hover_logprob(n)] for n in group],
            hovertemplate="%{customdata[0]}<br>score %{customdata[1]:.3f}%{customdata[3]}<br>%{customdata[2]}"
                          "<extra></extra>",
        ))
    if root == -1:
        fig.add_trace(go.Scatter(x=[pos[-1][0]], y=[pos[-1][1]], mode="markers+text", text=["prompt"], **tag,
                                 textposition="middle left", marker=dict(size=12, color="#333"), name="prompt",
                                 hoverinfo="skip"))
    return len(pos), max(x for x, _ in pos.values())
