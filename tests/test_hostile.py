"""What an API caller can send that a form never would: wrong types, hostile text, runs too big for
memory or too long for the server. Each gets one clear message (or a notice) and nothing is stored wrongly.
In-process on the real embedded model; tests/test_server_load.py sends the same through HTTP."""

from __future__ import annotations

import itertools

import pytest

from playground import runner
from playground.events import MetricsEvent, NoticeEvent, RunStarted, TokenEvent
from playground.runner import GenerationRequest, InvalidRequest, execute, prepare
from storage import RunRepository
from test_limits import env  # noqa: F401  (fixture)

BAD_FIELDS = [
    ({"max_new_tokens": "abc"}, "max_new_tokens must be a whole number"),
    ({"max_new_tokens": None}, "max_new_tokens must be a whole number"),
    ({"max_new_tokens": [4]}, "max_new_tokens must be a whole number"),
    ({"max_new_tokens": 2.5}, "max_new_tokens must be a whole number"),
    ({"max_new_tokens": float("inf")}, "max_new_tokens must be a whole number"),
    ({"seed": "1e400"}, "seed must be a whole number"),
    ({"seed": -1}, "seed must be between"),
    ({"prompt": None}, "The prompt is empty"),
    ({"prompt": 123}, "the prompt must be text"),
    ({"prompt": "hi \ud800 there"}, "lone surrogate (U+D800) at character 3"),
    ({"strategy": None}, "strategy must be a method name (text), got NoneType"),
    ({"strategy": "x" * 10_000}, f"unknown method '{'x' * 80}'; available: greedy"),
    ({"params": "alpha=1"}, "params must be a mapping"),
    ({"params": {"alpha": {"nested": 1}}}, "top_h: alpha must be a float"),
    ({"params": {1: 2}}, "a parameter name must be text"),
    ({"params": {"question": "ok \udfff"}}, "lone surrogate"),
    ({"chat": "maybe"}, "chat must be true or false"),
    ({"dtype": 7}, "dtype must be one of float32, bfloat16"),
    ({"model_id": 5}, "model_id must be text"),
    ({"model_id": "/etc/"}, "Could not load model '/etc/'"),
]


@pytest.mark.parametrize("fields, message", BAD_FIELDS, ids=[str(i) for i in range(len(BAD_FIELDS))])
def test_wrong_types_get_one_clear_message(embedded, fields, message):
    request = GenerationRequest(**{"prompt": "Hi", "strategy": "top_h", "max_new_tokens": 4, **fields})
    with pytest.raises(InvalidRequest) as info:
        prepare(request, embedded if "model_id" not in fields else None)
    assert message in str(info.value) and "None" not in str(info.value).replace("got None", "")


def test_control_and_direction_characters_are_removed_with_a_notice(embedded, tmp_path):
    prompt = "Say \u202eolleh\u202c hi\x07\x1b[31m\u2066x\u2069\r\n\ttab"
    prepared = prepare(GenerationRequest(prompt=prompt, max_new_tokens=2), embedded)
    assert prepared.request.prompt == "Say olleh hi[31mx\r\n\ttab"
    assert "6 control or direction-override characters removed from the prompt." in prepared.notices
    events = list(execute(prepared))
    repository = RunRepository(f"sqlite:///{tmp_path / 'runs.sqlite3'}")
    run_id = repository.save(events)
    assert repository.get(run_id).prompt == "Say olleh hi[31mx\r\n\ttab"
    started = repository.events(run_id)[0]
    assert isinstance(started, RunStarted) and started.prompt == prepared.request.prompt


def test_text_parameters_are_cleaned_too(embedded):
    prepared = prepare(GenerationRequest(prompt="Hi", strategy="adaptive", max_new_tokens=2,
                                         params={"question": "Better\u202e?"}), embedded)
    assert prepared.strategy.p["question"] == "Better?"
    assert any("removed from parameter question" in n for n in prepared.notices)


