"""Views of many sequences at once (lanes): who lived, who was copied, who won, and what each wrote.

Drawn from LaneTokenEvent, LaneEvent and PopulationEvent only, never from a method's name, so any
method that decodes lanes (Best-of-N, voting, particles, step beams, races) gets these views by
emitting those events. Every string from a model or a user is escaped: plot_text for plotly,
esc(visible(...)) for HTML.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import plotly.graph_objects as go

from playground.events import Event, LaneEvent, LaneTokenEvent, MetricsEvent, PopulationEvent

from .layout import LEGEND_BELOW, margins
from .text import esc, plot_text, visible

LAYOUT = dict(margin=margins(), legend=LEGEND_BELOW)
FATE_COLOURS = {"live": "#1f77b4", "finished": "#ff7f0e", "pruned": "#7f7f7f", "dropped": "#c7c7c7",
                "unfinished": "#8c564b", "chosen": "#2ca02c"}
HOVER_CHARS = 400           # a lane's text on hover: its last characters (the whole text is in the lane cards)


@dataclass
class LaneView:
    """One lane as the events tell it so far."""

    id: int
    parent: int | None = None
    born: int = 0                 # the step it was spawned at
    last: int = 0                 # the last step it was seen at
    fate: str = "live"            # live | finished | pruned | dropped | unfinished (the run ended first)
    reason: str = ""
    reward: float | None = None
    weight: float | None = None
    answer: str = ""
    text: str = ""
    tokens: int = 0               # its output length (a copy counts the tokens it inherited)
    chosen: bool = False


def lane_views(events: list[Event]) -> dict[int, LaneView]:
    """Replay the lane events: texts grow by their token pieces (a copy starts from its parent's text);
    a LaneEvent's whole text, when given, is taken as is; a lane left out of a step's survivors died there."""
    lanes: dict[int, LaneView] = {}

    def get(lane_id: int, step: int) -> LaneView:
        lane = lanes.setdefault(lane_id, LaneView(lane_id, born=step, last=step))
        lane.last = max(lane.last, step)
        return lane

    for event in events:
        if isinstance(event, LaneTokenEvent):
            lane = get(event.lane, event.step)
            lane.text += event.text
            lane.tokens = max(lane.tokens, event.index + 1)
        elif isinstance(event, LaneEvent):
            fresh = event.lane not in lanes
            lane = get(event.lane, event.step)
            if event.kind == "spawn" and fresh and event.parent in lanes:
                parent = lanes[event.parent]
                lane.text, lane.tokens = parent.text, parent.tokens
                if parent.fate == "finished":                 # a copy of a finished lane is finished too
                    lane.fate, lane.reason = parent.fate, parent.reason
            if event.parent is not None:
                lane.parent = event.parent
            lane.text = event.text or lane.text
            lane.reward = event.reward if event.reward is not None else lane.reward
            lane.weight = event.weight if event.weight is not None else lane.weight
            lane.answer = event.answer or lane.answer
            if event.kind == "finish":
                lane.fate, lane.reason = "finished", event.reason
            elif event.kind == "prune":
                was = f"finished ({lane.reason}), then " if lane.fate == "finished" else ""
                lane.fate, lane.reason = "pruned", was + event.reason
            lane.chosen |= event.kind == "chosen"
        elif isinstance(event, PopulationEvent):
            for i, lane_id in enumerate(event.lanes):
                lane = get(lane_id, event.step)
                lane.weight = event.weights[i] if i < len(event.weights) else lane.weight
                lane.reward = event.rewards[i] if i < len(event.rewards) else lane.reward
                if event.survivors and lane_id not in event.survivors and lane.fate == "live":
                    lane.fate, lane.reason = "dropped", event.note
        elif isinstance(event, MetricsEvent):                 # the run is over: nothing is still decoding
            for lane in lanes.values():
                if lane.fate == "live":
                    lane.fate, lane.reason = "unfinished", "the run ended first"
    return lanes


def _steps(events: list[Event]) -> list[PopulationEvent]:
    return [e for e in events if isinstance(e, PopulationEvent)]


def _hover_text(text: str) -> str:
    tail = text if len(text) <= HOVER_CHARS else "\u2026" + text[-HOVER_CHARS:]
    return plot_text(visible(tail)).replace("\n", "<br>")


def _number(x: float | None) -> str:
    return "\u2013" if x is None else f"{x:.3g}"


# --- weights ------------------------------------------------------------------------------------
def weights_figure(events: list[Event]) -> go.Figure | None:
    """Steps (x) by lane slots (y), colour = normalised weight; where the step resampled or pruned, a cell
    says how many copies of its lane were kept (x2; x0 = dropped; blank = kept once). Hover: lane id, reward, weight."""
    steps = _steps(events)
    if len(steps) < 2:              # one scoring (best-of-N, a vote): the lane cards show each weight
        return None
    slots = max(len(p.lanes) for p in steps)
    z = [[None] * len(steps) for _ in range(slots)]
    marks = [[""] * len(steps) for _ in range(slots)]
    hover = [[""] * len(steps) for _ in range(slots)]
    for j, p in enumerate(steps):
        copies = Counter(p.survivors)
        for i, lane_id in enumerate(p.lanes):
            z[i][j] = p.weights[i] if i < len(p.weights) else None
            if p.survivors:
                marks[i][j] = "" if copies[lane_id] == 1 else f"\u00d7{copies[lane_id]}"    # x0: dropped
            reward = p.rewards[i] if i < len(p.rewards) else None
            hover[i][j] = (f"step {p.step} · lane {lane_id}<br>reward {_number(reward)}<br>weight {_number(z[i][j])}"
                           + (f"<br>kept {copies[lane_id]}x" if p.survivors else ""))
    fig = go.Figure(go.Heatmap(
        x=[p.step for p in steps], y=list(range(slots)), z=z, text=marks, texttemplate="%{text}", hovertext=hover,
        hovertemplate="%{hovertext}<extra></extra>", colorscale="Blues", zmin=0,
        zmax=max((w for p in steps for w in p.weights), default=1) or 1,      # 16 lanes' weights are all small
        colorbar=dict(title="weight"), xgap=1, ygap=1))
    for p in steps:                 # above the plot: a marker inside would add a phantom lane slot
        if p.survivors:
            fig.add_annotation(x=p.step, y=1.0, yref="paper", yanchor="bottom", text="\u25bc", showarrow=False,
                               font=dict(color="#d62728", size=14), hovertext=plot_text(p.note or "resampled"))
    fig.update_layout(title="Lane weights per step", xaxis_title="step", yaxis_title="lane slot",
                      height=max(260, min(700, 60 + 22 * slots)), **LAYOUT)
    fig.update_xaxes(type="category" if len(steps) < 2 else "linear", dtick=1)
    return fig


# --- effective sample size ------------------------------------------------------------------------
def ess_figure(events: list[Event]) -> go.Figure | None:
    """ESS = 1 / sum(w^2) per step against N/2 (the usual resampling threshold); the annealing
    temperature on a second axis when any step tempered its weights."""
    steps = _steps(events)
    if len(steps) < 2:              # one point says nothing about a population's health
        return None
    x = [p.step for p in steps]
    notes = [plot_text(p.note) for p in steps]
    fig = go.Figure(go.Scatter(x=x, y=[p.ess for p in steps], mode="lines+markers", name="ESS", text=notes,
                               hovertemplate="step %{x}<br>ESS %{y:.2f}<br>%{text}<extra></extra>"))
    fig.add_trace(go.Scatter(x=x, y=[len(p.lanes) / 2 for p in steps], mode="lines", name="N/2",
                             line=dict(dash="dash", color="#d62728")))
    if any(p.temperature != 1 for p in steps):
        fig.add_trace(go.Scatter(x=x, y=[p.temperature for p in steps], mode="lines+markers", name="temperature",
                                 yaxis="y2", line=dict(dash="dot", color="#9467bd")))
        fig.update_layout(yaxis2=dict(title="temperature", overlaying="y", side="right"))
    fig.update_layout(title="Effective sample size per step", xaxis_title="step", yaxis_title="ESS",
                      yaxis_rangemode="tozero", height=280, **LAYOUT)
    fig.update_xaxes(dtick=1)
    return fig


# --- ancestry -------------------------------------------------------------------------------------
def _rows(lanes: dict[int, LaneView]) -> dict[int, int]:
    """Each lane's row: depth-first over the family tree, so copies sit just under their parent."""
    children: dict[int | None, list[int]] = {}
    for lane in lanes.values():
        children.setdefault(lane.parent if lane.parent in lanes else None, []).append(lane.id)
    order: list[int] = []
    stack = sorted(children.get(None, []), reverse=True)
    while stack:
        lane_id = stack.pop()
        order.append(lane_id)
        stack += sorted(children.get(lane_id, []), reverse=True)
    return {lane_id: row for row, lane_id in enumerate(order)}


def _lineage(lanes: dict[int, LaneView]) -> set[int]:
    """The chosen lanes and all their ancestors."""
    line: set[int] = set()
    for lane in lanes.values():
        at: int | None = lane.id if lane.chosen else None
        while at is not None and at in lanes and at not in line:
            line.add(at)
            at = lanes[at].parent
    return line


def ancestry_figure(events: list[Event]) -> go.Figure | None:
    """One row per lane from the step it was born to the last step it was seen (a run of one step: from 0
    to its length in tokens); an edge from its parent where it was copied; one marker per lane at its end,
    coloured by its fate; the chosen lane and its ancestors drawn thick."""
    lanes = lane_views(events)
    if not any(lane.parent is not None for lane in lanes.values()):   # no lane was copied: no family tree
        return None
    rows, line = _rows(lanes), _lineage(lanes)
    by_tokens = len({lane.born for lane in lanes.values()} | {lane.last for lane in lanes.values()}) == 1
    if by_tokens:               # one step (samples side by side): each lane's line is its length in tokens
        start, end = {lane.id: 0 for lane in lanes.values()}, {lane.id: lane.tokens for lane in lanes.values()}
    else:
        start, end = {lane.id: lane.born for lane in lanes.values()}, {lane.id: lane.last for lane in lanes.values()}
    fig = go.Figure()
    for highlighted in (False, True):
        xs: list = []
        ys: list = []
        for lane in lanes.values():
            if (lane.id in line) != highlighted:
                continue
            y = rows[lane.id]
            xs += [start[lane.id], end[lane.id], None]
            ys += [y, y, None]
            if lane.parent in rows:
                xs += [start[lane.id], start[lane.id], None]
                ys += [rows[lane.parent], y, None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                 line=dict(color="#2ca02c" if highlighted else "#bbb", width=4 if highlighted else 1.5)))
    fates = {lane.id: "chosen" if lane.chosen else lane.fate for lane in lanes.values()}
    for fate in dict.fromkeys(fates.values()):
        group = [lane for lane in lanes.values() if fates[lane.id] == fate]
        fig.add_trace(go.Scatter(
            x=[end[lane.id] for lane in group], y=[rows[lane.id] for lane in group], mode="markers+text", name=fate,
            text=[str(lane.id) for lane in group], textposition="middle right",
            marker=dict(size=11, color=FATE_COLOURS.get(fate, "#7f7f7f"), line=dict(width=1, color="#333"),
                        symbol="x" if fate in ("pruned", "dropped") else "circle"),
            customdata=[[lane.id, "\u2013" if lane.parent is None else lane.parent, plot_text(lane.reason),
                         _number(lane.reward), _number(lane.weight), plot_text(visible(lane.answer)),
                         _hover_text(lane.text)] for lane in group],
            hovertemplate=("lane %{customdata[0]} (parent %{customdata[1]})<br>" + fate + " %{customdata[2]}"
                           "<br>reward %{customdata[3]} · weight %{customdata[4]}<br>answer %{customdata[5]}"
                           "<br>%{customdata[6]}<extra></extra>"),
        ))
    fig.update_layout(title="Lane ancestry", xaxis_title="tokens" if by_tokens else "step",
                      height=max(280, min(900, 60 + 20 * len(rows))),
                      yaxis=dict(visible=False, autorange="reversed"), **LAYOUT)
    if not by_tokens:
        fig.update_xaxes(dtick=1)
    return fig


