"""Acceptance rules output exactly the target p: synthetic p/q, fixed seeds, 2*10^5 trials per rule;
and each rule reports the law its recovered token was really drawn from (the p-vs-q panel's residual).

At N = 2*10^5 over 8 tokens the total variation between an empirical histogram and its true
distribution is about 0.002 (noise floor); 0.005 fails any rule that is off by a few percent
on one token (the tests below also check that a deliberately wrong rule does fail).
"""

from __future__ import annotations

import pytest
import torch

from strategies.speculative import acceptance as acc

TRIALS = 200_000
TOLERANCE = 0.005
VOCAB = 8



pytestmark = pytest.mark.usefixtures("one_thread")

def pair(seed: int):
    """A target p and a draft q that disagree a lot (different random logits, q flatter)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(VOCAB, generator=g, dtype=torch.float64) * 1.5, -1)
    q = torch.softmax(torch.randn(VOCAB, generator=g, dtype=torch.float64), -1)
    return p, q


def tv(tokens: torch.Tensor, p: torch.Tensor) -> float:
    counts = torch.bincount(tokens, minlength=p.shape[0]).double()
    return 0.5 * float((counts / counts.sum() - p).abs().sum())


def iid(q: torch.Tensor, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return torch.multinomial(q, shape[0] * shape[1], replacement=True, generator=g).view(shape)


@pytest.mark.parametrize("seed", [0, 1])
def test_standard_rule_outputs_p(seed):
    p, q = pair(seed)
    g = torch.Generator().manual_seed(100 + seed)
    draft = torch.multinomial(q, TRIALS, replacement=True, generator=g)
    index, token, _ = acc.speculative_accept(p, q, draft, g)
    assert tv(token, p) <= TOLERANCE
    # the acceptance rate is sum min(p, q), the known closed form
    assert abs(float((index == 0).double().mean()) - float(torch.minimum(p, q).sum())) < 0.005


def test_standard_rule_without_residual_is_caught():
    """The test can fail: emitting the draft's own token on rejection gives q-ish output, not p."""
    p, q = pair(0)
    g = torch.Generator().manual_seed(7)
    draft = torch.multinomial(q, TRIALS, replacement=True, generator=g)
    index, _, _ = acc.speculative_accept(p, q, draft, g)
    wrong = torch.where(index == 0, draft, torch.multinomial(q, TRIALS, replacement=True, generator=g))
    assert tv(wrong, p) > 5 * TOLERANCE


def test_q_equal_p_accepts_always():
    p, _ = pair(3)
    g = torch.Generator().manual_seed(3)
    draft = torch.multinomial(p, TRIALS, replacement=True, generator=g)
    index, token, _ = acc.speculative_accept(p, p, draft, g)
    assert bool((index == 0).all()) and torch.equal(token, draft)


def test_residual_guard_when_p_equals_q():
    p, _ = pair(4)
    assert torch.allclose(acc.residual(p, p), p)
    r = acc.residual(p, torch.roll(p, 1))
    assert bool((r >= 0).all()) and abs(float(r.sum()) - 1) < 1e-12


def test_gumbel_top_k_distinct_and_sequential_order():
    p, q = pair(5)
    g = torch.Generator().manual_seed(5)
    picks = acc.gumbel_top_k(q.expand(TRIALS, VOCAB), 3, g)
    assert all(len(set(row)) == 3 for row in picks[:2000].tolist())
    # the first pick is a plain draw from q
    assert tv(picks[:, 0], q) <= TOLERANCE
    # the second pick follows q without the first: P(second = y) = sum_x q(x) q(y) / (1 - q(x))
    second = sum(q[x] * torch.cat([q[:x], torch.zeros(1, dtype=q.dtype), q[x + 1:]]) / (1 - q[x]) for x in range(VOCAB))
    assert tv(picks[:, 1], second) <= TOLERANCE


