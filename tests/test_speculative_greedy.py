"""Greedy speculative methods (prompt lookup, Token Recycling, DySpec, RASD) on a tiny float64 llama:
output equal to plain greedy and to transformers, EOS and length handled inside a multi-token round,
the KV cache rolled back exactly after every round, and Token Recycling's matrix kept as specified."""

from __future__ import annotations

import pytest
import torch

from conftest import build_tiny_llama
from playground.decoding import DecodeSession
from playground.events import StatsEvent, TokenEvent, TreeEvent, VerifyEvent
from strategies import REGISTRY
from test_exactness import PROMPTS, hf

METHODS = ["prompt_lookup", "token_recycling", "dyspec", "rasd"]
MAX_NEW = 30
SPEC_PROMPTS = PROMPTS + [[17, 12, 79], [11]]   # the last two give Token Recycling multi-token rounds of new tokens
# Token Recycling sizes its tree from forward times measured on this machine; tests that need
# multi-token rounds fix the size so what they exercise does not depend on the machine's speed.
FIXED = {"token_recycling": {"adaptive": False, "max_nodes": 12}, "prompt_lookup": {"draft_length": "fixed"}}


@pytest.fixture(scope="module")
def draft_model():
    """A different random llama with the target's vocabulary: a poor but honest draft."""
    return build_tiny_llama(seed=1)


def run(model, tokenizer, name, prompt, max_new=MAX_NEW, eos=(), draft=None, check=None, **params):
    """Run a method; after every round (each StatsEvent) check the target cache holds exactly the
    committed tokens minus the pending root. `check(strategy, session, event)` sees every event."""
    session = DecodeSession(model, tokenizer, prompt, max_new, set(eos), 0, draft_model=draft)
    strategy = REGISTRY[name](**{**FIXED.get(name, {}), **params})
    events = []
    for event in strategy.decode(session):
        events.append(event)
        if isinstance(event, StatsEvent):
            assert strategy.cache.get_seq_length() == len(prompt) + len(session.output_ids) - 1
        if check:
            check(strategy, session, event)
    return [e.token_id for e in events if isinstance(e, TokenEvent)], events, session


def rounds(events):
    return [e for e in events if isinstance(e, VerifyEvent)]


_GREEDY: dict = {}


def greedy(model, tokenizer, prompt, max_new=MAX_NEW, eos=()):
    """Plain greedy (memoised: every method is compared with it several times)."""
    key = (id(model), tuple(prompt), max_new, tuple(eos))
    if key not in _GREEDY:
        _GREEDY[key] = run(model, tokenizer, "greedy", prompt, max_new, eos)[0]
    return _GREEDY[key]


def test_greedy_reference_equals_generate(tiny_model, tiny_tokenizer):
    for prompt in SPEC_PROMPTS:
        assert greedy(tiny_model, tiny_tokenizer, prompt) == hf(tiny_model, prompt, max_new=MAX_NEW, do_sample=False)


def drafts_for(name, tiny_model, draft_model):
    """Draft models to try: none for draft-free methods; an unrelated one and a perfect one (the target)."""
    return [None] if not REGISTRY[name].needs_draft else [draft_model, tiny_model]


@pytest.mark.parametrize("name", METHODS)
def test_equals_greedy_and_generate(tiny_model, tiny_tokenizer, draft_model, name):
    for prompt in SPEC_PROMPTS:
        expected = greedy(tiny_model, tiny_tokenizer, prompt)
        for draft in drafts_for(name, tiny_model, draft_model):
            ours, events, session = run(tiny_model, tiny_tokenizer, name, prompt, draft=draft)
            assert ours == expected, (prompt, draft is tiny_model)
            emitted = [r.emitted for r in rounds(events)]
            # ONE prompt pass (the whole prompt: the first root ran in it), then ONE pass per round, except a
            # first round without drafts, whose pass was the prompt pass
            first_plain = rounds(events)[0].drafted == 0
            assert session.forward_passes == 1 + len(emitted) - first_plain
            assert sum(emitted) == len(ours)                           # every token, the first too, from a round
            for r in rounds(events):
                assert 1 <= r.emitted <= len(r.depth_accepted) + 1
                assert r.accepted <= len(r.depth_accepted) and r.depth_accepted[:r.accepted] == [True] * r.accepted
            trees = [e for e in events if isinstance(e, TreeEvent)]
            assert len(trees) == len(emitted) and all(t.reset for t in trees)
        if name == "token_recycling":                              # and with the tree sized from measured cost
            assert run(tiny_model, tiny_tokenizer, name, prompt, adaptive=True, max_nodes=64)[0] == expected
        if name == "prompt_lookup":                                # and with the draft cut by measured cost
            assert run(tiny_model, tiny_tokenizer, name, prompt, draft_length="measured")[0] == expected


