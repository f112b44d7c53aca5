"""Whose runs are whose: a per-browser owner key (kept in the browser's localStorage), or the
signed-in user where login is configured. History lists a caller's own runs; others reach a run
only through its link or once its owner publishes it."""

from __future__ import annotations

import re
import secrets
import uuid

import gradio as gr

from ..config import settings

STORAGE_KEY = "decoding-playground-owner"
_KEY = re.compile(r"[0-9a-f]{32}")


def secret() -> str:
    """The secret that encrypts the key in localStorage: PLAYGROUND_SECRET, else one kept in the
    cache folder, so a browser keeps its identity (and History) across server restarts."""
    path = settings().cache_dir / "browser-state.secret"
    try:
        return path.read_text().strip()
    except OSError:
        value = secrets.token_hex(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
        return value


def browser_key_state() -> gr.BrowserState:
    return gr.BrowserState("", storage_key=STORAGE_KEY, secret=secret())


def new_key(current: str | None) -> str:
    """The browser's key, made on its first visit (called from demo.load)."""
    return current if isinstance(current, str) and _KEY.fullmatch(current) else uuid.uuid4().hex


def owner_of(request: gr.Request | None, browser_key: str | None) -> str | None:
    """"user:<name>" when signed in, else "browser:<key>"; None for a caller with neither
    (an API caller that sent no key: its runs are reachable by link only)."""
    username = getattr(request, "username", None) if request is not None else None
    if username:
        return f"user:{username}"[:64]
    if isinstance(browser_key, str) and _KEY.fullmatch(browser_key):
        return f"browser:{browser_key}"
    return None
