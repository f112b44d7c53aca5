"""Saving and reading runs. A run is written in one transaction, whole or not at all."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select

from playground.config import settings
from playground.events import Event, MetricsEvent, RunStarted, TokenEvent, TreeEvent, from_dicts, to_dicts

from .db import session_factory
from .models import Run, utcnow


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

    def save(self, events: list[Event]) -> str:
        """Persist a finished or stopped run from its events (must start with RunStarted and end with metrics)."""
        start, metrics = events[0], events[-1]
        if not isinstance(start, RunStarted) or not isinstance(metrics, MetricsEvent):
            raise ValueError("a run is saved only once complete: RunStarted ... MetricsEvent")
        row = Run(
            id=start.run_id, model_id=start.model_id, dtype=start.dtype, method=start.strategy,
            params=start.params, seed=start.seed, prompt=start.prompt, output=output_text(events),
            status=metrics.stop_reason, metrics=metrics.to_dict(), events=to_dicts(events),
            finished_at=utcnow(),
        )
        with self.sessions.begin() as session:
            session.add(row)
        return row.id

    def events(self, run_id: str) -> list[Event] | None:
        with self.sessions() as session:
            row = session.get(Run, run_id)
            return from_dicts(row.events) if row else None

    def get(self, run_id: str) -> Run | None:
        with self.sessions() as session:
            return session.get(Run, run_id)

    def recent(self, limit: int = 50) -> list[RunSummary]:
        with self.sessions() as session:
            rows = session.scalars(select(Run).order_by(Run.created_at.desc()).limit(limit)).all()
            return [RunSummary(r.id, r.created_at, r.model_id, r.method, r.prompt, r.output, r.status,
                               int(r.metrics.get("new_tokens", 0)), float(r.metrics.get("tokens_per_s", 0.0)))
                    for r in rows]

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


def run_as_dict(row: Run) -> dict[str, Any]:
    return {"id": row.id, "model_id": row.model_id, "method": row.method, "params": row.params,
            "seed": row.seed, "prompt": row.prompt, "output": row.output, "status": row.status,
            "metrics": row.metrics, "created_at": row.created_at.isoformat()}