def test_perfect_draft_is_accepted_every_round(tiny_model, tiny_tokenizer):
    """With the target as its own draft, the draft's top child is the target's argmax, so every round
    but the last accepts at least one draft token. This fails if the draft cache drifts."""
    for name in ("dyspec", "rasd"):
        for prompt in PROMPTS:
            _, events, session = run(tiny_model, tiny_tokenizer, name, prompt, draft=tiny_model)
            assert all(r.accepted >= 1 for r in rounds(events)[:-1]), name
            assert session.draft_forward_passes > 0


def inside_multi_token_rounds(events):
    """Output indices committed inside a multi-token round, not as its last token."""
    index, inside = 0, []                                       # token 0 came from the first round too
    for r in rounds(events):
        inside += range(index, index + r.emitted - 1)
        index += r.emitted
    return inside


@pytest.mark.parametrize("name", METHODS)
def test_stops_at_eos_like_greedy(tiny_model, tiny_tokenizer, draft_model, name):
    """EOS is taken from inside a multi-token round where possible, so the round must be cut short.
    (Prompt lookup never drafts EOS, as in transformers, so there EOS can only end a round.)"""
    cut_short = 0
    for prompt in SPEC_PROMPTS:
        draft = drafts_for(name, tiny_model, draft_model)[-1]
        free, events, _ = run(tiny_model, tiny_tokenizer, name, prompt, draft=draft)
        inside = [i for i in inside_multi_token_rounds(events) if free[i] not in free[:i]]
        eos = free[inside[0]] if inside else free[len(free) // 2]
        cut_short += bool(inside)
        expected = greedy(tiny_model, tiny_tokenizer, prompt, eos=[eos])
        assert expected == free[: free.index(eos) + 1]
        reference = hf(tiny_model, prompt, max_new=MAX_NEW, eos=eos, do_sample=False)
        assert expected == reference[: reference.index(eos) + 1]
        ours, _, _ = run(tiny_model, tiny_tokenizer, name, prompt, eos=[eos], draft=draft)
        assert ours == expected
    assert cut_short >= 1 or name == "prompt_lookup", "no multi-token round to cut: the test would prove nothing"


@pytest.mark.parametrize("name", METHODS)
def test_stops_at_the_length_limit_inside_a_round(tiny_model, tiny_tokenizer, draft_model, name):
    cut_short = 0
    for prompt in PROMPTS:
        draft = drafts_for(name, tiny_model, draft_model)[-1]
        free, events, _ = run(tiny_model, tiny_tokenizer, name, prompt, draft=draft)
        inside = inside_multi_token_rounds(events)
        if inside:
            cut_short += 1
            limit = inside[0] + 1
            ours, _, session = run(tiny_model, tiny_tokenizer, name, prompt, max_new=limit, draft=draft)
            assert ours == free[:limit] and len(session.output_ids) == limit
    assert cut_short >= 1, "no multi-token round to cut: the test would prove nothing"


@pytest.mark.parametrize("num_tokens,max_ngram", [(10, 2), (3, 1), (5, 3)])
def test_prompt_lookup_equals_generate_prompt_lookup(tiny_model, tiny_tokenizer, num_tokens, max_ngram):
    for prompt in PROMPTS + [[7, 8, 9, 7, 8, 9, 7, 8]]:
        ours, _, _ = run(tiny_model, tiny_tokenizer, "prompt_lookup", prompt, num_tokens=num_tokens,
                         max_ngram=max_ngram)
        assert ours == hf(tiny_model, prompt, max_new=MAX_NEW, do_sample=False,
                          prompt_lookup_num_tokens=num_tokens, max_matching_ngram_size=max_ngram)


def test_prompt_lookup_copies_the_first_earlier_match():
    from strategies.speculative.prompt_lookup import lookup

    assert lookup([1, 2, 3, 9, 1, 2, 4, 1, 2], 2, 10) == ([3, 9, 1, 2, 4, 1, 2], 2)
    assert lookup([1, 2, 3, 4], 2, 10) == ([], -1)                    # no match: no draft
    assert lookup([5, 1, 7, 1], 2, 2) == ([7, 1], 2)                  # falls back to a 1-gram


def sequential_logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0, -1]


