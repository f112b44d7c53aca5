"""The lanes spine (playground/lanes.py), on the tiny float64 llama: many lanes in one batch compute
exactly what each lane computes alone, whatever the batch does around it (rows sitting steps out, rows
selected, forked, freed, holes compacted), on both forward paths; peek is a fresh forward that leaves
no trace; one forward per push; commit yields the lane as the run's answer."""

from __future__ import annotations

import pytest
import torch

from playground.decoding import DecodeSession
from playground.events import LaneTokenEvent, TokenEvent
from playground.lanes import Lanes
from strategies.scaling.steps import Sampler

PROMPT = [5, 17, 33, 2]
ATOL = 1e-9


def session_for(model, tokenizer, lean: bool, seed: int = 0, max_new: int = 64) -> DecodeSession:
    return DecodeSession(model, tokenizer, PROMPT, max_new, set(), seed, lean=lean)


def fresh_logits(model, ids: list[int]) -> torch.Tensor:
    """(T, V) logits of one sequence, run alone from scratch (no cache, no batch)."""
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].double()


def assert_each_lane_alone(model, lanes: Lanes) -> None:
    """Every row's next-token logits equal a fresh forward over the prompt and that lane's tokens."""
    for row, lane in enumerate(lanes.lanes):
        alone = fresh_logits(model, PROMPT + lane.tokens)[-1]
        torch.testing.assert_close(lanes.logits[row].double(), alone, atol=ATOL, rtol=0,
                                   msg=lambda m: f"row {row} (lane {lane.id}, {len(lane.tokens)} tokens): {m}")


def scripted_tokens(rows: int, step: int, sit_out: dict[int, set[int]]) -> list[int | None]:
    """A fixed token per row and step (None where the schedule makes the row sit the step out)."""
    return [None if r in sit_out.get(step, set()) else 3 + (7 * step + 11 * r) % 90 for r in range(rows)]


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "transformers"])
def test_lanes_in_a_batch_equal_each_lane_alone(tiny_model, tiny_tokenizer, one_thread, lean):
    session = session_for(tiny_model, tiny_tokenizer, lean)
    lanes = Lanes(session, 4)
    assert_each_lane_alone(tiny_model, lanes)
    sit_out = {1: {0}, 2: {0, 2}, 3: {3}, 5: {1, 2, 3}}       # lanes of different lengths, holes in the cache
    for step in range(6):
        events = lanes.push(scripted_tokens(len(lanes), step, sit_out), step)
        assert [e.lane for e in events] == [lane.id for r, lane in enumerate(lanes.lanes)
                                            if r not in sit_out.get(step, set())]
        assert_each_lane_alone(tiny_model, lanes)
    assert len({len(lane.tokens) for lane in lanes.lanes}) > 1
    assert lanes.seen.shape[1] > int(lanes.lengths().max())                # holes are there before select
    lanes.select([2, 0, 0, 3])                                             # reorder, fork, drop row 1
    assert lanes.seen.shape[1] == int(lanes.lengths().max())               # ...and compacted out after
    assert_each_lane_alone(tiny_model, lanes)
    for step in range(6, 9):
        lanes.push(scripted_tokens(len(lanes), step, {7: {1}}), step)
        assert_each_lane_alone(tiny_model, lanes)
    lanes.free([0])
    assert [lane.id for lane in lanes.freed] == [2]
    for step in range(9, 11):
        lanes.push(scripted_tokens(len(lanes), step, {9: {0}}), step)
        assert_each_lane_alone(tiny_model, lanes)


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "transformers"])
def test_sampled_tokens_equal_each_lane_sampled_alone(tiny_model, tiny_tokenizer, one_thread, lean):
    """Row r draws from its own generator (seed r): in a batch where rows sit steps out, it draws exactly
    the tokens it draws as the only lane."""
    rows, steps, sit_out = 3, 8, {2: {1}, 3: {1, 2}, 6: {0}}
    batch = Lanes(session_for(tiny_model, tiny_tokenizer, lean), rows)
    samplers = [Sampler({"temperature": 1.0}, torch.Generator().manual_seed(r)) for r in range(rows)]
    for step in range(steps):
        tokens = [None if r in sit_out.get(step, set()) else samplers[r].draw(batch.logits[r]) for r in range(rows)]
        batch.push(tokens, step)
    for r in range(rows):
        alone = Lanes(session_for(tiny_model, tiny_tokenizer, lean), 1)
        sampler = Sampler({"temperature": 1.0}, torch.Generator().manual_seed(r))
        for step in range(steps - sum(r in out for out in sit_out.values())):
            alone.push([sampler.draw(alone.logits[0])], step)
        assert alone.lanes[0].tokens == batch.lanes[r].tokens
        torch.testing.assert_close(alone.logits[0], batch.logits[r], atol=ATOL, rtol=0)
        assert [d.logprob for d in alone.lanes[0].described] == pytest.approx(
            [d.logprob for d in batch.lanes[r].described], abs=ATOL)


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "transformers"])
def test_peek_is_a_fresh_forward_and_leaves_no_trace(tiny_model, tiny_tokenizer, one_thread, lean):
    session = session_for(tiny_model, tiny_tokenizer, lean)
    lanes = Lanes(session, 3)
    for step in range(4):
        lanes.push(scripted_tokens(3, step, {1: {2}, 2: {0}}), step)
    chains = [[40, 41], [50], [60, 61, 62]]                                # of different lengths
    logits_before, seen_before = lanes.logits.clone(), lanes.seen.clone()
    keys_before = [(layer.keys.clone(), layer.values.clone()) for layer in lanes.cache.layers]
    passes, rewards = session.forward_passes, session.reward_forward_passes
    peeked = lanes.peek(chains)
    assert (session.forward_passes, session.reward_forward_passes) == (passes, rewards + 1)
    for row, (lane, chain) in enumerate(zip(lanes.lanes, chains)):
        torch.testing.assert_close(peeked[row].double(), fresh_logits(tiny_model, PROMPT + lane.tokens + chain)[-1],
                                   atol=ATOL, rtol=0)
    torch.testing.assert_close(lanes.logits, logits_before, atol=0, rtol=0)
    assert torch.equal(lanes.seen, seen_before)
    for layer, (keys, values) in zip(lanes.cache.layers, keys_before):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
    for step in range(4, 7):                                               # the lanes go on as if never peeked
        lanes.push(scripted_tokens(3, step, {5: {1}}), step)
        assert_each_lane_alone(tiny_model, lanes)


