"""Storage: migrations upgrade an existing database in place; a run's row lives from its start."""

from __future__ import annotations

import sqlite3

from sqlalchemy import inspect

from playground.events import MetricsEvent, RunStarted, TokenEvent
from storage import RunRepository
from storage.db import engine_for

OLD_SCHEMA = """CREATE TABLE runs (id VARCHAR(32) NOT NULL PRIMARY KEY, created_at DATETIME, finished_at DATETIME,
model_id VARCHAR(300) NOT NULL, dtype VARCHAR(16) NOT NULL, method VARCHAR(64) NOT NULL, params JSON NOT NULL,
seed INTEGER NOT NULL, prompt TEXT NOT NULL, output TEXT NOT NULL, status VARCHAR(16) NOT NULL,
metrics JSON NOT NULL, events JSON NOT NULL)"""


def events_of(run_id: str, text: str = " hi") -> list:
    started = RunStarted(run_id=run_id, model_id="m", dtype="float32", strategy="greedy", params={}, seed=0,
                         prompt="p", prompt_tokens=1, max_new_tokens=1)
    token = TokenEvent(index=0, token_id=5, text=text, logprob=-0.7, entropy=1.0, alternatives=[])
    metrics = MetricsEvent(new_tokens=1, elapsed_s=0.5, time_to_first_token_s=0.1, tokens_per_s=2.0,
                           forward_passes=1, tokens_per_forward=1.0, model_bytes=1, bandwidth_gb_s=0.0,
                           machine_bandwidth_gb_s=None, stop_reason="length")
    return [started, token, metrics]


def test_a_database_from_before_migrations_is_upgraded_in_place(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(OLD_SCHEMA)
        db.execute("INSERT INTO runs VALUES ('a'||'0', '2026-01-01 00:00:00', NULL, 'm', 'float32', 'greedy', '{}', 0,"
                   " 'old prompt', 'old output', 'eos', '{\"new_tokens\": 7, \"tokens_per_s\": 3.5}', '[]')")
    repo = RunRepository(f"sqlite:///{path}")
    columns = {c["name"] for c in inspect(engine_for(f"sqlite:///{path}")).get_columns("runs")}
    assert {"owner", "public", "favourite", "parent_id", "parent_position", "new_tokens"} <= columns
    (old,) = repo.recent()
    assert (old.prompt, old.output, old.tokens, old.tokens_per_s) == ("old prompt", "old output", 7, 3.5)
    repo.save(events_of("b" * 32))                                   # and the upgraded table takes new runs
    assert repo.count() == 2


def test_a_run_is_recorded_when_it_starts_and_marked_interrupted_if_never_finished(database_url):
    repo = RunRepository(database_url)
    finished, cut_off = events_of("f" * 32), events_of("c" * 32)
    repo.start(finished[0])
    repo.start(cut_off[0])
    assert {r.status for r in repo.recent()} == {"running"}
    repo.save(finished)
    assert repo.mark_interrupted() == 1                              # what a restart does
    status = {r.id: r.status for r in repo.recent()}
    assert status == {"f" * 32: "length", "c" * 32: "interrupted"}
    assert repo.get("f" * 32).output == " hi" and len(repo.events("f" * 32)) == 3


def test_a_finished_run_is_never_overwritten(database_url):
    repo = RunRepository(database_url)
    repo.save(events_of("d" * 32))
    try:
        repo.save(events_of("d" * 32, text=" other"))
    except ValueError:
        pass
    assert repo.get("d" * 32).output == " hi"