def test_token_recycling_matrix_rows_are_topk_of_each_node(tiny_model, tiny_tokenizer):
    """After every round, M[t] for each tree token t is the top-k of the target's logits at the node
    holding t (computed here independently, by a plain forward along that node's path); where t
    occurs at several nodes, the accepted path wins (its context is the real one), else the last."""
    k = 4
    checked = []

    def check(strategy, session, event):
        if isinstance(event, TreeEvent):
            check.prefix = (session.prompt_ids + session.output_ids)[:-1]   # everything before the root
            check.nodes = [n for n in event.nodes if n.status != "bonus"]
        if isinstance(event, StatsEvent) and "tree budget (nodes)" in event.values and len(checked) < 6:
            by_id = {n.id: n for n in check.nodes}
            on_path = [n for n in check.nodes if n.status in ("accepted", "pruned")]
            last = {n.token_id: n for n in [n for n in check.nodes if n not in on_path] + on_path}
            for token, node in last.items():
                path, at = [], node
                while at is not None:
                    path.append(at.token_id)
                    at = by_id[at.parent] if at.parent is not None else None
                logits = sequential_logits(tiny_model, check.prefix + path[::-1])
                assert strategy.matrix[token].tolist() == logits.topk(k).indices.tolist()
            checked.append(len(last))

    for prompt in PROMPTS[:2]:
        run(tiny_model, tiny_tokenizer, "token_recycling", prompt, check=check, top_k=k, max_nodes=12,
            adaptive=False)
    assert len(checked) >= 6 and max(checked) > 1


def test_token_recycling_warm_starts_from_the_prompt(tiny_model, tiny_tokenizer):
    prompt = PROMPTS[1]
    session = DecodeSession(tiny_model, tiny_tokenizer, prompt, 1, set(), 0)
    strategy = REGISTRY["token_recycling"](top_k=3)
    list(strategy.decode(session))
    strategy.warm_up_matrix()                       # held back until a tree is grown: written now
    for i, token in enumerate(prompt):
        expected = sequential_logits(tiny_model, prompt[: i + 1]).topk(3).indices.tolist()
        assert strategy.matrix[token].tolist() == expected


def test_token_recycling_counts_warm_rows_as_a_scan_of_m_would(tiny_model, tiny_tokenizer):
    """The 'warm rows of M' stat is kept from each round's writes, not by scanning M's V rows: after
    every round it must equal the scan (trees and plain rounds, rows written twice, rejected nodes)."""
    from playground.events import StatsEvent

    for max_nodes, adaptive in ((6, False), (0, False)):
        session = DecodeSession(tiny_model, tiny_tokenizer, PROMPTS[1], 24, set(), 0)
        strategy = REGISTRY["token_recycling"](top_k=3, max_nodes=max_nodes, adaptive=adaptive)
        shown = []
        for event in strategy.decode(session):
            if isinstance(event, StatsEvent) and "warm rows of M" in event.values:
                shown.append(event.values["warm rows of M"])
                assert shown[-1] == int(strategy.matrix[:, 0].count_nonzero())
        assert len(shown) > 5 and shown[-1] > shown[0]


