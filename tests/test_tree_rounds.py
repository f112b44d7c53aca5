"""The tree panel steps through every round (one slider step per round, each showing that round's
nodes and only those), and token tooltips say the chosen token's rank among the alternatives."""

from __future__ import annotations

from playground.decoding import DecodeSession
from playground.events import Alternative, TokenEvent, TreeEvent, TreeNode
from strategies import REGISTRY
from visualizers.text import token_rank, token_tooltip
from visualizers.tree import tree_figure, tree_rounds


def node_ids_by_round(fig) -> dict[int, set[str]]:
    """Which nodes each round's traces draw (trace ids are '<round>:<node id>'), by the traces' meta."""
    drawn: dict[int, set[str]] = {}
    for trace in fig.data:
        drawn.setdefault(trace.meta, set()).update(trace.ids or [])
    return drawn


def check_slider(fig, rounds) -> None:
    slider = fig.layout.sliders[0]
    assert len(slider.steps) == len(rounds) and slider.active == len(rounds) - 1
    drawn = node_ids_by_round(fig)
    for index, (step, rnd) in enumerate(zip(slider.steps, rounds)):
        visible = step.args[0]["visible"]
        shown = {i for i, trace in enumerate(fig.data) if visible[i]}
        assert shown == {i for i, trace in enumerate(fig.data) if trace.meta == index}
        assert drawn[index] == {f"{index}:{n}" for n in rnd.nodes}            # that round's nodes, all of them
        assert step.label == str(rnd.step)
    assert [bool(t.visible) for t in fig.data] == [t.meta == len(rounds) - 1 for t in fig.data]   # the last shows first


def test_speculative_rounds_each_get_a_step(tiny_model, tiny_tokenizer):
    """Speculative decoding (the tiny model drafting for itself): a new draft tree every round."""
    session = DecodeSession(tiny_model, tiny_tokenizer, [5, 17, 33], 16, set(), 0, draft_model=tiny_model)
    events = list(REGISTRY["speculative"]().decode(session))
    rounds = tree_rounds(events)
    trees = [e for e in events if isinstance(e, TreeEvent)]
    assert len(rounds) >= 2 and len(rounds) <= len(trees)
    check_slider(tree_figure(events), rounds)


def test_beam_steps_each_show_the_tree_as_it_was(tiny_model, tiny_tokenizer):
    """Beam search grows one tree: step k shows the nodes of the first k steps, not the final tree."""
    session = DecodeSession(tiny_model, tiny_tokenizer, [5, 17, 33], 6, set(), 0)
    events = list(REGISTRY["beam"](num_beams=3).decode(session))
    rounds = tree_rounds(events)
    sizes = [len(r.nodes) for r in rounds]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    check_slider(tree_figure(events), rounds)


def test_one_round_draws_no_slider():
    events = [TreeEvent(0, [TreeNode(0, None, 5, "a", 1.0, status="accepted"),
                            TreeNode(1, 0, 7, "c", 0.5, status="accepted")], reset=True, chosen=1)]
    fig = tree_figure(events)
    assert not fig.layout.sliders and all(t.visible for t in fig.data)


def token(token_id: int, probs: dict[int, float]) -> TokenEvent:
    alternatives = [Alternative(i, f"t{i}", p) for i, p in probs.items()]
    return TokenEvent(0, token_id, f"t{token_id}", -0.5, 1.0, alternatives)


def test_tooltips_say_the_rank_among_the_alternatives():
    probs = {3: 0.5, 9: 0.3, 4: 0.1}
    assert [token_rank(token(t, probs)) for t in (3, 9, 4)] == [1, 2, 3]
    assert token_rank(token(4, {4: 0.1, 3: 0.5, 9: 0.3})) == 3            # by probability, not by list order
    assert token_rank(token(7, probs)) is None
    assert "rank 2" in token_tooltip(token(9, probs)).splitlines()[1]
    assert "rank: not in the top-3 shown" in token_tooltip(token(7, probs))
