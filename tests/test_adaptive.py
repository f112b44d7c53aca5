"""Adaptive inference-time compute on the tiny float64 llama: the stopping rule, the pruning count, the
choice, and Stop. The tiny tokenizer cannot encode a question, so the judge's ids are given."""

from __future__ import annotations

import math

import pytest
import torch

from playground.decoding import DecodeSession, StopRun
from playground.events import LaneEvent, NoticeEvent, PopulationEvent, TokenEvent
from strategies import REGISTRY
from strategies.scaling.adaptive import Adaptive, temperatures
from strategies.scaling.rewards import Judge

PROMPT = [5, 17, 33]
JUDGE = Judge(chain=(7, 8, 9), yes=(10, 11), no=(12, 13))


class TinyAdaptive(Adaptive):
    def judge(self, session):
        return JUDGE


def run(model, tokenizer, max_new=6, seed=0, stop_at=None, **params):
    """Events of one run; with stop_at, StopRun is thrown in at that event (as the runner does)."""
    session = DecodeSession(model, tokenizer, PROMPT, max_new, set(), seed)
    gen, events = TinyAdaptive(**params).decode(session), []
    try:
        while True:
            events.append(gen.throw(StopRun()) if len(events) == stop_at else next(gen))
    except StopIteration:
        pass
    return events, session


def kinds(events, kind):
    return [e for e in events if isinstance(e, LaneEvent) and e.kind == kind]


def answer(events):
    return [e.token_id for e in events if isinstance(e, TokenEvent)]


def test_registered():
    assert REGISTRY["adaptive"] is Adaptive


def test_threshold_zero_draws_one_sample(tiny_model, tiny_tokenizer, one_thread):
    events, session = run(tiny_model, tiny_tokenizer, threshold=0.0, max_samples=5)
    assert len(kinds(events, "spawn")) == len(kinds(events, "score")) == 1
    assert session.reward_forward_passes == 1
    assert any(isinstance(e, NoticeEvent) and "stopped after 1" in e.message for e in events)


def test_threshold_one_draws_every_sample_and_returns_the_best(tiny_model, tiny_tokenizer, one_thread):
    events, session = run(tiny_model, tiny_tokenizer, threshold=1.0, max_samples=4)
    scores = kinds(events, "score")
    assert len(kinds(events, "spawn")) == len(scores) == 4 and session.reward_forward_passes == 4
    assert all(s.reward < 1 for s in scores)
    chosen = kinds(events, "chosen")[0]
    assert chosen.reward == max(s.reward for s in scores)
    best = next(s for s in scores if s.reward == chosen.reward)
    assert chosen.lane == best.lane and "".join(e.text for e in events if isinstance(e, TokenEvent)) == best.text
    population = [e for e in events if isinstance(e, PopulationEvent)][-1]
    assert population.rewards == [s.reward for s in scores] and abs(sum(population.weights) - 1) < 1e-12
    assert all(p.temperature == 1.0 for p in events if isinstance(p, PopulationEvent))   # weights untempered
    assert [p.note.split("temperature ")[-1] for p in events if isinstance(p, PopulationEvent)] == [
        f"{t:.2f}" for t in temperatures(0.4, 0.8, 4)]                  # the sampling schedule, in words
    assert session.lanes_started == 4                                   # samples: the bare prompt row is not one


def test_a_sample_score_is_p_no_of_a_fresh_forward(tiny_model, tiny_tokenizer, one_thread):
    events, _ = run(tiny_model, tiny_tokenizer, threshold=0.0, max_samples=1, max_new=5)
    with torch.inference_mode():
        probs = torch.softmax(tiny_model(input_ids=torch.tensor([PROMPT + answer(events) + list(JUDGE.chain)]))
                              .logits[0, -1].double(), -1)
    p_no = probs[list(JUDGE.no)].sum() / (probs[list(JUDGE.no)].sum() + probs[list(JUDGE.yes)].sum())
    assert kinds(events, "score")[0].reward == pytest.approx(float(p_no), abs=1e-9)


@pytest.mark.parametrize("n, keep_fraction", [(4, 0.5), (5, 0.25), (3, 1.0), (6, 0.3)])
def test_pruning_keeps_the_ceiling_of_the_fraction(tiny_model, tiny_tokenizer, one_thread, n, keep_fraction):
    events, _ = run(tiny_model, tiny_tokenizer, mode="pruning", n=n, prune_after=2, keep_fraction=keep_fraction)
    keep = math.ceil(keep_fraction * n - 1e-9)
    pruning, final = [e for e in events if isinstance(e, PopulationEvent)]
    assert len(kinds(events, "prune")) == n - keep and len(pruning.survivors) == keep
    assert final.lanes == pruning.survivors
    pruned_scores = {e.lane: e.reward for e in kinds(events, "prune")}
    kept_scores = [r for lane, r in zip(pruning.lanes, pruning.rewards) if lane in pruning.survivors]
    assert all(k >= p for k in kept_scores for p in pruned_scores.values())
    assert len(answer(events)) == 6                 # the kept lanes were finished (max_new tokens)


def test_stop_during_a_later_sample_commits_the_best_scored_one(tiny_model, tiny_tokenizer, one_thread):
    full, _ = run(tiny_model, tiny_tokenizer, threshold=1.0, max_samples=3)
    second = [i for i, e in enumerate(full) if isinstance(e, LaneEvent) and e.kind == "spawn"][1]
    events, _ = run(tiny_model, tiny_tokenizer, threshold=1.0, max_samples=3, stop_at=second + 2)
    first = kinds(events, "score")
    assert len(first) == 1 and any(isinstance(e, NoticeEvent) and e.key == "stopped" for e in events)
    assert kinds(events, "chosen")[0].lane == first[0].lane
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == first[0].text


def test_stop_before_any_score_commits_the_partial_sample(tiny_model, tiny_tokenizer, one_thread):
    events, session = run(tiny_model, tiny_tokenizer, threshold=1.0, max_samples=3, stop_at=3)
    assert not kinds(events, "score") and session.reward_forward_passes == 0
    partial = [e.token_id for e in events if type(e).__name__ == "LaneTokenEvent"]
    assert answer(events) == partial and 0 < len(partial) < 6


def test_stop_while_pruned_lanes_grow_scores_the_survivors_as_they_stand(tiny_model, tiny_tokenizer, one_thread):
    params = dict(mode="pruning", n=4, prune_after=2, keep_fraction=0.5)
    full, _ = run(tiny_model, tiny_tokenizer, **params)
    pruned = max(i for i, e in enumerate(full) if isinstance(e, LaneEvent) and e.kind == "prune")
    events, _ = run(tiny_model, tiny_tokenizer, stop_at=pruned + 3, **params)
    final = [e for e in events if isinstance(e, PopulationEvent)][-1]
    chosen = kinds(events, "chosen")[0]
    assert len(final.lanes) == 2 and chosen.reward == max(final.rewards)
    assert chosen.lane == final.lanes[final.rewards.index(max(final.rewards))]
    assert 2 < len(answer(events)) < 6
