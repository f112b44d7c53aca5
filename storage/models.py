"""Typed SQLAlchemy 2.0 models. One row per run: what was asked, what came out, every event;
one row per comparison: the runs it holds, in column order. Schema changes go through
migrations (storage/migrations), never `create_all` on a database that already has data."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column

# Run and comparison ids: uuid4 hex (122 random bits); what every handler checks an id against.
ID_PATTERN = re.compile(r"[0-9a-f]{32}")

# A run's life: "running" from its first event, then how it ended (the MetricsEvent's stop reason:
# eos | length | stopped | error | time limit), or "interrupted" when the server died mid-run.
RUNNING, INTERRUPTED = "running", "interrupted"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_owner_created", "owner", "created_at"),
                      Index("ix_runs_public_created", "public", "created_at"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)      # uuid4 hex: 122 random bits
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    model_id: Mapped[str] = mapped_column(String(300))
    dtype: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(64), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    output: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    # the event trace is the large part (a 64-token Token Recycling run is ~343 KB): never loaded by lists
    events: Mapped[list[dict[str, Any]]] = deferred(mapped_column(JSON))
    # summary numbers copied out of `metrics`, so History lists without parsing JSON
    new_tokens: Mapped[int] = mapped_column(Integer, default=0)
    tokens_per_s: Mapped[float] = mapped_column(Float, default=0.0)
    # who may see it: its owner (a per-browser key or a signed-in user), everyone once published;
    # anyone holding the link (the unguessable id) may open it read-only
    owner: Mapped[str | None] = mapped_column(String(64))
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    favourite: Mapped[bool] = mapped_column(Boolean, default=False)
    # a branch: the run it continues and the index of the first new token (its parent's tokens before it are kept)
    parent_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    parent_position: Mapped[int | None] = mapped_column(Integer)


class Comparison(Base):
    __tablename__ = "comparisons"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)      # uuid4 hex, like runs
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    title: Mapped[str] = mapped_column(String(200), default="")
    run_ids: Mapped[list[str]] = mapped_column(JSON)                     # column order
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # shared prompt/model/seed as asked