def test_gumbel_top_k_clips_to_support():
    q = torch.tensor([0.5, 0.0, 0.5, 0.0], dtype=torch.float64)
    picks = acc.gumbel_top_k(q, 3, torch.Generator().manual_seed(0))
    assert sorted(picks.tolist()) == [0, 2]


@pytest.mark.parametrize("seed", [0, 1])
def test_recursive_rejection_outputs_p(seed):
    p, q = pair(seed)
    g = torch.Generator().manual_seed(200 + seed)
    candidates = acc.gumbel_top_k(q.expand(TRIALS, VOCAB), 3, g)
    index, token, _ = acc.recursive_rejection(p, q, candidates, g)
    assert tv(token, p) <= TOLERANCE
    # three distinct candidates accept more often than one
    assert float((index >= 0).double().mean()) > float(torch.minimum(p, q).sum()) + 0.02


def test_recursive_rejection_with_iid_candidates_is_caught():
    """Same updates but i.i.d. candidates: the rule is no longer lossless (ALGORITHMS.md s.8 pitfall)."""
    p, q = pair(0)
    g = torch.Generator().manual_seed(9)
    _, token, _ = acc.recursive_rejection(p, q, iid(q, (TRIALS, 3), g), g)
    assert tv(token, p) > 2 * TOLERANCE


def test_recursive_rejection_without_the_draft_update_is_caught():
    """Candidates without replacement but q left unchanged after a rejection: not lossless either."""
    p, q = pair(0)
    g = torch.Generator().manual_seed(9)
    candidates = acc.gumbel_top_k(q.expand(TRIALS, VOCAB), 3, g)
    p_k, done = p.expand(TRIALS, VOCAB), torch.zeros(TRIALS, dtype=torch.bool)
    token = torch.zeros(TRIALS, dtype=torch.long)
    for k in range(3):
        x = candidates[:, k]
        ok = ~done & (torch.rand(TRIALS, generator=g, dtype=torch.float64) * q[x] < p_k.gather(-1, x[:, None])[:, 0])
        token, done = torch.where(ok, x, token), done | ok
        p_k = acc.residual(p_k, q)
    token = torch.where(done, token, acc.sample(p_k, g))
    assert tv(token, p) > 5 * TOLERANCE


def test_recursive_rejection_drafts_sum_to_one():
    p, q = pair(6)
    q_k, x = q.clone()[None], torch.tensor([int(q.argmax())])
    for _ in range(VOCAB - 1):
        q_k = acc._remove(q_k, x)
        assert abs(float(q_k.sum()) - 1) < 1e-12 and float(q_k[0, x]) == 0
        x = q_k.argmax(-1)


def test_rrs_with_one_candidate_is_the_standard_rule():
    p, q = pair(2)
    draft = torch.multinomial(q, 1000, replacement=True, generator=torch.Generator().manual_seed(1))
    a = acc.recursive_rejection(p, q, draft[:, None], torch.Generator().manual_seed(2))
    b = acc.speculative_accept(p, q, draft, torch.Generator().manual_seed(2))
    assert torch.equal(a.index, b.index) and torch.equal(a.token, b.token)
    assert torch.allclose(a.residual, b.residual)        # both drew from norm(max(0, p - q))


@pytest.mark.parametrize("seed", [0, 1])
def test_kseq_outputs_p(seed):
    p, q = pair(seed)
    g = torch.Generator().manual_seed(300 + seed)
    index, token, _ = acc.kseq_accept(p, q, iid(q, (TRIALS, 3), g), g)
    assert tv(token, p) <= TOLERANCE
    rho = acc.kseq_rho(p, q, 3)
    beta = acc.kseq_beta(p[None], q[None], rho)
    assert abs(float((index >= 0).double().mean()) - float(1 - (1 - beta) ** 3)) < 0.005


