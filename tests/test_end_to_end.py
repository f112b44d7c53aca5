"""End to end on the embedded SmolLM2-135M-Instruct: the CLI, saving and reloading, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from playground.events import MetricsEvent, TokenEvent, TreeEvent
from playground.runner import GenerationRequest, InvalidRequest, execute, generate, prepare
from storage import RunRepository
from strategies import REGISTRY
from visualizers import render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "playground", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_cli_answers_paris_under_greedy(embedded):
    result = cli("generate", "--strategy", "greedy", "--prompt", "What is the capital of France?", "--json",
                 "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "Paris" in data["text"]
    assert data["token_ids"] and len(data["token_ids"]) == data["metrics"]["new_tokens"]
    assert data["metrics"]["forward_passes"] == data["metrics"]["new_tokens"]
    assert data["events"][0]["type"] == "run_started" and data["events"][-1]["type"] == "metrics"
    assert RunRepository().get(data["run_id"]).output == data["text"]


def test_cli_lists_strategies_with_schemas():
    result = cli("strategies", "--json")
    assert result.returncode == 0
    schemas = {s["name"]: s for s in json.loads(result.stdout)}
    assert set(schemas) == set(REGISTRY)
    alpha = next(p for p in schemas["top_h"]["params"] if p["name"] == "alpha")
    assert (alpha["default"], alpha["low"], alpha["high"]) == (0.4, 0.01, 1.0)


@pytest.mark.parametrize("args,message", [
    (["--prompt", "   "], "prompt is empty"),
    (["--prompt", "hi", "--strategy", "nonsense"], "unknown method"),
    (["--prompt", "hi", "--strategy", "top_h", "--param", "alpha=7"], "alpha must be between"),
    (["--prompt", "hi", "--param", "temperature"], "key=value"),
    (["--prompt", "hi", "--strategy", "sampling", "--param", "nucleus=0.3"], "unknown parameter"),
    (["--prompt", "hi", "--model", "no-such-org/no-such-model"], "Could not load model"),
    (["--prompt", "hi", "--max-new-tokens", "0"], "at least 1"),
])
def test_cli_bad_input_exits_2_with_one_line(args, message):
    before = RunRepository().count()
    result = cli("generate", *args)
    assert result.returncode == 2
    lines = [l for l in result.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert RunRepository().count() == before                       # nothing half-saved


def test_server_clamps_huge_lengths_and_rejects_overlong_prompts(embedded, monkeypatch):
    from playground.config import settings

    run = prepare(GenerationRequest("Hello", max_new_tokens=10**9), embedded)
    assert run.max_new_tokens == 512 and "clamped" in run.notices[0]
    with pytest.raises(InvalidRequest, match="this server takes at most 4,096"):     # the server's own cap first
        prepare(GenerationRequest("word " * 9000, max_new_tokens=5), embedded)
    monkeypatch.setenv("PLAYGROUND_MAX_PROMPT_TOKENS", "100000")                      # then the model's context
    settings.cache_clear()
    try:
        with pytest.raises(InvalidRequest, match="context holds"):
            prepare(GenerationRequest("word " * 9000, max_new_tokens=5), embedded)
    finally:
        settings.cache_clear()
    with pytest.raises(InvalidRequest, match="seed"):
        prepare(GenerationRequest("Hello", seed=-1), embedded)


def test_chat_template_toggle_changes_the_prompt(embedded):
    chat = prepare(GenerationRequest("Hello", chat=True), embedded).prompt_ids
    raw = prepare(GenerationRequest("Hello", chat=False), embedded).prompt_ids
    assert len(chat) > len(raw) and embedded.decode(raw) == "Hello"
    assert "<|im_start|>" in embedded.decode(chat)


@pytest.mark.parametrize("method,params", [("beam", {"num_beams": 2}), ("top_h", {"alpha": 0.5}),
                                           ("sampling", {"top_p": 0.9, "temperature": 0.8})])
def test_saved_run_reloads_and_redraws_identically(embedded, method, params):
    events = generate(GenerationRequest("Name three colours.", method, params, max_new_tokens=12, seed=4), embedded)
    repo = RunRepository()
    run_id = repo.save(events)
    reloaded = repo.events(run_id)
    assert [e.to_dict() for e in reloaded] == [e.to_dict() for e in events]
    a, b = render(events), render(reloaded)
    assert a.text_html == b.text_html and a.metrics_html == b.metrics_html
    assert {k: f.to_json() if f else None for k, f in a.figures.items()} == \
           {k: f.to_json() if f else None for k, f in b.figures.items()}
    row = repo.get(run_id)
    assert row.method == method and row.params == events[0].params and row.seed == 4


def test_same_seed_same_output_on_the_real_model(embedded):
    req = GenerationRequest("Tell me a joke.", "sampling", {"temperature": 1.0}, max_new_tokens=16, seed=11)
    first = [e.token_id for e in generate(req, embedded) if isinstance(e, TokenEvent)]
    again = [e.token_id for e in generate(req, embedded) if isinstance(e, TokenEvent)]
    assert first == again


def test_stop_ends_the_run_and_it_is_still_saved(embedded):
    stop = threading.Event()
    events = []
    for event in execute(prepare(GenerationRequest("Write a long story about the sea.", max_new_tokens=200), embedded),
                         stop):
        events.append(event)
        if isinstance(event, TokenEvent) and event.index == 2:
            stop.set()
    metrics = events[-1]
    assert isinstance(metrics, MetricsEvent) and metrics.stop_reason == "stopped" and metrics.new_tokens == 3
    run_id = RunRepository().save(events)
    assert RunRepository().get(run_id).status == "stopped"


def test_beam_stopped_mid_run_saves_its_best_hypothesis(embedded):
    """Beam search commits at the end; stopped after 5 steps it used to save 0 tokens. Now the runner
    throws StopRun into the method, which commits its best hypothesis so far, and that is saved."""
    stop, events = threading.Event(), []
    request = GenerationRequest("Write a long story about the sea.", strategy="beam", params={"num_beams": 2},
                                max_new_tokens=60)
    for event in execute(prepare(request, embedded), stop):
        events.append(event)
        if isinstance(event, TreeEvent) and event.step == 4:
            stop.set()
    metrics = events[-1]
    assert metrics.stop_reason == "stopped" and metrics.new_tokens == 5
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    saved = RunRepository().get(RunRepository().save(events))
    assert saved.status == "stopped" and saved.metrics["new_tokens"] == 5
    assert saved.output == "".join(t.text for t in tokens) and saved.output.strip()


def test_writes_are_whole_or_nothing(embedded):
    repo = RunRepository()
    events = generate(GenerationRequest("Hi", max_new_tokens=3), embedded)
    before = repo.count()
    with pytest.raises(ValueError):
        repo.save(events[:-1])                                  # incomplete run: refused
    run_id = repo.save(events)
    with pytest.raises(Exception):
        repo.save(events)                                       # same id again: the transaction rolls back
    assert repo.count() == before + 1 and repo.get(run_id).output == "".join(
        e.text for e in events if isinstance(e, TokenEvent))


def test_metrics_are_measured(embedded):
    events = generate(GenerationRequest("Count to five.", max_new_tokens=8), embedded)
    m = events[-1]
    assert m.forward_passes == m.new_tokens == 8
    assert 0 < m.time_to_first_token_s <= m.elapsed_s
    assert m.tokens_per_s == pytest.approx(m.new_tokens / m.elapsed_s)
    assert m.model_bytes == embedded.n_bytes and 100e6 < m.model_bytes < 1e9     # 135M params in fp32, tied
    assert m.bandwidth_gb_s == pytest.approx(m.model_bytes * m.forward_passes / m.elapsed_s / 1e9)
    assert m.machine_bandwidth_gb_s > 0
    assert 0 < m.prefill_s < m.time_to_first_token_s and m.prefill_s + m.decode_s == pytest.approx(m.elapsed_s)
    assert m.decode_tokens_per_s == pytest.approx(7 / m.decode_s)      # tests/test_metrics.py checks it against a wall clock
    assert m.speedup_vs_greedy == pytest.approx(1.0) and m.greedy_reference == "this greedy run (8 tokens)"
    assert events[0].lossless is False                                  # greedy is the reference, not "lossless"


def test_speedup_vs_greedy_is_measured_against_the_callers_own_greedy_run(embedded, monkeypatch):
    from playground import baseline

    monkeypatch.setattr(baseline, "_SERVER", {})                 # a fresh process: no greedy rate yet
    m = generate(GenerationRequest("Count to five.", strategy="prompt_lookup", max_new_tokens=8), embedded)[-1]
    assert "greedy run this process measured" in m.greedy_reference and m.greedy_tokens_per_s > 0
    assert m.speedup_vs_greedy == pytest.approx(m.decode_tokens_per_s / m.greedy_tokens_per_s)
    greedy = generate(GenerationRequest("Count to five.", max_new_tokens=12), embedded)
    mine = baseline.remember({}, greedy)                          # an API caller keeps its own references
    m = generate(GenerationRequest("Count to five.", strategy="prompt_lookup", max_new_tokens=8), embedded,
                 references=mine)[-1]
    assert m.greedy_tokens_per_s == greedy[-1].decode_tokens_per_s and "greedy run by the same user before this one (12 tokens)" in m.greedy_reference


def test_bench_reports_methods_against_generate_and_greedy(embedded, capsys):
    import json

    from playground.cli import main

    assert main(["bench", "--methods", "prompt_lookup", "--max-new-tokens", "6", "--prompts", "grounded",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    ours = ["ours, compiled", "ours, eager"]                             # warm-up compiled the embedded model's step
    assert [(s["context"], s["path"]) for s in report["roofline"]["steps"]] == [
        *[(32, path) for path in ours], (32, "transformers"), *[(640, path) for path in ours], (640, "transformers"),
        (0, "products only")]
    result = report["sets"]["grounded"]
    rows = {r["method"]: r for r in result["methods"]}
    assert list(rows) == ["greedy", "prompt_lookup"]                  # greedy always runs: it is the reference
    assert rows["greedy"]["ratio_to_greedy"] == 1.0 and result["generate_greedy"]["tokens_per_s"] > 0
    assert all(r["equals_greedy"] for r in rows.values())             # compared with generate's own tokens
    assert rows["prompt_lookup"]["ratio_to_generate"] == pytest.approx(
        rows["prompt_lookup"]["tokens_per_s"] / result["generate_greedy"]["tokens_per_s"])
    [peer] = result["transformers_references"]                          # transformers' own prompt lookup, beside ours
    assert peer["name"] == "generate(prompt_lookup_num_tokens=10)" and peer["equals_greedy"] and peer["tokens_per_s"] > 0


def test_speculative_with_a_separate_draft_model_from_a_folder(embedded, tmp_path):
    """A separate draft model, pointed at as a local folder the way a user would: a tiny random llama
    with the embedded model's vocabulary and tokenizer. Greedy speculation still equals greedy."""
    import torch
    from conftest import build_tiny_llama

    draft = build_tiny_llama(seed=3, vocab=embedded.model.config.vocab_size).to(torch.float32)
    draft.save_pretrained(tmp_path)
    embedded.tokenizer.save_pretrained(tmp_path)

    def tokens(strategy, **kwargs):
        events = generate(GenerationRequest("Name three colours.", strategy=strategy, max_new_tokens=12, **kwargs),
                          embedded)
        return [e.token_id for e in events if isinstance(e, TokenEvent)], events[-1]

    greedy, _ = tokens("greedy")
    ours, metrics = tokens("speculative", draft_model_id=str(tmp_path), params={"gamma": 3})
    assert ours == greedy
    assert metrics.draft_forward_passes > 0 and metrics.forward_passes <= 12 + 1     # prefill + one per round
