"""Never slower than plain steps: the shared fallback (strategies/speculative/fallback.py) on hand
numbers, then end to end on tiny float64 llamas with PINNED pass costs (a frozen CostModel put in
place of the warm-up's), so what is decided never depends on this machine's speed."""

from __future__ import annotations

import pytest
import torch

from conftest import build_tiny_llama
from playground.decoding import DecodeSession
from playground.events import LayerAcceptanceEvent, NoticeEvent, TokenEvent, VerifyEvent
from strategies.speculative.cost_model import _COSTS, ROUND_WORK, CostModel
from strategies.speculative import early_exit
from strategies.speculative.early_exit import (EarlyExit, head_in_layers, plan, reachable_layers, round_cost,
                                                verify_in_steps)
from strategies.speculative.fallback import KEY, PlainFallback, drafting_pays
from strategies.speculative.loop import Draft, SpeculationLoop
from strategies.speculative.tree import DraftTree
from test_speculative_greedy import greedy

SLOW_DRAFTS = {1: 1.0, 65: 65.0}      # a pass over n tokens costs n one-token passes: drafts never pay
FREE_DRAFTS = {1: 1.0, 65: 1.0}       # every pass costs one step: any accepted draft pays


def pin_costs(model, short: dict, long: dict | None = None) -> CostModel:
    costs = CostModel()
    costs.seconds, costs.long, costs.frozen = dict(short), dict(long or short), True
    _COSTS.setdefault(model, {})[torch.get_num_threads()] = costs
    return costs


@pytest.fixture
def unpin():
    models = []
    yield models.append
    for model in models:
        _COSTS.pop(model, None)


def test_drafting_pays_compares_tokens_per_second():
    assert drafting_pays(1.5, 1.4, 1.0)                      # 1.07 tokens per step's time
    assert not drafting_pays(1.3, 1.4, 1.0)                  # 0.93: plain steps win
    assert not drafting_pays(1.2, 3.0, 2.0)                  # 0.8: more tokens than a step, not enough
    assert drafting_pays(1.2, 0.011, 0.010)                  # 1.09: only the ratio of the costs matters
    assert not drafting_pays(1.0, 1.0, 1.0)                  # a tie is no gain: plain steps are simpler


def feed(guard, rounds):
    """rounds: (drafted, emitted, cost in steps) per round, from step 0; returns notices and plain steps."""
    notices, plain = [], []
    for step, (drafted, emitted, cost) in enumerate(rounds):
        if guard.plain(step):
            plain.append(step)
            drafted, emitted, cost = 0, 1, 1.0
        notices += [(step, n) for n in guard.record(step, drafted, emitted, cost, 1.0)]
    return notices, plain


def test_falls_back_after_four_poor_rounds_probes_with_growing_gaps_and_resumes():
    poor, good = (4, 1, 1.3), (8, 6, 1.6)
    guard = PlainFallback()
    notices, plain = feed(guard, [poor] * 30 + [good] * 40)
    # rounds 0-3 draft; falls back after round 3; probes at 12 (fails: next at 12 + 1 + 16 = 29), at 29
    # (fails: next at 29 + 1 + 32 = 62), at 62 the text is copyable: resumes
    assert plain == list(range(4, 12)) + list(range(13, 29)) + list(range(30, 62))
    assert [(step, n.active) for step, n in notices] == [(3, True), (62, False)]
    fell = notices[0][1].message
    assert fell.startswith("fell back to plain steps") and "from round 5" in fell
    assert "committed 1.00 tokens for the cost of 1.30 plain steps" in fell
    assert notices[1][1].key == KEY and "drafting again from round 64" in notices[1][1].message


def test_rounds_without_a_draft_neither_judge_nor_use_up_a_probe():
    guard = PlainFallback()
    notices, plain = feed(guard, [(4, 1, 1.3)] * 4 + [(0, 1, 1.0)] * 20 + [(4, 5, 1.3)])
    assert plain == list(range(4, 12))                       # round 12 may probe; 12-23 proposed nothing
    assert [(s, n.active) for s, n in notices] == [(3, True), (24, False)]


