"""Every speed and traffic number is defined once and measured honestly.

Decode rates are checked against wall clocks this test reads itself (hooks on the model), never by
recomputing the runner's formula; "speed-up vs greedy" compares with the user's own greedy run and
nobody else's; weight traffic counts the model each pass actually ran; the bandwidth figure is
dated and re-measured; notices reach the page and the API; a saved run's record re-runs exactly.
"""

from __future__ import annotations

import json
import re
import random
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import torch
from conftest import TinyTokenizer, build_tiny_llama

from playground import baseline, hardware
from playground.decoding import DecodeSession, weight_bytes
from playground.drafts import truncated_view
from playground.events import (MetricsEvent, NoticeEvent, RunStarted, TokenEvent, event_from_dict, from_dicts,
                               to_dicts)
from playground.models import LoadedModel
from playground.runner import GenerationRequest, PreparedRun, execute, generate, prepare, rerun
from storage import RunRepository
from strategies import REGISTRY

PROMPT_LENGTH = 200          # longer than any draft or tree, so a long input can only be a prompt pass
NEW_TOKENS = 24
PASS_S = 0.002


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)          # tiny tensors: a second thread only adds spinning on a shared machine
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny():
    model = build_tiny_llama(seed=5)
    return LoadedModel("tiny", model, TinyTokenizer(), "float64", 0.0)


def tiny_run(tiny, name: str, params=None, draft_layers: int = 2, tokens: int = NEW_TOKENS) -> PreparedRun:
    """A run of `name` on the tiny model; draft methods get a view of its first `draft_layers` layers
    (2 = all of them: every draft accepted, so speculation commits several tokens per round)."""
    strategy = REGISTRY[name](**(params or {}))
    draft = None
    if strategy.needs_draft:
        draft = LoadedModel(f"tiny@layers={draft_layers}", truncated_view(tiny.model, draft_layers), tiny.tokenizer,
                            tiny.dtype, 0.0)
    prompt = [random.Random(1).randrange(1, 96) for _ in range(PROMPT_LENGTH)]
    return PreparedRun(GenerationRequest("tiny", name, params or {}), tiny, strategy, prompt, tokens, 0, [], draft)


