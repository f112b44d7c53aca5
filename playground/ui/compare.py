"""The Compare tab: one prompt, model and seed, 2 to 4 method configurations run one after another
(sharing the loaded model), each streaming into its own column; then the side-by-side table, the overlay
traces and the token diff (visualizers/compare.py). Saved runs (History, a link) draw the same way.

The contract other tabs use: `CompareView` (the drawn comparison's components, for any page),
`compare_outputs(run_ids)` (its values for saved runs, no model, nothing saved), and
`CompareTab.saved_ids` / `CompareTab.load_saved` (draw saved runs here and save them as a comparison).
"""

from __future__ import annotations

import re
import threading
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr

from storage import default_repository
from storage.models import ID_PATTERN
from visualizers import PANELS
from visualizers.compare import (LETTERS, column_label, diff_html, entropy_overlay_figure, probability_overlay_figure,
                                 table_html)

from ..baseline import References
from ..config import settings
from ..events import Event, MetricsEvent, RunStarted
from ..gpu import on_gpu
from ..limits import GENERATION, ClientLimits, admit_request
from ..models import EMBEDDED, EMBEDDED_NAME
from ..runner import GenerationRequest, InvalidRequest, PreparedRun, prepare
from .common import StopFlags, outputs_for, panel_plots, stream
from .generate import method_form, request_from_inputs
from .identity import owner_of

MIN_COLUMNS, MAX_COLUMNS = 2, 4
MAX_IDS_TEXT = 1000          # the saved-ids box: 4 ids and separators fit many times over

# Stop flags of the comparisons in flight, by browser session; each removes its own when it ends.
_stops = StopFlags()


class UnknownRuns(LookupError):
    """Run ids with no saved run (the message names them)."""


class ColumnView:
    """One column's outputs: its title, then what the Generate tab shows for a run."""

    def __init__(self, index: int, prefix: str, visible: bool):
        with gr.Column(visible=visible, elem_id=f"{prefix}-out-{index}", min_width=260) as self.box:
            self.title = gr.Markdown(f"**{LETTERS[index]}**", elem_id=f"{prefix}-title-{index}")
            self.text = gr.HTML(elem_id=f"{prefix}-text-{index}")
            with gr.Accordion("All numbers of this run", open=False):
                self.metrics = gr.HTML(elem_id=f"{prefix}-metrics-{index}")
            self.plots = panel_plots(prefix=f"{prefix}-{index}-")

    def outputs(self) -> list[Any]:
        return [self.title, self.text, self.metrics, *self.plots]


class CompareView:
    """A comparison's components: MAX_COLUMNS columns (hidden beyond the runs shown), the side-by-side
    table, the two overlay plots and the token diff. `outputs` is the order `compare_outputs` fills."""

    def __init__(self, prefix: str = "compare"):
        with gr.Row(equal_height=False):
            self.columns = [ColumnView(i, prefix, i < MIN_COLUMNS) for i in range(MAX_COLUMNS)]
        self.table = gr.HTML(elem_id=f"{prefix}-table")
        with gr.Row():
            self.entropy = gr.Plot(label="Entropy, all columns", visible=False, elem_id=f"{prefix}-entropy")
            self.probability = gr.Plot(label="Token probability, all columns", visible=False,
                                       elem_id=f"{prefix}-probability")
        self.diff = gr.HTML(elem_id=f"{prefix}-diff")
        self.outputs = [*(c.box for c in self.columns), *(o for c in self.columns for o in c.outputs()),
                        self.table, self.entropy, self.probability, self.diff]


def column_values(index: int, events: list[Event]) -> list[Any]:
    """One column's [title, text, metrics, *plots]; a finished run's title links to the run itself."""
    title = f"**{column_label(index, events)}**"
    start = next((e for e in events if isinstance(e, RunStarted)), None)
    if start and isinstance(events[-1], MetricsEvent):
        title += f" · [run `{start.run_id[:8]}`]({settings().public_url.rstrip('/')}/?run={start.run_id})"
    return [title, *outputs_for(events)]


def shared_values(runs: list[list[Event]]) -> list[Any]:
    """[table, entropy overlay, probability overlay, diff] of the runs so far."""
    entropy, probability = entropy_overlay_figure(runs), probability_overlay_figure(runs)
    return [table_html(runs), gr.Plot(value=entropy, visible=entropy is not None),
            gr.Plot(value=probability, visible=probability is not None), diff_html(runs)]


