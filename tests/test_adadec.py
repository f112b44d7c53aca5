"""AdaDec (strategies/single_pass/adadec.py) on the tiny float64 llama, and its threshold fit
(strategies/single_pass/threshold.py) on synthetic data with a known cut."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import assert_cache_holds
from playground.decoding import DecodeSession
from playground.events import PauseEvent, StatsEvent, TokenEvent, from_dicts, to_dicts
from strategies import REGISTRY, InvalidParameter
from strategies.single_pass import threshold as fitting
from strategies.single_pass.adadec import AdaDec
from visualizers import render
from visualizers.adadec import entropy_threshold_figure, pauses_figure

PROMPTS = [[5, 17, 33], [1, 2, 3, 4, 5, 6, 7, 8], [90]]


def run(model, tokenizer, prompt, max_new=12, eos=(), **params):
    session = DecodeSession(model, tokenizer, prompt, max_new, set(eos), 0)
    events = list(REGISTRY["adadec"](**params).decode(session))
    return [e.token_id for e in events if isinstance(e, TokenEvent)], events, session


def greedy(model, prompt, max_new=12):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                         pad_token_id=0, eos_token_id=None)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_infinite_threshold_is_greedy(tiny_model, tiny_tokenizer, one_thread, prompt):
    ours, events, session = run(tiny_model, tiny_tokenizer, prompt, threshold="inf")
    assert ours == greedy(tiny_model, prompt)
    assert not any(isinstance(e, PauseEvent) for e in events)
    assert session.forward_passes == len(ours)


@pytest.mark.parametrize("threshold", ["0", "3.3", "inf"])
def test_one_candidate_is_greedy_whatever_the_threshold(tiny_model, tiny_tokenizer, one_thread, threshold):
    ours, events, _ = run(tiny_model, tiny_tokenizer, PROMPTS[0], threshold=threshold, candidates=1)
    assert ours == greedy(tiny_model, PROMPTS[0])
    if threshold == "0":
        assert sum(isinstance(e, PauseEvent) for e in events) == len(ours)     # it did pause, and still greedy


def test_zero_threshold_pauses_every_step_and_commits_a_top_candidate(tiny_model, tiny_tokenizer, one_thread):
    ours, events, session = run(tiny_model, tiny_tokenizer, PROMPTS[1], threshold="0", candidates=3,
                                lookahead_length=4)
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    pauses = [e for e in events if isinstance(e, PauseEvent)]
    assert len(pauses) == len(tokens) and all(t.extra["paused"] == 1.0 for t in tokens)
    for pause, token in zip(pauses, tokens):
        assert pause.step == token.index
        top3 = [a.token_id for a in token.alternatives[:3]]
        assert [c["token_id"] for c in pause.candidates] == top3           # the top-B, in order
        chosen = [c for c in pause.candidates if c["chosen"]]
        assert len(chosen) == 1 and chosen[0]["token_id"] == token.token_id
        assert chosen[0]["score"] == max(c["score"] for c in pause.candidates)
        for c in pause.candidates:                                         # score = mean log p, lambda = 1
            assert len(c["rollout_ids"]) == 4
    assert ours != greedy(tiny_model, PROMPTS[1])                           # the rerank changes something here
    stats = [e for e in events if isinstance(e, StatsEvent)][-1].values
    assert stats["paused fraction"] == 1.0


def test_scores_are_the_mean_log_probability_of_candidate_and_rollout(tiny_model, tiny_tokenizer, one_thread):
    """Each candidate's rollout is greedy from prompt + committed + candidate, recomputed here without a cache."""
    prompt = PROMPTS[0]
    ours, events, _ = run(tiny_model, tiny_tokenizer, prompt, max_new=4, threshold="0", lookahead_length=3)
    committed = []
    for pause, token in zip([e for e in events if isinstance(e, PauseEvent)], ours):
        for c in pause.candidates:
            seq, total = prompt + committed + [c["token_id"]], c["logprob"]
            for expected in c["rollout_ids"]:
                with torch.no_grad():
                    logp = torch.log_softmax(tiny_model(torch.tensor([seq])).logits[0, -1], -1)
                assert int(logp.argmax()) == expected
                total += float(logp[expected])
                seq.append(expected)
            assert c["score"] == pytest.approx(total / (len(c["rollout_ids"]) + 1), abs=1e-9)
        committed.append(token)


def test_passes_per_pause_and_the_cache_holds_only_committed_tokens(tiny_model, tiny_tokenizer, one_thread):
    B, L = 3, 5
    strategy = AdaDec(threshold="0", candidates=B, lookahead_length=L)
    session = DecodeSession(tiny_model, tiny_tokenizer, PROMPTS[0], 8, set(), 0)
    caches = []
    original = session.new_cache
    session.new_cache = lambda: caches.append(original()) or caches[-1]
    passes_before = 0
    for event in strategy.decode(session):
        if isinstance(event, PauseEvent):
            # the rollouts of this pause, plus the step's own pass that produced its logits
            step_passes = session.forward_passes - passes_before
            # the B rollouts run as one batch: L passes a pause, not B x L (the bound, 1 + B L, holds)
            assert event.forward_passes == step_passes - 1 <= L
            assert step_passes <= 1 + L
            # after the rollouts, the cache holds the prompt and the committed tokens, nothing else
            held = assert_cache_holds(caches[0], tiny_model, PROMPTS[0] + session.output_ids)
            assert held == len(PROMPTS[0]) + len(session.output_ids)
        if isinstance(event, TokenEvent):
            passes_before = session.forward_passes
    assert len(caches) == 1


