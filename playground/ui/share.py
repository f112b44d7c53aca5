"""Share links: `/?run=<id>` and `/?compare=<id>` open a read-only view above the tabs, re-drawn from
the stored events (no model is loaded or run), with the link to copy, exports to download, and
"Re-run" / "Fork" that load the run's settings into the Generate form. The ids are uuid4 hex
(122 random bits), so a link is the only way to a run nobody published."""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from storage import default_repository
from storage.export import comparison_export, csv_text, dumps, run_export
from storage.models import ID_PATTERN
from visualizers import PANELS

from ..config import settings
from ..events import Event, RunStarted
from .common import outputs_for, panel_plots
from .compare import MAX_COLUMNS, CompareView, compare_outputs
from .generate import Form

HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
EXPORT_DIR = Path(tempfile.gettempdir()) / "playground-exports"

# Copies the link shown in the box; a page that may not use the clipboard API (plain http on a
# remote host) falls back to selecting the text and the browser's copy command.
COPY_JS = """(url) => {
  const fallback = () => { const t = document.createElement('textarea'); t.value = url; document.body.appendChild(t);
    t.select(); const ok = document.execCommand('copy'); t.remove(); return ok; };
  if (!url) return 'Nothing to copy yet.';
  if (navigator.clipboard && window.isSecureContext) {
    return navigator.clipboard.writeText(url).then(() => 'Link copied to the clipboard.',
      () => fallback() ? 'Link copied to the clipboard.' : 'Could not copy: select the link and copy it.');
  }
  return fallback() ? 'Link copied to the clipboard.' : 'Could not copy: select the link and copy it.';
}"""

# After "Re-run" has loaded the form: press Generate, as the user would.
CLICK_GENERATE_JS = "() => { const b = document.querySelector('button#generate, #generate button'); if (b) b.click(); }"


def base_url(request: gr.Request | None) -> str:
    """Where links point: PLAYGROUND_PUBLIC_URL when set (the address visitors use, e.g. behind a
    proxy), else the address this request came to (scheme from X-Forwarded-Proto, host from Host).
    A Host header that is not a plain host[:port] is not echoed into links."""
    public = settings().public_url.strip().rstrip("/")
    if public:
        return public
    headers = {}
    try:
        headers = {k.lower(): v for k, v in dict(request.headers).items()} if request is not None else {}
    except Exception:   # a request without headers (a direct call in tests)
        headers = {}
    host = (headers.get("x-forwarded-host") or headers.get("host") or "").split(",")[0].strip()
    scheme = (headers.get("x-forwarded-proto") or "http").split(",")[0].strip().lower()
    if not HOST.fullmatch(host):
        return ""
    return f"{'https' if scheme == 'https' else 'http'}://{host}"


def run_url(base: str, run_id: str) -> str:
    return f"{base}/?run={run_id}"


def compare_url(base: str, comparison_id: str) -> str:
    return f"{base}/?compare={comparison_id}"


def link_target(query: dict[str, str]) -> tuple[str, str] | None:
    """("run" | "compare", id) from a page's query string, or None when it names neither."""
    for kind in ("run", "compare"):
        value = (query.get(kind) or "").strip()
        if value:
            return kind, value[:64]
    return None


# --- export files ---------------------------------------------------------------------------------

def _write(name: str, text: str) -> str:
    """A download's file (same name for the same run: opening a link twice does not pile files up),
    written whole then renamed, so two visitors exporting at once never read half a file."""
    EXPORT_DIR.mkdir(parents=True, exist_ok=True)
    path = EXPORT_DIR / name
    fd, tmp = tempfile.mkstemp(dir=EXPORT_DIR, suffix=".part")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return str(path)


def run_files(run_id: str) -> tuple[str, str] | None:
    """(JSON path, CSV path) of a saved run's export, or None when there is no such run."""
    row = default_repository().get(run_id) if ID_PATTERN.fullmatch(run_id or "") else None
    if row is None or row.events is None:
        return None
    events = default_repository().events(run_id)
    return (_write(f"run-{run_id}.json", dumps(run_export(row, events))),
            _write(f"run-{run_id}.csv", csv_text([(run_id, events)])))