def test_token_recycling_budget_follows_measured_cost():
    from strategies.speculative.token_recycling import BUDGETS, CostModel, best_first_template, choose_budget

    positions, values = best_first_template([0.5, 0.2, 0.1], 64)
    assert all(p < i + 1 for i, (p, _) in enumerate(positions))        # parents come first
    assert values == sorted(values, reverse=True)
    costs = CostModel()
    tried = [choose_budget(values, costs, 64) for _ in BUDGETS]
    assert tried == list(BUDGETS)                                        # every size is tried once
    for n in (b + 1 for b in BUDGETS):
        costs.record(n, 1.0 + 0.5 * (n - 1))                               # steep: extra nodes are expensive
    steep = choose_budget(values, costs, 64)
    for n in (b + 1 for b in BUDGETS):
        costs.seconds[n] = 1.0 + 0.001 * (n - 1)                           # nearly free: grow the tree
    flat = choose_budget(values, costs, 64)
    assert steep < flat and flat == 64


def test_token_recycling_stops_growing_the_template_only_where_no_bigger_tree_can_win():
    """frozen_budget grows the template lazily; it must pick what the full template picks (ties: the
    smaller budget) on any rates and cost curve, and stop early when no tree pays."""
    import random

    from strategies.speculative.token_recycling import (BUDGETS, CostModel, best_first_template, choose_budget,
                                                        frozen_budget)

    rng = random.Random(7)
    for case in range(400):
        rates = [rng.random() ** rng.choice((1, 2, 4)) for _ in range(rng.randint(1, 8))]
        if case % 5 == 0:
            rates = [rng.choice((0.0, 0.1, 0.25)) for _ in rates]                # ties and zeros
        costs = CostModel()
        step, growth, bend = rng.uniform(0.01, 0.03), rng.uniform(0.0, 0.6), rng.uniform(0.5, 1.5)
        for n in (b + 1 for b in BUDGETS):
            costs.seconds[n] = step * (1 + growth * (n - 1) ** bend)
        costs.frozen = True
        limit = rng.choice((1, 5, 16, 64))
        positions, values = best_first_template(rates, limit)
        expected = choose_budget(values, costs, limit)
        got_positions, got_values, budget = frozen_budget(rates, costs, limit, 0)
        assert budget == expected, (rates, limit)
        assert got_positions == positions[:budget] and got_values == values[:len(got_values)]
    # nothing pays (every node's estimate 0.01, a 2-token pass costs 2 steps): the template is barely grown
    costs = CostModel()
    for n in (b + 1 for b in BUDGETS):
        costs.seconds[n] = 0.02 * n
    costs.frozen = True
    _, values, budget = frozen_budget([0.01] * 8, costs, 64, 0)
    assert budget == 0 and len(values) <= 1


def test_prompt_lookup_length_follows_copy_rate_and_cost():
    from strategies.speculative.cost_model import CostModel, best_size
    from strategies.speculative.prompt_lookup import CopyRate

    costs = CostModel()
    for n in range(1, 12):
        costs.record(n, 1.0 + 0.1 * (n - 1))                               # each extra token: +10 % of a pass
    copying, free_text = CopyRate(), CopyRate()
    for _ in range(8):
        copying.record(10, 10)                                             # every copied token accepted
        free_text.record(10, 0)                                            # the first one already rejected
    assert copying.value > 0.9 and free_text.value < 0.1
    assert free_text.gains(3)[1] == pytest.approx(free_text.value)
    sizes = list(range(11))
    assert best_size(copying.gains(10), costs, sizes) == 10
    assert best_size(free_text.gains(10), costs, sizes) == 0
    assert best_size(CopyRate().gains(10), costs, sizes) in (2, 3)       # the prior: a short, cheap draft
    assert CopyRate().gains(2) == [0.0, 0.5, 0.75]


def test_a_size_timed_under_load_is_checked_again_later():
    from strategies.speculative.cost_model import CostModel, best_size

    costs = CostModel()
    costs.record(1, 1.0)
    costs.record(2, 5.0)                                                   # timed while the machine was busy
    gains = [0.0, 0.5]
    assert best_size(gains, costs, [0, 1]) == 0                             # so one-token steps look best
    for _ in range(CostModel.STALE + 1):
        costs.record(1, 1.0)
    assert best_size(gains, costs, [0, 1]) == 1                             # stale: worth one more look
    costs.record(2, 1.05)                                                   # and it is cheap after all
    assert costs.seconds[2] == 1.05 and best_size(gains, costs, [0, 1]) == 1


