"""Speculative methods on tiny float64 llamas: greedy modes equal plain greedy token for token,
sampling mode outputs the target's warped distribution, DEL's full-depth draft is always accepted.

Target: build_tiny_llama(seed=0); draft: build_tiny_llama(seed=1) (same vocabulary, different
weights, so drafts are often wrong and every rejection path runs).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_cache_holds, build_tiny_llama

from playground.decoding import DecodeSession
from playground.drafts import parse_truncated, truncated_view
from playground.events import LayerAcceptanceEvent, StatsEvent, TokenEvent, TreeEvent, VerifyEvent, from_dicts, to_dicts
from strategies import REGISTRY
from strategies.speculative.early_exit import LayerAgreement, expected_tokens, plan, tpl_table

PROMPTS = [[5, 17, 33], [1, 2, 3, 4, 5, 6, 7, 8], [90], [42, 42, 42, 7]]



pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def target():
    return build_tiny_llama(seed=0)


@pytest.fixture(scope="module")
def draft():
    return build_tiny_llama(seed=1)


@pytest.fixture(scope="module")
def deep_target():
    """Four layers, so DEL has early exits to choose from."""
    return build_tiny_llama(seed=0, layers=4)


def run(model, tokenizer, name, prompt, max_new=24, eos=(), seed=0, draft_model=None, **params):
    """Run a method; after every round (its StatsEvent) the target cache must hold exactly the
    committed tokens minus the pending root, and a draft's cache only committed tokens' rows."""
    session = DecodeSession(model, tokenizer, prompt, max_new, set(eos), seed, draft_model=draft_model)
    strategy = REGISTRY[name](**params)
    events = []
    for event in strategy.decode(session):
        events.append(event)
        if isinstance(event, StatsEvent) and hasattr(strategy, "cache"):
            assert strategy.cache.get_seq_length() == len(prompt) + len(session.output_ids) - 1
            if hasattr(strategy, "draft_cache"):
                assert_cache_holds(strategy.draft_cache, draft_model, list(prompt) + session.output_ids)
    return [e.token_id for e in events if isinstance(e, TokenEvent)], events, session


def greedy(model, tokenizer, prompt, max_new=24, eos=()):
    return run(model, tokenizer, "greedy", prompt, max_new, eos)[0]


def rounds(events):
    return [e for e in events if isinstance(e, VerifyEvent)]


# --- speculative sampling, greedy mode --------------------------------------------------------

@pytest.mark.parametrize("prompt", PROMPTS)
def test_speculative_greedy_equals_greedy(target, draft, tiny_tokenizer, prompt):
    reference = greedy(target, tiny_tokenizer, prompt)
    for gamma in (1, 4):
        ours, events, session = run(target, tiny_tokenizer, "speculative", prompt, draft_model=draft, gamma=gamma)
        assert ours == reference, gamma
        verify = rounds(events)
        assert all(1 <= v.emitted <= v.drafted + 1 for v in verify)
        assert session.forward_passes == 1 + len(verify) - (verify[0].drafted == 0)   # prompt pass + one per round
    # a draft that IS the target: every draft accepted, gamma + 1 tokens per round
    ours, events, session = run(target, tiny_tokenizer, "speculative", prompt, draft_model=target, gamma=4)
    assert ours == reference
    assert all(v.accepted == v.drafted for v in rounds(events))
    assert session.forward_passes <= math.ceil(24 / 5) + 1


def test_speculative_greedy_with_truncated_draft_and_limits(target, tiny_tokenizer):
    """A draft sharing the target's first layer (playground/drafts.py); EOS and length cut exactly."""
    one_layer = truncated_view(target, 1)
    free = greedy(target, tiny_tokenizer, PROMPTS[0])
    eos = free[9]
    for max_new, stop in ((7, ()), (24, (eos,)), (1, ())):
        reference = greedy(target, tiny_tokenizer, PROMPTS[0], max_new, stop)
        ours, events, _ = run(target, tiny_tokenizer, "speculative", PROMPTS[0], max_new, stop,
                              draft_model=one_layer, gamma=4)
        assert ours == reference
        stats = [e for e in events if isinstance(e, StatsEvent)][-1].values
        if stats["draft tokens per round"]:
            assert 0 <= stats["acceptance rate"] <= 1
        else:                                              # max_new 1: nothing drafted, so no rate is shown
            assert "acceptance rate" not in stats and max_new == 1
    assert parse_truncated("embedded@layers=8") == ("embedded", 8) and parse_truncated("embedded") is None


