"""Sharing: ids are unguessable, a link opens a saved run or comparison read-only (a deleted one says
"not found"), links use the public URL or the request's own address, a run's settings go back into
the form, and an export imported back re-renders exactly as the original did, while a malformed
import is refused with one line and saves nothing."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
import uuid
from types import SimpleNamespace

import gradio as gr
import pytest
from conftest import TinyTokenizer, build_tiny_llama

from playground.config import settings
from playground.events import Alternative, MetricsEvent, RunStarted, TokenEvent, to_dicts
from playground.models import LoadedModel
from playground.runner import GenerationRequest, PreparedRun, execute
from storage import default_repository
from storage.export import (MAX_IMPORT_BYTES, MAX_IMPORT_EVENTS, InvalidExport, csv_text, dumps, import_export,
                            parse_export, run_export, token_rank)
from strategies import REGISTRY
from visualizers import render

UUID4 = re.compile(r"[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}")
OWNER = "browser:" + "c" * 32
METHODS = [("greedy", {}), ("sampling", {"temperature": 1.0, "top_p": 0.9}), ("beam", {}),
           ("token_recycling", {}), ("best_of_n", {})]


@pytest.fixture(scope="module")
def tiny():
    return LoadedModel("tiny", build_tiny_llama(seed=5), TinyTokenizer(), "float64", 0.0)


def tiny_events(tiny, name: str, params: dict, tokens: int = 10) -> list:
    strategy = REGISTRY[name](**params)
    prompt = [random.Random(1).randrange(1, 96) for _ in range(12)]
    return list(execute(PreparedRun(GenerationRequest("tiny", name, params), tiny, strategy, prompt, tokens, 3, [])))


@pytest.fixture(scope="module")
def saved(tiny):
    """One saved run per method in METHODS (a run that needs something the tiny model lacks is left out)."""
    run_ids = {}
    for name, params in METHODS:
        events = tiny_events(tiny, name, params)
        run_ids[name] = default_repository().save(events, owner=OWNER)
    return run_ids


def drawn(events) -> str:
    """Everything a re-render puts on the page: text, metrics and every figure, as one string."""
    out = render(events)
    figures = {k: f.to_plotly_json() if f is not None else None for k, f in out.figures.items()}
    return out.text_html + out.metrics_html + json.dumps(figures, sort_keys=True, default=str)


def test_run_and_comparison_ids_are_unique_and_random(tiny, saved):
    run_ids = list(saved.values()) + [tiny_events(tiny, "greedy", {}, tokens=2)[0].run_id for _ in range(3)]
    comparison_ids = [default_repository().save_comparison(run_ids[:2]) for _ in range(2000)]
    for item in run_ids + comparison_ids:
        assert UUID4.fullmatch(item), item                  # uuid4: 122 random bits
    assert len(set(run_ids + comparison_ids)) == len(run_ids) + len(comparison_ids)
    # every one of the 122 random bits is set in about half of the ids (n = 2000: 0.4..0.6 is 9 sd)
    numbers = [uuid.UUID(hex=i).int for i in comparison_ids]
    random_bits = [bit for bit in range(128) if bit not in (76, 77, 78, 79, 62, 63)]   # not version, variant
    assert len(random_bits) == 122
    for bit in random_bits:
        share = sum(n >> bit & 1 for n in numbers) / len(numbers)
        assert 0.4 < share < 0.6, (bit, share)


@pytest.fixture
def panel():
    from playground.ui.share import SharedPanel

    with gr.Blocks():
        return SharedPanel()


def title_of(values) -> str:
    return values[1]


def test_a_link_opens_the_saved_run_and_a_deleted_one_says_not_found(panel, tiny):
    repo = default_repository()
    run_id = repo.save(tiny_events(tiny, "greedy", {}, tokens=4), owner=OWNER)
    shown = panel.run_values(run_id, "http://host:7860")
    assert title_of(shown).startswith(f"### Shared run `{run_id}`")
    assert shown[2] == f"http://host:7860/?run={run_id}"
    assert shown[panel.outputs.index(panel.text)] == render(repo.events(run_id)).text_html
    assert shown[-1] == run_id                                           # what Re-run / Fork load
    assert repo.delete(run_id, owner=OWNER)
    gone = panel.run_values(run_id, "http://host:7860")
    assert "Not found" in title_of(gone) and "No saved run" in title_of(gone)
    assert gone[2] == "" and gone[-1] == ""
    assert "Not found" in title_of(panel.run_values("../../etc", ""))      # not an id at all
    hostile = title_of(panel.run_values("`[x](javascript:alert(1))<b>", ""))
    assert "<b>" not in hostile and "](" not in hostile and "\\[x\\]" in hostile     # shown as text, not a link
    assert "Not found" in title_of(panel.comparison_values(uuid.uuid4().hex, ""))


def test_a_comparison_link_draws_its_runs_and_says_when_they_are_gone(panel, tiny):
    repo = default_repository()
    a = repo.save(tiny_events(tiny, "greedy", {}, tokens=4), owner=OWNER)
    b = repo.save(tiny_events(tiny, "sampling", {"temperature": 1.0}, tokens=4), owner=OWNER)
    comparison_id = repo.save_comparison([a, b], owner=OWNER, title="greedy vs <b>sampling</b>")
    shown = panel.comparison_values(comparison_id, "")
    assert f"`{comparison_id}`" in title_of(shown) and "2 runs side by side" in title_of(shown)
    assert "<b>" not in title_of(shown)                                     # the title is shown as text
    assert shown[2] == f"/?compare={comparison_id}" and shown[-1] == a
    repo.delete(b, owner=OWNER)
    assert "1 of its runs deleted since" in title_of(panel.comparison_values(comparison_id, ""))
    repo.delete(a, owner=OWNER)
    assert "Not found" in title_of(panel.comparison_values(comparison_id, ""))


def test_links_use_the_public_url_else_the_requests_own_address(monkeypatch):
    from playground.ui.share import base_url

    def request(**headers):
        return SimpleNamespace(headers=headers)

    assert base_url(request(host="example.org:7860")) == "http://example.org:7860"
    assert base_url(request(host="example.org", **{"x-forwarded-proto": "https"})) == "https://example.org"
    assert base_url(request(host="evil.org/<script>")) == ""               # never echoed into a link
    assert base_url(request(host="internal:7860", **{"x-forwarded-host": "proxy.example"})) == "http://proxy.example"
    assert base_url(None) == ""
    monkeypatch.setenv("PLAYGROUND_PUBLIC_URL", "https://space.hf.space/")
    settings.cache_clear()
    try:
        assert base_url(request(host="internal:7860")) == "https://space.hf.space"
    finally:
        monkeypatch.delenv("PLAYGROUND_PUBLIC_URL")
        settings.cache_clear()


def test_fork_loads_the_runs_settings_into_the_form(tiny):
    from playground.ui.share import form_values

    record = tiny_events(tiny, "sampling", {"temperature": 0.7, "top_k": 5}, tokens=3)[0]
    record.chat, record.dtype, record.model_id = False, "float32", "embedded"
    form = SimpleNamespace(param_keys=[("greedy", "x"), ("sampling", "temperature"), ("sampling", "top_k"),
                                       ("beam", "temperature")])
    values = form_values(record, form)
    assert values[:8] == ["embedded", "", "float32", "sampling", 3, 3, False, record.prompt]
    assert values[8] is not None and isinstance(values[8], type(gr.skip()))   # another method's widget: untouched
    assert values[9:11] == [0.7, 5]
    assert isinstance(values[11], type(gr.skip()))


def test_an_export_imported_back_re_renders_identically(saved):
    repo = default_repository()
    assert set(saved) == {name for name, _ in METHODS}
    for name, run_id in saved.items():
        events = repo.events(run_id)
        text = dumps(run_export(repo.get(run_id), events))
        (new_id,), comparison = import_export(repo, text, owner="browser:" + "d" * 32)
        assert comparison is None and new_id != run_id and UUID4.fullmatch(new_id)
        again = repo.events(new_id)
        assert drawn(again).replace(new_id, run_id) == drawn(events), name
        assert [e.to_dict() for e in again[1:]] == [e.to_dict() for e in events[1:]]
        assert repo.summaries([new_id])[0].owner == "browser:" + "d" * 32      # the importer's
        assert repo.summaries([run_id])[0].owner == OWNER                      # the original untouched


def test_a_comparison_export_imports_as_a_new_comparison(saved):
    from playground.ui.share import comparison_files

    repo = default_repository()
    ids = [saved["greedy"], saved["beam"]]
    comparison_id = repo.save_comparison(ids, owner=OWNER, title="two")
    json_path, csv_path = comparison_files(comparison_id, ids)
    text = open(json_path, encoding="utf-8").read()
    new_ids, new_comparison = import_export(repo, text, owner=OWNER)
    assert len(new_ids) == 2 and new_comparison not in (None, comparison_id)
    assert repo.comparison(new_comparison).run_ids == new_ids and repo.comparison(new_comparison).title == "two"
    rows = list(csv.DictReader(open(csv_path, encoding="utf-8")))
    assert {r["run_id"] for r in rows} == set(ids)


def broken_exports(good: dict) -> dict[str, str]:
    def changed(edit) -> str:
        data = json.loads(json.dumps(good))
        edit(data)
        return json.dumps(data)

    def set_token(field, value):
        def edit(d):
            token = next(e for e in d["events"] if e["type"] == "token")
            token[field] = value
        return edit

    return {
        "not json": "{nope",
        "empty": "   ",
        "another format": json.dumps({"format": "something", "version": 1}),
        "a list": "[1, 2]",
        "unknown event": changed(lambda d: d["events"].insert(1, {"type": "shell", "cmd": "rm"})),
        "text not a string": changed(set_token("text", {"html": "<b>"})),
        "a bool as a token id": changed(set_token("token_id", True)),
        "an unknown field": changed(set_token("script", "x")),
        "a mistyped alternative": changed(set_token("alternatives", [{"token_id": 1, "text": "a", "prob": "high"}])),
        "a missing field": changed(lambda d: next(e for e in d["events"] if e["type"] == "token").pop("logprob")),
        "no run_started first": changed(lambda d: d["events"].pop(0)),
        "two runs in one list": changed(lambda d: d["events"].insert(2, dict(d["events"][-1]))),
        "too big": json.dumps({**good, "pad": "x" * MAX_IMPORT_BYTES}),
        "too many events": changed(lambda d: d["events"].__setitem__(     # a notice after run_started, 50,000 times
            slice(1, 1), [{"type": "notice", "key": "k", "message": "m"}] * MAX_IMPORT_EVENTS)),
        "five runs in a comparison": json.dumps({"format": "decoding-playground/comparison", "version": 1,
                                                 "comparison": {}, "runs": [good] * 5}),
    }


def test_a_malformed_import_is_refused_with_one_line_and_saves_nothing(saved):
    repo = default_repository()
    good = run_export(repo.get(saved["greedy"]), repo.events(saved["greedy"]))
    parse_export(json.dumps(good))                                   # the unedited export passes
    before = repo.count()
    for why, text in broken_exports(good).items():
        with pytest.raises(InvalidExport) as refused:
            import_export(repo, text, owner=OWNER)
        assert "\n" not in str(refused.value) and len(str(refused.value)) < 300, why
    assert repo.count() == before


def test_an_import_the_page_cannot_draw_is_refused(saved):
    """Well-typed events can still be inconsistent; the page's renderer checks each run before saving.
    (A tree node naming a missing parent draws, without it; a renderer that raises refuses the import.)"""
    repo = default_repository()
    data = run_export(repo.get(saved["beam"]), repo.events(saved["beam"]))
    tree = next(e for e in data["events"] if e["type"] == "tree")
    tree["nodes"][-1]["parent"] = 10_000                       # well typed, but no such node
    before = repo.count()
    with pytest.raises(InvalidExport, match=r"run 1 cannot be drawn \(ZeroDivisionError\)"):
        import_export(repo, json.dumps(data), owner=OWNER, check=lambda events: 1 / 0)
    assert repo.count() == before
    (new_id,), _ = import_export(repo, json.dumps(data), owner=OWNER, check=render)
    assert render(repo.events(new_id)).figures["tree"] is not None


def token(text: str, logprob: float, alternatives: list[tuple[int, float]], token_id: int = 7, **extra) -> TokenEvent:
    return TokenEvent(index=0, token_id=token_id, text=text, logprob=logprob, entropy=0.5,
                      alternatives=[Alternative(i, f"t{i}", p) for i, p in alternatives], extra=extra)


def test_rank_is_given_only_where_the_stored_alternatives_decide_it():
    assert token_rank(token("a", math.log(0.5), [(7, 0.5), (8, 0.3)])) == 1
    assert token_rank(token("a", math.log(0.2), [(8, 0.5), (7, 0.2)])) == 2
    assert token_rank(token("a", math.log(0.2), [(8, 0.5), (9, 0.3), (10, 0.1)])) == 3   # listed tokens below it
    assert token_rank(token("a", math.log(0.01), [(8, 0.5), (9, 0.3)])) is None        # the list stops above it


def test_csv_has_one_row_per_token_with_measured_columns_and_no_formulas(saved):
    repo = default_repository()
    events = repo.events(saved["sampling"])
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    rows = list(csv.DictReader(io.StringIO(csv_text([(saved["sampling"], events)]))))
    assert len(rows) == len(tokens)
    for row, t in zip(rows, tokens):
        assert (int(row["index"]), int(row["token_id"]), float(row["logprob"])) == (t.index, t.token_id, t.logprob)
        assert float(row["prob"]) == math.exp(t.logprob) and float(row["entropy"]) == t.entropy
        assert row["rank"] == ("" if token_rank(t) is None else str(token_rank(t)))
    crafted = [RunStarted("r", "m", "float32", "greedy", {}, 0, "p", 1, 2),
               token("=HYPERLINK(\"x\")", -0.1, [], accepted=1.0), token("plain", -0.2, [], token_id=8),
               MetricsEvent(2, 1.0, 0.1, 2.0, 2, 1.0, 1, 0.0, None, "length")]
    rows = list(csv.DictReader(io.StringIO(csv_text([("r", crafted)]))))
    assert rows[0]["text"] == "'=HYPERLINK(\"x\")" and rows[1]["text"] == "plain"
    assert rows[0]["accepted"] == "1.0" and rows[1]["accepted"] == ""            # a method's own column


def test_history_filters_from_the_page_are_checked():
    from playground.ui.history import history_query, tree_html

    q = history_query(OWNER, "everyone", 5, ["m"], "drop table", "yes", "abc")
    assert (q.scope, q.text, q.model, q.method, q.favourites, q.page) == ("mine", "", "", "", False, 1)
    q = history_query(OWNER, "published", "sea", "m", "beam", True, 3)      # stars are their owners' own marks:
    assert (q.scope, q.text, q.model, q.method, q.favourites, q.page) == ("published", "sea", "m", "beam", False, 3)
    q = history_query(OWNER, "mine", "sea", "m", "beam", True, 3)           # the favourites filter is for yours
    assert q.favourites is True
    assert "No saved run" in tree_html(uuid.uuid4().hex)


def test_the_branch_tree_is_escaped(tiny):
    from playground.ui.history import tree_html

    repo = default_repository()
    events = tiny_events(tiny, "greedy", {}, tokens=2)
    events[1].text = "<img src=x onerror=alert(1)>"
    root = repo.save(events, owner=OWNER)
    drawn_tree = tree_html(root)
    assert "<img" not in drawn_tree and "&lt;img" in drawn_tree and f"<b>{root[:8]}" in drawn_tree


def test_export_json_holds_the_record_and_every_event_but_no_owner(saved):
    repo = default_repository()
    row, events = repo.get(saved["beam"]), repo.events(saved["beam"])
    export = json.loads(dumps(run_export(row, events)))
    assert export["events"] == json.loads(json.dumps(to_dicts(events)))
    assert export["run"]["id"] == saved["beam"] and export["run"]["owner"] is None   # a browser key is a secret


def test_a_link_to_a_run_still_going_says_so_instead_of_failing(panel, tiny):
    from playground.ui.history import open_run
    from playground.ui.share import run_files

    repo = default_repository()
    started = tiny_events(tiny, "greedy", {}, tokens=2)[0]
    repo.start(started, owner=OWNER)                         # its row exists, its events do not yet
    assert repo.events(started.run_id) is None and run_files(started.run_id) is None
    title = title_of(panel.run_values(started.run_id, ""))
    assert "no saved events yet" in title and "running" in title
    with pytest.raises(gr.Error, match="running"):
        open_run(started.run_id)