def test_kseq_rho_one_for_single_draft_and_residual_nonnegative():
    p, q = pair(1)
    assert float(acc.kseq_rho(p, q, 1)) == 1.0
    accept = []
    for k in (1, 2, 3, 4, 8):
        rho = acc.kseq_rho(p, q, k)
        assert 1.0 <= float(rho) <= k
        assert float(acc.kseq_c(acc.kseq_beta(p[None], q[None], rho), k)) <= float(rho) + 1e-9
        covered = torch.minimum(q, p / rho) * acc.kseq_c(acc.kseq_beta(p[None], q[None], rho), k)
        assert bool((p - covered >= -1e-12).all())
        accept.append(float(1 - (1 - acc.kseq_beta(p[None], q[None], rho)) ** k))
    assert accept == sorted(accept)                      # P(accept) non-decreasing in k


def test_kseq_with_rho_one_is_caught():
    """rho = 1 with k > 1 over-produces tokens where p < q (the pitfall the bisection avoids)."""
    p, q = pair(0)
    g = torch.Generator().manual_seed(11)
    candidates = iid(q, (TRIALS, 3), g)
    hit = torch.zeros(TRIALS, dtype=torch.bool)
    token = torch.zeros(TRIALS, dtype=torch.long)
    for i in range(3):
        x = candidates[:, i]
        ok = ~hit & (torch.rand(TRIALS, generator=g, dtype=torch.float64) * q[x] < p[x])
        token, hit = torch.where(ok, x, token), hit | ok
    token = torch.where(hit, token, torch.multinomial(acc.residual(p, q), TRIALS, replacement=True, generator=g))
    assert tv(token, p) > 2 * TOLERANCE


@pytest.mark.parametrize("seed", [0, 1])
def test_deterministic_children_output_p(seed):
    p, _ = pair(seed)
    g = torch.Generator().manual_seed(400 + seed)
    fixed = torch.tensor([3, 0, 5])                      # e.g. a retrieval draft's children
    index, token, _ = acc.deterministic_accept(p, fixed.expand(TRIALS, 3), g)
    assert tv(token, p) <= TOLERANCE
    assert abs(float((index >= 0).double().mean()) - float(p[fixed].sum())) < 0.005


# --- the residual each rule reports is the law the recovered token was drawn from ------------------

def f64(*values):
    return torch.tensor(values, dtype=torch.float64)


# Two siblings that p cannot accept (p(x) = 0 for both), so both are rejected whatever the draws.
# By hand: p_2 = norm(max(0, p - q)) = (0, 0, 5/8, 3/8); q_2 = q without token 0 = (0, .6, .2, .2);
# p_3 = norm(max(0, p_2 - q_2)) = norm(0, 0, .425, .175) = (0, 0, 17/24, 7/24).
TWO_SIBLINGS = dict(p=f64(0.0, 0.0, 0.6, 0.4), q=f64(0.5, 0.3, 0.1, 0.1), candidates=[0, 1])
TWICE_UPDATED = f64(0.0, 0.0, 17 / 24, 7 / 24)


def test_recursive_rejection_reports_the_twice_updated_residual():
    p, q = TWO_SIBLINGS["p"], TWO_SIBLINGS["q"]
    out = acc.recursive_rejection(p, q, torch.tensor(TWO_SIBLINGS["candidates"]), torch.Generator().manual_seed(0))
    assert int(out.index) == -1
    assert torch.allclose(out.residual[0], TWICE_UPDATED, atol=1e-12)
    assert not torch.allclose(out.residual[0], acc.residual(p, q), atol=1e-3)     # not the one-candidate formula


def test_recovered_tokens_follow_the_reported_residual():
    """Over 2*10^5 rows: every rule's recovered tokens (index -1) follow the residuals it reports (for
    RRS a different one per row: it depends on which candidates were drawn, so compare to their mean)."""
    p, q = pair(0)
    g = torch.Generator().manual_seed(12)
    rules = [acc.speculative_accept(p, q, torch.multinomial(q, TRIALS, replacement=True, generator=g), g),
             acc.recursive_rejection(p, q, acc.gumbel_top_k(q.expand(TRIALS, VOCAB), 3, g), g),
             acc.kseq_accept(p, q, iid(q, (TRIALS, 3), g), g),
             acc.deterministic_accept(p, torch.tensor([3, 0, 5]).expand(TRIALS, 3), g)]
    mixtures = []
    for out in rules:
        rejected = out.index < 0
        assert int(rejected.sum()) > 20_000
        mixtures.append(out.residual[rejected].mean(0))
        assert tv(out.token[rejected], mixtures[-1]) <= 0.01
    # after three recursive updates, or K-SEQ's, the residual is not the one-candidate norm(max(0, p - q))
    assert all(float((mixture - acc.residual(p, q)).abs().sum()) > 0.2 for mixture in mixtures[1:3])
    assert torch.allclose(rules[2].residual[0], acc.kseq_residual(p, q, acc.kseq_rho(p, q, 3), 3)[0])


