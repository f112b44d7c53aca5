"""Superposed decoding (strategies/single_pass/superposed.py) and its n-gram tables (ngrams.py).

Exactness on the tiny float64 llama: the inputs_embeds pass equals transformers' own call; k=1 without
n-grams is greedy; the superposition is a simplex and collapses to a token's embedding exactly; one
target pass per step whatever k; drafts distinct; Stop commits the best draft. The n-gram
interpolation is checked by hand on a made-up corpus, and the shipped corpus once on the real tokenizer.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache

from playground.decoding import DecodeSession, StopRun
from playground.events import SuperposedStepEvent, TokenEvent
from strategies import REGISTRY
from strategies.single_pass.ngrams import NGramModel, NGramTable, corpus_table
from strategies.single_pass.superposed import superpose

PROMPTS = ([5, 6, 7, 8], [11, 3, 40, 2, 17, 9])


def session(model, tok, prompt, n=16, cls=DecodeSession, **kw):
    return cls(model, tok, prompt, n, set(), 0, **kw)


def run(s, **params):
    return list(REGISTRY["superposed"](**params).decode(s))


def steps(events):
    return [e for e in events if isinstance(e, SuperposedStepEvent)]


class RecordingSession(DecodeSession):
    """Records each pass's inputs_embeds (the model still runs for real)."""

    def forward(self, input_ids, cache=None, last_only=True, **kwargs):
        self.fed = getattr(self, "fed", [])
        self.fed.append(kwargs.get("inputs_embeds"))
        return super().forward(input_ids, cache, last_only, **kwargs)


@pytest.mark.parametrize("lean", [True, False])
def test_inputs_embeds_pass_equals_transformers(tiny_model, tiny_tokenizer, one_thread, lean):
    """A counted inputs_embeds pass (lean forward or transformers path) on a filled cache gives the
    logits and cache rows of transformers' own model(inputs_embeds=...) call."""
    prompt = PROMPTS[1]
    s = session(tiny_model, tiny_tokenizer, prompt, lean=lean)
    cache = s.new_cache()
    s.prefill(cache)
    E = tiny_model.get_input_embeddings().weight
    emb = (0.2 * E[3] + 0.5 * E[40] + 0.3 * E[77]).view(1, 1, -1)
    ours = s.forward(None, cache, inputs_embeds=emb)[0]
    assert s.forward_passes == 2
    ref_cache = DynamicCache(config=tiny_model.config)
    with torch.inference_mode():
        tiny_model(input_ids=torch.tensor([prompt]), cache=ref_cache, use_cache=True)
        ref = tiny_model(inputs_embeds=emb, cache=ref_cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    for a, b in zip(cache.layers, ref_cache.layers):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-12, rtol=0)


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("params", [dict(drafts=1, alpha=0.0), dict(drafts=1, ngram=False, temperature=0.7)])
def test_one_draft_without_ngrams_is_greedy(tiny_model, tiny_tokenizer, one_thread, prompt, params):
    """k=1, no n-gram weight: argmax of the temperature-scaled top-m = greedy, token for token, pass for pass."""
    g = session(tiny_model, tiny_tokenizer, prompt, 24)
    list(REGISTRY["greedy"]().decode(g))
    s = session(tiny_model, tiny_tokenizer, prompt, 24)
    events = run(s, **params)
    assert s.output_ids == g.output_ids
    assert [e.token_id for e in events if isinstance(e, TokenEvent)] == g.output_ids
    assert s.forward_passes == g.forward_passes


def test_superposition_is_a_simplex_and_one_token_is_its_embedding(tiny_model):
    E = tiny_model.get_input_embeddings().weight
    emb, w, merged = superpose(E, [4, 4, 4], [-0.3, -1.7, -9.0])
    assert torch.equal(emb, E[4]) and merged == 1                    # exactly, not closely
    emb, w, merged = superpose(E, [4, 9, 4], [-0.3, -1.7, -2.0])
    assert merged == 2 and min(w) >= 0 and math.isclose(sum(w), 1, abs_tol=1e-12)
    torch.testing.assert_close(emb, (w[0] + w[2]) * E[4] + w[1] * E[9], atol=1e-12, rtol=0)
    ws = torch.softmax(torch.tensor([-0.3, -1.7, -2.0], dtype=torch.float64), 0).tolist()
    assert w == pytest.approx(ws)


@pytest.mark.parametrize("ngram", [True, False])
def test_run_weights_inputs_and_distinct_drafts(tiny_model, tiny_tokenizer, one_thread, ngram):
    """In a real run: each step's weights are a simplex over the drafts; each pass's input is the
    weighted mix of the drafts' last tokens (exactly the embedding when they share it); drafts are
    distinct token sequences at every step."""
    s = session(tiny_model, tiny_tokenizer, PROMPTS[0], 20, cls=RecordingSession)
    events = run(s, ngram=ngram)
    E = tiny_model.get_input_embeddings().weight
    shared = 0
    for step, fed in zip(steps(events), s.fed[1:]):                 # fed[0]: the prompt pass
        assert all(w >= 0 for w in step.weights) and math.isclose(sum(step.weights), 1, abs_tol=1e-12)
        assert len(set(step.drafts)) == len(step.drafts) == 3          # " t{i}" texts: distinct ids
        last = [int(c["token_id"]) for c in sorted((c for c in step.candidates if c["kept"]),
                                                    key=lambda c: (-c["total"], c["draft"]))]
        mix = sum(w * E[t] for w, t in zip(step.weights, last))
        torch.testing.assert_close(fed[0, 0], mix, atol=1e-12, rtol=0)
        if len(set(last)) == 1:
            shared += 1
            assert torch.equal(fed[0, 0], E[last[0]])
    assert len(s.fed) == len(steps(events))                           # no pass after the last step
    if not ngram:
        assert shared > 0                                              # collapse happens without n-grams


