"""Sampling rules: each warper keeps exactly what its rule allows (transformers' warpers as the
oracle), the chain applies them in transformers' order (and no other order passes), each Top-H
criterion equals its own oracle on vocabularies past top_n, seeded runs repeat, and samples follow
the warped distribution."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (EpsilonLogitsWarper, EtaLogitsWarper, LogitsProcessorList, MinPLogitsWarper,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, TypicalLogitsWarper)
from transformers.generation.logits_process import TopHLogitsWarper

from strategies.sampling import warpers
from strategies.sampling.ancestral import Sampling
from strategies.sampling.top_h import TopH
from strategies.sampling.warpers import TOP_H_CRITERIA, WarperChain, top_h_keep
from tests.test_exactness import PROMPTS, hf, run_strategy


def random_logits(seed, vocab=96, rows=8, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g, dtype=torch.float64) * scale


ORACLES = [
    (warpers.top_k, TopKLogitsWarper, [1, 3, 10, 50]),
    (warpers.top_p, TopPLogitsWarper, [0.05, 0.3, 0.9, 0.99]),
    (warpers.min_p, MinPLogitsWarper, [0.01, 0.1, 0.5]),
    (warpers.typical_p, TypicalLogitsWarper, [0.2, 0.5, 0.95]),
    (warpers.epsilon, EpsilonLogitsWarper, [1e-4, 3e-3, 0.05]),
    (warpers.eta, EtaLogitsWarper, [1e-4, 3e-3, 0.05]),
]


@pytest.mark.parametrize("ours,oracle,values", ORACLES, ids=[o[1].__name__ for o in ORACLES])
def test_warper_keeps_exactly_what_its_rule_allows(ours, oracle, values):
    for seed in range(5):
        logits = random_logits(seed, scale=1.0 + seed)
        for value in values:
            expected = oracle(value)(None, logits.clone())
            got = ours(logits.clone(), value)
            assert torch.equal(torch.isfinite(got), torch.isfinite(expected)), (oracle.__name__, value, seed)
            kept = torch.isfinite(got)
            assert torch.equal(got[kept], logits[kept])          # kept logits are untouched
            assert kept.sum(-1).min() >= 1


def test_warpers_off_values_change_nothing():
    logits = random_logits(1)
    for fn, off in [(warpers.top_k, 0), (warpers.top_p, 1.0), (warpers.min_p, 0.0), (warpers.typical_p, 1.0),
                    (warpers.epsilon, 0.0), (warpers.eta, 0.0)]:
        assert torch.equal(fn(logits, off), logits)


# The chain in transformers' order, Top-H last. transformers' generate() puts top_h right after temperature
# instead; a LogitsProcessorList may hold TopHLogitsWarper anywhere, so ours is compared with one that holds it
# last. Found by search: with these values and rows, every one of the 5039 wrong orders of the seven rules
# changes the kept set of at least two rows, each of the six adjacent swaps of at least two.
ORDER = ("top_k", "top_p", "min_p", "typical_p", "epsilon", "eta", "top_h")
ORDER_PARAMS = dict(temperature=0.8, top_k=120, top_p=0.9, min_p=0.05, typical_p=0.9, epsilon=0.01, eta=0.2,
                    top_h=0.8, top_h_rule="transformers")
TRANSFORMERS_WARPERS = dict(top_k=TopKLogitsWarper, top_p=TopPLogitsWarper, min_p=MinPLogitsWarper,
                            typical_p=TypicalLogitsWarper, epsilon=EpsilonLogitsWarper, eta=EtaLogitsWarper,
                            top_h=TopHLogitsWarper)
OURS = dict(warpers.RULES, top_h=lambda logits, alpha: warpers.top_h(logits, alpha, 100, "transformers"))


def order_rows(vocab=200):
    """Gaussian logits at eight scales and Zipf-like ones at six slopes: each adjacent pair of rules bites
    on some of them (wider than top_n, so Top-H moved to the front meets its cap)."""
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0], dtype=torch.float64)
    gauss = torch.randn(len(scales), vocab, generator=g, dtype=torch.float64) * scales[:, None]
    slopes = torch.tensor([0.6, 0.8, 1.0, 1.2, 1.4, 1.6], dtype=torch.float64)
    ranks = torch.stack([torch.randperm(vocab, generator=g) for _ in slopes]).double() + 1
    zipf = -slopes[:, None] * ranks.log() + 0.5 * torch.randn(len(slopes), vocab, generator=g, dtype=torch.float64)
    return torch.cat([gauss, zipf])


def transformers_chain(order):
    return LogitsProcessorList([TemperatureLogitsWarper(ORDER_PARAMS["temperature"])]
                               + [TRANSFORMERS_WARPERS[name](ORDER_PARAMS[name]) for name in order])


def kept_sets_of_every_order(logits):
    """{order: kept mask} for all 5040 orders of our seven rules after temperature; orders that share a
    prefix share its work (13699 rule calls instead of 35280)."""
    kept = {}

    def grow(prefix, rest, x):
        if not rest:
            kept[prefix] = torch.isfinite(x)
        for i, name in enumerate(rest):
            grow(prefix + (name,), rest[:i] + rest[i + 1:], OURS[name](x, ORDER_PARAMS[name]))

    grow((), ORDER, warpers.temperature(logits, ORDER_PARAMS["temperature"]))
    return kept


def test_sampling_chain_matches_transformers_order():
    rows = order_rows()
    expected = transformers_chain(ORDER)(None, rows.clone())
    ours = Sampling(**ORDER_PARAMS).warp(rows.clone())
    kept = torch.isfinite(expected)
    assert torch.equal(torch.isfinite(ours), kept)
    assert torch.equal(ours[kept], expected[kept])                     # kept logits too, bit for bit
    # Each adjacent swap, done in transformers itself, keeps another set on at least two rows: a chain with
    # any two neighbours exchanged cannot pass the assertions above.
    for i in range(len(ORDER) - 1):
        swapped = ORDER[:i] + (ORDER[i + 1], ORDER[i]) + ORDER[i + 2:]
        differs = (torch.isfinite(transformers_chain(swapped)(None, rows.clone())) != kept).any(-1)
        assert differs.sum() >= 2, swapped


def test_no_wrong_order_of_the_rules_passes(one_thread):
    """All 5039 other orders of the seven rules (among them the 719 wrong orders of the six with Top-H
    last) keep another set than transformers' order on at least two rows, so the test above catches
    any reordering."""
    rows = order_rows()
    kept = kept_sets_of_every_order(rows)
    assert torch.equal(kept[ORDER], torch.isfinite(transformers_chain(ORDER)(None, rows.clone())))
    caught = {order: int((mask != kept[ORDER]).any(-1).sum()) for order, mask in kept.items() if order != ORDER}
    assert len(caught) == 5039
    passing = [order for order, rows_caught in caught.items() if rows_caught < 2]
    assert not passing, passing[:5]
    six_rule_orders = [order for order in caught if order[-1] == "top_h"]
    assert len(six_rule_orders) == 719


# --- Top-H: each criterion against its own oracle, on vocabularies wider than top_n ----------------------

def wide_logits(vocab):
    """Gaussian logits at five scales (near uniform to one dominant token) and Zipf-like ones at three
    slopes (a language model's long tail): the top-100 holds from a sliver to nearly all of the mass."""
    g = torch.Generator().manual_seed(vocab)
    scales = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    gauss = torch.randn(len(scales), vocab, generator=g, dtype=torch.float64) * scales[:, None]
    slopes = torch.tensor([0.8, 1.1, 1.5], dtype=torch.float64)
    ranks = torch.stack([torch.randperm(vocab, generator=g) for _ in slopes]).double() + 1
    zipf = -slopes[:, None] * ranks.log() + 0.3 * torch.randn(len(slopes), vocab, generator=g, dtype=torch.float64)
    return torch.cat([gauss, zipf])


# alpha = 1 is left out: the last candidate then ties the budget exactly and rounding decides (the released
# loop even indexes past its list there).
TOP_H_ALPHAS = (0.1, 0.3, 0.4, 0.6, 0.9)
WIDE_VOCABS = (500, 49152)                       # 49152: the embedded SmolLM2's vocabulary


def kept_by_top_h(logits, alpha, top_n, criterion):
    return torch.isfinite(warpers.top_h(logits[None], alpha, top_n, criterion))[0]


def released_top_h_loop(logits, alpha, top_n=100):
    """Oracle for "authors": TopH_LogitsProcessor.__call__ from the authors' logit_processor.py
    (github ErfanBaghaei/Top-H-Decoding), transcribed for one row of already tempered logits, in bits as
    they compute. Two changes, both marked: x log2 x is clamped so that 0 log 0 = 0 (the released code
    gives NaN), and the loop ends with the list (the released one indexes one past it when every
    candidate fits). Returns the kept token ids."""
    probs = torch.softmax(logits, dim=-1)
    top_n_probs, top_n_indices = torch.topk(probs, top_n, largest=True, sorted=True)

    def xlog2x(x):                                                      # change 1: the clamp
        return x * torch.log2(x.clamp_min(torch.finfo(x.dtype).tiny))

    def calculate_entropy(p):
        p = p / torch.sum(p)
        return -torch.sum(xlog2x(p))

    bias = 0.0
    mass = top_n_probs.sum()                                            # the released code calls it `alpha`
    tau = ((calculate_entropy(top_n_probs) - torch.log2(mass)) * mass - bias) * alpha
    valid_indices = []
    ind = 1
    sigma = top_n_probs[0]
    H = -xlog2x(top_n_probs[0])
    for idx in top_n_indices:
        valid_indices.append(int(idx))
        ind += 1
        if ind - 1 == top_n:                                            # change 2: no index past the list
            break
        H = H - xlog2x(top_n_probs[ind - 1])
        sigma = sigma + top_n_probs[ind - 1]
        entropy_diff = (H / sigma) + torch.log2(sigma)
        if entropy_diff > (tau / sigma + torch.log2(sigma)):
            break
    return valid_indices


def normalized_brute_force(logits, alpha, top_n=100):
    """Oracle for "normalized": the entropy of every renormalised prefix q_k of the sorted top_n, each
    computed from scratch, and the largest k with H(q_k) <= alpha H(p) (at least 1): the most mass any
    prefix can keep under the paper's constraint."""
    def entropy(x):
        x = x / x.sum()
        return float(-torch.special.xlogy(x, x).sum())

    p = torch.softmax(logits, -1)
    ordered = torch.sort(p, descending=True).values[:top_n]
    feasible = [k for k in range(1, top_n + 1) if entropy(ordered[:k]) <= alpha * entropy(p)]
    return max(feasible, default=1)


@pytest.mark.parametrize("vocab", WIDE_VOCABS)
def test_top_h_transformers_rule_equals_transformers_warper(vocab):
    for top_n in (100, 37):
        for logits in wide_logits(vocab):
            for alpha in TOP_H_ALPHAS:
                warper = TopHLogitsWarper(alpha)
                warper.top_n = top_n                # transformers fixes 100; 37 checks that ours follows top_n
                expected = torch.isfinite(warper(None, logits[None].clone())[0])
                assert torch.equal(kept_by_top_h(logits, alpha, top_n, "transformers"), expected), (top_n, alpha)


@pytest.mark.parametrize("vocab", WIDE_VOCABS)
def test_top_h_authors_rule_equals_the_released_loop(vocab):
    for top_n in (100, 37):
        for logits in wide_logits(vocab):
            for alpha in TOP_H_ALPHAS:
                expected = torch.zeros(vocab, dtype=torch.bool)
                expected[released_top_h_loop(logits, alpha, top_n)] = True
                assert torch.equal(kept_by_top_h(logits, alpha, top_n, "authors"), expected), (top_n, alpha)


@pytest.mark.parametrize("vocab", WIDE_VOCABS)
def test_top_h_normalized_rule_equals_brute_force(vocab):
    for top_n in (100, 37):
        for logits in wide_logits(vocab):
            for alpha in TOP_H_ALPHAS:
                kept, *_ = top_h_keep(logits, alpha, top_n, "normalized")
                assert kept == normalized_brute_force(logits, alpha, top_n), (top_n, alpha)
                assert int(kept_by_top_h(logits, alpha, top_n, "normalized").sum()) == kept


def test_top_h_authors_and_transformers_agree_only_when_top_n_holds_all_mass():
    # vocab <= top_n: the top-n is the whole distribution, and renormalising within it changes nothing.
    for seed in range(10):
        logits = random_logits(seed, rows=1, scale=0.5 + seed)[0]                  # vocab 96
        for alpha in TOP_H_ALPHAS:
            assert torch.equal(kept_by_top_h(logits, alpha, 100, "authors"),
                               kept_by_top_h(logits, alpha, 100, "transformers")), (seed, alpha)
    # vocab > top_n: they are different rules. One case pinned (so nobody calls them equal again), then a count.
    logits = wide_logits(49152)[5]                  # Zipf-like, slope 0.8: the top-100 holds 22 % of the mass
    assert top_h_keep(logits, 0.4, 100, "authors")[0] != top_h_keep(logits, 0.4, 100, "transformers")[0]   # 12, 15
    cases = [(logits, alpha) for vocab in WIDE_VOCABS for logits in wide_logits(vocab) for alpha in TOP_H_ALPHAS]
    differ = sum(top_h_keep(l, a, 100, "authors")[0] != top_h_keep(l, a, 100, "transformers")[0] for l, a in cases)
    assert differ >= len(cases) // 4, (differ, len(cases))            # 29 of 80 when written


def test_top_h_invariants():
    for seed in range(20):
        logits = random_logits(seed, vocab=500, rows=1, scale=0.5 + seed % 5)[0]
        for criterion in TOP_H_CRITERIA:
            sizes = [top_h_keep(logits, a, 100, criterion)[0] for a in (0.05, 0.2, 0.4, 0.7, 1.0)]
            assert sizes[0] >= 1 and sizes == sorted(sizes), (criterion, sizes)      # monotone in alpha
    one_hot = torch.full((50,), -1e4, dtype=torch.float64)
    one_hot[7] = 10.0
    near_uniform = torch.zeros(300, dtype=torch.float64) + torch.linspace(0, 1e-3, 300, dtype=torch.float64)
    for criterion in TOP_H_CRITERIA:
        assert top_h_keep(one_hot, 1.0, 100, criterion)[0] == 1
    assert top_h_keep(near_uniform, 1.0, 100, "authors")[0] == 100                  # alpha=1 keeps all top_n
    assert top_h_keep(near_uniform, 1.0, 100, "transformers")[0] == 100


def test_top_h_rules_differ_as_documented():
    differ = sum(top_h_keep(l, 0.4, 100, "authors")[0] != top_h_keep(l, 0.4, 100, "normalized")[0]
                 for l in random_logits(3, vocab=1000, rows=200, scale=2.0))
    assert differ > 50     # ALGORITHMS.md measured 78% on random distributions


def test_the_family_chain_takes_the_top_h_rule():
    logits = wide_logits(500)
    for criterion in TOP_H_CRITERIA:
        chain = WarperChain(dict(temperature=1.0, top_h=0.4, top_h_rule=criterion))
        assert torch.equal(chain(logits), warpers.top_h(logits, 0.4, 100, criterion)), criterion
    authors = warpers.top_h(logits, 0.4, 100, "authors")
    assert not torch.equal(authors, warpers.top_h(logits, 0.4, 100, "transformers"))   # so the rule reaches the chain
    # A run saved before top_h_rule existed computed the authors' rule, and still does.
    assert torch.equal(WarperChain(dict(temperature=1.0, top_h=0.4))(logits), authors)


def test_top_h_choices_are_named_honestly_and_old_runs_still_load():
    criterion = next(p for p in TopH.params if p.name == "criterion")
    rule = next(p for p in Sampling.params if p.name == "top_h_rule")
    for param in (criterion, rule):
        assert param.choices == ("authors", "transformers", "normalized") and param.default == "authors"
        assert "authors' released code" in param.help and "transformers' top_h" in param.help
        assert "agree exactly when" in param.help and "H(q) <= alpha H(p)" in param.help
        assert param.parse("released") == "authors"                        # the old name of the authors' rule
    json.dumps([TopH.schema(), Sampling.schema()])                         # the CLI's --json still works
    assert TopH(criterion="released").p["criterion"] == "authors"
    assert Sampling(top_h=0.4, top_h_rule="released").p["top_h_rule"] == "authors"
    logits = wide_logits(500)[1]
    assert top_h_keep(logits, 0.4, 100, "released") == top_h_keep(logits, 0.4, 100, "authors")
    from strategies import InvalidParameter

    with pytest.raises(InvalidParameter, match="criterion must be one of authors, transformers, normalized"):
        TopH(criterion="paper")
    with pytest.raises(ValueError, match="Top-H criterion"):
        top_h_keep(logits, 0.4, 100, "paper")


def test_top_h_in_generate_equals_standalone(tiny_model, tiny_tokenizer):
    """The same seed gives the same tokens from our Top-H loop and from generate(top_h=...)."""
    for prompt in PROMPTS:
        ours, _, _ = run_strategy(tiny_model, tiny_tokenizer, "top_h", prompt, max_new=16, seed=123,
                                  alpha=0.5, temperature=1.0, criterion="transformers")
        torch.manual_seed(123)
        ref = hf(tiny_model, prompt, max_new=16, do_sample=True, top_h=0.5, temperature=1.0, top_k=0, top_p=1.0)
        assert ours == ref


def test_sampling_in_generate_equals_standalone(tiny_model, tiny_tokenizer):
    for prompt in PROMPTS:
        ours, _, _ = run_strategy(tiny_model, tiny_tokenizer, "sampling", prompt, max_new=16, seed=7,
                                  temperature=0.8, top_k=20, top_p=0.9)
        torch.manual_seed(7)
        ref = hf(tiny_model, prompt, max_new=16, do_sample=True, temperature=0.8, top_k=20, top_p=0.9)
        assert ours == ref


def test_seeded_runs_repeat_and_seeds_differ(tiny_model, tiny_tokenizer):
    a, _, _ = run_strategy(tiny_model, tiny_tokenizer, "sampling", PROMPTS[0], seed=5)
    b, _, _ = run_strategy(tiny_model, tiny_tokenizer, "sampling", PROMPTS[0], seed=5)
    c, _, _ = run_strategy(tiny_model, tiny_tokenizer, "sampling", PROMPTS[0], seed=6)
    assert a == b and a != c


def test_sampled_tokens_stay_inside_the_kept_set(tiny_model, tiny_tokenizer):
    _, events, _ = run_strategy(tiny_model, tiny_tokenizer, "sampling", PROMPTS[1], max_new=40, seed=1, top_k=3)
    for e in events:
        assert e.kept == 3
        assert e.token_id in [a.token_id for a in e.alternatives[:3]]
    greedy, _, _ = run_strategy(tiny_model, tiny_tokenizer, "greedy", PROMPTS[1], max_new=40)
    top1, _, _ = run_strategy(tiny_model, tiny_tokenizer, "sampling", PROMPTS[1], max_new=40, seed=9, top_k=1)
    assert top1 == greedy


def test_samples_follow_the_warped_distribution():
    """Chi-square of 20k seeded draws against the warped target (p = 0.001 critical value)."""
    from playground.decoding import DecodeSession

    logits = random_logits(11, vocab=12, rows=1, scale=1.5)[0]
    warped = Sampling(temperature=1.3, top_p=0.9).warp(logits.clone())
    target = torch.softmax(warped, -1)
    session = DecodeSession(None, None, [], 1, set(), seed=3)
    n = 20_000
    counts = torch.bincount(torch.tensor([session.sample(warped) for _ in range(n)]), minlength=12).double()
    support = target > 0
    assert counts[~support].sum() == 0
    expected = target[support] * n
    chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
    dof = int(support.sum()) - 1
    critical = {k: v for k, v in zip(range(1, 12), [10.8, 13.8, 16.3, 18.5, 20.5, 22.5, 24.3, 26.1, 27.9, 29.6, 31.3])}
    assert chi2 < critical[dof], (chi2, dof)


def test_parameters_are_checked():
    from strategies import InvalidParameter

    with pytest.raises(InvalidParameter, match="alpha"):
        TopH(alpha=0)
    with pytest.raises(InvalidParameter, match="top_p"):
        Sampling(top_p=1.5)
    with pytest.raises(InvalidParameter, match="unknown parameter"):
        Sampling(nucleus=0.5)
    with pytest.raises(InvalidParameter, match="top_k must be an int"):
        Sampling(top_k="many")


def test_top_h_trace_names_the_entropy_its_criterion_bounds(tiny_model, tiny_tokenizer):
    """The authors' rule bounds an unnormalised partial entropy, the paper's rule H(q) of the renormalised
    kept set: the trace says which, and its first value is that quantity, computed here from the logits."""
    from strategies.sampling.top_h import MEASURED

    prompt, temperature = PROMPTS[0], 1.5
    with torch.no_grad():
        logits = tiny_model(torch.tensor([prompt])).logits[0, -1].double()
    probs = torch.softmax(logits / temperature, -1).sort(descending=True).values
    for criterion in ("authors", "normalized"):
        _, events, _ = run_strategy(tiny_model, tiny_tokenizer, "top_h", prompt, max_new=1, alpha=0.5,
                                    temperature=temperature, criterion=criterion)
        first = events[0]
        kept = probs[:first.kept]
        partial = float(-(kept * kept.log()).sum())
        q = kept / kept.sum()
        renormalised = float(-(q * q.log()).sum())
        assert set(first.extra) == {"budget (nats)", MEASURED[criterion], "kept mass"}
        expected = partial if criterion == "authors" else renormalised
        assert first.extra[MEASURED[criterion]] == pytest.approx(expected, rel=1e-9)
        assert abs(partial - renormalised) > 1e-3                     # the two really differ here