def drawn(runs: list[list[Event]]) -> list[Any]:
    """Every value of a CompareView for these runs (columns beyond them hidden)."""
    boxes = [gr.Column(visible=i < len(runs)) for i in range(MAX_COLUMNS)]
    per_column = []
    for i in range(MAX_COLUMNS):
        per_column += column_values(i, runs[i]) if i < len(runs) else [gr.skip()] * (3 + len(PANELS))
    return [*boxes, *per_column, *shared_values(runs)]


def parse_run_ids(text: Any) -> list[str]:
    """'id, id ...' (commas or spaces) -> 2 to 4 well-formed run ids, or ValueError saying what is wrong."""
    if not isinstance(text, str):
        raise ValueError("Run ids must be text (comma-separated).")
    if len(text) > MAX_IDS_TEXT:
        raise ValueError(f"That is {len(text):,} characters; give {MIN_COLUMNS} to {MAX_COLUMNS} run ids.")
    ids = [part for part in re.split(r"[\s,]+", text.strip().lower()) if part]
    bad = [part for part in ids if not ID_PATTERN.fullmatch(part)]
    if bad:
        raise ValueError(f"Not a run id: {bad[0][:40]!r} (run ids are 32 hexadecimal characters).")
    if not MIN_COLUMNS <= len(ids) <= MAX_COLUMNS:
        raise ValueError(f"Pick {MIN_COLUMNS} to {MAX_COLUMNS} runs to compare, got {len(ids)}.")
    return ids


def saved_runs(run_ids: list[str]) -> list[list[Event]]:
    runs = [default_repository().events(run_id) for run_id in run_ids]
    missing = [run_id for run_id, events in zip(run_ids, runs) if events is None]
    if missing:
        raise UnknownRuns(f"No saved run with id {missing[0]!r}.")
    return runs


def compare_outputs(run_ids: list[str]) -> list[Any]:
    """The values of a CompareView for saved runs, re-drawn from their stored events (no model, nothing
    saved): for a read-only share view. Raises UnknownRuns for an id with no saved run."""
    return drawn(saved_runs(list(run_ids)[:MAX_COLUMNS]))


def comparison_link(comparison_id: str, stopped: bool = False) -> str:
    base = settings().public_url.rstrip("/")
    note = " (stopped: the columns that ran)" if stopped else ""
    return f"Saved as comparison `{comparison_id}`{note} · [share link]({base}/?compare={comparison_id})"


def prepare_columns(requests: list[GenerationRequest]) -> list[PreparedRun]:
    """Validate every column through the runner's prepare; the model is loaded once (by the first column)
    and handed to the others. InvalidRequest names the column."""
    if not MIN_COLUMNS <= len(requests) <= MAX_COLUMNS:
        raise InvalidRequest(f"A comparison has {MIN_COLUMNS} to {MAX_COLUMNS} columns, got {len(requests)}.")
    prepared: list[PreparedRun] = []
    for i, request in enumerate(requests):
        try:
            prepared.append(prepare(request, loaded=prepared[0].loaded if prepared else None))
        except InvalidRequest as exc:
            raise InvalidRequest(f"Column {LETTERS[i]} ({str(request.strategy)[:40]}): {exc}") from None
    return prepared


def comparison_config(prepared: list[PreparedRun]) -> dict[str, Any]:
    """What the comparison asked, as saved with it (the columns in order)."""
    first = prepared[0]
    return {"prompt": first.request.prompt, "model_id": first.loaded.model_id, "dtype": first.loaded.dtype,
            "seed": first.seed, "chat": bool(first.request.chat), "max_new_tokens": first.max_new_tokens,
            "draft_model_id": first.request.draft_model_id or "",
            "columns": [{"strategy": p.strategy.name, "params": dict(p.strategy.p)} for p in prepared]}


@dataclass
class Progress:
    """A moment of a live comparison: the column that moved, every column's events so far, the saved
    run ids, the greedy references as the runs left them, and the comparison id once saved."""
    column: int
    runs: list[list[Event]]
    run_ids: list[str]
    references: References | None
    comparison_id: str | None = None
    stopped: bool = False


def run_comparison(prepared: list[PreparedRun], stop: threading.Event, references: References | None,
                   owner: str | None) -> Iterator[Progress]:
    """The columns one after another (one model, one run at a time), each saved with `owner` as it ends;
    after Stop the remaining columns do not start. Then the comparison is saved with the runs made."""
    runs: list[list[Event]] = []
    run_ids: list[str] = []
    for i, run in enumerate(prepared):
        if stop.is_set():
            break
        runs.append([])
        with closing(stream(run, stop, references, owner)) as page:    # closing the page stops the run
            for events, run_id, updated in page:
                runs[i] = events
                if run_id:
                    run_ids.append(run_id)
                    references = updated
                yield Progress(i, runs, run_ids, references)
    if run_ids:
        comparison_id = default_repository().save_comparison(run_ids, owner=owner, config=comparison_config(prepared))
        yield Progress(len(runs) - 1, runs, run_ids, references, comparison_id, stopped=len(run_ids) < len(prepared))


