"""Momentum decoding: no resistance is greedy (ours and transformers'); l(c) and rep-n on hand-made
sequences; the choice rule's invariants on real runs of the tiny model; the resistance table's errors."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from playground.decoding import DecodeSession
from playground.events import MomentumStepEvent, NoticeEvent, StatsEvent, TokenEvent, from_dicts, to_dicts
from strategies import REGISTRY, InvalidParameter
from strategies.single_pass.momentum import (LABEL_KEY, LENGTH_KEY, RepetitionMeter, TokenGraph, choose,
                                             parse_resistance, repetition_rates)
from visualizers import render

PROMPTS = [[5, 17, 33], [1, 2, 3, 4, 5, 6, 7, 8], [42, 42, 42, 7]]
A, B, C, D, E = 10, 11, 12, 13, 14


def run(model, tokenizer, prompt, max_new=24, eos=(), **params):
    session = DecodeSession(model, tokenizer, prompt, max_new, set(eos), 0)
    events = list(REGISTRY["momentum"](**params).decode(session))
    return [e.token_id for e in events if isinstance(e, TokenEvent)], events, session


def greedy(model, tokenizer, prompt, max_new=24):
    session = DecodeSession(model, tokenizer, prompt, max_new, set(), 0)
    return [e.token_id for e in REGISTRY["greedy"]().decode(session) if isinstance(e, TokenEvent)]


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("table", ["0,1,3,4,5,5", "inf,inf,inf", "0,inf"])
def test_no_resistance_is_greedy_and_generate(tiny_model, tiny_tokenizer, one_thread, prompt, table):
    ours, events, session = run(tiny_model, tiny_tokenizer, prompt, alpha=0.0, resistance=table)
    ids = torch.tensor([prompt])
    ref = tiny_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                              pad_token_id=0, eos_token_id=None)[0, len(prompt):].tolist()
    assert ours == greedy(tiny_model, tiny_tokenizer, prompt) == ref
    plain = REGISTRY["greedy"]().decode(DecodeSession(tiny_model, tiny_tokenizer, prompt, 24, set(), 0))
    described = [(e.logprob, e.entropy, [(a.token_id, a.prob) for a in e.alternatives]) for e in plain]
    for (lp, h, alts), e in zip(described, [e for e in events if isinstance(e, TokenEvent)]):
        assert e.logprob == pytest.approx(lp, abs=1e-12) and e.entropy == h           # the same description
        assert [(a.token_id, a.prob) for a in e.alternatives] == alts
    assert session.forward_passes == len(ours)                 # one pass per token, like greedy
    assert not any(isinstance(e, NoticeEvent) for e in events)
    steps = [e for e in events if isinstance(e, MomentumStepEvent)]
    assert all(c["penalty"] == 0 and c["score"] == c["p"] for e in steps for c in e.candidates)   # 0 * inf is 0


def test_resistance_changes_the_output_and_lowers_repetition(tiny_model, tiny_tokenizer, one_thread):
    """On this prompt plain greedy repeats itself; momentum's default steers away (label 2 happens)."""
    free = greedy(tiny_model, tiny_tokenizer, PROMPTS[0], 40)
    ours, events, _ = run(tiny_model, tiny_tokenizer, PROMPTS[0], 40)
    assert ours != free
    assert any(e.label == 2 for e in events if isinstance(e, MomentumStepEvent))
    assert repetition_rates(ours)[2] < repetition_rates(free)[2]


def test_repetition_length_on_hand_made_sequences():
    g = TokenGraph([A, B, C, A, B], n_max=5)
    assert g.repetition_length(C) == 3              # "a b" + c was seen as "a b c"
    assert g.repetition_length(D) == 0              # never seen
    assert g.repetition_length(A) == 1              # seen, but "b a" never was (and no longer n-gram)
    assert g.repetition_length(B) == 1              # "b b" never seen
    g = TokenGraph([A, B, C, D, A, B, C], n_max=5)
    assert g.repetition_length(D) == 4              # "a b c d" again
    assert TokenGraph([A, B, C, D, A, B, C], n_max=3).repetition_length(D) == 3   # capped at n_max
    g = TokenGraph([A, B, C, D, E, A, B, C, D], n_max=5)
    assert g.repetition_length(E) == 5
    g = TokenGraph([A, A, A], n_max=5)
    assert g.repetition_length(A) == 3              # "a a a" occurred (overlapping occurrences count)
    assert TokenGraph([A], n_max=5).repetition_length(A) == 1    # shorter than any n-gram: seen only


def test_the_graph_counts_edge_visits_and_nodes_by_id():
    g = TokenGraph([A, B, A], n_max=4)
    assert sorted(g.graph.nodes) == [A, B]
    assert g.add(B) == (False, 2)                   # a -> b walked again
    assert g.add(C) == (True, 1)


