"""Saving and reading runs and comparisons. A run's row is written when it starts (status
"running") and completed in one transaction when it ends; lists never load the event blobs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import undefer

from playground.config import settings
from playground.events import Event, MetricsEvent, RunStarted, TokenEvent, TreeEvent, from_dicts, to_dicts

from .db import session_factory
from .models import INTERRUPTED, RUNNING, Comparison, Run, utcnow


@dataclass
class RunSummary:
    id: str
    created_at: datetime
    model_id: str
    method: str
    prompt: str
    output: str
    status: str
    tokens: int
    tokens_per_s: float
    owner: str | None = None
    public: bool = False
    favourite: bool = False
    parent_id: str | None = None
    parent_position: int | None = None


def output_text(events: list[Event]) -> str:
    """The committed text, or the best preview when a search was stopped before committing."""
    tokens = [e.text for e in events if isinstance(e, TokenEvent)]
    if tokens:
        return "".join(tokens)
    previews = [e.preview for e in events if isinstance(e, TreeEvent) and e.preview]
    return previews[-1] if previews else ""


class RunRepository:
    def __init__(self, database_url: str | None = None):
        self.sessions = session_factory(database_url or settings().database_url)

    def start(self, started: RunStarted, owner: str | None = None, parent_id: str | None = None,
              parent_position: int | None = None) -> None:
        """Record a run as it starts (status "running"), so a run killed with the server is found
        at the next start-up (`mark_interrupted`) instead of simply missing."""
        row = Run(id=started.run_id, model_id=started.model_id, dtype=started.dtype, method=started.strategy,
                  params=started.params, seed=started.seed, prompt=started.prompt, output="", status=RUNNING,
                  metrics={}, events=None, owner=owner, parent_id=parent_id, parent_position=parent_position)
        with self.sessions.begin() as session:
            session.add(row)

    def save(self, events: list[Event], owner: str | None = None, parent_id: str | None = None,
             parent_position: int | None = None) -> str:
        """Persist a finished or stopped run from its events (must start with RunStarted and end with
        metrics), finishing the row `start` wrote, or writing it whole when there is none."""
        start, metrics = events[0], events[-1]
        if not isinstance(start, RunStarted) or not isinstance(metrics, MetricsEvent):
            raise ValueError("a run is saved only once complete: RunStarted ... MetricsEvent")
        values = dict(model_id=start.model_id, dtype=start.dtype, method=start.strategy, params=start.params,
                      seed=start.seed, prompt=start.prompt, output=output_text(events), status=metrics.stop_reason,
                      metrics=metrics.to_dict(), events=to_dicts(events), finished_at=utcnow(),
                      new_tokens=metrics.new_tokens, tokens_per_s=metrics.tokens_per_s)
        with self.sessions.begin() as session:
            row = session.get(Run, start.run_id)
            if row is None:
                session.add(Run(id=start.run_id, owner=owner, parent_id=parent_id, parent_position=parent_position,
                                **values))
            elif row.status != RUNNING:
                raise ValueError(f"run {start.run_id} is already saved")   # a run is saved once
            else:
                for name, value in values.items():
                    setattr(row, name, value)
        return start.run_id

    def mark_interrupted(self) -> int:
        """At start-up: runs still "running" were cut off by a crash or a kill; say so."""
        with self.sessions.begin() as session:
            return session.execute(update(Run).where(Run.status == RUNNING)
                                   .values(status=INTERRUPTED, finished_at=utcnow())).rowcount

    def save_comparison(self, run_ids: list[str], owner: str | None = None, config: dict[str, Any] | None = None,
                        title: str = "") -> str:
        row = Comparison(id=uuid.uuid4().hex, owner=owner, run_ids=list(run_ids), config=dict(config or {}),
                         title=title[:200])
        with self.sessions.begin() as session:
            session.add(row)
        return row.id

    def comparison(self, comparison_id: str) -> Comparison | None:
        with self.sessions() as session:
            return session.get(Comparison, comparison_id)

    def events(self, run_id: str) -> list[Event] | None:
        with self.sessions() as session:
            row = session.get(Run, run_id)
            return from_dicts(row.events) if row else None

    def get(self, run_id: str) -> Run | None:
        """The whole row, event blob included (loaded now: the session closes on return)."""
        with self.sessions() as session:
            return session.get(Run, run_id, options=[undefer(Run.events)])

    def recent(self, limit: int = 50) -> list[RunSummary]:
        with self.sessions() as session:
            rows = session.scalars(select(Run).order_by(Run.created_at.desc()).limit(limit)).all()
            return [summary(r) for r in rows]

    def delete(self, run_id: str) -> bool:
        with self.sessions.begin() as session:
            return session.execute(delete(Run).where(Run.id == run_id)).rowcount > 0

    def count(self) -> int:
        with self.sessions() as session:
            return session.scalar(select(func.count()).select_from(Run)) or 0


_default: dict[str, RunRepository] = {}


def default_repository() -> RunRepository:
    url = settings().database_url
    if url not in _default:
        _default[url] = RunRepository(url)
    return _default[url]


def summary(r: Run) -> RunSummary:
    """A History row: never touches the deferred event blob."""
    return RunSummary(r.id, r.created_at, r.model_id, r.method, r.prompt, r.output, r.status, r.new_tokens,
                      r.tokens_per_s, r.owner, r.public, r.favourite, r.parent_id, r.parent_position)


def run_as_dict(row: Run) -> dict[str, Any]:
    return {"id": row.id, "model_id": row.model_id, "method": row.method, "params": row.params,
            "seed": row.seed, "prompt": row.prompt, "output": row.output, "status": row.status,
            "metrics": row.metrics, "created_at": row.created_at.isoformat()}
