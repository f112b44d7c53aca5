"""Particle filtering and Entropic PF on the tiny float64 llama: one particle is plain sampling, the
population events keep their invariants, finished particles never grow, seeded runs repeat, and equal
weights under systematic resampling are independent sampling (Best-of-N's lanes, token for token).

The tiny tokenizer never writes a blank line, so the per-step token cap ends every step."""

from __future__ import annotations

import math

import pytest

from playground.decoding import DecodeSession
from playground.events import LaneEvent, LaneTokenEvent, NoticeEvent, PopulationEvent, StatsEvent, TokenEvent
from strategies import REGISTRY, StopRun

PROMPT = [5, 17, 33]
EOS = {7}                       # a token the tiny model draws now and then, so some particles finish early


def run(model, tokenizer, name, max_new=16, eos=(), seed=0, **params):
    session = DecodeSession(model, tokenizer, PROMPT, max_new, set(eos), seed)
    events = list(REGISTRY[name](**params).decode(session))
    return events, session


def tokens(events):
    return [e.token_id for e in events if isinstance(e, TokenEvent)]


@pytest.mark.parametrize("name,params", [
    ("particle_filter", {}),
    ("particle_filter", {"resampling": "systematic", "selection": "weighted_vote"}),
    ("entropic_pf", {"lookahead": 1.0}),          # look-ahead draws from a side generator: no token moves
])
def test_one_particle_is_plain_sampling(tiny_model, tiny_tokenizer, name, params):
    plain, _ = run(tiny_model, tiny_tokenizer, "sampling", max_new=20, seed=3, temperature=1.0)
    ours, session = run(tiny_model, tiny_tokenizer, name, max_new=20, seed=3, n=1, step_tokens=3,
                        temperature=1.0, **params)
    assert tokens(ours) == tokens(plain) and len(tokens(ours)) == 20
    assert {e.lane for e in ours if isinstance(e, LaneTokenEvent)} == {0}      # look-ahead copies stay unseen
    assert session.output_ids == tokens(plain)


RUNS = [
    ("particle_filter", {}),
    ("particle_filter", {"resampling": "systematic"}),
    ("particle_filter", {"resample_when": "ess", "selection": "weighted_vote"}),
    ("entropic_pf", {"softmax_temperature": 0.05}),            # sharp weights: annealing has work to do
    ("entropic_pf", {"lookahead": 0.5, "resampling": "multinomial"}),
]


@pytest.fixture(scope="module")
def runs(tiny_model, tiny_tokenizer):
    return {i: run(tiny_model, tiny_tokenizer, name, max_new=14, eos=EOS, seed=1, n=4, step_tokens=3,
                   max_steps=4, **params)[0] for i, (name, params) in enumerate(RUNS)}


@pytest.mark.parametrize("i", range(len(RUNS)))
def test_population_events_keep_their_invariants(runs, i):
    events, n = runs[i], 4
    populations = [e for e in events if isinstance(e, PopulationEvent)]
    assert populations
    resampled = 0
    for event in populations:
        assert len(event.lanes) == len(event.weights) == len(event.rewards) == len(event.finished) == n
        assert all(w >= 0 for w in event.weights) and sum(event.weights) == pytest.approx(1.0, abs=1e-9)
        assert event.ess == pytest.approx(1 / sum(w * w for w in event.weights))
        assert 1 - 1e-9 <= event.ess <= n + 1e-9 and event.temperature >= 1.0
        if event.survivors:                           # resampling keeps N and draws only weighted lanes
            resampled += 1
            assert len(event.survivors) == n and set(event.survivors) <= set(event.lanes)
            assert all(event.weights[event.lanes.index(lane)] > 0 for lane in event.survivors)
            if "systematic" in event.note:            # each lane copied floor or ceil of N * w times
                for lane, w in zip(event.lanes, event.weights):
                    assert math.floor(n * w + 1e-9) <= event.survivors.count(lane) <= math.ceil(n * w - 1e-9)
            pruned = {e.lane for e in events if isinstance(e, LaneEvent) and e.kind == "prune" and e.step == event.step}
            assert pruned == set(event.lanes) - set(event.survivors)
            spawned = [e for e in events if isinstance(e, LaneEvent) and e.kind == "spawn" and e.step == event.step]
            assert len(spawned) == n - len(set(event.survivors))
    assert resampled
    chosen = [e for e in events if isinstance(e, LaneEvent) and e.kind == "chosen"]
    assert len(chosen) == 1 and tokens(events)


