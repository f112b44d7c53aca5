"""Events round-trip through JSON, and the visualizers escape everything that came from a user or a model."""

from __future__ import annotations

import json

from playground.events import Alternative, RunStarted, TokenEvent, TreeEvent, TreeNode, from_dicts, to_dicts
from visualizers import render
from visualizers.text import tokens_html

XSS = "<img src=x onerror=alert(1)>"


def sample_events():
    return [
        RunStarted("r1", "m", "float32", "greedy", {}, 0, XSS, 3, 8),
        TokenEvent(0, 5, XSS, -0.1, 1.2, [Alternative(5, XSS, 0.9), Alternative(6, '"quote"', 0.05)], kept=3),
        TokenEvent(1, 7, "\n\t", -2.0, 0.3, [Alternative(7, "\n", 0.1)]),
        TreeEvent(0, [TreeNode(0, None, 5, XSS, -0.1), TreeNode(1, 0, 7, "<b>", -0.5, status="pruned")], preview=XSS),
    ]


def test_events_round_trip_through_json():
    events = sample_events()
    again = from_dicts(json.loads(json.dumps(to_dicts(events))))
    assert [e.to_dict() for e in again] == [e.to_dict() for e in events]
    assert isinstance(again[1].alternatives[0], Alternative) and isinstance(again[3].nodes[0], TreeNode)


def test_token_text_and_tooltips_are_escaped():
    html_out = tokens_html(sample_events())
    assert "<img" not in html_out and "&lt;img src=x onerror=alert(1)&gt;" in html_out
    assert '"quote"' not in html_out                     # attribute values cannot be broken out of
    assert "\u21b5" in html_out                           # a newline token is visible


def test_figures_escape_hover_text():
    figures = render(sample_events()).figures
    blob = json.dumps({k: f.to_plotly_json() if f else None for k, f in figures.items()}, default=str)
    assert "<img" not in blob and "<b>" not in blob
    assert figures["tree"] is not None and figures["entropy"] is not None


def test_acceptance_vs_draft_probability_counts_reached_nodes_only():
    from playground.events import TreeEvent, TreeNode
    from visualizers.speculative import draft_probability_figure

    def node(i, parent, q, status):
        return TreeNode(i, parent, 10 + i, f"t{i}", score=q or 1.0, status=status, draft_prob=q)

    rounds = [TreeEvent(0, [node(0, None, None, "accepted"), node(1, 0, 0.93, "accepted"), node(2, 0, 0.15, "rejected"),
                            node(3, 2, 0.97, "rejected"),                   # parent rejected: never reached
                            node(4, 1, 0.91, "rejected")]),
              TreeEvent(1, [node(0, None, None, "accepted"), node(1, 0, 0.12, "accepted")])]
    fig = draft_probability_figure(rounds)
    rate = fig.data[0]
    assert list(rate.x) == [0.15, 0.95] and list(rate.y) == [0.5, 0.5]       # q bin [.1,.2): 1 of 2; [.9,1): 1 of 2
    assert draft_probability_figure([TreeEvent(0, [node(0, None, None, "accepted"), node(1, 0, None, "accepted")])]) is None


def plain_step(step: int):
    """A round that drafted nothing, as the speculative family emits it: the root and the target's token."""
    from playground.events import VerifyEvent
    return [TreeEvent(step, [TreeNode(0, None, 5, "a", 1.0, status="accepted"),
                             TreeNode(1, 0, 6, "b", 0.9, status="bonus")], reset=True, chosen=1),
            VerifyEvent(step=step, drafted=0, accepted=0, emitted=1)]


