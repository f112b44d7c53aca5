"""Settings, read once from the environment. Every knob has a documented default (README)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = _env(name, default)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    cache_dir: Path          # converted models and the measured memory bandwidth live here
    database_url: str        # SQLite by default; any SQLAlchemy URL (PostgreSQL) works unchanged
    default_model: str
    default_dtype: str
    max_new_tokens_cap: int  # server-side clamp: API callers bypass slider bounds
    threads: int
    forward: str             # "lean" (playground/lean_forward.py where the model allows) or "transformers"
    host: str
    port: int
    public_url: str          # base of share links (set it to the Space's URL when deployed)

    @staticmethod
    def from_env() -> "Settings":
        cache_dir = Path(_env("PLAYGROUND_CACHE_DIR", str(Path.home() / ".cache" / "decoding-playground")))
        db_path = Path(_env("PLAYGROUND_DB", str(cache_dir / "runs.sqlite3")))
        return Settings(
            cache_dir=cache_dir,
            database_url=_env("DATABASE_URL", f"sqlite:///{db_path}"),
            default_model=_env("PLAYGROUND_MODEL", "embedded"),
            default_dtype=_env("PLAYGROUND_DTYPE", "float32"),
            max_new_tokens_cap=int(_env("PLAYGROUND_MAX_NEW_TOKENS_CAP", "512")),
            threads=int(_env("PLAYGROUND_THREADS", str(os.cpu_count() or 1))),
            forward=_choice("PLAYGROUND_FORWARD", "lean", ("lean", "transformers")),
            host=_env("PLAYGROUND_HOST", "127.0.0.1"),
            port=int(_env("PLAYGROUND_PORT", "7860")),
            public_url=_env("PLAYGROUND_PUBLIC_URL", ""),
        )


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.from_env()