# --- votes ----------------------------------------------------------------------------------------
def votes(events: list[Event]) -> tuple[Counter, str]:
    """Each lane's latest answer (lanes pruned or dropped do not vote), and the chosen answer: the same
    answers the lane cards show."""
    lanes = lane_views(events)
    counts = Counter(lane.answer for lane in lanes.values() if lane.answer and lane.fate not in ("pruned", "dropped"))
    chosen = next((lane.answer for lane in lanes.values() if lane.chosen), "")
    return counts, chosen


def votes_figure(events: list[Event]) -> go.Figure | None:
    counts, chosen = votes(events)
    if not counts:
        return None
    answers = [a for a, _ in counts.most_common()]
    total = sum(counts.values())
    winner = chosen if chosen in counts else answers[0]
    fig = go.Figure(go.Bar(
        x=[plot_text(visible(a)) for a in answers], y=[counts[a] for a in answers], textposition="none",
        marker_color=["#2ca02c" if a == winner else "#9ecae1" for a in answers],
        hovertemplate="answer %{x}<br>%{y} votes<extra></extra>"))
    majority, top = counts.most_common(1)[0]
    title = f"Answers: most votes {plot_text(visible(majority))} ({top} of {total}, {top / total:.0%})"
    if winner != majority:
        title += f"; chosen {plot_text(visible(winner))} ({counts[winner]})"
    fig.update_layout(title=title, xaxis_title="extracted answer", yaxis_title="lanes", height=280,
                      xaxis_type="category", **LAYOUT)
    return fig