def test_speculative_events_describe_each_round(target, draft, tiny_tokenizer):
    ours, events, _ = run(target, tiny_tokenizer, "speculative", PROMPTS[1], draft_model=draft, gamma=3,
                          temperature=1.0)
    trees = [e for e in events if isinstance(e, TreeEvent)]
    verify = rounds(events)
    assert len(trees) == len(verify) and all(t.reset for t in trees)
    assert sum(v.emitted for v in verify) == len(ours)
    for tree, v in zip(trees, verify):
        statuses = [n.status for n in tree.nodes[1:]]
        assert statuses.count("accepted") == v.accepted and statuses.count("bonus") == 1
        assert v.depth_accepted == [v.accepted > d for d in range(v.drafted)]
    rejected = [v.rejection for v in verify if v.rejection]
    assert rejected, "a random draft must be rejected somewhere"
    r = rejected[0]
    assert r["draft_token"] in r["token_ids"] and len(r["p"]) == len(r["q"]) == len(r["residual"]) == len(r["texts"])
    assert all(res == 0 for p, q, res in zip(r["p"], r["q"], r["residual"]) if p <= q)
    assert from_dicts(to_dicts(events))[0].to_dict() == events[0].to_dict()


# --- speculative sampling, sampling mode: the output distribution is the target's ------------------

def warped_target(model, context, temperature, top_k):
    from strategies.speculative.verify import make_warp, probabilities

    with torch.no_grad():
        logits = model(torch.tensor([context])).logits[0, -1]
    return probabilities(logits, make_warp({"temperature": temperature, "top_k": top_k}))


def chi_square_fails(counts: torch.Tensor, probs: torch.Tensor, z: float = 3.72) -> tuple[float, float]:
    """Pearson chi-square of counts against probs (cells with expected < 10 pooled, so the chi-square
    approximation holds in its tail) and the critical value at p ~ 1e-4 (Wilson-Hilferty): the
    statistic and the bar it must stay under. A real bias grows the statistic with the run count."""
    n = float(counts.sum())
    expected = probs * n
    small = expected < 10
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = exp > 0
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    df = int(keep.sum()) - 1
    critical = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return stat, critical


def test_verify_chain_outputs_the_target_law(target, draft):
    """The round rule on the tiny models' real distributions, 20 000 rounds of gamma = 2 drafts: the
    first emitted token follows the target's warped p(. | prompt), and the token after an accepted
    first draft t follows p(. | prompt + t)."""
    from strategies.speculative.verify import make_warp, probabilities, verify_chain

    temperature, top_k, trials = 1.5, 24, 20_000
    warp = make_warp({"temperature": temperature, "top_k": top_k})
    prompt = PROMPTS[0]
    q1 = warped_target(draft, prompt, temperature, top_k)
    firsts = torch.nonzero(q1 > 0).flatten().tolist()
    q2 = {t: warped_target(draft, prompt + [t], temperature, top_k) for t in firsts}
    pairs = [(a, b) for a in firsts for b in torch.nonzero(q2[a] > 0).flatten().tolist()]
    with torch.no_grad():                                    # every (x1, x2) the draft can propose, one batch
        rows = target(torch.tensor([prompt + [a, b] for a, b in pairs])).logits[:, len(prompt) - 1:]
    target_logits = dict(zip(pairs, rows))

    g, draft_g = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    first, second_after = [], {}
    for _ in range(trials):
        x1 = int(torch.multinomial(q1, 1, generator=draft_g))
        x2 = int(torch.multinomial(q2[x1], 1, generator=draft_g))
        verdict = verify_chain(target_logits[(x1, x2)], [x1, x2], torch.stack([q1, q2[x1]]), warp, g)
        emitted = [x1, x2][:verdict.accepted] + [verdict.next_token]
        first.append(emitted[0])
        if len(emitted) > 1:
            second_after.setdefault(emitted[0], []).append(emitted[1])
    vocab = target.config.vocab_size
    p1 = warped_target(target, prompt, temperature, top_k)
    stat, critical = chi_square_fails(torch.bincount(torch.tensor(first), minlength=vocab).double(), p1)
    assert stat < critical, (stat, critical)
    t, seconds = max(second_after.items(), key=lambda kv: len(kv[1]))
    assert len(seconds) > 500
    p2 = warped_target(target, prompt + [t], temperature, top_k)
    stat, critical = chi_square_fails(torch.bincount(torch.tensor(seconds), minlength=vocab).double(), p2)
    assert stat < critical, (stat, critical)
    # the check has power: the draft's own distribution is clearly rejected
    stat, critical = chi_square_fails(torch.bincount(torch.tensor(first), minlength=vocab).double(), q1 + 1e-9)
    assert stat > 5 * critical