def test_warm_up_times_every_pass_size(tiny_model, tiny_tokenizer):
    from strategies.speculative.cost_model import _COSTS, warm_up

    _COSTS.pop(tiny_model, None)
    session = DecodeSession(tiny_model, tiny_tokenizer, [], 1, set(), 0)
    costs = warm_up(session, sizes=range(1, 6), repeats=3)
    _COSTS.pop(tiny_model, None)                                            # other tests learn their own
    for table in (costs.seconds, costs.long):                              # short and long context
        assert sorted(table) == [1, 2, 3, 4, 5] and all(t > 0 for t in table.values())
    assert session.forward_passes == 2 * (1 + 4 * 5)        # each context, then each size once untimed + 3 timed
    assert costs.frozen
    before = dict(costs.seconds)
    costs.record(2, 99.0)                                                   # a pass timed under load later on
    assert costs.seconds == before                                          # changes nothing: sizes do not drift


def test_rasd_fusion_shares_prefixes():
    from strategies.speculative.rasd import fuse, retrieve
    from strategies.speculative.tree import DraftTree

    tree = DraftTree.rooted(0)
    a = tree.add(0, 5)
    tree.add(a, 6)
    origin = ["root", "model", "model"]
    graft = fuse(tree, origin, [5, 6, 7, 8])
    assert graft == 2 and tree.tokens[3:] == [7, 8] and origin == ["root", "both", "both", "retrieval", "retrieval"]
    fuse(tree, origin, [5, 9])
    for node in range(len(tree)):                                         # no duplicate sibling tokens
        kids = [tree.tokens[c] for c in tree.children(node)]
        assert len(kids) == len(set(kids))
    assert retrieve([1, 2, 3, 1, 2, 4, 1, 2], 2, 3, 5) == [[4, 1, 2], [3, 1, 2]]


def test_acceptance_panels_draw_and_escape(tiny_model, tiny_tokenizer, draft_model):
    from visualizers.speculative import acceptance_figure, depth_acceptance, depth_figure

    _, events, _ = run(tiny_model, tiny_tokenizer, "dyspec", PROMPTS[1], draft=tiny_model)
    assert acceptance_figure(events) is not None and depth_figure(events) is not None
    proposed, reached = depth_acceptance(rounds(events))
    assert reached[0] == sum(r.accepted >= 1 for r in rounds(events)) and all(r <= p for r, p in zip(reached, proposed))
    hostile = [VerifyEvent(step=0, drafted=2, accepted=1, emitted=2, depth_accepted=[True, False],
                           source="<img src=x onerror=alert(1)>")]
    fig = acceptance_figure(hostile)
    assert "<img" not in fig.to_json() and "&lt;img" in fig.to_json()
    assert acceptance_figure([]) is None and depth_figure([]) is None


def test_rasd_with_pruning_equals_greedy(tiny_model, tiny_tokenizer, draft_model):
    for prompt in SPEC_PROMPTS[:3]:
        ours, events, _ = run(tiny_model, tiny_tokenizer, "rasd", prompt, draft=draft_model, prune_below=0.02,
                              retrieval_paths=4, budget=5, width=2)
        assert ours == greedy(tiny_model, tiny_tokenizer, prompt)
        assert any(isinstance(e, StatsEvent) and "model acceptance" in e.values for e in events)


def test_token_recycling_shared_matrix_stays_lossless_and_gets_warmer(tiny_model, tiny_tokenizer):
    """matrix="shared" keeps one hot M per model across runs (the paper's setting): a repeated prompt
    drafts from the previous run's predictions, so it accepts more, and still equals greedy."""
    from strategies.speculative import token_recycling

    prompt = SPEC_PROMPTS[-1]
    expected = greedy(tiny_model, tiny_tokenizer, prompt)
    token_recycling._SHARED.pop(tiny_model, None)
    first, cold, _ = run(tiny_model, tiny_tokenizer, "token_recycling", prompt, matrix="shared")
    second, hot, _ = run(tiny_model, tiny_tokenizer, "token_recycling", prompt, matrix="shared")
    token_recycling._SHARED.pop(tiny_model, None)
    assert first == second == expected
    assert len(rounds(hot)) < len(rounds(cold))


