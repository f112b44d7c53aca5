"""Whose runs are whose: a per-browser owner key (kept in the browser's localStorage), or the
signed-in user where login is configured (a password, PLAYGROUND_AUTH, or "Sign in with Hugging Face"
on a Space with OAuth). History lists a caller's own runs; others reach a run only through its link or
once its owner publishes it."""

from __future__ import annotations

import os
import re
import secrets
import time
import uuid

import gradio as gr

from ..config import _flag, settings

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
    (an API caller that sent no key: its runs are reachable by link only). The name comes from the
    server's side only: the password login's user, or the Hub name in the signed session cookie."""
    username = hub_username(request) or (getattr(request, "username", None) if request is not None else None)
    if username:
        return f"user:{username}"[:64]
    if isinstance(browser_key, str) and _KEY.fullmatch(browser_key):
        return f"browser:{browser_key}"
    return None


# --- Sign in with Hugging Face (a Space with `hf_oauth: true`) ---------------------------------------

# What a Space with `hf_oauth: true` sets; gradio's login routes need all four.
OAUTH_VARIABLES = ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES", "OPENID_PROVIDER_URL")
# at most 59 characters, so "user:<name>" fits the 64-character owner column whole (two long names cut
# to the same prefix would otherwise share their runs)
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,58}")


def oauth_enabled() -> bool:
    """PLAYGROUND_OAUTH=1/0; unset: on exactly where the Space has OAuth (it sets OAUTH_CLIENT_ID)."""
    return _flag("PLAYGROUND_OAUTH", bool(os.environ.get("OAUTH_CLIENT_ID")))


def check_oauth() -> None:
    """Refuse to start a sign-in that would not be real. Off a Space, gradio replaces the login with a
    mock that signs every visitor in as this machine's own Hub user, in a session cookie signed with a
    key anyone can compute (sha256 of "-v4" without OAUTH_CLIENT_SECRET): anyone could then claim any
    name, and so anyone's runs."""
    from gradio.utils import get_space

    missing = [name for name in OAUTH_VARIABLES if not os.environ.get(name)]
    if get_space() is None:
        missing = ["SYSTEM=spaces and SPACE_ID", *missing]
    if missing:
        raise SystemExit("error: PLAYGROUND_OAUTH=1 needs a Space with `hf_oauth: true` in its README front "
                         f"matter; not set: {', '.join(missing)}")


def login_button() -> gr.LoginButton | None:
    """The Sign-in button where OAuth is on (its presence is what makes gradio add the login routes and
    the session cookie); nothing otherwise, and the browser key stays the owner."""
    if not oauth_enabled():
        return None
    check_oauth()
    return gr.LoginButton()


def hub_username(request: gr.Request | None) -> str | None:
    """The signed-in Hub name, read from the session Starlette's SessionMiddleware decoded from the signed
    cookie gradio's /login/callback set (scope["session"]); never from anything the caller sends as data.
    None where OAuth is off, nobody signed in, or the login has expired."""
    if request is None or not oauth_enabled():
        return None
    scope = getattr(getattr(request, "request", None), "scope", None)
    session = scope.get("session") if isinstance(scope, dict) else None
    info = session.get("oauth_info") if isinstance(session, dict) else None
    if not isinstance(info, dict):
        return None
    expires_at = info.get("expires_at")
    if isinstance(expires_at, (int, float)) and expires_at < time.time():
        return None                                      # as gradio's own check: expired = signed out
    userinfo = info.get("userinfo")
    name = userinfo.get("preferred_username") if isinstance(userinfo, dict) else None
    return name if isinstance(name, str) and _HUB_NAME.fullmatch(name) else None