def test_repetition_rates_on_hand_made_sequences():
    assert repetition_rates([A, B, C, D]) == {2: 0.0, 3: 0.0, 4: 0.0}
    assert repetition_rates([A, B, A, B]) == {2: pytest.approx(1 / 3), 3: 0.0, 4: 0.0}
    assert repetition_rates([A, A, A, A, A]) == {2: 0.75, 3: pytest.approx(2 / 3), 4: 0.5}
    assert repetition_rates([A]) == {2: 0.0, 3: 0.0, 4: 0.0}
    meter = RepetitionMeter()
    seq = [A, B, C, A, B, C, A, B, D]
    for t in seq:
        meter.add(t)
    assert meter.rates() == repetition_rates(seq)


def test_choice_rule():
    table = parse_resistance("0,1,3,4,5,5")
    # no candidate seen before: greedy, whatever alpha
    assert choose([0.5, 0.3, 0.2], [0, 0, 0], table, 5.0)[0] == 0
    # greedy a repeat of length 2 (penalty 0.6) loses to a new token
    index, penalties, scores, blocked = choose([0.5, 0.3, 0.2], [2, 0, 0], table, 0.2)
    assert (index, blocked) == (1, False) and penalties == pytest.approx([0.6, 0, 0])
    # all blocked: greedy, said so
    index, _, scores, blocked = choose([0.5, 0.3], [3, 4], parse_resistance("0,1,inf"), 0.2)
    assert (index, blocked) == (0, True) and scores == [-math.inf, -math.inf]


def test_invariants_on_real_runs(tiny_model, tiny_tokenizer, one_thread):
    for prompt in PROMPTS:
        for params in ({}, {"alpha": 1.0, "k": 3, "n_max": 2}, {"resistance": "0,0,0,0,5"}, {"k": 8}):
            ours, events, session = run(tiny_model, tiny_tokenizer, prompt, 30, **params)
            steps = [e for e in events if isinstance(e, MomentumStepEvent)]
            tokens = [e for e in events if isinstance(e, TokenEvent)]
            k, n_max = params.get("k", 5), params.get("n_max", 5)
            assert len(steps) == len(tokens) == 30
            history = list(prompt)
            for step, token in zip(steps, tokens):
                ids = [c["token_id"] for c in step.candidates]
                assert step.target == token.token_id == ids[step.chosen]                 # chosen in top-k
                assert len(ids) == k == len(set(ids))
                if k == len(token.alternatives):                                        # the k most probable
                    assert set(ids) == {a.token_id for a in token.alternatives}
                assert all(0 <= c["l"] <= n_max for c in step.candidates)
                assert [c["l"] for c in step.candidates] == [TokenGraph(history, n_max).repetition_length(i)
                                                             for i in ids]              # the index = a rescan
                if all(c["l"] == 0 for c in step.candidates):
                    assert step.chosen == 0 and step.label == 0                         # nothing seen: greedy
                assert step.label == (0 if step.candidates[0]["l"] == 0 else 1 if step.chosen == 0 else 2)
                assert step.candidates[0]["token_id"] == token.alternatives[0].token_id  # greedy first
                assert step.new_node == (token.token_id not in history)
                history.append(token.token_id)
                assert token.extra[LABEL_KEY] == step.label and token.extra[LENGTH_KEY] == step.candidates[step.chosen]["l"]


def test_every_candidate_blocked_falls_back_to_greedy_and_says_so(tiny_model, tiny_tokenizer, one_thread):
    """R = 0 for a new token, inf for any seen one, k = 1: whenever greedy's token was seen it is blocked,
    the only candidate; the run goes on greedily, marks the step and raises a notice."""
    ours, events, _ = run(tiny_model, tiny_tokenizer, PROMPTS[2], 24, k=1, resistance="0")
    assert ours == greedy(tiny_model, tiny_tokenizer, PROMPTS[2])
    blocked = [e for e in events if isinstance(e, MomentumStepEvent) and e.blocked]
    assert blocked and all(e.candidates[0]["penalty"] is None and e.candidates[0]["score"] is None for e in blocked)
    assert any(isinstance(e, NoticeEvent) and e.key == "momentum-blocked" for e in events)
    json.dumps(to_dicts(events), allow_nan=False)                    # no inf reaches a saved run


def test_events_render_live_and_from_a_saved_run(tiny_model, tiny_tokenizer, one_thread):
    _, events, _ = run(tiny_model, tiny_tokenizer, [5, 17, 33, 5, 17], 30, resistance="0,0,0,0,5")
    saved = from_dicts(json.loads(json.dumps(to_dicts(events), allow_nan=False)))
    for evs in (events, saved, events[:2]):
        figures = render(evs).figures
        assert all(figures[key] is not None for key in ("momentum_graph", "momentum_bars", "momentum_labels"))
        assert figures["tree"] is None
    stats = [e for e in events if isinstance(e, StatsEvent)][-1].values
    assert set(stats) >= {"rep-2", "rep-3", "rep-4"}
    graph = render(events).figures["momentum_graph"]
    assert "revisited" in graph.layout.title.text


