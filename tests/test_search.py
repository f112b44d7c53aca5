"""Search over steps: the pure best-first core on synthetic problems, A*-decoding and step-level beam
search on the tiny model."""

from __future__ import annotations

import itertools

import pytest

from playground.decoding import DecodeSession
from playground.events import LaneEvent, PopulationEvent, StatsEvent, TokenEvent, TreeEvent
from playground.lanes import Lanes
from strategies import REGISTRY
from strategies.scaling.steps import Sampler, grow_to_end
from strategies.search.best_first import BestFirst, Child, plain

# --- a synthetic problem: strings over {a, b, c} of length 3; each letter costs its own weight -------
WEIGHT = {"a": 0.7, "b": 0.2, "c": 0.5}
DEPTH = 3


def children(node, h=lambda state: 0.0):
    if len(node.state) >= DEPTH:
        return []
    return [Child(node.state + ch, WEIGHT[ch] + 0.01 * len(node.state) * (ch == "c"), h(node.state + ch))
            for ch in "abc"]


def cost(state: str) -> float:
    return sum(WEIGHT[ch] + 0.01 * i * (ch == "c") for i, ch in enumerate(state))


def run(search, expand, root_h=0.0):
    records, stream = [], search.run("", root_h, expand)
    while True:
        try:
            records.append(next(stream))
        except StopIteration as end:
            return end.value, records


def test_zero_heuristic_full_budget_finds_the_cheapest_goal():
    search = BestFirst(budget=100, cap=100, is_goal=lambda n: len(n.state) == DEPTH)
    found, _ = run(search, plain(children))
    brute = min(("".join(p) for p in itertools.product("abc", repeat=DEPTH)), key=cost)
    assert search.outcome == "goal" and found.state == brute and found.g == pytest.approx(cost(brute))


def test_popped_f_never_decreases_with_a_consistent_heuristic():
    # h = cheapest weight per missing letter: admissible and consistent (h(s) <= c(s, s') + h(s'))
    h = lambda state: min(WEIGHT.values()) * (DEPTH - len(state))   # noqa: E731
    search = BestFirst(budget=100, cap=100, is_goal=lambda n: len(n.state) == DEPTH)
    found, records = run(search, plain(lambda n: children(n, h)), root_h=h(""))
    pops = [r.node.f for r in records if r.kind == "pop"]
    assert pops == sorted(pops) and len(pops) > 3
    assert found.g == pytest.approx(min(cost("".join(p)) for p in itertools.product("abc", repeat=DEPTH)))


def test_queue_cap_and_deduplication():
    # every expansion offers the same two states again, and three new ones
    def expand(node):
        return [Child("x", 1.0, 0.0), Child("y", 1.0, 0.0)] + [Child(node.state + ch, 1.0, 0.0) for ch in "abc"]
    search = BestFirst(budget=6, cap=4, is_goal=lambda n: False)
    _, records = run(search, plain(expand))
    kinds = [r.kind for r in records]
    assert max(r.queue for r in records) <= 4 and "drop" in kinds
    pushed = [r.node.state for r in records if r.kind == "push"]
    assert len(pushed) == len(set(pushed)) and pushed.count("x") == 1
    assert kinds.count("duplicate") >= 2 * (search.expansions - 1)
    assert search.expansions == 6 and search.outcome == "budget"


def test_ties_in_f_go_to_the_deeper_state():
    search = BestFirst(budget=3, cap=10, is_goal=lambda n: False)
    _, records = run(search, plain(lambda n: [Child(n.state + "a", 0.0, 0.0), Child(n.state + "b", 0.0, 0.0)]))
    depths = [r.node.depth for r in records if r.kind == "pop"]
    assert depths == [0, 1, 2]


# --- on the tiny model --------------------------------------------------------------------------------
def session_for(model, tokenizer, max_new=12, eos=(), seed=3):
    return DecodeSession(model, tokenizer, [5, 17, 33], max_new, set(eos), seed)


def run_method(model, tokenizer, name, max_new=12, eos=(), seed=3, **params):
    session = session_for(model, tokenizer, max_new, eos, seed)
    events = list(REGISTRY[name](**params).decode(session))
    return [e.token_id for e in events if isinstance(e, TokenEvent)], events, session


def last_stats(events):
    return [e for e in events if isinstance(e, StatsEvent)][-1].values


@pytest.mark.parametrize("k,cost", [(3, "zero"), (2, "nll"), (4, "badness")])
def test_a_star_reward_calls_are_k_per_expansion(tiny_model, tiny_tokenizer, k, cost):
    tokens, events, _ = run_method(tiny_model, tiny_tokenizer, "a_star", k=k, cost=cost, budget=5, step_tokens=3)
    stats = last_stats(events)
    assert stats["reward calls"] == k * stats["expansions"] and 1 <= stats["expansions"] <= 5
    trees = [e for e in events if isinstance(e, TreeEvent)]
    assert trees[0].reset and trees[-1].chosen is not None and tokens
    notice = [e for e in events if e.__class__.__name__ == "NoticeEvent"][-1].message
    chosen = [e for e in events if isinstance(e, LaneEvent) and e.kind == "chosen"]
    assert len(chosen) == 1
    if notice.startswith("A finished state"):             # a goal: the lane ended (length limit here)
        assert len(tokens) == 12
    else:
        assert "No goal was popped" in notice