def test_plain_steps_draw_no_acceptance_and_no_tree():
    """33 plain steps and one drafted token used to draw a two-node "tree" and an acceptance rate of
    1.000; now rounds that drafted nothing give no acceptance number and leave no tree in view."""
    from playground.events import VerifyEvent
    from visualizers.speculative import acceptance_figure, depth_figure
    from visualizers.tree import tree_figure

    plain = [e for step in range(33) for e in plain_step(step)]
    assert acceptance_figure(plain) is None and depth_figure(plain) is None and tree_figure(plain) is None
    drafted = TreeEvent(33, [TreeNode(0, None, 5, "a", 1.0, status="accepted"),
                             TreeNode(1, 0, 7, "c", 0.5, status="accepted"),
                             TreeNode(2, 1, 8, "d", 0.9, status="bonus")], reset=True, chosen=2)
    events = plain + [drafted, VerifyEvent(step=33, drafted=1, accepted=1, emitted=2)] + plain_step(34)
    fig = acceptance_figure(events)
    assert fig.layout.title.text == "Acceptance over time (drafted in 1 of 35 rounds)"
    rate = list(fig.data[2].y)
    assert rate[:33] == [None] * 33 and rate[33:] == [1.0, 1.0]     # no rate before anything was drafted
    tree = tree_figure(events)                                     # the plain step after it keeps it in view
    assert tree is not None and any("c" in str(t) for d in tree.data for t in (d.text or []))


def test_lossless_is_said_only_where_it_holds():
    """'Lossless' is claimed for exactly the configurations the exactness tests check against greedy:
    every speculative method at temperature 0, never above it, and greedy is the reference, not lossless."""
    from strategies import REGISTRY
    from visualizers.metrics import metrics_rows

    tested_equal_to_greedy = {"prompt_lookup", "token_recycling", "dyspec", "rasd", "speculative", "early_exit",
                              "rsd", "rsd_s", "spectr"}      # test_speculative_greedy.py, test_speculative_sampling.py
    assert {n for n, cls in REGISTRY.items() if cls().is_lossless()} == tested_equal_to_greedy
    for name in tested_equal_to_greedy - {"prompt_lookup", "token_recycling", "rasd"}:
        assert not REGISTRY[name](temperature=0.8).is_lossless(), name
        assert "at temperature 0" in REGISTRY[name].lossless_help()
    assert REGISTRY["greedy"].lossless_help().startswith("The reference")
    assert REGISTRY["sampling"].lossless_help() == "" and REGISTRY["beam"].lossless_help() == ""

    def row(strategy, lossless):
        start = RunStarted("r", "m", "float32", strategy, {}, 0, "p", 3, 8, lossless=lossless)
        return dict(metrics_rows([start]))["output equals greedy (lossless)"]

    assert row("greedy", False) == "greedy is the reference"
    assert row("speculative", True) == "yes, for these parameters"
    assert row("speculative", False) == "no, for these parameters"
    assert "output equals greedy (lossless)" not in dict(metrics_rows([RunStarted("r", "m", "f", "x", {}, 0, "p", 3, 8)]))


def test_beam_first_step_stays_in_the_tree(tiny_model, tiny_tokenizer):
    """Beam's first step has several parentless nodes (one per first token); it is not a plain step,
    and the winning path in the tree is the whole answer, first token included."""
    from playground.decoding import DecodeSession
    from playground.events import TokenEvent
    from strategies import REGISTRY
    from visualizers.tree import current_tree

    session = DecodeSession(tiny_model, tiny_tokenizer, [5, 17, 33], 8, set(), 0)
    events = list(REGISTRY["beam"](num_beams=3).decode(session))
    nodes, chosen, _ = current_tree(events)
    path = []
    while chosen is not None:
        path.append(nodes[chosen].token_id)
        chosen = nodes[chosen].parent
    assert path[::-1] == [e.token_id for e in events if isinstance(e, TokenEvent)]


def test_method_trace_gives_each_number_its_own_axis():
    """A count (1-3 drafts) and a score (down to -170) on one axis flatten the count: each per-step
    number gets its own panel and y axis over a shared step axis."""
    from visualizers.traces import method_trace_figure

    tokens = [TokenEvent(index=i, token_id=1, text="a", logprob=-0.1, entropy=1.0, alternatives=[],
                         extra={"draft score": -10.0 * i, "distinct drafts": float(1 + i % 3)}) for i in range(6)]
    fig = method_trace_figure(tokens)
    axes = {trace.name: trace.yaxis for trace in fig.data}
    assert set(axes) == {"draft score", "distinct drafts"} and len(set(axes.values())) == 2
    counts = next(t for t in fig.data if t.name == "distinct drafts")
    assert list(counts.y) == [1.0, 2.0, 3.0, 1.0, 2.0, 3.0] and list(counts.x) == list(range(6))
    assert [a.text for a in fig.layout.annotations] == ["draft score", "distinct drafts"]