# --- lengths over time ----------------------------------------------------------------------------
def race_figure(events: list[Event]) -> go.Figure | None:
    """Each lane's length over time (x: batched decoding steps, counted from the order of lane tokens: a
    step ends when a lane adds its next token, or at a population step), finish marks, the chosen (else the first finished) lane thick.
    Drawn when two or more lanes grew and at least one finished."""
    tick, in_tick = 0, set()
    paths: dict[int, tuple[list[int], list[int]]] = {}
    ends: list[tuple[int, int, int, str]] = []
    lengths: dict[int, int] = {}
    chosen: int | None = None
    for event in events:
        if isinstance(event, LaneTokenEvent):
            if event.lane in in_tick:
                tick, in_tick = tick + 1, set()
            in_tick.add(event.lane)
            lengths[event.lane] = event.index + 1
            xs, ys = paths.setdefault(event.lane, ([], []))
            xs.append(tick + 1)
            ys.append(event.index + 1)
        elif isinstance(event, PopulationEvent) and in_tick:      # a population step ends a batched step
            tick, in_tick = tick + 1, set()
        elif isinstance(event, LaneEvent) and event.kind == "finish":
            ends.append((event.lane, tick + 1, lengths.get(event.lane, 0), event.reason))
        elif isinstance(event, LaneEvent) and event.kind == "chosen":
            chosen = event.lane
    if len(paths) < 2 or not ends:
        return None
    winner = chosen if chosen is not None else ends[0][0]
    fig = go.Figure()
    for lane_id, (xs, ys) in paths.items():
        win = lane_id == winner
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"lane {lane_id}" + (" (chosen)" if win else ""),
                                 showlegend=win or len(paths) <= 12,
                                 line=dict(width=4 if win else 1.5, color="#2ca02c" if win else None),
                                 hovertemplate=f"lane {lane_id}<br>step %{{x}}: %{{y}} tokens<extra></extra>"))
    fig.add_trace(go.Scatter(x=[e[1] for e in ends], y=[e[2] for e in ends], mode="markers", name="finished",
                             marker=dict(symbol="star", size=12, color="#ff7f0e", line=dict(width=1, color="#333")),
                             customdata=[[e[0], plot_text(e[3])] for e in ends],
                             hovertemplate="lane %{customdata[0]} finished (%{customdata[1]})<br>%{y} tokens<extra></extra>"))
    fig.update_layout(title="Lanes' lengths over time", xaxis_title="decoding step (one batched forward)",
                      yaxis_title="tokens", height=300, **LAYOUT)
    return fig