def test_a_star_returns_a_goal_with_enough_budget(tiny_model, tiny_tokenizer):
    tokens, events, _ = run_method(tiny_model, tiny_tokenizer, "a_star", max_new=6, k=2, budget=16, step_tokens=3)
    notice = [e for e in events if e.__class__.__name__ == "NoticeEvent"][-1].message
    assert notice.startswith("A finished state") and len(tokens) == 6


def test_a_star_with_one_candidate_and_no_cost_is_one_sampled_chain(tiny_model, tiny_tokenizer):
    """k = 1, cost zero: each expansion extends the only state by one step, so the answer is the chain that
    one lane grown to the end draws with the same seed (grow_to_end on Lanes(session, 1))."""
    params = {"temperature": 1.0}
    tokens, _, _ = run_method(tiny_model, tiny_tokenizer, "a_star", k=1, cost="zero", budget=16, step_tokens=4,
                              **params)
    session = session_for(tiny_model, tiny_tokenizer)
    lanes = Lanes(session, 1)
    list(grow_to_end(lanes, Sampler(REGISTRY["a_star"](**params).p, session.generator)))
    assert tokens == lanes.lanes[0].tokens and len(tokens) == 12


@pytest.mark.parametrize("beams,candidates", [(2, 3), (4, 4), (1, 2)])
def test_step_beam_keeps_n_per_step(tiny_model, tiny_tokenizer, beams, candidates):
    tokens, events, _ = run_method(tiny_model, tiny_tokenizer, "step_beam", max_new=10, beams=beams,
                                   candidates=candidates, step_tokens=3, max_steps=3)
    population = [e for e in events if isinstance(e, PopulationEvent)]
    assert len(population) == 3                             # 10 tokens in steps of 3: nobody finishes in 3 steps
    for event in population:
        assert len(event.lanes) == beams * candidates and len(event.survivors) == beams
        best = sorted(event.rewards, reverse=True)[:beams]
        kept = [event.rewards[event.lanes.index(lane)] for lane in event.survivors]
        assert sorted(kept, reverse=True) == best           # the survivors are the top N by reward
        assert sum(event.weights) == pytest.approx(1.0)
    assert last_stats(events)["reward calls"] == 3 * beams * candidates
    chosen = [e for e in events if isinstance(e, LaneEvent) and e.kind == "chosen"]
    assert len(chosen) == 1 and chosen[0].lane in population[-1].survivors and len(tokens) == 9


def test_step_beam_stops_when_every_kept_beam_finished(tiny_model, tiny_tokenizer):
    tokens, events, _ = run_method(tiny_model, tiny_tokenizer, "step_beam", max_new=5, beams=2, candidates=2,
                                   step_tokens=3, max_steps=8)
    population = [e for e in events if isinstance(e, PopulationEvent)]
    assert len(population) == 2 and all(population[-1].finished) and len(tokens) == 5


def test_step_beam_caps_lanes():
    with pytest.raises(Exception, match="at most 16 lanes"):
        REGISTRY["step_beam"](beams=4, candidates=5).check()


def test_a_star_prompt_pass_is_the_first_prefill_only(tiny_model, tiny_tokenizer):
    """Re-reading a state for an expansion is decode work: the session's prompt-pass mark (which sets the
    run's prefill time) stays at the first pass over the bare prompt."""
    import time

    session = session_for(tiny_model, tiny_tokenizer)
    trees, after_first = 0, None
    for event in REGISTRY["a_star"](k=2, budget=4, step_tokens=2).decode(session):
        if isinstance(event, TreeEvent):
            trees += 1
            if trees == 2:                                  # the second pop: the first expansion is done
                after_first = time.perf_counter()
    assert after_first is not None and session.prompt_pass_done_at < after_first
    assert session.forward_passes > 4                       # the later prefills ran, counted as passes


@pytest.mark.parametrize("name,params", [("a_star", {"k": 2, "budget": 8, "step_tokens": 2}),
                                         ("step_beam", {"beams": 2, "candidates": 2, "step_tokens": 2})])
def test_stopped_search_commits_its_best_so_far(tiny_model, tiny_tokenizer, name, params):
    from strategies import StopRun

    session = session_for(tiny_model, tiny_tokenizer)
    stream = REGISTRY[name](**params).decode(session)
    seen = 0
    for event in stream:
        seen += isinstance(event, LaneEvent) and event.kind == "score" or isinstance(event, PopulationEvent)
        if seen >= 3:
            break
    rest = [stream.throw(StopRun())] + list(stream)
    notices = [e.message for e in rest if e.__class__.__name__ == "NoticeEvent"]
    tokens = [e for e in rest if isinstance(e, TokenEvent)]
    assert any(m.startswith("Stopped") for m in notices) and tokens
    assert [e.index for e in tokens] == list(range(len(tokens)))
