"""What every tab shares: drawing a run's events into the page's outputs, the form's parameter
widgets, and streaming a run to the page (paced, saved at the end, stopped with the page)."""

from __future__ import annotations

import html
import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import gradio as gr

from storage import default_repository
from strategies import REGISTRY, Param
from visualizers import PANELS, render

from ..baseline import References, remember
from ..config import settings
from ..events import Event, MetricsEvent, NoticeEvent, RunStarted, TokenEvent
from ..model_thread import MODEL_THREAD
from ..runner import PreparedRun, execute

log = logging.getLogger(__name__)

# Drawing must cost the generator under 10 % of its time: redraw at most every MIN_INTERVAL_S,
# and never sooner than RENDER_FACTOR x the last drawing's cost.
MIN_INTERVAL_S = 0.4
RENDER_FACTOR = 15


class StopFlags:
    """The Stop flags of the runs in flight, one per browser session; each tab keeps its own, so Stop on
    one tab never stops another's run. A run holds its flag for exactly as long as it runs."""

    def __init__(self):
        self._flags: dict[str, threading.Event] = {}

    @contextmanager
    def held(self, session: str) -> Iterator[threading.Event]:
        flag = self._flags[session] = threading.Event()
        try:
            yield flag
        finally:
            if self._flags.get(session) is flag:
                del self._flags[session]

    def stop(self, session: str) -> None:
        if session in self._flags:
            self._flags[session].set()

    def __contains__(self, session: str) -> bool:
        return session in self._flags


def param_component(param: Param):
    label, info = param.name, param.help or None
    if param.kind == "bool":
        return gr.Checkbox(value=param.default, label=label, info=info)
    if param.kind == "text":
        # no max_length: the browser would cut the text silently; the server refuses it with a message
        return gr.Textbox(value=param.default, label=label, info=info, lines=2)
    if param.kind == "choice":
        return gr.Radio(list(param.choices), value=param.default, label=label, info=info)
    if param.low is not None and param.high is not None:
        return gr.Slider(param.low, param.high, value=param.default, step=param.step or (1 if param.kind == "int" else 0.01),
                         label=label, info=info)
    return gr.Number(value=param.default, label=label, info=info, precision=0 if param.kind == "int" else None)


def method_help(name: str) -> str:
    cls = REGISTRY[name]
    link = f" [paper]({cls.paper})" if cls.paper else ""
    return f"{html.escape(cls.summary)} {html.escape(cls.lossless_help())}{link}"


def panel_plots(prefix: str | None = None) -> list[gr.Plot]:
    """One hidden plot per visualizer panel (shown when a run's events draw it); `prefix` names
    them for the browser tests (elem_id prefix + panel key)."""
    return [gr.Plot(label=p.label, visible=False, elem_id=f"{prefix}{p.key}" if prefix else None) for p in PANELS]


def outputs_for(events: list[Event]) -> list[Any]:
    """[text html, metrics html, *plots] for a run's events, live or saved."""
    drawn = render(events)
    plots = [gr.Plot(value=drawn.figures[p.key], visible=drawn.figures[p.key] is not None) for p in PANELS]
    return [drawn.text_html, drawn.metrics_html, *plots]


def share_link(run_id: str) -> str:
    base = settings().public_url.rstrip("/")
    return f"Saved as run `{run_id}` · [share link]({base}/?run={run_id})"


def _saving(write) -> tuple[object, str | None]:
    """(what `write` returned, None), or (None, why the database refused it): a failed save never ends
    the run or loses its output."""
    from storage.db import where

    try:
        return write(), None
    except Exception as exc:  # locked, read-only, full, gone: one line for the page, the rest to the log
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        log.warning("run not saved: %s", exc)
        return None, (f"This run was not saved (the database {where(settings().database_url)} refused it: "
                      f"{reason}); its output is only on this page.")


def stream(prepared: PreparedRun, stop: threading.Event, references: References | None, owner: str | None = None
           ) -> Iterator[tuple[list[Event], str | None, References | None]]:
    """A run as the page sees it: (events so far, None, None) at each redraw, paced so drawing costs the
    method little, then (all events, saved run id, this user's greedy references updated by the run).
    `references` is this browser session's own (a gr.State), never another visitor's. The run's row
    is written when it starts, so a server killed mid-run leaves it marked "interrupted"."""
    run = MODEL_THREAD.steps(execute(prepared, stop, references=references))   # the server's model thread
    events: list[Event] = []
    saved = False
    last_draw, draw_cost = 0.0, 0.0
    try:
        for event in run:
            events.append(event)
            if isinstance(event, RunStarted):
                _saving(lambda: default_repository().start(event, owner=owner))   # failing: saved whole at the end
            if isinstance(event, MetricsEvent):
                break
            now = time.perf_counter()
            first = isinstance(event, TokenEvent) and event.index == 0
            if first or now - last_draw >= max(MIN_INTERVAL_S, RENDER_FACTOR * draw_cost):
                yield events, None, None                       # the caller draws while we wait here
                last_draw = time.perf_counter()
                draw_cost = last_draw - now
        run_id, refusal = _saving(lambda: default_repository().save(events, owner=owner))
        if refusal:   # the output stays on the page, and the page says why it is not in History
            events.insert(len(events) - 1, NoticeEvent("not saved", refusal))
        saved = True
        yield events, run_id, remember(references, events)
    finally:
        if not saved:       # the page was closed mid-run: stop the method, keep what it made
            stop.set()
            events.extend(run)
            if events and isinstance(events[-1], MetricsEvent):
                _saving(lambda: default_repository().save(events, owner=owner))