def sample_many(strategy, target, draft, tokenizer, prompt, runs: int, on_events=None):
    """The strategy's first two tokens over `runs` seeds, and how often round 1 accepted a draft."""
    firsts, seconds, accepted_first = [], [], 0
    for seed in range(runs):
        session = DecodeSession(target, tokenizer, prompt, 3, set(), seed, draft_model=draft)
        events = list(strategy.decode(session))
        firsts.append(session.output_ids[0])
        seconds.append(session.output_ids[1])
        accepted_first += rounds(events)[0].accepted > 0
        if on_events:
            on_events(events)
    return firsts, seconds, accepted_first


def assert_follows_target(target, prompt, firsts, seconds, temperature, top_k) -> torch.Tensor:
    """First token ~ the target's warped p(. | prompt); second ~ its marginal over the first."""
    vocab = target.config.vocab_size
    p_first = warped_target(target, prompt, temperature, top_k)
    stat, critical = chi_square_fails(torch.bincount(torch.tensor(firsts), minlength=vocab).double(), p_first)
    assert stat < critical, (stat, critical)
    p_second = sum(p_first[t] * warped_target(target, prompt + [t], temperature, top_k)
                   for t in torch.nonzero(p_first > 0).flatten().tolist())
    stat, critical = chi_square_fails(torch.bincount(torch.tensor(seconds), minlength=vocab).double(), p_second)
    assert stat < critical, (stat, critical)
    return p_first


@pytest.mark.parametrize("name,params", [("speculative", {"gamma": 2}), ("rsd", {"branching": "3,2,1"}),
                                         ("rsd_s", {"beam_width": 3, "draft_depth": 2}),
                                         ("spectr", {"num_drafts": 3, "draft_length": 2})])
def test_sampling_end_to_end_matches_target(target, draft, tiny_tokenizer, name, params):
    """The whole strategy (draft tree, one verification pass, caches, commits) over many seeds, three
    new tokens each: the first and the second token follow the target's warped distributions (the
    second averaged over the first), and both the accept and the residual paths run."""
    temperature, top_k, runs = 1.5, 24, 600
    strategy = REGISTRY[name](temperature=temperature, top_k=top_k, **params)
    firsts, seconds, accepted_first = sample_many(strategy, target, draft, tiny_tokenizer, PROMPTS[0], runs)
    assert_follows_target(target, PROMPTS[0], firsts, seconds, temperature, top_k)
    assert 0.1 * runs < accepted_first < 0.9 * runs


