"""Saving and reading runs and comparisons. A run's row is written when it starts (status
"running") and completed in one transaction when it ends; lists never load the event blobs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import undefer

from playground.config import settings
from playground.events import Event, MetricsEvent, RunStarted, TokenEvent, TreeEvent, from_dicts, to_dicts

from .db import session_factory
from .models import INTERRUPTED, RUNNING, Comparison, Run, utcnow


PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
MAX_QUERY = 200          # characters of a History search: longer is cut, not refused
MAX_TREE = 200           # runs drawn in one branch tree


@dataclass(frozen=True)
class HistoryQuery:
    """What one History page asks for. `scope` "mine" lists the owner's runs, "published" the runs
    others published; `text` matches prompt or output anywhere (case-insensitive for ASCII)."""
    owner: str | None
    scope: str = "mine"
    text: str = ""
    model: str = ""
    method: str = ""
    favourites: bool = False
    page: int = 1
    page_size: int = PAGE_SIZE


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
                  metrics={}, events=None, owner=owner, parent_id=parent_id or started.parent_id,
                  parent_position=parent_position if parent_id else started.parent_position)   # a branch says its own
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
                session.add(Run(id=start.run_id, owner=owner, parent_id=parent_id or start.parent_id,
                                parent_position=parent_position if parent_id else start.parent_position, **values))
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
        """A saved run's events; None when there is no such run or it has none yet (still running, or
        cut off by a crash: its row is written at the start, its events at the end)."""
        with self.sessions() as session:
            row = session.get(Run, run_id)
            return from_dicts(row.events) if row is not None and row.events is not None else None

    def get(self, run_id: str) -> Run | None:
        """The whole row, event blob included (loaded now: the session closes on return)."""
        with self.sessions() as session:
            return session.get(Run, run_id, options=[undefer(Run.events)])

    def recent(self, limit: int = 50) -> list[RunSummary]:
        with self.sessions() as session:
            rows = session.scalars(select(Run).order_by(Run.created_at.desc()).limit(limit)).all()
            return [summary(r) for r in rows]

    def delete(self, run_id: str, owner: str | None = None) -> bool:
        """Delete a run; with `owner`, only when that owner's (the UI always passes one). Its
        branches stay, with no parent (the foreign key sets it NULL)."""
        condition = Run.id == run_id
        if owner is not None:
            condition = and_(condition, Run.owner == owner)
        with self.sessions.begin() as session:
            return session.execute(delete(Run).where(condition)).rowcount > 0

    def set_flag(self, run_id: str, owner: str | None, name: str, value: bool) -> bool:
        """Set `favourite` or `public` on the owner's own run; False when it is not theirs (or gone).
        A run with no owner (an API caller's) can be changed by nobody."""
        if name not in ("favourite", "public") or not owner:
            return False
        with self.sessions.begin() as session:
            changed = session.execute(update(Run).where(Run.id == run_id, Run.owner == owner)
                                      .values({name: bool(value)})).rowcount
        return changed > 0

    def history(self, query: HistoryQuery) -> tuple[list[RunSummary], int]:
        """One page of History, newest first, and how many runs match in all. Never loads the
        event blobs (deferred), and the owner / published filters read their indexes
        (ix_runs_owner_created, ix_runs_public_created)."""
        conditions = self._history_conditions(query)
        if conditions is None:
            return [], 0
        size = max(1, min(int(query.page_size), MAX_PAGE_SIZE))
        page = max(1, int(query.page))
        with self.sessions() as session:
            total = session.scalar(select(func.count()).select_from(Run).where(*conditions)) or 0
            rows = session.scalars(select(Run).where(*conditions).order_by(Run.created_at.desc(), Run.id.desc())
                                   .limit(size).offset((page - 1) * size)).all()
            return [summary(r) for r in rows], total

    @staticmethod
    def _history_conditions(query: HistoryQuery) -> list | None:
        if query.scope == "published":
            conditions = [Run.public.is_(True)]
            if query.owner:
                conditions.append(or_(Run.owner.is_(None), Run.owner != query.owner))
        elif query.owner:
            conditions = [Run.owner == query.owner]
        else:
            return None                           # no owner, no runs of "mine"
        if query.model.strip():
            conditions.append(Run.model_id == query.model.strip())
        if query.method.strip():
            conditions.append(Run.method == query.method.strip())
        if query.favourites:
            conditions.append(Run.favourite.is_(True))
        text = query.text.strip()[:MAX_QUERY]
        if text:
            pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            conditions.append(or_(Run.prompt.ilike(pattern, escape="\\"), Run.output.ilike(pattern, escape="\\")))
        return conditions

    def summaries(self, run_ids: list[str]) -> list[RunSummary]:
        """The rows of these runs (no event blobs), in the order asked; missing ids are left out."""
        with self.sessions() as session:
            rows = {r.id: r for r in session.scalars(select(Run).where(Run.id.in_(list(run_ids)))).all()}
            return [summary(rows[i]) for i in run_ids if i in rows]

    def tree(self, run_id: str) -> list[tuple[int, RunSummary]]:
        """The branch tree that holds `run_id`: from its root (walking parent links up), every
        descendant depth first, as (depth, run); at most MAX_TREE runs."""
        with self.sessions() as session:
            root, seen = session.get(Run, run_id), set()
            if root is None:
                return []
            while root.parent_id and root.parent_id not in seen:
                seen.add(root.id)
                parent = session.get(Run, root.parent_id)
                if parent is None:
                    break
                root = parent
            result: list[tuple[int, RunSummary]] = []
            stack, drawn = [(0, root)], set()
            while stack and len(result) < MAX_TREE:
                depth, row = stack.pop()
                if row.id in drawn:          # parent links edited by hand could loop
                    continue
                drawn.add(row.id)
                result.append((depth, summary(row)))
                children = session.scalars(select(Run).where(Run.parent_id == row.id)
                                           .order_by(Run.parent_position.desc(), Run.created_at.desc())).all()
                stack.extend((depth + 1, c) for c in children)
            return result

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