def test_rollouts_stop_at_eos(tiny_model, tiny_tokenizer, one_thread):
    free, events, _ = run(tiny_model, tiny_tokenizer, PROMPTS[0], threshold="0", lookahead_length=5)
    rollout = next(e for e in events if isinstance(e, PauseEvent)).candidates[0]["rollout_ids"]
    eos = rollout[1]
    _, events, _ = run(tiny_model, tiny_tokenizer, PROMPTS[0], eos=[eos], threshold="0", lookahead_length=5)
    first = next(e for e in events if isinstance(e, PauseEvent)).candidates[0]
    assert first["rollout_ids"] == rollout[:2]


def test_a_threshold_between_pauses_only_the_uncertain_steps(tiny_model, tiny_tokenizer, one_thread):
    free, events, _ = run(tiny_model, tiny_tokenizer, PROMPTS[2], threshold="inf")
    entropies = sorted(e.entropy for e in events if isinstance(e, TokenEvent))
    theta = (entropies[len(entropies) // 2 - 1] + entropies[len(entropies) // 2]) / 2
    _, events, _ = run(tiny_model, tiny_tokenizer, PROMPTS[2], threshold=str(theta))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert all(t.extra["paused"] == float(t.extra["entropy"] >= theta) for t in tokens)
    assert 0 < sum(t.extra["paused"] for t in tokens) < len(tokens)
    assert all(t.extra["threshold"] == theta for t in tokens)


def test_threshold_parameter():
    assert AdaDec().theta is None and AdaDec(threshold="1.25").theta == 1.25
    assert AdaDec(threshold="inf").theta == math.inf
    for bad in ("-1", "nan", "maybe", "x" * 21):
        with pytest.raises(InvalidParameter):
            AdaDec(threshold=bad)
    with pytest.raises(InvalidParameter):
        AdaDec(candidates=9)


def test_logistic_fit_recovers_a_known_cut():
    """Correctness drawn from P(rank 1 | H) = sigmoid(-3 (H - 1.5)) with H uniform on [0, 3]: the classes
    balance about H = 1.5, so the balanced-accuracy cut is there; the fit also recovers the slope."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20000, generator=g, dtype=torch.float64) * 3
    y = torch.rand(20000, generator=g, dtype=torch.float64) < torch.sigmoid(-3 * (x - 1.5))
    w, b = fitting.fit_logistic(x, y)
    assert w == pytest.approx(-3, rel=0.1) and -b / w == pytest.approx(1.5, abs=0.05)
    fit = fitting.fit_threshold(x, y)
    assert fit.threshold == pytest.approx(1.5, abs=0.1) and not fit.fallback
    # imbalanced (most steps right, as in real text): balanced accuracy is best where the class-conditional
    # densities, each divided by its class share, cross: sigmoid(-3 (H - 2.5)) = P(rank 1)
    y2 = torch.rand(20000, generator=g, dtype=torch.float64) < torch.sigmoid(-3 * (x - 2.5))
    share = float(y2.double().mean())
    bayes = 2.5 - math.log(share / (1 - share)) / 3
    assert fitting.fit_threshold(x, y2).threshold == pytest.approx(bayes, abs=0.1)


def test_fit_falls_back_when_entropy_does_not_predict_errors():
    x = torch.linspace(0, 3, 100, dtype=torch.float64)
    fit = fitting.fit_threshold(x, x > 1.5)           # errors at LOW entropy: no sensible cut
    assert fit.fallback and fit.threshold == fitting.FALLBACK_THRESHOLD


def test_fitted_threshold_is_cached_per_model(tiny_model, tiny_tokenizer, one_thread):
    first = fitting.fitted(tiny_model, tiny_tokenizer)
    assert fitting.fitted(tiny_model, tiny_tokenizer) is first
    x, y = fitting.observations(tiny_model, tiny_tokenizer)
    assert len(x) == len(y) == first.observations and int(y.sum()) == first.rank1
    _, events, _ = run(tiny_model, tiny_tokenizer, PROMPTS[0], max_new=3)
    assert all(e.extra["threshold"] == first.threshold for e in events if isinstance(e, TokenEvent))


def test_views_draw_and_re_render_from_saved_events(tiny_model, tiny_tokenizer, one_thread):
    _, events, _ = run(tiny_model, tiny_tokenizer, PROMPTS[2], max_new=6, threshold="3.4")
    saved = from_dicts(json.loads(json.dumps(to_dicts(events))))
    for evs in (events, saved):
        fig = entropy_threshold_figure(evs)
        assert fig is not None and "steps paused" in fig.layout.title.text
        assert pauses_figure(evs) is not None
        drawn = render(evs)
        assert drawn.figures["adadec_entropy"] is not None and drawn.figures["adadec_pauses"] is not None
    _, greedy_events, _ = run(tiny_model, tiny_tokenizer, PROMPTS[2], max_new=3, threshold="inf")
    assert pauses_figure(greedy_events) is None and entropy_threshold_figure(greedy_events) is not None


def test_pause_view_escapes_model_text():
    pause = PauseEvent(step=0, entropy=2.0, threshold=1.0, candidates=[
        {"token_id": 1, "text": "<img src=x onerror=alert(1)>", "logprob": -1.0, "rollout_ids": [2],
         "rollout_text": "<script>x</script>\n", "score": -0.5, "chosen": True}])
    fig = pauses_figure([pause])
    cells = json.dumps(fig.to_plotly_json()["data"][0]["cells"]["values"])
    assert "<img" not in cells and "<script>" not in cells and "&lt;script&gt;" in cells
