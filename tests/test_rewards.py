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


class EncodingTiny:
    """The tiny tokenizer with an encoder (each character one token), for rewards that tokenize text."""

    eos_token_id = None
    chat_template = None

    def encode(self, text, add_special_tokens=False):
        return [3 + ord(c) % 90 for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(f" t{int(i)}" for i in ids)


def test_confidence_is_exp_mean_logprob_of_the_drawn_tokens(tiny_model, tiny_tokenizer, one_thread):
    _, lanes = grown_lanes(tiny_model, tiny_tokenizer)
    for scope in ("trace", "step"):
        scores = make_reward({"reward": "confidence", "reward_scope": scope}).score(lanes, [0, 1, 2], final=False)
        for row, score in enumerate(scores):
            tokens = lanes.lanes[row].tokens
            start = 3 if scope == "step" else 0
            lanes.lanes[row].data["step_start"] = 3
            logp = torch.log_softmax(fresh_logits(tiny_model, PROMPT + tokens)[len(PROMPT) - 1:-1], -1)
            picked = [float(logp[i, t]) for i, t in enumerate(tokens)][start:]
            assert score == pytest.approx(math.exp(sum(picked) / len(picked)), abs=1e-9)


def test_certainty_is_exp_minus_mean_entropy(tiny_model, tiny_tokenizer, one_thread):
    _, lanes = grown_lanes(tiny_model, tiny_tokenizer)
    scores = make_reward({"reward": "certainty", "reward_scope": "trace"}).score(lanes, [1, 2], final=True)
    for row, score in zip([1, 2], scores):
        tokens = lanes.lanes[row].tokens
        probs = torch.softmax(fresh_logits(tiny_model, PROMPT + tokens)[len(PROMPT) - 1:-1], -1)
        entropy = -(probs * probs.log()).sum(-1).mean()
        assert score == pytest.approx(math.exp(-float(entropy)), abs=1e-9)


def test_checker_reads_boxed_and_grouped_numbers(tiny_model, tiny_tokenizer):
    session = DecodeSession(tiny_model, tiny_tokenizer, PROMPT, 8, set(), 0)
    lanes = Lanes(session, 4)
    texts = ["so the answer is \\boxed{1234}", "1 + 2 gives 1,234", "it is 1,235", "no number here"]
    for lane, text in zip(lanes.lanes, texts):
        lane.text = text
    checker = make_reward({"reward": "checker", "reference": "\\boxed{1,234}".replace("1,234", "1234")})
    assert [s > 0.5 for s in checker.score(lanes, [0, 1, 2, 3], final=True)] == [True, True, False, False]
    assert checker.score(lanes, [0, 1], final=False) == [0.5, 0.5]
    assert make_reward({"reward": "checker", "reference": "1,234"}).score(lanes, [1], final=True)[0] > 0.5


def test_reference_is_exp_mean_logprob_of_the_reference_after_a_bridge(tiny_model, one_thread):
    session, lanes = grown_lanes(tiny_model, EncodingTiny())
    reward = make_reward({"reward": "reference", "reference": "42"})
    chain, start = reward.chain(session.tokenizer)
    passes = session.reward_forward_passes
    scores = reward.score(lanes, [0, 2], final=False)
    assert session.reward_forward_passes == passes + 1
    for row, score in zip([0, 2], scores):
        context = PROMPT + lanes.lanes[row].tokens + chain[:start]
        logp = torch.log_softmax(fresh_logits(tiny_model, context + chain[start:]), -1)
        picked = [float(logp[len(context) - 1 + i, t]) for i, t in enumerate(chain[start:])]
        assert score == pytest.approx(math.exp(sum(picked) / len(picked)), abs=1e-9)


@pytest.mark.parametrize("values, message", [
    ({"reward": "checker"}, "reference"),
    ({"reward": "reference", "reference": "  "}, "reference"),
    ({"reward": "judge", "judge_question": "x" * 501}, "500"),
    ({"reward": "hub"}, "reward_model"),
])
def test_rewards_refuse_missing_or_oversized_parameters(values, message):
    from strategies import InvalidParameter

    with pytest.raises(InvalidParameter, match=message):
        make_reward(values)


def test_hub_reward_offline_fails_at_once_with_one_clear_message(monkeypatch):
    from strategies import REGISTRY, InvalidParameter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InvalidParameter, match="cannot be loaded"):
        REGISTRY["best_of_n"](reward="hub", reward_model="no-such-owner/no-such-reward-model")


def test_hub_reward_scores_with_a_local_classifier_one_pass_per_call(tmp_path, embedded):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    tokenizer = embedded.tokenizer
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1,
                         pad_token_id=tokenizer.eos_token_id)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    session = DecodeSession(embedded.model, tokenizer, embedded.encode_prompt("Hi", False), 4, set(), 0)
    lanes = Lanes(session, 2)
    lanes.lanes[0].text, lanes.lanes[1].text = " fine", " a longer answer here"
    reward = make_reward({"reward": "hub", "reward_model": str(tmp_path)})
    scores = reward.score(lanes, [0, 1], final=True)
    assert session.reward_forward_passes == 1
    model = reward.model.inner
    for row, score in zip([0, 1], scores):
        ids = tokenizer(tokenizer.decode(session.prompt_ids, skip_special_tokens=True) + lanes.lanes[row].text,
                        return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            expected = torch.sigmoid(model(input_ids=ids).logits[0, 0].double())
        assert score == pytest.approx(float(expected), abs=1e-5)


def test_judge_does_not_close_a_turn_the_lane_closed_itself(tiny_model, tiny_tokenizer, one_thread):
    session, lanes = grown_lanes(tiny_model, tiny_tokenizer)
    closing = lanes.lanes[1].tokens[-1]
    judge = Judge(chain=(closing, 8, 9), yes=(10,), no=(12,))
    score = yes_probability(lanes, [1], judge)[0]
    probs = torch.softmax(fresh_logits(tiny_model, PROMPT + lanes.lanes[1].tokens + [8, 9])[-1], -1)
    assert score == pytest.approx(float(probs[10] / (probs[10] + probs[12])), abs=1e-9)