class PromptPassClock:
    """When each pass over a long input (a prompt pass, target or draft) finished, seen from outside the
    method: the lean forward is wrapped (it multiplies the LM head's weight itself, so module hooks on
    the head never fire there), and the transformers path is hooked on the modules every pass runs
    (the embedding and the LM head, shared by a truncated draft view). Every pass is also made to last
    PASS_S at least, as on a real model, so the microseconds this test spends between events (not the
    method's time) stay far below one token's time."""

    def __init__(self, model, long_input: int):
        from playground import lean_forward

        self.long_input, self.length, self.ends = long_input, 0, []
        self.handles = [model.model.embed_tokens.register_forward_pre_hook(self.started),
                        model.lm_head.register_forward_hook(self.finished)]
        self.lean_forward, self.original = lean_forward, lean_forward.forward

        def timed_forward(model, input_ids, *args, **kwargs):
            out = self.original(model, input_ids, *args, **kwargs)
            length = (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[1]
            self.finished(None, None, out, length)
            return out

        lean_forward.forward = timed_forward

    def started(self, module, args):
        self.length = args[0].shape[-1]

    def finished(self, module, args, output, length: int | None = None):
        time.sleep(PASS_S)
        if (self.length if length is None else length) >= self.long_input:
            self.ends.append(time.perf_counter())

    def done_before(self, moment: float) -> float:
        """The end of the latest prompt pass before `moment` (a reference greedy run may follow the run)."""
        return max(end for end in self.ends if end < moment)

    def remove(self):
        self.lean_forward.forward = self.original
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("name", [n for n, cls in REGISTRY.items() if cls.free_text])   # not: a passage of its own
def test_decode_rate_never_beats_the_wall_clock_after_the_prompt_pass(tiny, name, single_thread):
    """Beam search commits everything at the end, and speculation from all but the last prompt token
    commits several tokens in its first round: neither may look faster than its tokens over the wall
    time after the prompt pass (the old "after the first token" formula showed both far above)."""
    run = tiny_run(tiny, name, {"temperature": 0.0} if name == "speculative" else None)
    clock = PromptPassClock(tiny.model, PROMPT_LENGTH - 1)
    last_token_at, metrics = None, None
    try:
        for event in execute(run):
            if isinstance(event, TokenEvent):
                last_token_at = time.perf_counter()
            metrics = event
    finally:
        clock.remove()
    assert isinstance(metrics, MetricsEvent) and metrics.new_tokens == NEW_TOKENS
    wall_after_prompt = last_token_at - clock.done_before(last_token_at)
    assert metrics.decode_tokens_per_s <= metrics.new_tokens / wall_after_prompt, (metrics, wall_after_prompt)
    assert metrics.prefill_s + metrics.decode_s == pytest.approx(metrics.elapsed_s)


def test_the_latest_prompt_pass_ends_prefill_and_decode_steps_do_not(tiny):
    prompt = list(range(1, 11))
    session = DecodeSession(tiny.model, tiny.tokenizer, prompt, 4, set(), 0, draft_model=tiny.model)
    cache, draft_cache = session.new_cache(), session.new_cache()
    session.forward(prompt[:-1], cache)                 # all but the last token: still a prompt pass
    target_done = session.prompt_pass_done_at
    session.forward(prompt[-1:], cache)                 # a step on a full cache: decoding
    assert session.prompt_pass_done_at == target_done is not None
    session.draft_forward(prompt, draft_cache)           # the draft's own prompt pass comes later: it wins
    assert session.prompt_pass_done_at > target_done


def test_weight_traffic_counts_the_draft_model_actually_run(tiny, single_thread):
    m = list(execute(tiny_run(tiny, "speculative", {"gamma": 3}, draft_layers=1)))[-1]
    target, draft = weight_bytes(tiny.model), weight_bytes(truncated_view(tiny.model, 1))
    assert draft < target and m.draft_forward_passes > 0
    assert m.weight_bytes_read == target * m.forward_passes + draft * m.draft_forward_passes
    assert m.weight_traffic_gb_s == pytest.approx(m.weight_bytes_read / m.elapsed_s / 1e9)
    # early exit drafts from views of its own first layers: each pass counts the layers it ran
    m = list(execute(tiny_run(tiny, "early_exit", {"exit_layer": 1, "draft_length": 2})))[-1]
    assert m.draft_forward_passes > 0
    assert target * m.forward_passes < m.weight_bytes_read < target * (m.forward_passes + m.draft_forward_passes)


# --- speed-up vs greedy: the user's own reference --------------------------------------------------

def test_one_sessions_greedy_run_is_never_anothers_reference(tiny, single_thread, monkeypatch):
    """Through what the page calls (ui.stream with this browser session's references): A's greedy run
    becomes A's reference and nobody else's; B, with none, compares with the server's start-up run."""
    from playground.ui import stream

    monkeypatch.setattr(baseline, "_SERVER", {})
    start_up = baseline.measure_at_start_up(tiny, tiny_run(tiny, "greedy").prompt_ids)
    assert start_up.how == "server start-up measurement: 32-token greedy run before any visitor"

    def page_run(name, references, tokens=12):
        *_, (events, run_id, updated) = stream(tiny_run(tiny, name, tokens=tokens), threading.Event(), references)
        assert run_id and events[-1] is not None
        return events[-1], updated

    a = b = {}
    greedy, a = page_run("greedy", a)
    assert greedy.greedy_reference == "this greedy run (12 tokens)" and greedy.speedup_vs_greedy == 1.0
    assert list(a.values()) == [baseline.GreedySpeed(greedy.decode_tokens_per_s, "a greedy run by the same user before this one (12 tokens)")]
    lookup_b, b_after = page_run("prompt_lookup", b)
    assert b_after == {} and lookup_b.greedy_reference == start_up.how
    assert lookup_b.greedy_tokens_per_s == start_up.tokens_per_s
    lookup_a, _ = page_run("prompt_lookup", a)
    assert lookup_a.greedy_reference == "a greedy run by the same user before this one (12 tokens)"
    assert lookup_a.greedy_tokens_per_s == greedy.decode_tokens_per_s
    _, a_after = page_run("greedy", a, tokens=baseline.MIN_TOKENS - 1)      # too short to stand as a reference
    assert a_after == a


def test_without_a_start_up_measurement_one_is_made_and_labelled(tiny, single_thread, monkeypatch):
    monkeypatch.setattr(baseline, "_SERVER", {})
    m = list(execute(tiny_run(tiny, "prompt_lookup")))[-1]
    assert m.greedy_reference == ("a 32-token greedy run this process measured on the first prompt that needed one "
                                  "(no start-up measurement)")
    assert m.speedup_vs_greedy == pytest.approx(m.decode_tokens_per_s / m.greedy_tokens_per_s)


# --- machine bandwidth -------------------------------------------------------------------------------

@pytest.fixture
def bandwidth_cache(tmp_path, monkeypatch):
    """A private cache folder and no figure in this process; measurements return 30.0 and are counted."""
    from playground.config import settings

    monkeypatch.setenv("PLAYGROUND_CACHE_DIR", str(tmp_path))
    settings.cache_clear()
    monkeypatch.setattr(hardware, "_figures", {})
    monkeypatch.setattr(hardware, "_checked_at", {})
    calls = []
    monkeypatch.setattr(hardware, "measure_bandwidth_gb_s", lambda: calls.append(1) or 30.0)
    yield tmp_path / hardware.CACHE_FILE, calls
    settings.cache_clear()


def write_figure(path, gb_s: float, age: timedelta):
    when = (datetime.now(timezone.utc) - age).isoformat()
    path.write_text(json.dumps({hardware._key(): {"gb_s": gb_s, "measured_at": when}}))


def test_bandwidth_is_dated_and_measured_again_after_a_week(bandwidth_cache, monkeypatch):
    path, calls = bandwidth_cache
    write_figure(path, 20.0, timedelta(days=6))
    assert hardware.machine_bandwidth_gb_s() == 20.0 and calls == []          # fresh: read from the cache
    monkeypatch.setattr(hardware, "_figures", {})
    write_figure(path, 20.0, timedelta(days=8))
    assert hardware.machine_bandwidth_gb_s() == 30.0 and len(calls) == 1      # stale: measured again
    entry = json.loads(path.read_text())[hardware._key()]
    assert entry["gb_s"] == 30.0
    assert datetime.now(timezone.utc) - datetime.fromisoformat(entry["measured_at"]) < timedelta(minutes=1)


def test_a_run_faster_than_the_figure_gets_it_measured_again(bandwidth_cache):
    path, calls = bandwidth_cache
    write_figure(path, 9.4, timedelta(days=1))                   # measured under load
    assert hardware.machine_bandwidth_gb_s(at_least=5.0) == 9.4 and calls == []
    assert hardware.machine_bandwidth_gb_s(at_least=12.0) == 30.0 and len(calls) == 1   # implausible: re-measured
    assert json.loads(path.read_text())[hardware._key()]["gb_s"] == 30.0
    hardware.machine_bandwidth_gb_s(at_least=40.0)               # a cached model can beat DRAM: not every run
    assert len(calls) == 1


@pytest.mark.parametrize("read_s, expected", [(1.0, 2 * 4 * 2**20 / 0.01 / 1e9),     # the copy is faster
                                              (0.004, 4 * 2**20 / 0.004 / 1e9)])    # the read stream is
def test_bandwidth_measurement_takes_the_best_of_several_timings(monkeypatch, read_s, expected):
    """Other work only slows a stream down, so one slow timing among fast ones must not set the figure;
    of the copy (2 bytes moved per byte) and the read stream (1), the faster is the machine's figure."""
    copies = [0.0, 1.0, 10.0, 10.01, 20.0, 21.0]                   # copies of 1 s, 0.01 s and 1 s
    reads = [30.0, 31.0, 40.0, 40.0 + read_s, 50.0, 51.0]           # reads of 1 s, read_s and 1 s
    ticks = iter(copies + reads)
    monkeypatch.setattr(hardware, "time", SimpleNamespace(perf_counter=lambda: next(ticks), sleep=lambda s: None))
    gb_s = hardware.measure_bandwidth_gb_s(n_bytes=4 * 2**20, rounds=3, repeats=1)
    assert gb_s == pytest.approx(expected)


# --- notices -----------------------------------------------------------------------------------------

def test_notices_show_the_latest_active_one_per_key_escaped():
    from visualizers.text import notices_html, tokens_html

    events = [RunStarted("r", "m", "float32", "prompt_lookup", {}, 0, "p", 3, 8, notices=["clamped <b>"]),
              NoticeEvent("drafting", "drafts do not pay on this machine now: plain steps"),
              NoticeEvent("cache", "old <i>"),
              NoticeEvent("drafting", "drafts pay again <script>"),
              NoticeEvent("cache", "", active=False)]
    expected = ('<div class="dp-notice">clamped &lt;b&gt;</div>'
                '<div class="dp-notice">drafts pay again &lt;script&gt;</div>')
    assert notices_html(events) == expected
    assert tokens_html(events).startswith(f'<div class="dp-text" data-run="r">{expected}<div class="dp-prompt">')


def test_clamp_notice_reaches_the_page_and_the_max_field_allows_more(embedded, monkeypatch):
    """The field has no maximum (the server clamps), and the first thing the page draws says so."""
    from playground.config import settings
    from playground.ui import build_app, stream
    from visualizers import render

    app = build_app()
    field = next(b for b in app.blocks.values() if getattr(b, "label", None) == "max new tokens")
    assert field.maximum is None and field.minimum == 1
    monkeypatch.setenv("PLAYGROUND_MAX_NEW_TOKENS_CAP", "3")
    settings.cache_clear()
    try:
        run = prepare(GenerationRequest("Hello", max_new_tokens=10), embedded)
    finally:
        settings.cache_clear()
    page = stream(run, threading.Event(), {})
    first_drawn = render(next(page)[0]).text_html          # before any token
    page.close()
    assert run.max_new_tokens == 3
    assert re.match(r'<div class="dp-text"[^>]*><div class="dp-notice">max_new_tokens 10 was clamped to the server '
                    r'cap of 3\.</div>', first_drawn)


def test_an_api_caller_gets_the_notice_and_its_own_greedy_reference(embedded, monkeypatch, tmp_path):
    """Through gradio's API, two clients being two sessions: the clamp notice heads the returned output
    HTML, and one client's greedy run is its own reference only."""
    from gradio_client import Client

    from playground.config import settings
    from playground.ui import build_app

    monkeypatch.setenv("PLAYGROUND_MAX_NEW_TOKENS_CAP", "8")
    settings.cache_clear()
    app = build_app()
    port = free_port()
    app.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        def call(client, method, max_new=8):
            # the first input is the caller's owner key (a browser's comes from its localStorage; "" = none)
            return client.predict("", "embedded", "", "float32", method, max_new, 0, True, "Count to ten.",
                                  api_name="/run")

        a, b = Client(f"http://127.0.0.1:{port}/", verbose=False), Client(f"http://127.0.0.1:{port}/", verbose=False)
        text, link, metrics, *_ = call(a, "greedy", max_new=9)
        assert re.match(r'<div class="dp-text"[^>]*><div class="dp-notice">'
                        r'max_new_tokens 9 was clamped to the server cap of 8\.</div>', text)
        assert "this greedy run (8 tokens)" in metrics and "Saved as run" in link
        assert "a greedy run by the same user before this one (8 tokens)" in call(a, "prompt_lookup")[2]
        assert "a greedy run by the same user before this one" not in call(b, "prompt_lookup")[2]
    finally:
        app.close()
        settings.cache_clear()


# --- reproducible records ----------------------------------------------------------------------------

@pytest.fixture
def no_reference_run(monkeypatch):
    """These tests are about tokens: no 32-token greedy run to measure a speed-up reference."""
    monkeypatch.setattr(baseline, "measure_once", lambda loaded, prompt_ids: baseline.GreedySpeed(1.0, "not measured"))


@pytest.mark.parametrize("request_", [
    GenerationRequest("Name three colours.", "greedy", max_new_tokens=10, chat=False),
    GenerationRequest("Tell me a joke.", "sampling", {"temperature": 1.0, "top_p": 0.9}, max_new_tokens=10, seed=7),
], ids=["greedy-raw", "sampling-seeded"])
def test_a_saved_runs_record_is_enough_to_run_it_again(embedded, request_, no_reference_run):
    events = generate(request_, embedded)
    repo = RunRepository()
    started = repo.events(repo.save(events))[0]
    assert started.chat is request_.chat and started.prompt_ids == prepare(request_, embedded).prompt_ids
    assert started.forward in ("lean", "transformers") and started.torch_threads == torch.get_num_threads()
    assert {"python", "torch", "transformers"} <= set(started.versions)
    again = rerun(started, embedded)
    assert again.notices == []                                   # nothing differs here
    tokens = [[e.token_id for e in run if isinstance(e, TokenEvent)] for run in (events, execute(again))]
    assert tokens[0] == tokens[1] and len(tokens[0]) == 10


def test_the_record_names_the_default_draft_and_the_panel_shows_it(embedded, no_reference_run):
    from visualizers.metrics import metrics_html, metrics_rows

    events = generate(GenerationRequest("Hi", "speculative", max_new_tokens=3), embedded)
    assert events[0].draft_model_id == "embedded@layers=24"
    rows = dict(metrics_rows(events))
    assert rows["draft model"] == "embedded@layers=24" and rows["chat template"] == "on"
    ids = events[0].prompt_ids
    summary = f"prompt ids ({len(ids)}): {', '.join(map(str, ids[:4]))}, …, {', '.join(map(str, ids[-4:]))}"
    assert f"<summary>{summary}</summary><code>{', '.join(map(str, ids))}</code>" in metrics_html(events)


def test_runs_saved_before_these_fields_still_load_and_say_so():
    from visualizers.metrics import OLD_DECODE_RATE, OLD_TRAFFIC, metrics_rows

    old_start = {"type": "run_started", "run_id": "r", "model_id": "m", "dtype": "float32", "strategy": "beam",
                 "params": {}, "seed": 0, "prompt": "p", "prompt_tokens": 3, "max_new_tokens": 8, "notices": []}
    old_metrics = {"type": "metrics", "new_tokens": 8, "elapsed_s": 1.0, "time_to_first_token_s": 0.99,
                   "tokens_per_s": 8.0, "forward_passes": 9, "tokens_per_forward": 0.9, "model_bytes": 10**8,
                   "bandwidth_gb_s": 0.9, "machine_bandwidth_gb_s": 9.4, "stop_reason": "length",
                   "decode_tokens_per_s": 700.0}
    events = from_dicts([old_start, old_metrics])
    assert events[0].prompt_ids == [] and events[0].chat is None and events[1].decode_s is None
    rows = dict(metrics_rows(events))
    assert rows[OLD_DECODE_RATE] == "700.0" and rows[OLD_TRAFFIC] == "0.900" and rows["chat template"] == "-"
    assert from_dicts(to_dicts(events))[1] == event_from_dict(old_metrics)


def test_lane_counts_are_the_events_counted(tiny, single_thread, monkeypatch):
    """Many sequences: tokens across lanes = the LaneTokenEvents streamed, samples = the lanes spawned
    (copies included), reward passes = the passes a reward ran (a peek per scoring here), apart from the
    generating passes."""
    from playground.events import LaneEvent, LaneTokenEvent
    from strategies.scaling import rewards

    class PeekingReward(rewards.Reward):
        name, label, calls = "peeking", "a peek per call (test)", 0

        def score(self, lanes, rows, final):
            PeekingReward.calls += 1
            lanes.peek([[7, 8] for _ in range(len(lanes))])
            return [0.5 + 0.1 * (r % 3) for r in rows]

    monkeypatch.setitem(rewards.REWARDS, "peeking", PeekingReward)
    run = tiny_run(tiny, "particle_filter", {"n": 4, "step_tokens": 3, "max_steps": 4}, tokens=12)
    run.strategy.p["reward"] = "peeking"                         # not a user's choice: set past the schema
    events = list(execute(run))
    metrics = events[-1]
    spawned = {e.lane for e in events if isinstance(e, LaneEvent) and e.kind == "spawn"}
    assert metrics.lane_tokens == sum(isinstance(e, LaneTokenEvent) for e in events) > metrics.new_tokens
    assert metrics.samples == len(spawned) > 4                   # resampling copied some particles
    assert metrics.reward_forward_passes == PeekingReward.calls > 0
    assert metrics.lane_tokens_per_s == pytest.approx(metrics.lane_tokens / metrics.elapsed_s)