def test_a_forked_lane_has_lists_of_its_own(tiny_model, tiny_tokenizer, one_thread):
    lanes = Lanes(session_for(tiny_model, tiny_tokenizer, lean=True), 2)
    lanes.push([7, 8])
    lanes.lanes[0].data["reward"] = 0.5
    original, fork, other = lanes.select([0, 0, 1])
    assert (fork.id, fork.parent) == (2, original.id) and (original.parent, other.id) == (None, 1)
    assert fork.tokens == original.tokens and fork.data == original.data
    assert fork.tokens is not original.tokens and fork.described is not original.described
    assert fork.data is not original.data
    lanes.push([9, 10, 11])
    fork.data["reward"] = 0.9
    assert original.tokens == [7, 9] and fork.tokens == [7, 10] and len(original.described) == 2
    assert original.data["reward"] == 0.5
    assert_each_lane_alone(tiny_model, lanes)


def test_one_forward_per_push_and_none_for_a_push_of_nothing(tiny_model, tiny_tokenizer, one_thread):
    session = session_for(tiny_model, tiny_tokenizer, lean=True)
    lanes = Lanes(session, 5)
    assert session.forward_passes == 1 and session.lanes_started == 5     # the prompt, once for all lanes
    for step in range(4):
        before = session.forward_passes
        events = lanes.push(scripted_tokens(5, step, {2: {0, 3}}), step)
        assert session.forward_passes == before + 1
        assert all(isinstance(e, LaneTokenEvent) for e in events)
    assert lanes.push([None] * 5) == [] and session.forward_passes == 5
    assert session.lane_tokens == 4 * 5 - 2


def test_a_finished_lane_is_never_pushed(tiny_model, tiny_tokenizer, one_thread):
    lanes = Lanes(session_for(tiny_model, tiny_tokenizer, lean=True), 3)
    lanes.push([4, 5, 6])
    lanes.finish(1, "eos")
    assert lanes.live() == [0, 2]
    with pytest.raises(ValueError, match="finished"):
        lanes.push([7, 8, 9])
    assert [lane.tokens for lane in lanes.lanes] == [[4], [5], [6]]       # a refused push changes nothing
    lanes.push([7, None, 9])                                               # sitting out is fine
    assert lanes.lanes[1].tokens == [5]
    assert_each_lane_alone(tiny_model, lanes)
    with pytest.raises(ValueError):
        lanes.push([1, 2])                                                 # one token per row


def test_commit_yields_the_lane_as_the_answer(tiny_model, tiny_tokenizer, one_thread):
    session = session_for(tiny_model, tiny_tokenizer, lean=True)
    lanes = Lanes(session, 3)
    for step in range(5):
        lanes.push(scripted_tokens(3, step, {1: {1}}), step)
    lane = lanes.lanes[1]
    events = list(lanes.commit(lane))
    assert all(isinstance(e, TokenEvent) for e in events)
    assert [e.index for e in events] == list(range(len(lane.tokens)))
    assert [e.token_id for e in events] == lane.tokens == session.output_ids
    assert "".join(e.text for e in events) == lane.text
    assert [e.logprob for e in events] == [d.logprob for d in lane.described]


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "transformers"])
def test_lanes_continuing_a_lane_from_the_prompt_cache(tiny_model, tiny_tokenizer, one_thread, lean):
    """A search re-opening a state: new lanes continue a lane's tokens from a copy of the prompt's cache,
    reading only the lane's tokens (one pass, no prompt pass), and then compute what each lane alone would."""
    session = session_for(tiny_model, tiny_tokenizer, lean)
    first = Lanes(session, 2)
    for step in range(3):
        first.push(scripted_tokens(2, step, {1: {1}}), step)
    state, prompt = first.lanes[0], first.prompt_state()
    passes, mark = session.forward_passes, session.prompt_pass_done_at
    lanes = Lanes(session, 3, prefix=state, prompt=prompt, first_id=10)
    assert session.forward_passes == passes + 1 and session.prompt_pass_done_at == mark
    assert [(lane.id, lane.parent, lane.tokens) for lane in lanes.lanes] == [(10 + i, state.id, state.tokens)
                                                                            for i in range(3)]
    assert_each_lane_alone(tiny_model, lanes)
    for step in range(3):
        lanes.push(scripted_tokens(3, step, {}), step)
        assert_each_lane_alone(tiny_model, lanes)
    assert state.tokens == first.lanes[0].tokens and len(state.tokens) == 3      # the state itself is untouched
    torch.testing.assert_close(prompt.cache.layers[0].keys, first.prompt_state().cache.layers[0].keys)