def comparison_files(comparison_id: str, run_ids: list[str]) -> tuple[str, str]:
    repo = default_repository()
    comparison = repo.comparison(comparison_id)
    pairs, exports = [], []
    for run_id in run_ids:
        row, events = repo.get(run_id), repo.events(run_id)
        if row is not None and events is not None:
            pairs.append((run_id, events))
            exports.append(run_export(row, events))
    return (_write(f"comparison-{comparison_id}.json", dumps(comparison_export(comparison, exports))),
            _write(f"comparison-{comparison_id}.csv", csv_text(pairs)))


def downloads(files: tuple[str, str] | None) -> list[Any]:
    if files is None:
        return [gr.DownloadButton(visible=False), gr.DownloadButton(visible=False)]
    return [gr.DownloadButton(value=files[0], visible=True), gr.DownloadButton(value=files[1], visible=True)]


# --- the settings a run was made with, for the Generate form -------------------------------------

def form_values(record: RunStarted, form: Form) -> list[Any]:
    """Values for `form.inputs()` that ask for this run again: model, draft, dtype, method, length,
    seed, chat switch, prompt, then the method's parameters (other methods' widgets are left as
    they are). A value the form cannot hold (a dtype it does not offer) is left as it is too."""
    dtype = record.dtype if record.dtype in ("float32", "bfloat16") else gr.skip()
    chat = record.chat if isinstance(record.chat, bool) else gr.skip()
    values: list[Any] = [record.model_id, record.draft_model_id or "", dtype, record.strategy, record.max_new_tokens,
                         record.seed, chat, record.prompt]
    for method, name in form.param_keys:
        value = record.params.get(name, gr.skip()) if method == record.strategy else gr.skip()
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)        # inf reaches a text field as "inf", which the method reads back
        values.append(value)
    return values


# --- the panel ------------------------------------------------------------------------------------

