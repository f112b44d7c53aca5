"""Settings, read once from the environment. Every knob has a documented default (README)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _flag(name: str, default: bool) -> bool:
    value = _env(name, "1" if default else "0").lower()
    if value not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        raise ValueError(f"{name} must be 0 or 1; got {value!r}")
    return value in ("1", "true", "yes", "on")


def _list(name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in os.environ.get(name, "").split(",") if item.strip())


def _choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = _env(name, default)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def default_cache_dir() -> Path:
    return Path(_env("PLAYGROUND_CACHE_DIR", str(Path.home() / ".cache" / "decoding-playground")))


@dataclass(frozen=True)
class Settings:
    cache_dir: Path          # converted models and the measured memory bandwidth live here
    database_url: str        # SQLite by default; any SQLAlchemy URL (PostgreSQL) works unchanged
    default_model: str
    default_dtype: str
    max_new_tokens_cap: int  # server-side clamp: API callers bypass slider bounds
    threads: int
    forward: str             # "lean" (playground/lean_forward.py where the model allows) or "transformers"
    cpu_linear: bool         # the lean forward's products through the kernel that suits the row count (playground/cpu_linear.py)
    compile_step: bool       # compile the one-token decode step at warm-up (playground/compiled_step.py)
    low_bit: bool            # weights that are exact 4/8-bit codes (the embedded GGUF's) read as codes in few-row products (playground/low_bit.py)
    host: str
    port: int
    public_url: str          # base of share links (set it to the Space's URL when deployed)
    # --- what one visitor may load and cost (README "Limits") ---
    allowed_models: tuple[str, ...]  # empty: any Hub id or local folder (a lab server); else only these + embedded
    trust_remote_code: bool  # never run a Hub repository's own Python unless the operator says so
    model_cache: int         # models kept loaded at once; the least recently used is dropped first
    hub_timeout_s: float     # one online look-up of an uncached Hub id, never a retry loop
    device: str              # "auto" (CUDA when present), "cpu" or "cuda"
    max_prompt_tokens: int   # the templated prompt's tokens
    max_token_rows: int      # rows x (prompt + new + tree tokens): the KV-cache memory bound of one run
    max_run_s: float         # wall-clock limit of one run; it then stops like Stop, saved as "time limit"
    rate_limit: int          # generations one client may start per rate_window_s (sliding window)
    rate_window_s: float
    queue_share: int         # generations one client may have waiting or running at once
    queue_size: int          # all generations waiting, every client together
    concurrency: int         # generations running at once (the model is shared)
    auth: str                # "user:password" puts a login in front of the app; empty: open
    trust_proxy: bool        # a proxy in front sets X-Forwarded-For (Spaces): use it to tell visitors apart
    warm_up: bool            # time the model's passes and greedy rate at start-up (off: a faster start, for tests)
    model_thread: bool       # the server runs every model step on the thread that loaded the model (model_thread.py)

    @staticmethod
    def from_env() -> "Settings":
        cache_dir = default_cache_dir()
        db_path = Path(_env("PLAYGROUND_DB", str(cache_dir / "runs.sqlite3")))
        return Settings(
            cache_dir=cache_dir,
            database_url=_env("DATABASE_URL", f"sqlite:///{db_path}"),
            default_model=_env("PLAYGROUND_MODEL", "embedded"),
            default_dtype=_env("PLAYGROUND_DTYPE", "float32"),
            max_new_tokens_cap=int(_env("PLAYGROUND_MAX_NEW_TOKENS_CAP", "512")),
            threads=int(_env("PLAYGROUND_THREADS", str(os.cpu_count() or 1))),
            forward=_choice("PLAYGROUND_FORWARD", "lean", ("lean", "transformers")),
            cpu_linear=_flag("PLAYGROUND_CPU_LINEAR", True),
            compile_step=_flag("PLAYGROUND_COMPILE", True),
            low_bit=_flag("PLAYGROUND_LOW_BIT", True),
            host=_env("PLAYGROUND_HOST", "127.0.0.1"),
            port=int(_env("PLAYGROUND_PORT", "7860")),
            public_url=_env("PLAYGROUND_PUBLIC_URL", ""),
            allowed_models=_list("PLAYGROUND_ALLOWED_MODELS"),
            trust_remote_code=_flag("PLAYGROUND_TRUST_REMOTE_CODE", False),
            model_cache=max(1, int(_env("PLAYGROUND_MODEL_CACHE", "2"))),
            hub_timeout_s=float(_env("PLAYGROUND_HUB_TIMEOUT", "10")),
            device=_choice("PLAYGROUND_DEVICE", "auto", ("auto", "cpu", "cuda")),
            max_prompt_tokens=int(_env("PLAYGROUND_MAX_PROMPT_TOKENS", "4096")),
            max_token_rows=int(_env("PLAYGROUND_MAX_TOKEN_ROWS", "32768")),
            max_run_s=float(_env("PLAYGROUND_MAX_RUN_SECONDS", "120")),
            rate_limit=int(_env("PLAYGROUND_RATE_LIMIT", "20")),
            rate_window_s=float(_env("PLAYGROUND_RATE_WINDOW", "60")),
            queue_share=max(1, int(_env("PLAYGROUND_QUEUE_SHARE", "2"))),
            queue_size=max(1, int(_env("PLAYGROUND_QUEUE_SIZE", "64"))),
            concurrency=max(1, int(_env("PLAYGROUND_CONCURRENCY", "1"))),
            auth=_env("PLAYGROUND_AUTH", ""),
            warm_up=_flag("PLAYGROUND_WARM_UP", True),
            model_thread=_flag("PLAYGROUND_MODEL_THREAD", True),
            trust_proxy=_flag("PLAYGROUND_TRUST_PROXY", bool(os.environ.get("SPACE_ID"))),
        )


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.from_env()