@pytest.mark.parametrize("i", range(len(RUNS)))
def test_finished_particles_are_never_extended(runs, i):
    finished, grown_after = set(), []
    for event in runs[i]:
        if isinstance(event, LaneEvent) and event.kind == "finish":
            finished.add(event.lane)
        if isinstance(event, LaneEvent) and event.kind == "spawn" and event.parent in finished:
            finished.add(event.lane)                  # a copy of a finished particle is finished too
        if isinstance(event, LaneTokenEvent) and event.lane in finished:
            grown_after.append(event)
    assert finished and not grown_after


def test_entropic_annealing_heats_a_collapsed_population_early_only(runs):
    stats = [e.values for e in runs[3] if isinstance(e, StatsEvent)]
    populations = [e for e in runs[3] if isinstance(e, PopulationEvent)]
    for values, event in zip(stats, populations):
        tau = values["EA temperature"]
        assert tau >= 1.0 and event.temperature == tau
        if values["ESS/N before annealing"] >= 0.5 or values["step"] / 4 >= 0.5:
            assert tau == 1.0
    assert any(values["EA temperature"] > 1.0 for values in stats)


def test_seeded_runs_repeat(tiny_model, tiny_tokenizer, runs):
    again, _ = run(tiny_model, tiny_tokenizer, "entropic_pf", max_new=14, eos=EOS, seed=1, n=4, step_tokens=3,
                   max_steps=4, **RUNS[4][1])
    assert again == runs[4]
    other, _ = run(tiny_model, tiny_tokenizer, "entropic_pf", max_new=14, eos=EOS, seed=2, n=4, step_tokens=3,
                   max_steps=4, **RUNS[4][1])
    assert other != runs[4]


def test_equal_weights_under_systematic_resampling_are_independent_samples(tiny_model, tiny_tokenizer):
    """softmax_temperature -> infinity: every particle survives once, so the lanes draw exactly what
    Best-of-N's independent lanes draw (same seed, same order of draws)."""
    ours, _ = run(tiny_model, tiny_tokenizer, "particle_filter", max_new=12, eos=EOS, seed=4, n=4, step_tokens=3,
                  resampling="systematic", softmax_temperature=1000.0, temperature=1.0)
    best, _ = run(tiny_model, tiny_tokenizer, "best_of_n", max_new=12, eos=EOS, seed=4, n=4, temperature=1.0)
    for event in ours:
        if isinstance(event, PopulationEvent) and event.survivors:
            assert event.survivors == event.lanes
    assert not [e for e in ours if isinstance(e, LaneEvent) and e.kind in ("prune", "spawn") and e.step > 0]
    lane_tokens = [(e.lane, e.token_id) for e in ours if isinstance(e, LaneTokenEvent)]
    assert lane_tokens == [(e.lane, e.token_id) for e in best if isinstance(e, LaneTokenEvent)]


def test_stop_commits_the_best_particle_so_far(tiny_model, tiny_tokenizer):
    session = DecodeSession(tiny_model, tiny_tokenizer, PROMPT, 30, set(), 0)
    stream = REGISTRY["particle_filter"](n=3, step_tokens=2).decode(session)
    events, steps = [], 0
    for event in stream:
        events.append(event)
        steps += isinstance(event, PopulationEvent)
        if steps == 2:
            events += [stream.throw(StopRun())] + list(stream)
            break
    assert any(isinstance(e, NoticeEvent) and e.key == "stopped" for e in events)
    last = [e for e in events if isinstance(e, PopulationEvent)][-1]
    chosen = next(e for e in events if isinstance(e, LaneEvent) and e.kind == "chosen")
    reward_of, pool = dict(zip(last.lanes, last.rewards)), last.survivors or last.lanes
    best = max(pool, key=lambda lane: reward_of[lane])           # the first best row: the original, not a copy
    assert chosen.lane == best and chosen.reward == reward_of[best]
    assert len(tokens(events)) == 4 and session.output_ids == tokens(events)