class SharedPanel:
    """The read-only view a link opens, above the tabs (hidden until a link names a run)."""

    def __init__(self):
        with gr.Column(visible=False, elem_id="shared") as self.box:
            self.title = gr.Markdown(elem_id="shared-title")
            with gr.Row():
                self.url = gr.Textbox(label="Link to this result", interactive=False, elem_id="share-url", scale=4)
                self.copy = gr.Button("Copy link", elem_id="copy-link", scale=1)
            self.copied = gr.Markdown(elem_id="copy-status")
            with gr.Row():
                self.rerun = gr.Button("Re-run", elem_id="shared-rerun", visible=False)
                self.fork = gr.Button("Fork (edit the settings)", elem_id="shared-fork", visible=False)
                self.json = gr.DownloadButton("Export JSON", elem_id="shared-json", visible=False)
                self.csv = gr.DownloadButton("Export CSV", elem_id="shared-csv", visible=False)
                self.close = gr.Button("Close", elem_id="shared-close")
            with gr.Column(visible=False) as self.run_box:
                self.text = gr.HTML(elem_id="shared-output")
                self.metrics = gr.HTML(elem_id="shared-metrics")
                self.plots = panel_plots(prefix="shared-")
            with gr.Column(visible=False) as self.compare_box:
                self.compare = CompareView(prefix="shared-compare")
        self.source = gr.State("")          # the run whose settings Re-run / Fork load
        self.outputs = [self.box, self.title, self.url, self.copied, self.rerun, self.fork, self.json, self.csv,
                        self.run_box, self.compare_box, self.text, self.metrics, *self.plots, *self.compare.outputs,
                        self.source]
        self.copy.click(None, self.url, self.copied, js=COPY_JS, queue=False)
        self.close.click(lambda: gr.Column(visible=False), None, self.box, queue=False)

    def wire(self, tabs: gr.Tabs, form: Form) -> None:
        """Re-run / Fork fill the Generate form from the run's record; Re-run then presses Generate."""
        def load(run_id: str):
            events = default_repository().events(run_id) if ID_PATTERN.fullmatch(run_id or "") else None
            if not events or not isinstance(events[0], RunStarted):
                raise gr.Error("That run is no longer saved.", print_exception=False)
            return [gr.Column(visible=False), gr.Tabs(selected="generate"), *form_values(events[0], form)]

        outputs = [self.box, tabs, *form.inputs()]
        self.fork.click(load, self.source, outputs, queue=False)
        self.rerun.click(load, self.source, outputs, queue=False).success(None, js=CLICK_GENERATE_JS)

    def values(self, request: gr.Request | None) -> list[Any]:
        """What the panel shows for the page's own query string (skips everything without a link)."""
        query = dict(request.query_params) if request is not None else {}
        target = link_target(query)
        if target is None:
            return [gr.skip() for _ in self.outputs]
        kind, item_id = target
        base = base_url(request)
        return self.run_values(item_id, base) if kind == "run" else self.comparison_values(item_id, base)

    def _hidden_views(self) -> list[Any]:
        n_compare = len(self.compare.outputs)
        return [gr.Column(visible=False), gr.Column(visible=False), "", "",
                *[gr.Plot(visible=False) for _ in PANELS], *[gr.skip()] * n_compare]

    def not_found(self, kind: str, item_id: str) -> list[Any]:
        what = "run" if kind == "run" else "comparison"
        unfinished = default_repository().summaries([item_id]) if kind == "run" and ID_PATTERN.fullmatch(item_id) else []
        if unfinished:        # its row is written at the start, its events at the end
            return self.nothing(f"### Run {item_id} has no saved events yet\nIt is {unfinished[0].status}: "
                                "a run is drawn here once it has finished.")
        title = (f"### Not found\nNo saved {what} with id {md_text(item_id)}: it was deleted, "
                 "or the link is mistyped.")           # the id comes from the address bar: shown as text
        return self.nothing(title)

    def nothing(self, title: str) -> list[Any]:
        """The panel with only a title: no link, buttons, downloads or drawing."""
        return [gr.Column(visible=True), title, "", "", gr.Button(visible=False), gr.Button(visible=False),
                *downloads(None), *self._hidden_views(), ""]

    def run_values(self, run_id: str, base: str) -> list[Any]:
        events = default_repository().events(run_id) if ID_PATTERN.fullmatch(run_id) else None
        if not events:
            return self.not_found("run", run_id)
        title = f"### Shared run `{run_id}`\n{describe(events)} · read-only, re-drawn from the saved events"
        buttons = [gr.Button(visible=True), gr.Button(visible=True)]
        views = [gr.Column(visible=True), gr.Column(visible=False), *outputs_for(events),
                 *[gr.skip()] * len(self.compare.outputs)]
        return [gr.Column(visible=True), title, run_url(base, run_id), "", *buttons,
                *downloads(run_files(run_id)), *views, run_id]

    def comparison_values(self, comparison_id: str, base: str) -> list[Any]:
        comparison = default_repository().comparison(comparison_id) if ID_PATTERN.fullmatch(comparison_id) else None
        if comparison is None:
            return self.not_found("compare", comparison_id)
        repo = default_repository()
        kept = [i for i in comparison.run_ids[:MAX_COLUMNS] if repo.get(i) is not None]
        if not kept:
            return self.not_found("compare", comparison_id)
        gone = len(comparison.run_ids[:MAX_COLUMNS]) - len(kept)
        note = f" · {gone} of its runs deleted since" if gone else ""
        label = f" {md_text(comparison.title)}" if comparison.title else ""
        title = (f"### Shared comparison{label} `{comparison_id}`\n{len(kept)} runs side by side{note} · "
                 f"read-only; Re-run / Fork load column A's settings")
        views = [gr.Column(visible=False), gr.Column(visible=True), "", "", *[gr.Plot(visible=False) for _ in PANELS],
                 *compare_outputs(kept)]
        return [gr.Column(visible=True), title, compare_url(base, comparison_id), "",
                gr.Button(visible=True), gr.Button(visible=True),
                *downloads(comparison_files(comparison_id, kept)), *views, kept[0]]


def md_text(text: str) -> str:
    """Visitor text (a title, a model id) shown in Markdown as the characters typed: every Markdown
    punctuation mark and angle bracket backslashed, so it can be neither a tag nor a link."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~&])", r"\\\1", text.replace("\n", " "))


def describe(events: list[Event]) -> str:
    """One line about a saved run: method, model, length (model ids come from visitors: escaped)."""
    start = events[0]
    if not isinstance(start, RunStarted):
        return ""
    return md_text(f"{start.strategy} on {start.model_id}, seed {start.seed}, up to {start.max_new_tokens} tokens")
