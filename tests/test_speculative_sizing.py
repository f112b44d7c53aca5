"""Draft sizes that hold: prompt lookup's suffix match and its copy estimate that recovers, a cost
curve measured once and never dragged by passes timed under load, DEL's shadow-token schedule, and
Token Recycling's warm start on a long prompt. Tiny float64 model; no timing is asserted."""

from __future__ import annotations

import pytest
import torch

from playground.decoding import DecodeSession
from playground.events import StatsEvent, TokenEvent, VerifyEvent
from strategies import REGISTRY
from strategies.speculative.cost_model import CostModel, best_size
from strategies.speculative.prompt_lookup import CopyRates, copy_outcome, suffix_lookup
from test_speculative_greedy import greedy, run


def test_suffix_lookup_takes_the_longest_then_the_newest_match():
    #        0  1  2  3  4  5  6  7  8  9
    ids = [1, 2, 3, 4, 9, 2, 3, 5, 1, 2, 3]
    assert suffix_lookup(ids, 3) == ([4, 9, 2], 3, 3)                  # "1 2 3" beats the newer "2 3"
    assert suffix_lookup([7, 3, 8, 3, 9, 3], 2) == ([9, 3], 4, 1)        # equally long: the newest
    assert suffix_lookup([1, 2, 3], 4) == ([], -1, 0)
    assert suffix_lookup([4, 4, 4, 4], 5)[2] == 3                        # overlapping matches count


def test_copy_outcome_judges_up_to_the_first_wrong_token():
    assert copy_outcome([5, 6, 7], [5, 6, 8, 9]) == (3, 2)
    assert copy_outcome([5, 6, 7], [5]) == (1, 1)                        # only what was written is known
    assert copy_outcome([5, 6], [4]) == (1, 0)
    assert copy_outcome([], [4]) == (0, 0)


class FakeSession:
    def __init__(self, output):
        self.output_ids = output


def test_copy_estimate_recovers_while_nothing_is_proposed(tiny_model):
    """The issue's stall: after a partly rejected draft the estimate fell and no round proposed again,
    because only proposed drafts were scored. Here no round proposes, yet copies that come true
    (the target wrote the copy's first token) raise the estimate again."""
    from strategies.speculative.loop import Draft
    from strategies.speculative.tree import DraftTree

    from strategies.speculative.rounds import PlainStepNotice

    strategy = REGISTRY["prompt_lookup"]()
    strategy.costs, strategy.rates, strategy.notice = CostModel(), CopyRates(), PlainStepNotice()
    rate = strategy.rates.of(3)
    rate.record(3, 1)                                                   # a partly rejected draft
    low = rate.value
    for step in range(6):                                               # plain rounds: nothing proposed
        before = step
        draft = Draft(DraftTree.rooted(1), context=([5, 6, 7], rate, before))
        session = FakeSession([0] * before + [5])                       # the target wrote the copy's 1st token
        list(strategy.after_round(session, draft, None, None, 0.01, step))
    assert rate.value > low + 0.3 and rate.value > 0.75


def test_a_frozen_cost_model_ignores_later_timings_and_reads_the_context():
    costs = CostModel()
    costs.seconds = {1: 1.0, 11: 1.5}                                   # +5 % of a pass per token
    costs.long = {1: 1.0, 11: 4.0}                                      # +30 % per token after 640 tokens
    costs.frozen = True
    costs.record(2, 50.0)                                               # a pass timed while the machine was busy
    assert costs.seconds == {1: 1.0, 11: 1.5}
    assert costs.cost(5, context=32) == pytest.approx(1.2)
    assert costs.cost(5, context=336) == pytest.approx(1.7)             # half way from 32 to 640 tokens
    assert costs.cost(5, context=640) == pytest.approx(2.2)
    # a round that drafts pays ROUND_WORK (0.1) of a one-token pass more; many sizes at once read the same
    assert costs.round_costs([1, 5], context=336) == pytest.approx([1.0, 1.8])
    assert costs.round_costs([5, 1, 11], context=32) == pytest.approx([1.3, 1.0, 1.6])
    assert costs.round_costs([5, 1], context=944) == pytest.approx([2.8, 1.0])     # extrapolated past 640
    gains = [sum(0.5 ** i for i in range(1, k + 1)) for k in range(11)]   # a copy right half the time
    # short: (1 + gains[k]) / (1 + 0.05 k) is 1.43, 1.59, 1.63, 1.61 for k = 1..4: 3 tokens
    assert best_size(gains, costs, list(range(11)), context=32) == 3
    # long: (1 + gains[k]) / (1 + 0.3 k) is 1.00, 1.15, 1.09 for k = 0..2: 1 token
    assert best_size(gains, costs, list(range(11)), context=640) == 1