def test_good_drafts_never_fall_back():
    notices, plain = feed(PlainFallback(), [(4, 2, 1.3), (4, 1, 1.3)] * 20)   # 1.5 tokens for 1.3 steps
    assert notices == [] and plain == []


class OneRightThenWrong(SpeculationLoop):
    """A method whose every draft is the greedy reference's next token and then three wrong ones: each
    drafting round commits exactly two tokens (one accepted, one the target's own)."""

    name = "one_right_then_wrong"
    params = ()

    def __init__(self, reference):
        super().__init__()
        self.reference = reference

    def falls_back(self):
        return True

    def grow(self, s, root, room, warp, generator):
        at, tree = len(s.output_ids), DraftTree.rooted(root)
        for i in range(min(4, room)):
            right = self.reference[at + i] if at + i < len(self.reference) else 0
            tree.add(len(tree) - 1, right if i == 0 else (right + 1) % 96)
        return Draft(tree, source="test")


def run(model, tokenizer, strategy, prompt, max_new):
    session = DecodeSession(model, tokenizer, prompt, max_new, set(), 0)
    events = list(strategy.decode(session))
    return [e.token_id for e in events if isinstance(e, TokenEvent)], events


@pytest.mark.parametrize("five_token_pass, falls_back", [(1.8, False), (2.0, True)])
def test_the_loop_takes_plain_steps_only_when_drafts_cost_more_than_they_commit(
        tiny_model, tiny_tokenizer, unpin, five_token_pass, falls_back):
    """Two tokens a round: worth it while the round (a 5-token pass and ROUND_WORK = 0.1 step of work
    outside it) costs under 2 steps: at 1.9, not at 2.1."""
    assert ROUND_WORK == 0.1
    unpin(tiny_model)
    prompt = [5, 17, 33, 41, 8]
    reference = greedy(tiny_model, tiny_tokenizer, prompt, max_new=40)
    pin_costs(tiny_model, {1: 1.0, 5: five_token_pass, 65: 40.0})
    ours, events = run(tiny_model, tiny_tokenizer, OneRightThenWrong(reference), prompt, 40)
    assert ours == reference
    verify = [e for e in events if isinstance(e, VerifyEvent)]
    assert [(v.drafted, v.accepted) for v in verify[:4]] == [(4, 1)] * 4
    notices = [e for e in events if isinstance(e, NoticeEvent)]
    if not falls_back:
        assert all(v.drafted > 0 for v in verify) and notices == []
        return
    assert [v.drafted for v in verify[4:13]] == [0] * 8 + [4]          # 8 plain steps, then one probe
    assert len(notices) == 1 and notices[0].active and "fell back to plain steps" in notices[0].message
    assert "committed 2.00 tokens for the cost of 2.10 plain steps" in notices[0].message   # 2.0 + 0.1


def agreeing_llama(layers: int):
    """A tiny llama whose layers after the first add nothing to the residual stream: every early exit
    predicts what the full model does, so DEL drafts from layer 1 and every draft is accepted."""
    model = build_tiny_llama(seed=0, layers=layers)
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return model


@pytest.fixture(scope="module")
def agreeing_target():
    return agreeing_llama(4)


def test_del_round_cost_counts_the_verification_and_each_draft_pass(agreeing_target):
    costs = CostModel()
    costs.seconds, costs.frozen = {1: 1.0, 9: 2.0}, True
    h = head_in_layers(agreeing_target)
    assert round_cost(costs, agreeing_target, 0, 0, 10) == 1.0
    # 3 drafts from layer 1: a 4-token pass (1.375), the round's other work, and 3 passes of (1 + h) / (4 + h)
    assert round_cost(costs, agreeing_target, 1, 3, 10) == pytest.approx(1.375 + 0.1 + 3 * (1 + h) / (4 + h))


