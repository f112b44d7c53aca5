"""History: a visitor lists their own runs, others' only once published; search, filters and pages;
only the owner favourites, publishes or deletes; branches come back as a tree; and a page of
History answers in under a second with 10,000 saved runs (the issue's bound), without loading
any event blob."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import event, insert

from playground.events import MetricsEvent, RunStarted, TokenEvent, to_dicts
from storage import RunRepository
from storage.models import Run
from storage.repository import HistoryQuery

ALICE, BOB = "browser:" + "a" * 32, "browser:" + "b" * 32


def events_of(run_id: str, prompt: str = "p", output: str = " hi", method: str = "greedy", model: str = "m") -> list:
    started = RunStarted(run_id=run_id, model_id=model, dtype="float32", strategy=method, params={}, seed=0,
                         prompt=prompt, prompt_tokens=1, max_new_tokens=1)
    token = TokenEvent(index=0, token_id=5, text=output, logprob=-0.7, entropy=1.0, alternatives=[])
    metrics = MetricsEvent(new_tokens=1, elapsed_s=0.5, time_to_first_token_s=0.1, tokens_per_s=2.0,
                           forward_passes=1, tokens_per_forward=1.0, model_bytes=1, bandwidth_gb_s=0.0,
                           machine_bandwidth_gb_s=None, stop_reason="length")
    return [started, token, metrics]


@pytest.fixture
def repo(database_url):
    """SQLite, then a real PostgreSQL (conftest's database_url)."""
    return RunRepository(database_url)


def save(repo, owner, **kwargs) -> str:
    run_id = uuid.uuid4().hex
    repo.save(events_of(run_id, **kwargs), owner=owner)
    return run_id


def ids(repo, **query) -> list[str]:
    return [r.id for r in repo.history(HistoryQuery(**query))[0]]


def test_each_visitor_lists_only_their_own_runs_and_others_published_ones_apart(repo):
    mine = save(repo, ALICE)
    theirs = save(repo, BOB)
    anonymous = save(repo, None)                        # an API caller with no key: reachable by link only
    assert ids(repo, owner=ALICE) == [mine]
    assert ids(repo, owner=BOB) == [theirs]
    assert ids(repo, owner=None) == []                  # no key, no "mine" (never everyone's runs)
    assert ids(repo, owner=ALICE, scope="published") == []
    assert repo.set_flag(theirs, BOB, "public", True)
    assert ids(repo, owner=ALICE, scope="published") == [theirs]
    assert ids(repo, owner=BOB, scope="published") == []          # one's own published runs are under "mine"
    assert repo.events(anonymous) is not None                     # the link still opens it


def test_only_the_owner_changes_or_deletes_a_run(repo):
    run_id = save(repo, ALICE)
    assert not repo.set_flag(run_id, BOB, "public", True)
    assert not repo.set_flag(run_id, None, "favourite", True)
    assert not repo.set_flag(run_id, ALICE, "owner", True)        # only the two flags
    assert not repo.delete(run_id, owner=BOB)
    assert repo.set_flag(run_id, ALICE, "favourite", True)
    assert ids(repo, owner=ALICE, favourites=True) == [run_id]
    assert repo.delete(run_id, owner=ALICE)
    assert repo.events(run_id) is None and ids(repo, owner=ALICE) == []


def test_search_and_filters(repo):
    sea = save(repo, ALICE, prompt="A poem about the sea", output=" waves")
    cat = save(repo, ALICE, prompt="Tell me about cats", output=" 100% fluffy_ok", method="beam")
    other_model = save(repo, ALICE, prompt="sea again", model="other")
    assert set(ids(repo, owner=ALICE, text="SEA")) == {sea, other_model}       # case-insensitive, prompt
    assert ids(repo, owner=ALICE, text="fluffy_") == [cat]                     # output; '_' is literal
    assert ids(repo, owner=ALICE, text="100%") == [cat]                        # '%' is literal
    assert ids(repo, owner=ALICE, text="1%0") == []
    assert ids(repo, owner=ALICE, method="beam") == [cat]
    assert ids(repo, owner=ALICE, model="other") == [other_model]
    assert ids(repo, owner=BOB, text="sea") == []


def test_pages_are_newest_first_and_count_every_match(repo):
    made = [save(repo, ALICE, prompt=f"run {i}") for i in range(7)]
    first, total = repo.history(HistoryQuery(owner=ALICE, page_size=3))
    assert total == 7 and [r.prompt for r in first] == ["run 6", "run 5", "run 4"]
    last, _ = repo.history(HistoryQuery(owner=ALICE, page=3, page_size=3))
    assert [r.id for r in last] == [made[0]]


def test_branches_come_back_as_a_tree(repo):
    root = save(repo, ALICE)
    child = uuid.uuid4().hex
    repo.save(events_of(child), owner=ALICE, parent_id=root, parent_position=3)
    grandchild = uuid.uuid4().hex
    repo.save(events_of(grandchild), owner=ALICE, parent_id=child, parent_position=5)
    sibling = uuid.uuid4().hex
    repo.save(events_of(sibling), owner=ALICE, parent_id=root, parent_position=1)
    tree = [(depth, r.id) for depth, r in repo.tree(grandchild)]            # from any member: the whole tree
    assert tree == [(0, root), (1, sibling), (1, child), (2, grandchild)]
    (row,) = repo.summaries([child])
    assert (row.parent_id, row.parent_position) == (root, 3)


def test_history_page_answers_in_under_a_second_with_10000_runs(tmp_path):
    """Bulk-insert 10,000 runs (2,000 of them this visitor's, 1,000 published), then time the pages a
    visitor asks for. Event blobs must never be read: a statement that selects the `events` column
    fails the test."""
    repo = RunRepository(f"sqlite:///{tmp_path / 'big.sqlite3'}")
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    blob = to_dicts(events_of("x" * 32))
    rows = [dict(id=uuid.uuid4().hex, created_at=start + timedelta(seconds=i), model_id="m", dtype="float32",
                 method="greedy" if i % 3 else "beam", params={}, seed=0, prompt=f"prompt {i} about the sea" if i % 7 == 0
                 else f"prompt {i}", output=" out", status="length", metrics={}, events=blob, new_tokens=1,
                 tokens_per_s=2.0, owner=ALICE if i % 5 == 0 else f"browser:{i:032x}", public=i % 10 == 1,
                 favourite=i % 50 == 0)
            for i in range(10_000)]
    with repo.sessions.begin() as session:
        session.execute(insert(Run), rows)
    assert repo.count() == 10_000

    statements = []
    engine = repo.sessions.kw["bind"]
    listener = lambda *args: statements.append(args[2])          # noqa: E731 (before_cursor_execute's statement)
    event.listen(engine, "before_cursor_execute", listener)
    try:
        queries = [HistoryQuery(owner=ALICE), HistoryQuery(owner=ALICE, page=40), HistoryQuery(owner=ALICE, scope="published"),
                   HistoryQuery(owner=ALICE, text="sea"), HistoryQuery(owner=ALICE, method="beam", favourites=True, page=2)]
        for query in queries:
            began = time.perf_counter()
            page, total = repo.history(query)
            elapsed = time.perf_counter() - began
            assert elapsed < 1.0, f"{query}: {elapsed:.3f} s"
            assert page and total >= len(page)
        assert repo.history(HistoryQuery(owner=ALICE))[1] == 2_000
        assert repo.history(HistoryQuery(owner=ALICE, scope="published"))[1] == 1_000
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert statements and not any("runs.events" in s for s in statements)


# --- the page's handlers, called as gradio calls them (no browser) -------------------------------

@pytest.fixture(scope="module")
def app_handlers():
    """The app's History / share handlers by name, each with its output count."""
    from playground.ui import build_app

    demo = build_app()
    found: dict[str, tuple] = {}
    for f in (demo.fns.values() if isinstance(demo.fns, dict) else demo.fns):
        name = getattr(f.fn, "__name__", "")
        name = f"{name}:2" if name in found and name == "flip" else name     # flip: favourite, then publish
        found.setdefault(name, (f.fn, len(f.outputs)))
    return found


def visitor(key: str, **query):
    import gradio as gr

    return gr.Request(username=None, query_params=query)


def test_the_history_handlers_answer_their_outputs_and_only_the_owner_acts(app_handlers):
    import gradio as gr

    from storage import default_repository
    from storage.export import dumps, run_export

    repo = default_repository()
    mine, theirs = "a" * 32, "b" * 32
    run_id = save(repo, f"browser:{mine}", prompt="handler test")

    def call(name, *args):
        fn, n_outputs = app_handlers[name]
        values = fn(*args)
        assert n_outputs == 1 or len(values) == n_outputs, name
        return values

    table, info, _, page = call("show", visitor(mine), "mine", "handler", "", "", False, 1, mine)
    assert [row[0] for row in table] == [run_id] and "1 run of yours matches" in info and page == 1
    assert call("show", visitor(theirs), "mine", "", "", "", False, 1, theirs)[0] == []
    call("open_", visitor(mine), run_id)
    with pytest.raises(gr.Error):
        call("flip", visitor(theirs), run_id, theirs)                 # not the owner
    flipped = call("flip", visitor(mine), run_id, mine)
    assert "favourite" in flipped[0]
    assert repo.summaries([run_id])[0].favourite or repo.summaries([run_id])[0].public
    # the export buttons are written anew with the flag (an export right after Publish said "public": false)
    published = call("flip:2", visitor(mine), run_id, mine)
    assert "published" in published[0] and repo.summaries([run_id])[0].public
    assert json.loads(Path(published[1].value["path"]).read_text())["run"]["public"] is True
    with pytest.raises(gr.Error):
        call("delete", visitor(theirs), run_id, theirs)
    text = dumps(run_export(repo.get(run_id), repo.events(run_id)))
    before = repo.count()
    assert call("do_import", visitor(theirs), text, theirs)[0] == ""     # the paste box is cleared
    assert repo.count() == before + 1
    assert call("show", visitor(theirs), "mine", "handler", "", "", False, 1, theirs)[1].startswith("Page 1 of 1 · 1 ")
    for _ in range(5):                                                 # six imports a minute per visitor
        call("do_import", visitor(theirs), text, theirs)
    with pytest.raises(gr.Error, match="Too many imports"):
        call("do_import", visitor(theirs), text, theirs)
    assert repo.count() == before + 6
    values = call("delete", visitor(mine), run_id, mine)
    assert f"Deleted run `{run_id}`" in values[2] and repo.events(run_id) is None
    shown = call("values", visitor(theirs, run=run_id))
    assert "Not found" in shown[1]


def test_compare_selected_loads_the_ticked_runs_into_compare(app_handlers):
    from storage import default_repository

    repo = default_repository()
    key = "e" * 32
    a, b = save(repo, f"browser:{key}"), save(repo, f"browser:{key}")
    fn, n_outputs = app_handlers["compare_selected"]
    values = fn(visitor(key), f"{a},{b}", key)
    assert len(values) == n_outputs and values[0] == f"{a},{b}"
    assert "Saved as comparison" in values[-1]


def test_a_star_is_shown_to_its_owner_only(database_url):
    """A published run's favourite star is its owner's private mark: another visitor saw it."""
    from playground.ui.history import row_of

    repo = RunRepository(database_url)
    run_id = save(repo, ALICE, prompt="starred")
    repo.set_flag(run_id, ALICE, "favourite", True)
    (summary,) = repo.summaries([run_id])
    assert row_of(summary, ALICE)[2] == "★" and row_of(summary, "browser:" + "b" * 32)[2] == "" == row_of(summary)[2]