def test_token_text_is_escaped_in_the_graph():
    from visualizers.momentum import momentum_bars_figure, momentum_graph_figure

    bad = "<img src=x onerror=alert(1)>"
    step = MomentumStepEvent(step=0, candidates=[{"token_id": 1, "text": bad, "p": 0.9, "l": 0, "penalty": 0.0,
                                                  "score": 0.9}],
                             chosen=0, label=0, source=0, target=1, new_node=True, edge_visits=1,
                             prompt_nodes=[[0, bad]], prompt_edges=[])
    text = json.dumps(momentum_graph_figure([step]).to_plotly_json(), default=str)
    text += json.dumps(momentum_bars_figure([step]).to_plotly_json(), default=str)
    assert "<img" not in text and "&lt;img" in text


@pytest.mark.parametrize("table,message", [
    ("", "at least one value"), ("0,1,x", "R(2) = 'x' is not a number"), ("0,-1", "R(1) = '-1' must be >= 0"),
    ("0,nan", "R(1) = 'nan' must be >= 0"), (",".join(["1"] * 17), "at most 16"),
])
def test_resistance_table_errors_are_clear(table, message):
    with pytest.raises(InvalidParameter, match=re.escape(message)):
        REGISTRY["momentum"](resistance=table)


def test_resistance_table_parses_inf_and_spaces():
    assert parse_resistance("0, 1 inf") == (0.0, 1.0, math.inf)
    assert REGISTRY["momentum"]().table == (0, 1, 3, 4, 5, 5)


def _walk(n: int, prompt: int = 1) -> list[MomentumStepEvent]:
    """A prompt of `prompt` tokens (a chain), then n output steps each adding a new token after the last."""
    def step(i):
        return MomentumStepEvent(step=i, candidates=[{"token_id": prompt + i, "text": f" t{prompt + i}", "p": 0.5,
                                                      "l": 0, "penalty": 0.0, "score": 0.5}],
                                 chosen=0, label=0, source=prompt + i - 1, target=prompt + i, new_node=True,
                                 edge_visits=1, prompt_nodes=[[j, f" t{j}"] for j in range(prompt)] if i == 0 else [],
                                 prompt_edges=[[j, j + 1, 1] for j in range(prompt - 1)] if i == 0 else [])
    return [step(i) for i in range(n)]


def _shown(fig) -> list[str]:
    return [t for trace in fig.data if trace.mode == "markers+text" for t in trace.text]


def test_a_large_graph_keeps_the_newest_nodes():
    from visualizers.momentum import MAX_GRAPH_NODES, momentum_graph_figure

    n = MAX_GRAPH_NODES + 50
    shown = _shown(momentum_graph_figure(_walk(n)))
    assert len(shown) == MAX_GRAPH_NODES and f" t{n}" in shown and " t0" not in shown


def test_prompt_tokens_the_output_never_passed_through_are_not_drawn():
    """A chat template's system text crowded the graph: only nodes on the output's walk are drawn
    (the last prompt token, where the walk starts, included), and the title counts the rest."""
    from visualizers.momentum import momentum_graph_figure

    fig = momentum_graph_figure(_walk(3, prompt=20))
    assert sorted(_shown(fig)) == sorted([" t19", " t20", " t21", " t22"])
    assert "19 prompt tokens" in fig.layout.title.text


def test_the_bars_step_through_every_step_with_that_steps_candidates():
    """A saved run showed only its last step's bars: now a slider walks the steps, each showing its own
    candidates (names on the axis, p, resistance and score)."""
    from visualizers.momentum import momentum_bars_figure

    steps = [MomentumStepEvent(step=i, candidates=[
        {"token_id": 1, "text": f" a{i}", "p": 0.5 + i / 10, "l": 0, "penalty": 0.0, "score": 0.5 + i / 10},
        {"token_id": 2, "text": f" b{i}", "p": 0.2, "l": i, "penalty": 0.1 * i, "score": 0.2 - 0.1 * i}],
        chosen=0, label=0, source=0, target=1, new_node=True, edge_visits=1) for i in range(4)]
    fig = momentum_bars_figure(steps)
    slider = fig.layout.sliders[0]
    assert [s.label for s in slider.steps] == ["0", "1", "2", "3"] and slider.active == 3
    for i, s in enumerate(slider.steps):
        shown = [t for t, v in zip(fig.data, s.args[0]["visible"]) if v]
        assert [t.name for t in shown] == ["p (model)", "- alpha*R(l) (resistance)", "score p - alpha*R(l)"]
        assert list(shown[0].y) == [0.5 + i / 10, 0.2] and list(shown[1].y) == [-0.0, -0.1 * i]
        assert s.args[1]["xaxis.ticktext"][1].startswith("2.") and f" b{i}" in s.args[1]["xaxis.ticktext"][1]
        assert s.args[1]["title.text"].startswith(f"Step {i}:")