def test_the_readme_speculative_example_runs_and_equals_greedy(tiny_model, tiny_tokenizer, draft_model):
    """The README's "speculative method in a few lines" is real code: exec it and check it is lossless."""
    import re
    from pathlib import Path

    from strategies.base import Param
    from strategies.speculative.drafters import draft_chain
    from strategies.speculative.loop import Draft, SpeculationLoop
    from strategies.speculative.verify import sampling_params

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"```python\n(class MyDraft\(SpeculationLoop\):.*?)```", readme, re.S).group(1)
    scope = dict(Param=Param, draft_chain=draft_chain, Draft=Draft, SpeculationLoop=SpeculationLoop,
                 sampling_params=sampling_params)
    exec(code, scope)
    for prompt in SPEC_PROMPTS:
        session = DecodeSession(tiny_model, tiny_tokenizer, prompt, MAX_NEW, set(), 0, draft_model=draft_model)
        ours = [e.token_id for e in scope["MyDraft"]().decode(session) if isinstance(e, TokenEvent)]
        assert ours == greedy(tiny_model, tiny_tokenizer, prompt)
        assert session.draft_forward_passes > 0


@pytest.mark.parametrize("name", ["token_recycling", "prompt_lookup"])
def test_a_cost_model_that_stops_drafting_says_so(tiny_model, tiny_tokenizer, monkeypatch, name):
    """On a machine where any pass over 2+ tokens costs 100x one token, the adaptive methods draft
    nothing; they must say so (a NoticeEvent), not show a run of plain steps as speculation."""
    from playground.events import NoticeEvent
    from strategies.speculative import prompt_lookup, token_recycling
    from strategies.speculative.cost_model import CostModel
    from strategies.speculative.rounds import PLAIN_STEPS, PlainStepNotice

    slow = CostModel()
    for n in range(1, 130):
        slow.record(n, 0.01 if n == 1 else 1.0)
    slow.last = dict.fromkeys(slow.last, slow.passes)             # all timed just now: nothing to re-check
    monkeypatch.setattr(slow, "record", lambda n_tokens, seconds: None)   # and this machine stays this slow
    for module in (prompt_lookup, token_recycling):
        monkeypatch.setattr(module, "cost_model_for", lambda model: slow)
    prompt = [5, 17, 33, 5, 17, 33, 5, 17]                        # prompt lookup finds copies to propose
    params = {"adaptive": True, "max_nodes": 12} if name == "token_recycling" else {"draft_length": "measured"}
    ours, events, _ = run(tiny_model, tiny_tokenizer, name, prompt, **params)
    assert ours == greedy(tiny_model, tiny_tokenizer, prompt)
    assert all(r.drafted == 0 for r in rounds(events))
    notices = [e for e in events if isinstance(e, NoticeEvent)]
    assert [(n.key, n.message, n.active) for n in notices] == [("drafting", f"{PLAIN_STEPS}, since round 1", True)]
    assert events.index(notices[0]) > events.index(rounds(events)[PlainStepNotice.STREAK - 1])   # after a streak
    assert PLAIN_STEPS == "drafts do not pay on this machine now: plain steps (one token per target pass)"


def test_plain_step_notice_needs_a_streak_and_withdraws_when_drafting_resumes():
    """One unproposed copy at the end of a run that sped up is no reason to say drafts do not pay."""
    from strategies.speculative.rounds import PLAIN_STEPS, PlainStepNotice

    notice, said = PlainStepNotice(), []
    for step, plain in enumerate([True, True, False, True, True, True, True, False, True]):
        said += [(step, n.message, n.active) for n in notice.update(plain, step)]
    assert said == [(5, f"{PLAIN_STEPS}, since round 4", True), (7, "drafting again from round 8", False)]
