"""Fairness between visitors: a per-client rate limit (sliding window) and a per-client share of the
generation queue, checked when a generation asks to join the queue (gradio's `validator`), so a flood
from one client is refused at the door instead of filling the queue for everyone.

A client is the logged-in user, else the connecting address (the first X-Forwarded-For hop only where
PLAYGROUND_TRUST_PROXY=1 says a proxy in front sets it; otherwise anyone could claim any address).
The ledger is one object per server (built with the app), not per-visitor state in a module global.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from typing import Any, Callable

from .config import settings

GENERATION = "generation"   # the gradio concurrency group of every event that runs a model
ADMITTED = "playground_admitted"   # set on a request's scope state by the server's door once it let it in
BURST_S = 1.0               # admissions this recent count as queued: gradio shows an event in its queue a moment after


def client_key(request: Any) -> str:
    """Who is asking: a gr.Request or a fastapi.Request (both carry headers and client)."""
    if request is None:
        return "local"
    username = getattr(request, "username", None)
    if username:
        return f"user:{username}"
    if settings().trust_proxy:
        forwarded = (request.headers.get("x-forwarded-for") or "").split(",")[0].strip()
        if forwarded:
            return f"ip:{forwarded}"
    client = getattr(request, "client", None)
    return f"ip:{getattr(client, 'host', None) or 'unknown'}"


class ClientLimits:
    """Each client may start `rate` generations per `window_s` seconds and have `share` of them waiting or
    running at once. `admit` answers None (admitted, and recorded) or the message to show."""

    def __init__(self, rate: int, window_s: float, share: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 10_000):
        self.rate, self.window_s, self.share = rate, window_s, share
        self.clock, self.max_clients = clock, max_clients
        self._starts: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls) -> "ClientLimits":
        s = settings()
        return cls(s.rate_limit, s.rate_window_s, s.queue_share)

    def admit(self, client: str, busy: int = 0, wait_s: float = 0.0) -> str | None:
        """`busy`: this client's generations gradio holds now (queued or running); `wait_s`: about how long
        until one of them is done (for the message)."""
        with self._lock:
            now = self.clock()
            starts = self._starts.setdefault(client, deque())
            self._starts.move_to_end(client)
            while starts and starts[0] <= now - self.window_s:
                starts.popleft()
            recent = sum(1 for t in starts if t > now - BURST_S)
            if max(busy, recent) >= self.share:
                retry = max(1, math.ceil(wait_s if busy > recent else BURST_S))
                return (f"You already have {self.share} generation{'s' if self.share > 1 else ''} waiting or "
                        f"running (this server's share per visitor); try again in {retry} s.")
            if len(starts) >= self.rate:
                retry = max(1, math.ceil(starts[0] + self.window_s - now))
                return (f"Too many generations: at most {self.rate} per {self.window_s:g} s per visitor; "
                        f"try again in {retry} s.")
            starts.append(now)
            while len(self._starts) > self.max_clients:      # forget the longest-quiet clients first
                self._starts.popitem(last=False)
            return None


def queued_for(blocks: Any, client: str, group: str = GENERATION) -> tuple[int, float]:
    """(this client's events in `group` that gradio holds, waiting or running; a rough wait until one ends).
    Reads gradio 6's queue (`Blocks._queue`: per-group EventQueue and active_jobs), pinned in requirements."""
    queue = getattr(blocks, "_queue", None)
    if queue is None:
        return 0, 0.0
    waiting = list(getattr(queue.event_queue_per_concurrency_id.get(group), "queue", []))
    running = [e for job in queue.active_jobs if job for e in job if e.concurrency_id == group]
    mine = [e for e in waiting + running if client_key(_EventRequest(e)) == client]
    average = getattr(queue.event_queue_per_concurrency_id.get(group), "avg_time", 0.0) or 0.0
    return len(mine), average * max(1, len(waiting) + len(running))


class _EventRequest:
    """An event's fastapi request seen with its logged-in user, as client_key reads a gr.Request."""

    def __init__(self, event: Any):
        self.username = event.username
        self.headers = event.request.headers if event.request is not None else {}
        self.client = event.request.client if event.request is not None else None


def admit_request(limits: ClientLimits, request: Any) -> str | None:
    """The check for one gr.Request, as a handler's gradio `validator`: None (admitted) or the message. A
    request the server's door (server.QueueDoor) already admitted is not counted again; without the door
    (an app launched some other way) this is the check. The app's Blocks (for its queue) is found
    through the request, so the ledger needs no reference to the app."""
    state = getattr(getattr(request, "request", None), "state", None)
    if state is not None and getattr(state, ADMITTED, False):
        return None
    client = client_key(request)
    app = getattr(getattr(request, "request", None), "app", None)
    blocks = app.get_blocks() if app is not None and hasattr(app, "get_blocks") else None
    busy, wait_s = queued_for(blocks, client)
    return limits.admit(client, busy, wait_s)