@pytest.mark.parametrize("k", [1, 3, 6])
def test_one_target_pass_per_step_whatever_k(tiny_model, tiny_tokenizer, one_thread, k):
    s = session(tiny_model, tiny_tokenizer, PROMPTS[1], 12)
    events = run(s, drafts=k)
    assert len(steps(events)) == 12 and len(s.output_ids) == 12
    assert s.forward_passes == 12                                      # prompt pass + 11 steps, as greedy
    assert all(len(e.drafts) == k for e in steps(events))


def test_scores_interpolate_lm_and_ngram(tiny_model, tiny_tokenizer, one_thread):
    """score = (1-alpha) log p_lm + alpha log p_ngram; a draft whose every candidate is -inf pays the penalty;
    the kept candidates are the k best totals, and the answer is the best draft."""
    alpha, penalty = 0.4, 50.0
    s = session(tiny_model, tiny_tokenizer, PROMPTS[0], 10)
    events = run(s, alpha=alpha, penalty=penalty, ngram_floor=0.0)
    for step in steps(events):
        by_draft = {}
        for c in step.candidates:
            by_draft.setdefault(c["draft"], []).append(c)
        for cands in by_draft.values():
            dead = all(c["ngram_logprob"] is None for c in cands)
            for c in cands:
                expected = ((1 - alpha) * c["lm_logprob"] - penalty if dead else
                            (1 - alpha) * c["lm_logprob"] + alpha * c["ngram_logprob"]
                            if c["ngram_logprob"] is not None else -math.inf)
                assert c["score"] == pytest.approx(expected)
        totals = sorted((c["total"] for c in step.candidates), reverse=True)
        assert sorted((c["total"] for c in step.candidates if c["kept"]), reverse=True) == totals[:3]
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == steps(events)[-1].drafts[0]


def test_stop_commits_the_best_draft_so_far(tiny_model, tiny_tokenizer, one_thread):
    s = session(tiny_model, tiny_tokenizer, PROMPTS[0], 30)
    gen = REGISTRY["superposed"]().decode(s)
    seen = []
    for event in gen:
        seen.append(event)
        if len(steps(seen)) == 4:
            break
    rest = [gen.throw(StopRun())] + list(gen)
    tokens = [e for e in rest if isinstance(e, TokenEvent)]
    assert len(tokens) == 4 and "".join(t.text for t in tokens) == steps(seen)[-1].drafts[0]


def test_ngram_interpolation_by_hand():
    table = NGramTable([[1, 2, 3, 1, 2, 4], [2, 5]])
    model = NGramModel([table], [0.3, 0.7])
    # context (2,): seen 3 times (2->3, 2->4, 2->5; "2 | 5" is inside a document); (1, 2): twice (->3, ->4)
    got = model.probs([1, 2], [3, 4, 5, 6])
    assert got.tolist() == pytest.approx([0.3 / 3 + 0.7 / 2, 0.3 / 3 + 0.7 / 2, 0.3 / 3, 0.0])
    assert model.probs([9, 2], [3]).tolist() == pytest.approx([0.3 / 3])     # unseen (9, 2): skipped
    assert model.probs([4], [2]).tolist() == [0.0]                          # no window across documents
    both = NGramModel([table, NGramTable([[2, 6]])], [1.0])                  # counts add across tables
    assert both.probs([2], [3, 6]).tolist() == pytest.approx([1 / 4, 1 / 4])


def test_corpus_tables_on_the_real_tokenizer(embedded):
    """The shipped corpus, tokenised with the embedded model's tokenizer: built once, cached, and its
    n-grams predict a phrase of the corpus; a short superposed run on the real model."""
    table = corpus_table(embedded.tokenizer)
    assert table.tokens > 50_000 and corpus_table(embedded.tokenizer) is table
    ids = embedded.tokenizer.encode(" the value of the expression", add_special_tokens=False)
    model = NGramModel([table], [0.01, 0.04, 0.15, 0.18, 0.12])
    assert model.probs(ids[:-1], [ids[-1]])[0] > 0
    prompt = embedded.encode_prompt("The history of the city", False)
    s = DecodeSession(embedded.model, embedded.tokenizer, prompt, 6, embedded.eos_ids, 0)
    events = run(s)
    assert len(s.output_ids) == 6 and s.forward_passes == 6
    assert all(e.ngram and len(e.drafts) == 3 for e in steps(events))


def test_one_drafts_perplexity_is_the_models_own_on_its_text(tiny_model, tiny_tokenizer, one_thread):
    """With one draft the superposed stream IS the draft, so its shown perplexity must equal the model's
    perplexity of the output recomputed by one plain teacher-forced pass (no cache, no superposition)."""
    prompt = PROMPTS[1]
    s = session(tiny_model, tiny_tokenizer, prompt, 12)
    last = steps(run(s, drafts=1, alpha=0.0))[-1]
    ids = torch.tensor([prompt + s.output_ids])
    with torch.inference_mode():
        logp = torch.log_softmax(tiny_model(input_ids=ids).logits[0].double(), -1)
    n = len(prompt)
    token_logps = [float(logp[n - 1 + i, t]) for i, t in enumerate(s.output_ids)]
    expected = math.exp(-sum(token_logps) / len(token_logps))
    assert last.perplexities == [pytest.approx(expected, rel=1e-9)]
