"""Storage against both backends (the `database_url` fixture: SQLite, then a real PostgreSQL started by
scripts/postgres.sh), plus the start-up check of a database that cannot be used."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from playground.events import MetricsEvent, NoticeEvent, RunStarted, TokenEvent, to_dicts
from storage import RunRepository
from storage.db import DatabaseUnavailable, check_database


def events_of(run_id: str, text: str = " hi", stop_reason: str = "length") -> list:
    started = RunStarted(run_id=run_id, model_id="m", dtype="float32", strategy="greedy", params={"a": 1}, seed=7,
                         prompt="p \u00e9\U0001f600 <b>x</b>", prompt_tokens=1, max_new_tokens=2)
    tokens = [TokenEvent(index=i, token_id=5 + i, text=text, logprob=-0.7, entropy=1.0, alternatives=[])
              for i in range(2)]
    metrics = MetricsEvent(new_tokens=2, elapsed_s=0.5, time_to_first_token_s=0.1, tokens_per_s=4.0,
                           forward_passes=2, tokens_per_forward=1.0, model_bytes=1, bandwidth_gb_s=0.0,
                           machine_bandwidth_gb_s=None, stop_reason=stop_reason)
    return [started, *tokens, NoticeEvent("k", "note"), metrics]


def test_a_run_saves_and_reloads_identically(database_url):
    repo = RunRepository(database_url)
    events = events_of("a" * 32, text=" caf\u00e9 \U0001f600")
    assert repo.save(events) == "a" * 32
    assert to_dicts(repo.events("a" * 32)) == to_dicts(events)
    row = repo.get("a" * 32)
    assert (row.output, row.status, row.prompt) == (" caf\u00e9 \U0001f600" * 2, "length", events[0].prompt)
    assert [r.id for r in repo.recent()] == ["a" * 32] and repo.count() == 1
    assert repo.delete("a" * 32) and repo.count() == 0


def test_start_then_interrupted_then_finished(database_url):
    repo = RunRepository(database_url)
    finished, cut_off = events_of("f" * 32), events_of("c" * 32, stop_reason="time limit")
    repo.start(finished[0])
    repo.start(cut_off[0])
    repo.save(finished)
    assert repo.mark_interrupted() == 1
    assert {r.id: r.status for r in repo.recent()} == {"f" * 32: "length", "c" * 32: "interrupted"}
    assert repo.mark_interrupted() == 0
    repo.save(events_of("t" * 32, stop_reason="time limit"))
    assert repo.get("t" * 32).status == "time limit"
    with pytest.raises(ValueError):
        repo.save(finished)                               # a run is saved once


def test_concurrent_saves_each_land_once(database_url):
    repo = RunRepository(database_url)
    errors = []

    def save(i):
        try:
            repo.start(events_of(f"{i:032d}")[0])
            repo.save(events_of(f"{i:032d}"))
        except Exception as exc:  # collected: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and repo.count() == 8
    assert {r.status for r in repo.recent()} == {"length"}


def test_the_start_up_check_accepts_a_good_database(database_url):
    check_database(database_url)


def test_a_corrupt_sqlite_file_is_named_at_start_up(tmp_path):
    path = tmp_path / "bad.sqlite3"
    path.write_bytes(b"not a database at all " * 200)
    with pytest.raises(DatabaseUnavailable, match=f"The database {path} cannot be used: file is not a database"):
        check_database(f"sqlite:///{path}")


def test_a_read_only_sqlite_database_is_named_at_start_up(tmp_path):
    path = tmp_path / "ro.sqlite3"
    check_database(f"sqlite:///{path}")
    # mode=ro: read-only even for root, who ignores file permissions
    with pytest.raises(DatabaseUnavailable, match=f"The database {path} cannot be used: attempt to write a readonly"):
        check_database(f"sqlite:///file:{path}?mode=ro&uri=true")


def test_a_locked_sqlite_database_is_named_at_start_up(tmp_path):
    path = tmp_path / "locked.sqlite3"
    check_database(f"sqlite:///{path}")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")                     # another process writing, for longer than busy_timeout
    try:
        with pytest.raises(DatabaseUnavailable, match=f"The database {path} cannot be used: database is locked"):
            check_database(f"sqlite:///{path}?timeout=0.2")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_an_unreachable_postgres_is_named_without_its_password(tmp_path):
    url = f"postgresql+psycopg://user:secret@/nowhere?host={tmp_path}"
    with pytest.raises(DatabaseUnavailable) as info:
        check_database(url)
    assert "postgresql+psycopg://user:***@/nowhere" in str(info.value) and "secret" not in str(info.value)
