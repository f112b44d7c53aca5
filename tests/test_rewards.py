"""Rewards score lanes from what the model computes: checked against independent forwards on the tiny
float64 llama, and the embedded model's chat template for the judge question."""

from __future__ import annotations

import math

import pytest
import torch

from playground.decoding import DecodeSession
from playground.lanes import Lanes
from strategies.scaling.rewards import Judge, make_reward, yes_probability
from strategies.scaling.steps import Sampler, grow

PROMPT = [5, 17, 33]


def grown_lanes(model, tokenizer, n=3, tokens=5, seed=0):
    """n lanes grown `tokens` tokens by sampling, with one row sitting a step out (a hole in its cache)."""
    session = DecodeSession(model, tokenizer, PROMPT, 32, set(), seed)
    lanes = Lanes(session, n)
    sampler = Sampler({"temperature": 1.0}, session.generator)
    for step in range(tokens):
        rows = set(range(n)) - ({0} if step == 2 else set())
        list(grow(lanes, rows, sampler, step))
    return session, lanes


def fresh_logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].double()        # (T, V)


def test_judge_equals_a_fresh_forward_and_leaves_lanes_unchanged(tiny_model, tiny_tokenizer, one_thread):
    session, lanes = grown_lanes(tiny_model, tiny_tokenizer)
    judge = Judge(chain=(7, 8, 9), yes=(10, 11), no=(12, 13, 14))
    logits_before, seen_before = lanes.logits.clone(), lanes.seen.clone()
    keys_before = [layer.keys.clone() for layer in lanes.cache.layers]
    passes, generation = session.reward_forward_passes, session.forward_passes
    scores = yes_probability(lanes, [2, 0], judge)
    assert session.reward_forward_passes == passes + 1 and session.forward_passes == generation
    for row, score in zip([2, 0], scores):
        probs = torch.softmax(fresh_logits(tiny_model, PROMPT + lanes.lanes[row].tokens + [7, 8, 9])[-1], -1)
        p_yes, p_no = probs[[10, 11]].sum(), probs[[12, 13, 14]].sum()
        assert score == pytest.approx(float(p_yes / (p_yes + p_no)), abs=1e-9)
    torch.testing.assert_close(lanes.logits, logits_before, atol=0, rtol=0)
    assert torch.equal(lanes.seen, seen_before)
    for layer, keys in zip(lanes.cache.layers, keys_before):
        torch.testing.assert_close(layer.keys, keys, atol=0, rtol=0)