def test_del_falls_back_when_even_accepted_drafts_do_not_pay(agreeing_target, tiny_tokenizer, unpin):
    unpin(agreeing_target)
    prompt = [5, 17, 33, 41, 8]
    reference = greedy(agreeing_target, tiny_tokenizer, prompt, max_new=60)

    pin_costs(agreeing_target, FREE_DRAFTS)
    ours, events = run(agreeing_target, tiny_tokenizer, EarlyExit(), prompt, 60)
    assert ours == reference
    verify = [e for e in events if isinstance(e, VerifyEvent)]
    assert sum(v.drafted for v in verify) >= 25 and all(v.accepted == v.drafted for v in verify)   # 28 of 60 tokens
    assert not any("fell back" in e.message for e in events if isinstance(e, NoticeEvent))

    pin_costs(agreeing_target, SLOW_DRAFTS)                  # every draft right, yet a k-token pass costs k steps
    # Planned with the measured verification cost (the default), DEL never drafts at all ...
    ours, events = run(agreeing_target, tiny_tokenizer, EarlyExit(), prompt, 60)
    assert ours == reference
    assert not any(e.drafted for e in events if isinstance(e, VerifyEvent))
    assert not any("fell back" in e.message for e in events if isinstance(e, NoticeEvent))
    # ... with DEL's own formula (verification counted as one plain pass) it drafts, and the fallback catches it
    ours, events = run(agreeing_target, tiny_tokenizer, EarlyExit(count_verify=False), prompt, 60)
    assert ours == reference
    verify = [e for e in events if isinstance(e, VerifyEvent)]
    drafting = [v.step for v in verify if v.drafted]
    # rounds 0 and 1 know no layer yet (round 0's pass was the prompt pass, which keeps no hidden states;
    # round 1 reads the first shadow tokens): then four drafting rounds, and probes after 8 and 16
    assert drafting == [2, 3, 4, 5, 14, 31]
    assert all(v.accepted == v.drafted for v in verify)      # after 8 and 16 plain steps
    fell = [e for e in events if isinstance(e, NoticeEvent) and e.key == KEY]
    assert len(fell) == 1 and fell[0].active and "fell back to plain steps" in fell[0].message


def test_the_layers_del_reads_are_exactly_those_its_plan_could_choose():
    """reachable_layers(...) = n: with only layer l agreeing (alpha 1), the plan drafts from it for l <= n and
    takes a plain step for l = n + 1 (checked through `plan`, not the formula). SmolLM2-135M's shape at
    pass costs measured here: 15 of its 29 early exits; with DEL's v_d = 1 every one of them."""
    costs = CostModel()
    costs.seconds, costs.long, costs.frozen = {1: 1.0, 65: 30.0}, {1: 1.0, 65: 30.0}, True
    verify = verify_in_steps(costs, 8, 10)
    for layers, head in ((8, 0.33), (30, 8.0), (12, 2.0)):
        reach = reachable_layers(layers, head, 8, verify)
        assert 0 < reach < layers - 1
        for layer in (reach, reach + 1):
            alpha = torch.zeros(layers, dtype=torch.float64)
            alpha[layer - 1] = 1.0
            assert plan(alpha, head, 8, 0, 0, verify)[0] == (layer if layer == reach else 0)
        assert reachable_layers(layers, head, 8, None) == layers - 1
    measured = torch.tensor([1.85, 2.48, 2.48, 2.92, 3.44, 4.01, 4.01, 4.01], dtype=torch.float64)
    assert reachable_layers(30, 8.0, 8, measured) == 15


@pytest.fixture(scope="module")
def agreeing_deep_target():
    return agreeing_llama(8)