@pytest.mark.parametrize("name", ["rsd", "rsd_s", "spectr"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_tree_methods_greedy_equal_greedy(target, draft, tiny_tokenizer, name, prompt):
    reference = greedy(target, tiny_tokenizer, prompt)
    settings = {"rsd": [{"branching": "3,2,1"}, {"branching": "2,1,1,1,1"}],
                "rsd_s": [{"beam_width": 3, "draft_depth": 3}, {"beam_width": 1, "draft_depth": 5}],
                "spectr": [{"num_drafts": 4, "draft_length": 3}, {"num_drafts": 2, "draft_length": 5}]}[name]
    for params in settings:
        for draft_model in (draft, target):              # an unrelated draft, and a perfect one
            ours, events, session = run(target, tiny_tokenizer, name, prompt, draft_model=draft_model, **params)
            assert ours == reference, params
            # the prompt pass, then ONE target pass per round (a first round without drafts: none, its root ran
            # in the prompt pass)
            assert session.forward_passes == 1 + len(rounds(events)) - (rounds(events)[0].drafted == 0)
        assert any(v.accepted for v in rounds(events))


def test_tree_methods_stop_exactly(target, draft, tiny_tokenizer):
    free = greedy(target, tiny_tokenizer, PROMPTS[1])
    for name in ("rsd", "rsd_s", "spectr"):
        for max_new, stop in ((5, ()), (24, (free[7],))):
            ours, _, _ = run(target, tiny_tokenizer, name, PROMPTS[1], max_new, stop, draft_model=target)
            assert ours == greedy(target, tiny_tokenizer, PROMPTS[1], max_new, stop)


# --- DEL: self-speculation from early layers --------------------------------------------------------

@pytest.mark.parametrize("prompt", PROMPTS)
def test_early_exit_greedy_equals_greedy(deep_target, tiny_tokenizer, prompt):
    reference = greedy(deep_target, tiny_tokenizer, prompt)
    settings = [{}, {"exit_layer": 1, "draft_length": 3, "confidence": 0.0}, {"exit_layer": 3, "draft_length": 5},
                {"exit_layer": 2, "count_head": False, "lens_every": 3}]
    for params in settings:
        ours, events, _ = run(deep_target, tiny_tokenizer, "early_exit", prompt, **params)
        assert ours == reference, params


def test_early_exit_full_depth_accepts_every_draft(deep_target, tiny_tokenizer):
    ours, events, session = run(deep_target, tiny_tokenizer, "early_exit", PROMPTS[1], exit_layer=4,
                                draft_length=4, confidence=0.0)
    assert ours == greedy(deep_target, tiny_tokenizer, PROMPTS[1])
    verify = rounds(events)
    assert all(v.accepted == v.drafted for v in verify) and sum(v.drafted for v in verify) >= 16
    layers = [e for e in events if isinstance(e, LayerAcceptanceEvent)]
    assert layers[-1].alpha[-1] == 1.0 and all(0 <= a <= 1 for e in layers for a in e.alpha)


def test_early_exit_drafts_are_the_layers_logit_lens(deep_target, tiny_tokenizer):
    """The draft runs on the target's own cache: its first token each round must be what layer 2's
    early exit predicts after a fresh full forward of the committed context."""
    ours, events, _ = run(deep_target, tiny_tokenizer, "early_exit", PROMPTS[0], max_new=12, exit_layer=2,
                          draft_length=3, confidence=0.0)
    committed = 0
    for tree, v in zip([e for e in events if isinstance(e, TreeEvent)], rounds(events)):
        context = PROMPTS[0] + ours[:committed]
        with torch.no_grad():
            hidden = deep_target(torch.tensor([context]), output_hidden_states=True).hidden_states[2][0, -1]
            lens = int(deep_target.lm_head(deep_target.model.norm(hidden)).argmax())
        assert tree.nodes[1].token_id == lens
        committed += v.emitted


def test_tpl_formula_and_plan():
    alpha = torch.tensor([0.0, 0.5, 1.0, 1.0], dtype=torch.float64)
    lengths = torch.tensor([1, 2, 3])
    assert torch.allclose(expected_tokens(alpha, lengths)[1], torch.tensor([1.5, 1.75, 1.875], dtype=torch.float64))
    table = tpl_table(alpha, head=0.0, max_length=3)
    assert math.isclose(float(table[2, 1]), 3 / (2 * 3 + 4))             # alpha = 1: (d+1) / (d l + L)
    layer, length, _ = plan(alpha, 0.0, 3, 0, 0)
    assert (layer, length) == (3, 3)
    assert plan(torch.zeros(4, dtype=torch.float64), 0.0, 3, 0, 0)[:2] == (0, 0)  # nothing beats plain decoding
    assert plan(alpha, 0.0, 3, 4, 2)[:2] == (4, 2)


def test_the_plan_doubts_a_layer_seen_to_agree_once():
    """One agreeing observation makes alpha 1, and taken at its word that is an 8-token draft; the plan's
    fading prior of one disagreement makes it a 1-token draft, and after 21 agreeing observations
    the plan trusts the layer again (0.976) and drafts 8."""
    agreement = LayerAgreement(30, decay=0.9)
    agreement.observe(torch.ones(30, 1, dtype=torch.bool))
    assert agreement.alpha.tolist() == [1.0] * 30                              # what is shown: the measured rate
    assert plan(agreement.alpha, 8.0, 8, 0, 0)[:2] == (1, 8)
    assert math.isclose(float(agreement.planning_alpha[0]), 1 / (1 + 0.9))
    assert plan(agreement.planning_alpha, 8.0, 8, 0, 0)[:2] == (1, 1)
    agreement.observe(torch.ones(30, 20, dtype=torch.bool))
    assert float(agreement.planning_alpha[0]) > 0.97
    assert plan(agreement.planning_alpha, 8.0, 8, 0, 0)[:2] == (1, 8)


def test_tpl_counts_the_measured_verification_pass():
    """v_d: a pass over d + 1 tokens costs v_d one-token passes (DEL's formula: 1). Layer 3 of 4 agrees
    always: with v = 1 a 3-token draft wins; when a 4-token pass costs 2.5 plain ones, drafting loses."""
    alpha = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    verify = torch.tensor([1.2, 1.8, 2.5], dtype=torch.float64)
    table = tpl_table(alpha, head=1.0, max_length=3, verify=verify)
    assert math.isclose(float(table[2, 2]), 4 / (3 * (3 + 1) + 2.5 * (4 + 1)))   # (d+1) / (d (l+h) + v_d (L+h))
    assert torch.equal(tpl_table(alpha, 1.0, 3, torch.ones(3, dtype=torch.float64)), tpl_table(alpha, 1.0, 3))
    assert plan(alpha, 1.0, 3, 0, 0)[:2] == (3, 3)
    assert plan(alpha, 1.0, 3, 0, 0, verify)[:2] == (0, 0)


def test_early_exit_sampling_mode_runs(deep_target, tiny_tokenizer):
    ours, events, _ = run(deep_target, tiny_tokenizer, "early_exit", PROMPTS[0], exit_layer=3, draft_length=3,
                          temperature=1.0, top_p=0.9)
    assert len(ours) == 24 and any(v.rejection for v in rounds(events))


# --- figures --------------------------------------------------------------------------------------

def test_rejection_and_layer_figures_escape_token_text(deep_target):
    """Token text is model output: it reaches the figures escaped, never as markup."""
    from conftest import TinyTokenizer

    from visualizers.rejection import layer_acceptance_figure, rejection_figure

    class MarkupTokenizer(TinyTokenizer):
        def decode(self, ids, skip_special_tokens=False):
            return "".join(f"<b>{int(i)}</b>" for i in ids)

    draft = build_tiny_llama(seed=1, layers=4)
    assert rejection_figure([]) is None and layer_acceptance_figure([]) is None
    _, events, _ = run(deep_target, MarkupTokenizer(), "speculative", PROMPTS[0], max_new=12, draft_model=draft,
                       temperature=1.0)
    figure = rejection_figure(events)
    assert figure is not None and len(figure.data) == 3
    assert all("<b>" not in str(label) for label in figure.data[0].x) and "&lt;b&gt;" in str(figure.data[0].x)
    _, events, _ = run(deep_target, MarkupTokenizer(), "early_exit", PROMPTS[0], max_new=12, exit_layer=2)
    figure = layer_acceptance_figure(events)
    assert figure is not None and len(figure.data[0].y) == 4 and figure.data[0].y[-1] == 1.0


def test_truncated_embedded_draft_shares_weights(embedded):
    from playground.models import load_model
    from playground.runner import DEFAULT_DRAFT, GenerationRequest, prepare

    # the model the draft is cut from is the cache's current one (the LRU cache may have reloaded it since
    # the session fixture loaded its own copy)
    embedded = load_model("embedded", embedded.dtype)
    draft = load_model("embedded@layers=4", embedded.dtype)
    assert draft.model.config.num_hidden_layers == 4 and embedded.model.config.num_hidden_layers > 4
    assert draft.model.model.layers[3].self_attn.q_proj.weight.data_ptr() == \
        embedded.model.model.layers[3].self_attn.q_proj.weight.data_ptr()
    assert draft.model.lm_head.weight.data_ptr() == embedded.model.lm_head.weight.data_ptr()
    assert draft.tokenizer is embedded.tokenizer and draft.n_bytes < embedded.n_bytes
    run_ = prepare(GenerationRequest(prompt="Hi", strategy="speculative", max_new_tokens=4), embedded)
    assert run_.draft is not None and run_.draft.model_id == DEFAULT_DRAFT


def test_stochastic_beam_children_are_drawn_without_replacement():
    """RSD-S's top-down Gumbels: the children's maximum is the parent's value, and their order is
    sequential sampling without replacement from q (P(a then b) = q_a q_b / (1 - q_a))."""
    from strategies.speculative.rsd_s import conditioned_gumbels

    q = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    trials, counts = 20000, torch.zeros(5, 5, dtype=torch.float64)
    for _ in range(trials):
        values = conditioned_gumbels(q.log() - 0.7, -1.3, generator)
        assert float(values.max()) == pytest.approx(-1.3)
        a, b = torch.topk(values, 2).indices.tolist()
        counts[a, b] += 1
    law = q[:, None] * q[None, :] / (1 - q[:, None])
    law.fill_diagonal_(0)
    assert 0.5 * float((counts / trials - law).abs().sum()) < 0.02   # TV; about 0.01 at this many trials


def test_speculative_verification_takes_the_whole_warper_chain(target, draft, tiny_tokenizer):
    """Verification warps p and q with the sampling family's one chain, so min-p, typical-p and Top-H
    hold in speculative sampling too. The oracle is transformers' own warpers, not our chain: the
    first token must follow their warped target (it did not when verification knew only T, top-k, top-p)."""
    from transformers import LogitsProcessorList, MinPLogitsWarper, TemperatureLogitsWarper, TypicalLogitsWarper
    from transformers.generation.logits_process import TopHLogitsWarper

    params = dict(temperature=1.3, min_p=0.05, typical_p=0.9, top_h=0.8)
    chain = LogitsProcessorList([TemperatureLogitsWarper(1.3), MinPLogitsWarper(0.05), TypicalLogitsWarper(0.9),
                                 TopHLogitsWarper(0.8)])        # vocab 96 <= top_n: its rule is the authors' here
    with torch.no_grad():
        logits = target(torch.tensor([PROMPTS[0]])).logits[0, -1].double()
    p_first = torch.softmax(chain(None, logits[None])[0], -1)
    assert 3 <= int((p_first > 0).sum()) < 0.5 * len(p_first)     # the chain really truncates here
    strategy = REGISTRY["speculative"](gamma=2, **params)
    firsts, _, _ = sample_many(strategy, target, draft, tiny_tokenizer, PROMPTS[0], 600)
    counts = torch.bincount(torch.tensor(firsts), minlength=len(p_first)).double()
    assert counts[p_first == 0].sum() == 0                        # nothing outside the kept set, ever
    stat, critical = chi_square_fails(counts, p_first)
    assert stat < critical, (stat, critical)