def test_prompt_tokens_are_capped(env, embedded):
    env(PLAYGROUND_MAX_PROMPT_TOKENS=20)
    with pytest.raises(InvalidRequest, match=r"The prompt is \d+ tokens; this server takes at most 20"):
        prepare(GenerationRequest(prompt="word " * 30, chat=False), embedded)
    prepare(GenerationRequest(prompt="word " * 5, chat=False), embedded)


def test_the_memory_rule_is_rows_times_positions(env, embedded):
    """beam x16 over p prompt + n new tokens holds 16 (p + n) token rows; exactly at the cap it runs."""
    request = GenerationRequest(prompt="word " * 40, strategy="beam", params={"num_beams": 16}, max_new_tokens=10,
                                chat=False)
    p = len(prepare(GenerationRequest(prompt=request.prompt, chat=False, max_new_tokens=1), embedded).prompt_ids)
    env(PLAYGROUND_MAX_TOKEN_ROWS=16 * (p + 10))
    prepare(request, embedded)
    env(PLAYGROUND_MAX_TOKEN_ROWS=16 * (p + 10) - 1)
    with pytest.raises(InvalidRequest, match=rf"16 sequences x \({p} prompt \+ 10 new tokens\) = {16 * (p + 10)} "
                                             r"token rows; this server allows .* or num_beams"):
        prepare(request, embedded)
    # a draft tree counts its tokens on every row: prompt lookup's 10 drafted tokens per pass
    env(PLAYGROUND_MAX_TOKEN_ROWS=p + 10 + 9)
    with pytest.raises(InvalidRequest, match=r"1 sequence x .* \+ 10 draft tokens\)"):
        prepare(GenerationRequest(prompt=request.prompt, strategy="prompt_lookup", max_new_tokens=10, chat=False),
                embedded)


def test_a_run_past_the_time_limit_stops_and_is_saved_as_such(env, embedded, monkeypatch, tmp_path):
    """A clock that moves 1 s per look: with a 5 s limit the run stops after a few tokens, through Stop's path."""
    env(PLAYGROUND_MAX_RUN_SECONDS=5)
    ticks = itertools.count()
    monkeypatch.setattr(runner.time, "monotonic", lambda: float(next(ticks)))
    prepared = prepare(GenerationRequest(prompt="Tell me a long story.", strategy="beam", max_new_tokens=60), embedded)
    events = list(execute(prepared))
    metrics = events[-1]
    assert isinstance(metrics, MetricsEvent) and metrics.stop_reason == "time limit"
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert 0 < len(tokens) < 60, "beam search stopped by the limit commits its best hypothesis so far"
    assert any(isinstance(e, NoticeEvent) and e.key == "time limit" and "5 s" in e.message for e in events)
    repository = RunRepository(f"sqlite:///{tmp_path / 'runs.sqlite3'}")
    assert repository.get(repository.save(events)).status == "time limit"


def test_a_run_the_database_refuses_keeps_its_output_and_says_why(env, embedded, tmp_path):
    """The page's stream: the run goes on, its tokens and metrics stay, a notice names the database and the reason."""
    import threading

    from playground.ui.common import stream

    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(b"not a database " * 100)
    env(PLAYGROUND_DB=str(bad))
    prepared = prepare(GenerationRequest(prompt="Hi", max_new_tokens=3), embedded)
    *_, (events, run_id, _) = stream(prepared, threading.Event(), None)
    assert run_id is None and isinstance(events[-1], MetricsEvent)
    assert len([e for e in events if isinstance(e, TokenEvent)]) == 3
    (notice,) = [e for e in events if isinstance(e, NoticeEvent) and e.key == "not saved"]
    assert f"the database {bad} refused it: file is not a database" in notice.message


def test_every_method_that_holds_more_than_one_sequence_declares_it():
    """The memory rule only knows what a method declares: many lanes (row_params) or draft tokens per pass
    (tree_params). rsd's tree is one of a few fixed branchings, at most 16 tokens (4,1,1,1): small."""
    from strategies import REGISTRY
    from strategies.speculative.loop import SpeculationLoop

    for name, cls in REGISTRY.items():
        if cls.many_sequences or name == "beam":
            assert cls.row_params, name
        if issubclass(cls, SpeculationLoop) and name != "rsd":
            assert cls.tree_params, name