class CompareTab:
    """The tab: shared settings, MAX_COLUMNS method forms (the first n used), Compare / Stop, the view,
    and the saved-runs box other tabs fill (`saved_ids`, drawn by `load_saved`)."""

    def __init__(self, greedy_references: gr.State, browser_key: gr.BrowserState, limits: ClientLimits | None = None):
        self.greedy_references, self.browser_key = greedy_references, browser_key
        self.limits = limits or ClientLimits.from_settings()
        self._shared_settings()
        self._method_columns()
        with gr.Row():
            self.compare = gr.Button("Compare", variant="primary", elem_id="compare-run")
            self.stop = gr.Button("Stop", elem_id="compare-stop")
        self.link = gr.Markdown(elem_id="compare-link")
        self.view = CompareView("compare")
        with gr.Accordion("Compare saved runs", open=False):
            with gr.Row():
                self.saved_ids = gr.Textbox(label="Run ids (2 to 4, comma-separated)", elem_id="compare-saved-ids")
                self.load = gr.Button("Draw saved runs", elem_id="compare-load")
        self._wire()

    def _shared_settings(self) -> None:
        gr.Markdown(f"One prompt, model and seed; {MIN_COLUMNS} to {MAX_COLUMNS} methods run on it one after "
                    "another (the model is loaded once), each in its own column; then the numbers side by side, "
                    "the traces on one plot, and each column's text against column A.")
        with gr.Row():
            self.prompt = gr.Textbox(label="Prompt", lines=2, value="What is the capital of France?",
                                     elem_id="compare-prompt", scale=3)
            with gr.Column(scale=1, min_width=220):
                self.max_new = gr.Number(value=32, minimum=1, precision=0, label="new tokens per column",
                                         elem_id="compare-max-new")
                self.seed = gr.Number(value=0, precision=0, label="seed")
        with gr.Row():
            self.model = gr.Textbox(value=settings().default_model, label="Model",
                                    info=f"'{EMBEDDED}' = {EMBEDDED_NAME}; or a Hub id / local folder")
            self.draft = gr.Textbox(value="", label="Draft model (speculative methods)")
            self.dtype = gr.Radio(["float32", "bfloat16"], value=settings().default_dtype, label="dtype")
            self.chat = gr.Checkbox(value=True, label="chat template")
            self.n_columns = gr.Radio(list(range(MIN_COLUMNS, MAX_COLUMNS + 1)), value=MIN_COLUMNS,
                                      label="columns", elem_id="compare-n")

    def _method_columns(self) -> None:
        self.forms, self.form_boxes = [], []
        with gr.Row(equal_height=False):
            for i in range(MAX_COLUMNS):
                with gr.Column(visible=i < MIN_COLUMNS, elem_id=f"compare-col-{i}", min_width=260) as box:
                    gr.Markdown(f"**Column {LETTERS[i]}**")
                    method, _, _, params, keys = method_form(f"Method {LETTERS[i]}")
                self.forms.append((method, params, keys))
                self.form_boxes.append(box)

    def inputs(self) -> list[Any]:
        shared = [self.n_columns, self.model, self.draft, self.dtype, self.max_new, self.seed, self.chat, self.prompt]
        return [self.greedy_references, self.browser_key, *shared,
                *(c for method, params, _ in self.forms for c in (method, *params))]

    def requests(self, values: tuple) -> list[GenerationRequest]:
        """The form's values (n, model, draft, dtype, max new, seed, chat, prompt, then each column's
        method and parameters) as one request per used column; hidden columns are ignored."""
        expected = 8 + sum(1 + len(params) for _, params, _ in self.forms)
        if len(values) != expected:       # an API caller's short or long list
            raise InvalidRequest(f"A comparison takes {expected} values (see the API page), got {len(values)}.")
        n = self._n_columns(values[0])
        model, draft, dtype, max_new, seed, chat, prompt = values[1:8]
        requests, at = [], 8
        for method_box, params, keys in self.forms[:n]:
            method, param_values = values[at], values[at + 1:at + 1 + len(params)]
            requests.append(request_from_inputs(keys, (model, draft, dtype, method, max_new, seed, chat, prompt,
                                                       *param_values)))
            at += 1 + len(params)
        return requests

    @staticmethod
    def _n_columns(value: Any) -> int:
        try:
            n = int(value)
            whole = not isinstance(value, bool) and float(value) == n
        except (TypeError, ValueError, OverflowError):
            whole = False
        if not whole or not MIN_COLUMNS <= n <= MAX_COLUMNS:
            raise InvalidRequest(f"columns must be {MIN_COLUMNS} to {MAX_COLUMNS}, got {str(value)[:20]}.")
        return n

    def live(self, request: gr.Request, references: References | None, key: str | None, *values):
        """The Compare button: validate every column, then stream them; yields the view's values, the link
        and the greedy references."""
        try:
            prepared = prepare_columns(self.requests(values))
        except InvalidRequest as exc:
            yield [*drawn([]), "", gr.skip()]       # the toast must not sit over the previous comparison
            raise gr.Error(str(exc), print_exception=False)
        skip_all = [gr.skip()] * len(self.view.outputs)
        first = drawn([[] for _ in prepared])      # the previous comparison's output is cleared, not painted over
        with _stops.held(request.session_hash) as stop, \
                closing(run_comparison(prepared, stop, references, owner_of(request, key))) as progress:
            for moment in progress:
                values_now, first = first or list(skip_all), None
                self._place(values_now, moment.column, moment.runs[moment.column])
                link = ""
                if len(moment.run_ids) == len(moment.runs) or moment.comparison_id:
                    values_now[-4:] = shared_values(moment.runs)        # a column ended: the overlays so far
                if moment.comparison_id:
                    link = comparison_link(moment.comparison_id, moment.stopped)
                yield [*values_now, link, moment.references if moment.references is not None else gr.skip()]

    def _place(self, values: list[Any], column: int, events: list[Event]) -> None:
        width = 3 + len(self.view.columns[0].plots)
        at = MAX_COLUMNS + column * width
        values[at:at + width] = column_values(column, events)

    def load_saved(self, ids_text: str, request: gr.Request | None, browser_key: str | None) -> list[Any]:
        """Draw saved runs (2-4 ids) as a comparison, re-rendered from their events (no model), and save
        them as a comparison so it gets a link. Returns [*view values, link]."""
        try:
            run_ids = parse_run_ids(ids_text)
            values = compare_outputs(run_ids)
        except (ValueError, UnknownRuns) as exc:
            raise gr.Error(str(exc), print_exception=False)
        comparison_id = default_repository().save_comparison(run_ids, owner=owner_of(request, browser_key),
                                                             config={"from": "saved runs"})
        return [*values, comparison_link(comparison_id)]

    def _wire(self) -> None:
        outputs = [*self.view.outputs, self.link, self.greedy_references]

        @on_gpu
        def run(request: gr.Request, references, key, *values):
            yield from self.live(request, references, key, *values)

        inputs = self.inputs()
        shown_at = next(i for i, c in enumerate(inputs) if c is self.prompt)     # a refusal shows on the prompt box

        def admit(request: gr.Request, *values):
            """A comparison asks to join the generation queue like one generation (limits.py); gradio
            wants one verdict per input."""
            refusal = admit_request(self.limits, request)
            verdicts = [gr.validate(True, "") for _ in inputs]
            if refusal:
                verdicts[shown_at] = gr.validate(False, refusal)
            return verdicts

        self.compare.click(run, inputs, outputs, concurrency_limit=settings().concurrency,
                           concurrency_id=GENERATION, validator=admit)

        def stop_run(request: gr.Request):
            _stops.stop(request.session_hash)

        self.stop.click(stop_run, None, None, concurrency_limit=None, queue=False)

        def show_columns(n):
            n = self._n_columns(n)
            return [gr.Column(visible=i < n) for i in range(MAX_COLUMNS)] * 2

        self.n_columns.change(show_columns, self.n_columns, [*self.form_boxes, *(c.box for c in self.view.columns)],
                              queue=False)

        def load(request: gr.Request, ids_text, key):
            return self.load_saved(ids_text, request, key)

        # a read: never queued behind generations
        self.load.click(load, [self.saved_ids, self.browser_key], [*self.view.outputs, self.link], queue=False)
        self.saved_ids.submit(load, [self.saved_ids, self.browser_key], [*self.view.outputs, self.link], queue=False)


def build_compare_tab(greedy_references: gr.State, browser_key: gr.BrowserState,
                      limits: ClientLimits | None = None) -> CompareTab:
    return CompareTab(greedy_references, browser_key, limits)