def test_del_reads_only_reachable_layers_and_decides_as_if_it_read_them_all(agreeing_deep_target, tiny_tokenizer,
                                                                           unpin, monkeypatch):
    """At pinned costs where layers 1-4 of 7 could pay, DEL's logit lens reads only those (and the last, its
    own argmax): the deeper layers are never observed. Every round's exit layer, draft and tokens are what
    reading every layer gives."""
    unpin(agreeing_deep_target)
    prompt = [5, 17, 33, 41, 8]
    pin_costs(agreeing_deep_target, {1: 1.0, 65: 30.0})
    runs = []
    for read_all in (False, True):
        if read_all:
            monkeypatch.setattr(early_exit, "reachable_layers", lambda layers, *_: layers - 1)
        ours, events = run(agreeing_deep_target, tiny_tokenizer, EarlyExit(), prompt, 60)
        runs.append((ours, [(e.step, e.exit_layer, e.draft_length) for e in events if isinstance(e, LayerAcceptanceEvent)],
                     [(v.drafted, v.accepted) for v in events if isinstance(v, VerifyEvent)],
                     [e.samples for e in events if isinstance(e, LayerAcceptanceEvent)][-1]))
    (tokens, exits, verify, seen), (all_tokens, all_exits, all_verify, all_seen) = runs
    assert tokens == all_tokens == greedy(agreeing_deep_target, tiny_tokenizer, prompt, max_new=60)
    assert exits == all_exits and verify == all_verify and any(d for d, _ in verify)
    assert all(n > 0 for n in seen[:4] + seen[7:]) and seen[4:7] == [0.0] * 3
    assert all(n > 0 for n in all_seen)


def test_del_measures_each_layers_agreement_on_the_models_own_text(agreeing_target, tiny_model, tiny_tokenizer):
    """At start-up (EarlyExit.warm_up) every exit layer is read at 32 positions of the model's greedy
    continuation: a model whose layers after the first add nothing agrees everywhere; a random one does
    not at its early layers, and its last layer is its own argmax."""
    prompt = [5, 17, 33, 41, 8]
    agree = early_exit.measure_agreement(DecodeSession(agreeing_target, tiny_tokenizer, prompt, 1, set(), 0))
    assert agree.tolist() == [1.0] * agreeing_target.config.num_hidden_layers
    rand = early_exit.measure_agreement(DecodeSession(tiny_model, tiny_tokenizer, prompt, 1, set(), 0))
    assert rand[-1] == 1.0 and rand[0] < 0.5
    assert all(v * 32 == round(v * 32) for v in rand.tolist())                # a share of 32 positions


@pytest.mark.parametrize("measured, first_read", [(None, 1), (0.0, 16), (1.0, 1)])
def test_del_waits_for_its_first_lens_reading_when_no_layer_paid_at_start_up(agreeing_target, tiny_tokenizer, unpin,
                                                                              monkeypatch, measured, first_read):
    """Layers that agreed nowhere at start-up: the first reading comes FIRST_GAP rounds in, and a notice says
    why; agreeing ones, or no start-up measurement: round 1, as before. Output equals greedy either way."""
    unpin(agreeing_target)
    pin_costs(agreeing_target, FREE_DRAFTS)
    layers = agreeing_target.config.num_hidden_layers
    if measured is not None:
        monkeypatch.setitem(early_exit._AT_START, agreeing_target, torch.full((layers,), measured, dtype=torch.float64))
    prompt = [5, 17, 33, 41, 8]
    ours, events = run(agreeing_target, tiny_tokenizer, EarlyExit(), prompt, 40)
    assert ours == greedy(agreeing_target, tiny_tokenizer, prompt, max_new=40)
    read = [e.step for e in events if isinstance(e, LayerAcceptanceEvent) and sum(e.samples) > 0]
    assert read[0] == first_read
    said = [e.message for e in events if isinstance(e, NoticeEvent) and e.key == "logit lens"]
    assert bool(said) == (first_read == 16) and all("first read at round 17" in m for m in said)
