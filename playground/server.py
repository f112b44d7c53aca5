"""The server around the Gradio app: what must hold before the first visitor (the database opens and
is writable, runs cut off by the last crash are marked, the model is warm) and the HTTP surface a
hostile caller sees besides the app's own events (a health check, no upload route, an optional login).

The database is checked first, in a second: a bad database used to be found only after the model
had warmed up for over a minute, or after a visitor's run had finished and could not be saved.
"""

from __future__ import annotations

import json
import logging
import sys

import gradio as gr
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .config import settings
from .limits import ADMITTED, GENERATION, ClientLimits, client_key, queued_for

log = logging.getLogger(__name__)
HEALTH_PATH = "/healthz"


class NoUploads:
    """The app has no upload field, so gradio's upload route (any file, any size, anyone) is closed."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].rstrip("/").endswith("/upload"):
            response = JSONResponse({"detail": "This app takes no uploads."}, status_code=403)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class QueueDoor:
    """Where a generation asks to join the queue (POST .../queue/join for an event of the generation group),
    the visitor's rate and queue share are checked before gradio reads the request's inputs: a flood of 40
    joins costs 40 small JSON reads, not 40 x 280 input conversions that held the event loop for seconds.
    A refusal is 429 with "try again in N s" in `detail`, which the page shows as the error."""

    def __init__(self, app):
        self.app = app
        self.limits = ClientLimits.from_settings()     # one ledger per server
        self.joining: dict[str, int] = {}              # admitted joins gradio has not queued yet, per client

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/queue/join"):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        client = client_key(Request(scope))
        refusal = self._check(scope, body, client)
        if refusal:
            await JSONResponse({"detail": refusal}, status_code=429)(scope, receive, send)
            return
        scope.setdefault("state", {})[ADMITTED] = True      # the handlers' own check (limits.py) counts it once
        # until gradio answers the join, the event is in neither its queue nor this count: hold its place here
        self.joining[client] = self.joining.get(client, 0) + 1
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.joining[client] -= 1
            if not self.joining[client]:
                del self.joining[client]

    def _check(self, scope, body: bytes, client: str) -> str | None:
        try:
            fn_index = json.loads(body).get("fn_index")
            blocks = scope["app"].get_blocks()
            fn = blocks.fns[int(fn_index)]
        except (ValueError, TypeError, KeyError, AttributeError):
            return None                                   # not ours to judge: gradio answers malformed joins
        if fn.concurrency_id != GENERATION:
            return None
        busy, wait_s = queued_for(blocks, client)
        return self.limits.admit(client, busy + self.joining.get(client, 0), wait_s)


async def _read_body(receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes, receive):
    """A `receive` that hands the already-read body to the app once, then listens to the real one."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def health(_request: Request) -> JSONResponse:
    """200 when the database answers; a container's HEALTHCHECK and a load balancer read this. Sync, so
    Starlette runs it in a worker thread, never on the event loop."""
    from sqlalchemy import text

    from storage.db import engine_for

    try:
        with engine_for(settings().database_url).connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # the reason goes to the log; the probe only needs up or down
        log.warning("health check: database: %s", exc)
        return JSONResponse({"status": "down", "database": "unreachable"}, status_code=503)
    from .models import loaded_ids

    return JSONResponse({"status": "ok", "database": "ok", "models": [m for m, _ in loaded_ids()]})


def app_kwargs() -> dict:
    """What the FastAPI app under gradio gets: the health route, the upload guard, the queue's door, and
    compression (the page and its config are ~4.7 MB of text, ~1 MB of it Compare's four method forms;
    event streams are never buffered: Starlette leaves text/event-stream alone)."""
    return {"routes": [Route(HEALTH_PATH, health, methods=["GET"])],
            "middleware": [Middleware(GZipMiddleware, minimum_size=1024), Middleware(NoUploads),
                           Middleware(QueueDoor)]}


def auth() -> tuple[str, str] | None:
    """PLAYGROUND_AUTH=user:password puts gradio's login page in front of everything."""
    user, sep, password = settings().auth.partition(":")
    if not settings().auth:
        return None
    if not sep or not user or not password:
        raise SystemExit("error: PLAYGROUND_AUTH must be user:password")
    return user, password


def prepare_database() -> None:
    """Open and check the database (its path in the error), then mark the runs the last crash cut off."""
    from storage import default_repository
    from storage.db import DatabaseUnavailable, check_database

    try:
        check_database(settings().database_url)
    except DatabaseUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    marked = default_repository().mark_interrupted()
    if marked:
        log.warning("%s run(s) left running by the last server were marked interrupted", marked)


def launch(demo: gr.Blocks | None = None, host: str | None = None, port: int | None = None,
           preload: bool = True, database_ready: bool = False) -> None:
    """`database_ready`: the caller ran prepare_database already (app.py does, before building the UI)."""
    from visualizers import CSS

    from .models import load_model
    from .runner import warm_up
    from .ui import build_app

    if not database_ready:
        prepare_database()            # seconds, before the model's minute: a bad database stops us here
    if preload:
        loaded = load_model()         # convert/cache the default model before the first visitor
        if settings().warm_up:
            warm_up(loaded)           # and time its passes while no visitor competes
    demo = demo or build_app()
    demo.launch(server_name=host or settings().host, server_port=port or settings().port, css=CSS,
                footer_links=["api", "gradio"], auth=auth(), max_file_size=1, app_kwargs=app_kwargs(),
                # gradio 6.31's start-up probe (one HEAD on / with a 3 s timeout, then it raises) killed a
                # server whose first page render was slow on a busy 2-core machine; /healthz says when we are up
                _frontend=False, prevent_thread_lock=settings().model_thread)
    if settings().model_thread:
        serve_model_thread(demo)


def serve_model_thread(demo: gr.Blocks) -> None:
    """Instead of gradio's idle wait, this thread (the one that loaded and warmed the model) runs every
    step of every run until the server stops (model_thread.py says why); Ctrl+C closes the server."""
    from .model_thread import MODEL_THREAD

    try:
        MODEL_THREAD.serve(running=lambda: demo.is_running)
    except KeyboardInterrupt:
        print("Keyboard interruption in main thread... closing server.")
    finally:
        demo.close()