# --- the lanes' texts -------------------------------------------------------------------------------
def lanes_html(events: list[Event]) -> str:
    """Every lane's text so far, side by side: while lanes decode nothing is committed yet, so this is
    what the user watches. "" when the run has no lanes."""
    lanes = lane_views(events)
    if not lanes:
        return ""
    cards = []
    gone = ("pruned", "dropped")
    for lane in sorted(lanes.values(), key=lambda v: (v.fate in gone and not v.chosen, v.id)):   # the living first
        fate = "chosen" if lane.chosen else lane.fate
        head = [f"lane {lane.id}"]
        if lane.parent is not None:
            head.append(f"\u2190 {lane.parent}")
        head.append(fate + (f" ({lane.reason})" if lane.reason else ""))
        if lane.reward is not None:
            head.append(f"r {lane.reward:.3f}")
        if lane.weight is not None:
            head.append(f"w {lane.weight:.3f}")
        if lane.answer:
            head.append(f"answer {visible(lane.answer)}")
        head.append(f"{lane.tokens} tok")
        body = esc(visible(lane.text)) or '<span class="dp-empty">(nothing yet)</span>'
        cards.append(f'<div class="dp-lane dp-lane-{fate.replace(" ", "-")}" data-lane="{lane.id}">'
                     f'<div class="dp-lane-head">{esc(" · ".join(head))}</div>'
                     f'<div class="dp-lane-text">{body}</div></div>')
    return (f'<div class="dp-lanes"><div class="dp-lanes-title">{len(lanes)} lanes (the answer above is the '
            f'lane the method chose, committed once it chose)</div><div class="dp-lane-grid">{"".join(cards)}</div></div>')