def test_the_same_prompt_takes_the_same_passes_after_a_busy_spell(tiny_model, tiny_tokenizer):
    """Sizes follow the warm-up's medians, not the latest timings: a run after passes timed 100x too
    slow drafts exactly as the run before it (they took 78, 33 and 85 passes in three runs)."""
    from strategies.speculative.cost_model import _COSTS, warm_up

    _COSTS.pop(tiny_model, None)
    costs = warm_up(DecodeSession(tiny_model, tiny_tokenizer, [], 1, set(), 0), sizes=(1, 2, 3, 5, 9, 13), repeats=1)
    try:
        prompt = [5, 17, 33, 41, 5, 17, 33, 41, 5, 17]
        for name, params in (("prompt_lookup", {"draft_length": "measured"}), ("token_recycling", {"adaptive": True})):
            first = [e.drafted for e in run(tiny_model, tiny_tokenizer, name, prompt, **params)[1]
                     if isinstance(e, VerifyEvent)]
            for n in range(1, 70):
                costs.record(n, 100.0 * n)                              # what a loaded machine would time
            again = [e.drafted for e in run(tiny_model, tiny_tokenizer, name, prompt, **params)[1]
                     if isinstance(e, VerifyEvent)]
            assert first == again, name
    finally:
        _COSTS.pop(tiny_model, None)


def test_del_reads_shadow_tokens_less_often_while_it_takes_plain_steps():
    from strategies.speculative.early_exit import LensSchedule

    lens, reads = LensSchedule(4), []
    for step in range(200):
        drafting = 120 <= step < 122
        read = lens.due(step, drafting)
        reads += [step] * read
        lens.after(step, read, drafting)
    assert reads == [0, 16, 48, 112, 120, 124, 140, 172]   # gaps 16, 32, 64; drafting: every 4th; then 16, 32


def test_token_recycling_warms_from_the_latest_prompt_rows(tiny_model, tiny_tokenizer):
    from strategies.speculative.token_recycling import WARM_ROWS
    from test_speculative_greedy import sequential_logits

    prompt = [(7 * i) % 90 + 3 for i in range(WARM_ROWS + 20)]
    session = DecodeSession(tiny_model, tiny_tokenizer, prompt, 1, set(), 0)
    strategy = REGISTRY["token_recycling"](top_k=3)
    list(strategy.decode(session))
    strategy.warm_up_matrix()                       # held back until a tree is grown: written now
    last = {}
    for i in range(len(prompt) - 1 - WARM_ROWS, len(prompt) - 1):
        last[prompt[i]] = i                                             # a later occurrence overwrites
    for token, i in list(last.items())[-4:]:
        assert strategy.matrix[token].tolist() == sequential_logits(tiny_model, prompt[:i + 1]).topk(3).indices.tolist()
    ours = run(tiny_model, tiny_tokenizer, "token_recycling", prompt, max_new=12)[0]
    assert ours == greedy(tiny_model, tiny_tokenizer, prompt, max_new=12)


def test_token_recycling_holds_its_prompt_rows_back_until_a_tree_is_grown(tiny_model, tiny_tokenizer):
    """The prompt rows cost an LM-head pass over up to WARM_ROWS positions, so they enter M only when a
    tree is grown: without one, M holds only what rounds wrote; a row a round wrote is never overwritten
    by the older prompt row; a root whose row is held back is not counted in the rank statistics."""
    from test_speculative_greedy import sequential_logits

    prompt = [(5 * i) % 40 + 3 for i in range(30)]
    session = DecodeSession(tiny_model, tiny_tokenizer, prompt, 12, set(), 0)
    plain = REGISTRY["token_recycling"](top_k=3, max_nodes=0, adaptive=False)      # never a tree
    events = list(plain.decode(session))
    out = [e.token_id for e in events if isinstance(e, TokenEvent)]
    held_shown = [e.values["prompt rows held back"] for e in events if isinstance(e, StatsEvent)
                  and "prompt rows held back" in e.values]
    assert held_shown[-1] == len(plain.held) < held_shown[0] <= len(set(prompt[:-1]))
    written = {prompt[-1], *out[:-1]}                       # every round's root
    assert {int(t) for t in plain.matrix[:, 0].nonzero()} <= written
    assert plain.held and not set(plain.held) & written
    assert plain.hits.trials == 4.0 + sum(root not in set(prompt[:-1]) or written_before
                                          for root, written_before in _roots_and_written(prompt, out))

    session = DecodeSession(tiny_model, tiny_tokenizer, prompt, 1, set(), 0)
    strategy = REGISTRY["token_recycling"](top_k=3, max_nodes=0, adaptive=False)
    cache = session.new_cache()
    root, logits = strategy.prefill(session, cache)
    assert not strategy.matrix.any()
    token = prompt[-3]                                      # held; a round now writes its row from other logits
    other = torch.zeros(1, logits.shape[-1], dtype=logits.dtype)
    other[0, [7, 8, 9]] = torch.tensor([3.0, 2.0, 1.0], dtype=logits.dtype)
    strategy.write_rows([token], other)
    strategy.warm_up_matrix()
    assert strategy.matrix[token].tolist() == [7, 8, 9]
    for i in range(len(prompt) - 3, len(prompt) - 6, -1):   # other held rows: the prompt's own, as before
        if prompt[i] != token and prompt[i] not in prompt[i + 1:-1]:
            assert strategy.matrix[prompt[i]].tolist() == sequential_logits(tiny_model, prompt[:i + 1]).topk(3).indices.tolist()


