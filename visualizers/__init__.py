"""Visualizers: pure functions from a run's events to figures and safe HTML.

PANELS is the one list the UI draws from. A panel whose function returns None for a run is
hidden, so a new method gets its view by emitting the events a panel reads (or by adding a
panel here), never by a special case in the UI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import plotly.graph_objects as go

from playground.events import Event

from .adadec import entropy_threshold_figure, pauses_figure
from .extract import extract_figure, extract_html
from .metrics import metrics_html
from .momentum import momentum_bars_figure, momentum_graph_figure, momentum_label_figure
from .population import ancestry_figure, ess_figure, lanes_html, race_figure, votes_figure, weights_figure
from .rejection import layer_acceptance_figure, rejection_figure
from .speculative import acceptance_figure, depth_figure, draft_probability_figure
from .superposed import candidates_figure, drafts_figure, superposition_figure
from .text import CSS, tokens_html
from .traces import entropy_figure, method_trace_figure, probability_figure
from .tree import tree_figure


@dataclass(frozen=True)
class Panel:
    key: str
    label: str
    draw: Callable[[list[Event]], go.Figure | None]


PANELS: tuple[Panel, ...] = (
    Panel("entropy", "Entropy", entropy_figure),
    Panel("probability", "Token probability", probability_figure),
    Panel("tree", "Tree", tree_figure),
    Panel("method", "Method trace", method_trace_figure),
    Panel("acceptance", "Acceptance over time", acceptance_figure),
    Panel("acceptance_depth", "Acceptance by position", depth_figure),
    Panel("draft_probability", "Acceptance vs draft probability", draft_probability_figure),
    Panel("rejection", "Rejection: p vs q", rejection_figure),
    Panel("layer_acceptance", "Per-layer acceptance (DEL)", layer_acceptance_figure),
    Panel("weights", "Lane weights per step", weights_figure),
    Panel("ess", "Effective sample size", ess_figure),
    Panel("ancestry", "Lane ancestry", ancestry_figure),
    Panel("votes", "Answer votes", votes_figure),
    Panel("race", "Lanes' lengths over time", race_figure),
    Panel("extract_spans", "Top spans (exact extract)", extract_figure),
    Panel("adadec_entropy", "Entropy vs threshold, pauses (AdaDec)", entropy_threshold_figure),
    Panel("adadec_pauses", "Pause: candidates, rollouts, scores (AdaDec)", pauses_figure),
    Panel("momentum_graph", "Token graph (momentum)", momentum_graph_figure),
    Panel("momentum_bars", "p vs resisted score (momentum)", momentum_bars_figure),
    Panel("momentum_labels", "Greedy kept / overridden (momentum)", momentum_label_figure),
    Panel("superposed_drafts", "Drafts side by side (superposed)", drafts_figure),
    Panel("superposed_weights", "Superposition weights per step (superposed)", superposition_figure),
    Panel("superposed_candidates", "Candidates: LM vs n-gram scores (superposed)", candidates_figure),
)


@dataclass
class Rendered:
    text_html: str
    metrics_html: str
    figures: dict[str, go.Figure | None]


def text_html(events: list[Event]) -> str:
    """The committed answer, then (for runs of many sequences) every lane's text under it."""
    return tokens_html(events) + lanes_html(events) + extract_html(events)


def render(events: list[Event]) -> Rendered:
    return Rendered(text_html(events), metrics_html(events), {p.key: p.draw(events) for p in PANELS})


__all__ = ["CSS", "PANELS", "Panel", "Rendered", "render", "text_html", "tokens_html", "lanes_html", "metrics_html"]