class Texts:
    def token_text(self, token: int) -> str:
        return f" t{token}"


def test_rrs_verdict_records_the_residual_it_drew_from():
    """Through the verifier, the round record and the panel: a root with two rejected children. The old
    record (no "residual" from the verifier) fell back to norm(max(0, p - q)) = (0, 0, .625, .375)."""
    from strategies.speculative.rounds import rejection_record
    from strategies.speculative.tree import DraftTree
    from strategies.speculative.verify import make_warp, recursive_rejection_verdict
    from visualizers.rejection import rejection_figure
    from playground.events import VerifyEvent

    p, q = TWO_SIBLINGS["p"], TWO_SIBLINGS["q"]
    tree = DraftTree([2] + TWO_SIBLINGS["candidates"], [-1, 0, 0])
    logits = p.log().expand(len(tree), 4)                  # log 0 = -inf: softmax gives p back
    verdict = recursive_rejection_verdict(tree, logits, {0: q}, make_warp({"temperature": 1.0}),
                                          torch.Generator().manual_seed(0))
    assert verdict.path == [0]
    record = rejection_record(Texts(), verdict.rejection, verdict.accepted)
    shown = dict(zip(record["token_ids"], record["residual"]))
    assert shown[2] != pytest.approx(0.625, abs=1e-3)      # what the old panel drew
    assert shown == pytest.approx({i: float(TWICE_UPDATED[i]) for i in range(4)}, abs=1e-12)
    assert verdict.rejection["rejected"] == [0, 1]
    assert set(record["rejected_tokens"]) <= set(record["token_ids"]) and record["recovered_token"] in (2, 3)
    figure = rejection_figure([VerifyEvent(step=0, drafted=2, accepted=0, emitted=1, rejection=record)])
    assert "after 2 rejected candidates" in figure.data[0].name
    assert "2 recursive rejections" in figure.layout.title.text


def test_kseq_and_chain_verdicts_record_their_residuals():
    """SpecTr records norm(max(0, p - min(q, p/rho) c)); a chain records norm(max(0, p - q))."""
    from strategies.speculative.spectr import SpecTr
    from strategies.speculative.tree import DraftTree
    from strategies.speculative.verify import make_warp, verify_chain

    warp = make_warp({"temperature": 1.0})
    p, q = f64(0.0, 0.0, 0.6, 0.4), f64(0.45, 0.35, 0.1, 0.1)
    tree = DraftTree([2, 0, 1], [-1, 0, 0])                 # three i.i.d. drafts of length 1: 0, 1, 0
    verdict = SpecTr.verify(tree, p.log().expand(3, 4), {0: q}, [[0, 1], [0, 2], [0, 1]], warp,
                            torch.Generator().manual_seed(0))
    kseq = acc.kseq_residual(p[None], q[None], acc.kseq_rho(p, q, 3), 3)[0]
    assert verdict.rejection["rejected"] == [0, 1]
    assert torch.allclose(verdict.rejection["residual"], kseq) and "rho* = " in verdict.rejection["rule"]
    assert not torch.allclose(kseq, acc.residual(p, q), atol=1e-3)
    verdict = verify_chain(p.log().expand(2, 4), [0], q[None], warp, torch.Generator().manual_seed(0))
    assert torch.allclose(verdict.rejection["residual"], acc.residual(p, q))
