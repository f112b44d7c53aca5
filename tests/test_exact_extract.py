"""Exact extract: the search returns exactly the best spans that scoring every span with fresh full
forwards finds (tiny float64 model, in token space), pruning never changes them, the embedded model's
answer is a substring of the passage equal to the brute-force best, and bad input is refused in words."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from transformers import DynamicCache

from conftest import build_tiny_llama
from playground import lean_forward
from playground.decoding import DecodeSession
from playground.events import ExtractEvent, StatsEvent, TokenEvent
from strategies import get_strategy
from strategies.base import InvalidParameter, StopRun
from strategies.single_pass.exact_extract import MAX_PASSAGE_CHARS, ExactExtract, Start, build_starts, search_spans
from visualizers import render

EOS = 1


def token_starts(passage: list[int], max_span: int) -> list[Start]:
    """Every start of a passage given as token ids (the tiny tokenizer has no text to map)."""
    out = []
    for i in range(len(passage)):
        chain = passage[i:i + max_span]
        out.append(Start(i, chain, list(range(1, len(chain) + 1)), list(range(1, len(chain) + 1))))
    return out


def full_logp(model, ids: list[int]) -> torch.Tensor:
    """Log-probs after every prefix of ids, from one fresh forward with no cache."""
    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)


def after_prompt_logp(model, prompt: list[int], chain: list[int], cache) -> torch.Tensor:
    """full_logp's rows from the prompt's last position on, reading only the chain over a copy of a prompt
    cache (the embedded model: a full pass per start is too slow here), one start at a time, unbatched, by
    the lean forward (tested equal to transformers' call in test_lean_forward.py; warm in this process)."""
    with torch.inference_mode():
        out = lean_forward.forward(model, torch.tensor([chain]), copy.deepcopy(cache))
    return torch.log_softmax(torch.cat([cache.last_logits, out.logits[0]]).double(), -1)


def brute_force(model, prompt: list[int], starts: list[Start], eos: list[int], share_prompt=False) -> dict[tuple, float]:
    """Score of every distinct span, each start's chain read by a fresh forward of prompt + chain."""
    scores: dict[tuple, float] = {}
    cache = None
    if share_prompt:
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            cache.last_logits = lean_forward.forward(model, torch.tensor([prompt]), cache).logits[0, -1:]
    for s in starts:
        if share_prompt:
            logp = after_prompt_logp(model, prompt, s.chain, cache)
            logp = torch.cat([logp.new_zeros(len(prompt) - 1, logp.shape[1]), logp])   # rows as full_logp's
        else:
            logp = full_logp(model, prompt + s.chain)
        for end in s.ends:
            tokens = s.chain[:end]
            span = sum(float(logp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(tokens))
            finish = float(torch.logsumexp(logp[len(prompt) - 1 + end, eos], -1))
            scores.setdefault(tuple(tokens), span + finish)
    return scores


def run_search(model, tokenizer, prompt, starts, top, batch, prune):
    session = DecodeSession(model, tokenizer, prompt, 16, {EOS}, 0)
    cache = session.new_cache()
    first = session.prefill(cache)
    result = None
    for result in search_spans(session, cache, first, starts, [EOS], top=top, batch=batch, prune=prune):
        pass
    return result, session


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_equals_brute_force_on_tiny_model(tiny_model, tiny_tokenizer, one_thread, seed):
    rng = random.Random(seed)
    prompt = [rng.randrange(2, 96) for _ in range(7)]
    passage = [rng.randrange(2, 96) for _ in range(14)]
    starts = token_starts(passage, 5)
    truth = brute_force(tiny_model, prompt, starts, [EOS])
    best = sorted(truth.items(), key=lambda kv: -kv[1])
    result, _ = run_search(tiny_model, tiny_tokenizer, prompt, starts, top=5, batch=4, prune=True)
    got = [(tuple(starts[f.start].chain[:f.end]), f.score) for f in result.ranked]
    assert [g[0] for g in got] == [b[0] for b in best[:5]]
    for (_, ours), (_, theirs) in zip(got, best):
        assert ours == pytest.approx(theirs, abs=1e-9)
    assert all(f.span_logprob + f.end_logprob == pytest.approx(f.score) for f in result.ranked)


def test_pruning_never_changes_the_answer(tiny_tokenizer, one_thread):
    peaked = build_tiny_llama(seed=3, init=1.0)      # sharper distributions: the bound cuts more starts
    rng = random.Random(7)
    pruned_somewhere = 0
    for trial in range(4):
        prompt = [rng.randrange(2, 96) for _ in range(6)]
        passage = [rng.randrange(2, 96) for _ in range(30)]
        starts = token_starts(passage, 4)
        for top in (1, 3, 5):
            on, s_on = run_search(peaked, tiny_tokenizer, prompt, starts, top=top, batch=2, prune=True)
            off, s_off = run_search(peaked, tiny_tokenizer, prompt, starts, top=top, batch=2, prune=False)
            assert [(f.start, f.end, f.score) for f in on.ranked] == [(f.start, f.end, f.score) for f in off.ranked]
            assert off.pruned == 0 and off.starts_scored == len(starts)
            assert on.starts_scored + on.pruned == len(starts)
            assert s_on.forward_passes == 1 + on.passes <= s_off.forward_passes == 1 + off.passes   # counted
            pruned_somewhere += on.pruned
    assert pruned_somewhere > 0          # the bound did cut work somewhere, yet never the answer


PASSAGE = "Curie was born in Warsaw."


@pytest.fixture(scope="module")
def embedded_run(embedded, one_thread):
    tokenizer = embedded.tokenizer
    method = ExactExtract(passage=PASSAGE, question="Where was Curie born?", max_span=3, free_tokens=3)
    session = DecodeSession(embedded.model, tokenizer, embedded.encode_prompt(method.own_prompt(), chat=True), 32,
                            {tokenizer.eos_token_id}, 0)
    events = list(method.decode(session))
    return session, events


def test_embedded_answer_is_the_brute_force_best_substring(embedded, embedded_run, one_thread):
    session, events = embedded_run
    extract = [e for e in events if isinstance(e, ExtractEvent)][-1]
    assert extract.done and extract.spans and extract.chosen == 0
    answer = "".join(e.text for e in events if isinstance(e, TokenEvent))
    span = extract.spans[0]
    assert answer == span["text"] == PASSAGE[span["start_char"]:span["end_char"]]
    assert answer and answer in PASSAGE
    # Brute force: every span of the same passage, fresh full forwards over the method's own prompt.
    starts, _, _ = build_starts(embedded.tokenizer, PASSAGE, 3)
    truth = brute_force(embedded.model, session.prompt_ids, starts, [embedded.tokenizer.eos_token_id], share_prompt=True)
    best_tokens, best_score = max(truth.items(), key=lambda kv: kv[1])
    assert embedded.tokenizer.decode(list(best_tokens)) == answer
    assert span["logprob"] == pytest.approx(best_score, abs=1e-3)
    assert extract.free_answer                 # greedy's own answer is there to compare
    stats = [e for e in events if isinstance(e, StatsEvent)][-1].values
    assert stats["spans scored"] == extract.spans_scored > 0


def test_view_marks_the_span_and_escapes(embedded_run):
    _, events = embedded_run
    extract = [e for e in events if isinstance(e, ExtractEvent)][-1]
    rendered = render(events)
    assert f'<mark class="dp-extract-chosen"' in rendered.text_html
    assert rendered.figures["extract_spans"] is not None
    hostile = ExtractEvent(passage="<img src=x onerror=alert(1)> is here", question="<b>q</b>",
                           spans=[{"start_char": 0, "end_char": 28, "text": "<img src=x onerror=alert(1)>",
                                   "logprob": -1.0, "end_logprob": -0.5, "rank": 1, "tokens": 3}],
                           free_answer="<script>x</script>")
    html = render([hostile]).text_html
    assert "<img" not in html and "<script>" not in html and "<b>q" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;</mark>" in html
    assert render([extract]).figures["extract_spans"] is not None


def test_bad_input_is_refused_in_words(embedded, tiny_model, tiny_tokenizer, one_thread):
    assert get_strategy("exact_extract") is ExactExtract
    with pytest.raises(InvalidParameter, match="both a passage and a question"):
        ExactExtract(passage="Some text.", question="")
    with pytest.raises(InvalidParameter, match="limit is 4,000"):
        ExactExtract(passage="x" * (MAX_PASSAGE_CHARS + 1), question="q?")
    with pytest.raises(InvalidParameter, match="the passage is empty"):
        build_starts(embedded.tokenizer, "", 4)
    with pytest.raises(InvalidParameter, match="no span"):
        build_starts(embedded.tokenizer, "  \n ", 4)
    session = DecodeSession(embedded.model, embedded.tokenizer, embedded.encode_prompt("Tell me a joke.", chat=True),
                            8, {embedded.tokenizer.eos_token_id}, 0)
    with pytest.raises(InvalidParameter, match="Passage: ... Question: ..."):
        list(ExactExtract().decode(session))
    session = DecodeSession(tiny_model, tiny_tokenizer, [5, 6], 8, set(), 0)
    with pytest.raises(InvalidParameter, match="end-of-answer"):
        list(search_spans(session, session.new_cache(), torch.zeros(96), token_starts([3, 4], 2), []))


def test_prompt_is_parsed_when_the_fields_are_empty(embedded, one_thread):
    tokenizer = embedded.tokenizer
    prompt = "Passage: The tower was finished in 1889.\nQuestion: When was it finished?"
    ids = embedded.encode_prompt(prompt, chat=True)
    session = DecodeSession(embedded.model, tokenizer, ids, 16, {tokenizer.eos_token_id}, 0)
    events = list(ExactExtract(max_span=2, free_tokens=2, top=3).decode(session))
    extract = [e for e in events if isinstance(e, ExtractEvent)][-1]
    assert extract.source == "prompt" and session.prompt_ids == ids        # the prompt went in as it was
    assert extract.passage == "The tower was finished in 1889."
    assert extract.question == "When was it finished?"
    assert all(s["text"] in extract.passage for s in extract.spans)


def test_stop_during_the_search_commits_the_best_so_far(embedded, one_thread):
    """Stop thrown in after the first batch: the best span found so far is committed, and the view says
    the search did not finish."""
    tokenizer = embedded.tokenizer
    session = DecodeSession(embedded.model, tokenizer, embedded.encode_prompt("hi", chat=True), 16,
                            {tokenizer.eos_token_id}, 0)
    run = ExactExtract(passage=PASSAGE, question="Where?", max_span=2, batch=2, free_tokens=1, prune=False).decode(session)
    events = [next(run)]
    while not isinstance(events[-1], ExtractEvent):
        events.append(next(run))
    events.append(run.throw(StopRun()))
    events.extend(run)
    extract = [e for e in events if isinstance(e, ExtractEvent)][-1]
    assert not extract.done and extract.starts_scored == 2 < extract.starts
    answer = "".join(e.text for e in events if isinstance(e, TokenEvent))
    assert answer == extract.spans[0]["text"] and answer in PASSAGE
    assert "searching" in render(events).text_html


def test_the_fields_alone_make_the_prompt_and_the_run_says_how_it_ended(embedded, one_thread):
    """An empty prompt box with the passage and question filled is a complete request: the runner takes
    the method's own prompt, records it as the run's prompt (History shows it), and the span, shorter than
    the length limit and without an end token, ends the run as "complete", not "length"."""
    from playground.events import MetricsEvent, RunStarted
    from playground.runner import GenerationRequest, generate

    fields = {"passage": PASSAGE, "question": "Where was Curie born?", "max_span": 3, "free_tokens": 2}
    events = generate(GenerationRequest("", strategy="exact_extract", params=fields, max_new_tokens=16), embedded)
    started, metrics = events[0], events[-1]
    assert isinstance(started, RunStarted) and isinstance(metrics, MetricsEvent)
    assert started.prompt == ExactExtract(**fields).own_prompt() and "Passage: " + PASSAGE in started.prompt
    assert not started.notices
    assert metrics.stop_reason == "complete" and 0 < metrics.new_tokens < 16
    other = generate(GenerationRequest("What is the capital of France?", strategy="exact_extract", params=fields,
                                       max_new_tokens=16), embedded)
    assert other[0].prompt == started.prompt and any("prompt box was not used" in n for n in other[0].notices)


def test_the_best_span_has_the_longest_bar():
    """Scores are log-probabilities (negative): drawn as such, the best span had the SHORTEST bar."""
    from visualizers.extract import extract_figure

    spans = [{"start_char": 0, "end_char": 5, "text": t, "logprob": lp, "span_logprob": lp, "end_logprob": -0.1,
              "rank": r, "tokens": 1} for r, (t, lp) in enumerate([("Curie", -1.5), ("Warsaw", -4.0), ("born", -900.0)], 1)]
    event = ExtractEvent(passage=PASSAGE, question="q", spans=spans, free_answer="", chosen=0, done=True, starts=3,
                         starts_scored=3, spans_scored=3, pruned=0, search_passes=1, source="fields")
    bars = extract_figure([event]).data[0]
    lengths = dict(zip((y.split(" ", 1)[1] for y in bars.y), bars.x))
    assert lengths["Curie"] > lengths["Warsaw"] > lengths["born"] > 0     # longest = best; never 0 on a log axis