def test_token_recycling_pays_only_for_the_prompt_rows_its_trees_read(tiny_model, tiny_tokenizer):
    """A held prompt row is written when a tree is about to read it (with the tree's other held tokens, in
    one product), never all 128 at the first tree: short trees leave most rows unpaid, and every row they
    read is the one the prompt gives (the latest context of that token), so the output is greedy's."""
    from test_speculative_greedy import sequential_logits

    prompt = [(5 * i) % 40 + 3 for i in range(30)]
    session = DecodeSession(tiny_model, tiny_tokenizer, prompt, 8, set(), 0)
    strategy = REGISTRY["token_recycling"](top_k=3, max_nodes=2, adaptive=False)
    read: list[int] = []
    real = strategy.warm_up_matrix
    strategy.warm_up_matrix = lambda tokens=None: (read.extend(t for t in tokens if t in strategy.held), real(tokens))
    out = [e.token_id for e in strategy.decode(session) if isinstance(e, TokenEvent)]
    assert out == greedy(tiny_model, tiny_tokenizer, prompt, max_new=8)
    window = set(prompt[:-1])
    assert 0 < len(read) < len(window) and strategy.held                  # some rows paid for, most not
    latest = {token: i for i, token in enumerate(prompt[:-1])}
    rounds_wrote = {prompt[-1], *out}
    for token in set(read) - rounds_wrote:                                 # still the prompt's row
        expected = sequential_logits(tiny_model, prompt[:latest[token] + 1]).topk(3).indices.tolist()
        assert strategy.matrix[token].tolist() == expected


def _roots_and_written(prompt, out):
    """Each round's root, and whether a round had written its row before (the first root: none had)."""
    roots, seen = [prompt[-1]] + out[:-1], set()
    for root in roots:
        yield root, root in seen
        seen.add(root)


def test_warm_up_keeps_each_sizes_fastest_pass_over_interleaved_sweeps(tiny_model, tiny_tokenizer, monkeypatch):
    """A busy spell of eight passes during the warm-up (each 50x slower) must not reach the frozen costs:
    each sweep times every size once, so the spell spoils at most two of a size's three passes, and the
    fastest is kept. (Timed size by size with medians, the spell spoiled two sizes outright; interleaved
    with medians, the two sizes it hit twice.)"""
    from strategies.speculative import cost_model
    from strategies.speculative.cost_model import _COSTS, warm_up

    clock, calls = [0.0], [0]
    session = DecodeSession(tiny_model, tiny_tokenizer, [], 1, set(), 0)
    real_forward = session.forward

    def forward(ids, cache, **kwargs):                    # a pass over n tokens "takes" 1 + 0.1 n seconds
        calls[0] += 1
        clock[0] += (1.0 + 0.1 * len(ids)) * (50.0 if 9 <= calls[0] <= 16 else 1.0)
        return real_forward(ids, cache, **kwargs)

    session.forward = forward
    monkeypatch.setattr(cost_model.time, "perf_counter", lambda: clock[0])
    _COSTS.pop(tiny_model, None)
    try:
        sizes = (1, 2, 3, 5, 9, 13)
        costs = warm_up(session, sizes=sizes, repeats=3)
        expected = {n: pytest.approx(1.0 + 0.1 * n) for n in sizes}
        assert costs.frozen and costs.seconds == expected and costs.long == expected
    finally:
        _COSTS.pop(tiny_model, None)
