"""The History tab: this browser's (or signed-in user's) own runs by default, others' published runs
under a filter of their own; search, filters and pages of PAGE_SIZE; open a run to re-draw it from
its stored events, and (owner only) favourite, publish or delete it; branches shown as a tree;
tick runs to compare them; export a run, import an export.

Every handler takes its owner from the request and the browser's key (identity.py), never from a
field the page sends, so one visitor cannot act on another's runs."""

from __future__ import annotations

import html
import math
from typing import Any

import gradio as gr

from storage import default_repository
from storage.export import MAX_IMPORT_BYTES, InvalidExport, import_export
from storage.models import ID_PATTERN
from storage.repository import PAGE_SIZE, HistoryQuery, RunSummary
from strategies import REGISTRY
from visualizers import render

from ..limits import ClientLimits, client_key
from .common import outputs_for, panel_plots
from .identity import owner_of
from .share import base_url, downloads, md_text, run_files, run_url

HISTORY_COLUMNS = ["run id", "when (UTC)", "★", "published", "method", "model", "prompt", "output", "tokens",
                   "tok/s", "status", "branch of"]
# the id column wraps (32 hex digits) so prompt, output and "branch of" fit a laptop's width
COLUMN_WIDTHS = ["110px", "95px", "32px", "70px", "90px", "90px", "200px", "200px", "60px", "55px", "60px", "110px"]
SCOPES = [("My runs", "mine"), ("Published by others", "published")]
MAX_FILTER = 300        # characters of the model filter (the column's width)
IMPORTS_PER_MINUTE = 6  # one visitor's imports (each up to MAX_IMPORT_BYTES): what a flood can add to the disk


def row_of(r: RunSummary, viewer: str | None = None) -> list[Any]:
    """One table row; a branch's prompt starts with an arrow and names its parent and position. The star
    is its owner's own mark: shown to the owner only."""
    branch = f"{r.parent_id[:8]} at token {r.parent_position}" if r.parent_id else ""
    prompt = ("↳ " if r.parent_id else "") + r.prompt[:80]
    star = "★" if r.favourite and viewer is not None and r.owner == viewer else ""
    return [r.id, r.created_at.strftime("%Y-%m-%d %H:%M:%S"), star, "yes" if r.public else "",
            r.method, r.model_id, prompt, r.output[:80], r.tokens, round(r.tokens_per_s, 2), r.status, branch]


def history_query(owner: str | None, scope: Any, text: Any, model: Any, method: Any, favourites: Any,
                  page: Any) -> HistoryQuery:
    """The filters as the page sent them, checked: anything unexpected falls back to "no filter"."""
    try:
        page_number = max(1, int(page))
    except (TypeError, ValueError, OverflowError):
        page_number = 1
    return HistoryQuery(owner=owner, scope=scope if scope in ("mine", "published") else "mine",
                        text=text if isinstance(text, str) else "",
                        model=model[:MAX_FILTER] if isinstance(model, str) else "",
                        method=method if method in REGISTRY else "",
                        favourites=favourites is True and scope != "published",   # stars are private marks
                        page=page_number,
                        page_size=PAGE_SIZE)


def listing(query: HistoryQuery) -> list[Any]:
    """[table rows, page line, compare ticks, page number] for one page (a page past the end shows the last)."""
    repo = default_repository()
    rows, total = repo.history(query)
    pages = max(1, math.ceil(total / query.page_size))
    if query.page > pages:
        query = HistoryQuery(**{**query.__dict__, "page": pages})
        rows, total = repo.history(query)
    runs = f"{total:,} run{'' if total == 1 else 's'} {'of yours' if query.scope == 'mine' else 'published by others'}"
    info = f"Page {query.page} of {pages} · {runs} match{'es' if total == 1 else ''}"
    if query.scope == "mine" and not query.owner:
        info = "No owner key yet (reload the page): your runs are listed once the browser has one."
    ticks = gr.CheckboxGroup(choices=[(f"{r.id[:8]} {r.method}: {r.prompt[:30]}", r.id) for r in rows], value=[])
    return [[row_of(r, query.owner) for r in rows], info, ticks, query.page]


def open_run(run_id: str, base: str = "") -> list[Any]:
    """[link, details, text, metrics, *plots, json, csv] of a saved run, re-drawn from its events."""
    run_id = (run_id or "").strip().lower()
    events = default_repository().events(run_id) if ID_PATTERN.fullmatch(run_id) else None
    found = default_repository().summaries([run_id]) if ID_PATTERN.fullmatch(run_id) else []
    if events is None and found:
        raise gr.Error(f"Run {run_id} is {found[0].status}: it has no saved events to draw.", print_exception=False)
    if events is None:
        raise gr.Error(f"No saved run with id {run_id[:40]!r}." if run_id else "Enter a run id.", print_exception=False)
    (r,) = found
    return [f"Run `{run_id}` · share link: {run_url(base, run_id)}", details(r), *outputs_for(events),
            *downloads(run_files(run_id))]


def details(r: RunSummary) -> str:
    flags = ["★ favourite" if r.favourite else "", "published" if r.public else "not published"]
    branch = f"branch of `{r.parent_id}` at token {r.parent_position}" if r.parent_id else ""
    return " · ".join(md_text(x) if "`" not in x else x for x in [*flags, branch] if x)


def tree_html(run_id: str) -> str:
    """The branch tree holding a run, indented by depth, the run itself in bold (all text escaped)."""
    nodes = default_repository().tree(run_id) if ID_PATTERN.fullmatch(run_id or "") else []
    if not nodes:
        return "<i>No saved run to draw branches for.</i>"
    items = []
    for depth, r in nodes:
        at = f" (from token {r.parent_position})" if r.parent_id else ""
        label = html.escape(f"{r.id[:8]} {r.method}{at}: {r.output[:60]!r}")
        label = f"<b>{label}</b>" if r.id == run_id else label
        items.append(f"<div class='dp-branch' style='margin-left:{1.5 * depth}em'>{'↳ ' if depth else ''}{label}</div>")
    return f"<div id='branch-tree-list'>{''.join(items)}</div>"


class HistoryTab:
    """The tab's components. `list_outputs` are what `listing` fills; `refresh_on(trigger)` lists the
    current filters' page on any event (the tab opening, the page loading)."""

    def __init__(self, browser_key: gr.BrowserState):
        self.browser_key = browser_key
        self._filters()
        self.table = gr.Dataframe(headers=HISTORY_COLUMNS, interactive=False, elem_id="history-table", wrap=True,
                                  column_widths=COLUMN_WIDTHS)
        self._compare_picker()
        self._opened_run()
        self._importer()
        self._wire()

    def _filters(self) -> None:
        with gr.Row():
            self.scope = gr.Radio(SCOPES, value="mine", label="Show", elem_id="history-scope")
            self.search = gr.Textbox(label="Search prompt and output", elem_id="history-search", max_lines=1)
            self.model = gr.Textbox(label="Model (exact)", elem_id="history-model", max_lines=1)
            self.method = gr.Dropdown([("any", "")] + [(cls.title, n) for n, cls in REGISTRY.items()], value="",
                                      label="Method", elem_id="history-method")
            self.favourites = gr.Checkbox(label="★ favourites only", elem_id="history-favourites")
        with gr.Row():
            self.prev = gr.Button("◀ Newer", elem_id="history-prev", size="sm")
            self.page = gr.Number(value=1, precision=0, minimum=1, label="Page", elem_id="history-page", scale=0)
            self.next = gr.Button("Older ▶", elem_id="history-next", size="sm")
            self.refresh = gr.Button("Refresh", elem_id="history-refresh", size="sm")
            self.info = gr.Markdown(elem_id="history-info")

    def _compare_picker(self) -> None:
        with gr.Row():
            self.ticks = gr.CheckboxGroup(label="Tick 2 to 4 runs of this page to compare", elem_id="history-ticks")
            self.compare = gr.Button("Compare selected", elem_id="compare-selected", scale=0)
        self.selected = gr.Textbox(visible=False)   # the ticked ids, comma-separated (what Compare reads)

    def _opened_run(self) -> None:
        with gr.Row():
            self.run_id = gr.Textbox(label="Run id (or click a row)", elem_id="run-id")
            self.open = gr.Button("Open", elem_id="open-run")
        self.link = gr.Markdown(elem_id="history-link")
        self.details = gr.Markdown(elem_id="history-details")
        with gr.Row():
            self.favourite = gr.Button("★ Favourite / unfavourite", elem_id="history-favourite", size="sm")
            self.publish = gr.Button("Publish / unpublish", elem_id="history-publish", size="sm")
            self.branches = gr.Button("Show branches", elem_id="history-branches", size="sm")
            self.json = gr.DownloadButton("Export JSON", elem_id="history-json", visible=False, size="sm")
            self.csv = gr.DownloadButton("Export CSV", elem_id="history-csv", visible=False, size="sm")
            self.delete = gr.Button("Delete…", elem_id="history-delete", size="sm", variant="stop")
        with gr.Row(visible=False) as self.confirm_row:
            self.confirm_text = gr.Markdown()
            self.confirm = gr.Button("Yes, delete it for good", elem_id="history-delete-confirm", variant="stop")
            self.cancel = gr.Button("Cancel", elem_id="history-delete-cancel")
        self.tree = gr.HTML(elem_id="branch-tree")
        self.text = gr.HTML(elem_id="history-output")
        self.metrics = gr.HTML()
        self.plots = panel_plots()
        self.outputs = [self.link, self.details, self.text, self.metrics, *self.plots, self.json, self.csv]

    def _importer(self) -> None:
        with gr.Accordion("Import a JSON export", open=False):
            self.paste = gr.Textbox(label=f"Paste an export (from 'Export JSON'; at most {MAX_IMPORT_BYTES // 10**6} MB)",
                                    lines=4, elem_id="import-text")
            self.do_import = gr.Button("Import as my run", elem_id="import-run")
            self.imported = gr.Markdown(elem_id="import-result")

    @property
    def filter_inputs(self) -> list[Any]:
        return [self.scope, self.search, self.model, self.method, self.favourites, self.page, self.browser_key]

    @property
    def list_outputs(self) -> list[Any]:
        return [self.table, self.info, self.ticks, self.page]

    def refresh_on(self, trigger) -> Any:
        def show(request: gr.Request, scope, text, model, method, favourites, page, key):
            return listing(history_query(owner_of(request, key), scope, text, model, method, favourites, page))

        return trigger(show, self.filter_inputs, self.list_outputs, queue=False)

    def _wire(self) -> None:
        # reads never queue behind generations (queue=False: answered at once, even while the queue is full)
        for trigger in (self.refresh.click, self.search.submit, self.model.submit, self.scope.change,
                        self.method.change, self.favourites.change, self.page.submit):
            self.refresh_on(trigger)
        self._wire_pages()
        self._wire_open()
        self._wire_owner_actions()
        self.ticks.change(lambda ids: ",".join(i for i in (ids or []) if ID_PATTERN.fullmatch(str(i))), self.ticks,
                          self.selected, queue=False)

    def _wire_pages(self) -> None:
        def step(delta):
            def move(page):
                try:
                    return max(1, int(page) + delta)
                except (TypeError, ValueError, OverflowError):
                    return 1
            return move

        self.refresh_on(self.prev.click(step(-1), self.page, self.page, queue=False).then)
        self.refresh_on(self.next.click(step(+1), self.page, self.page, queue=False).then)

    def _wire_open(self) -> None:
        def open_(request: gr.Request, run_id):
            return [*open_run(run_id, base_url(request)), gr.Row(visible=False), ""]

        outputs = [*self.outputs, self.confirm_row, self.tree]
        self.open.click(open_, self.run_id, outputs, queue=False)
        self.run_id.submit(open_, self.run_id, outputs, queue=False)

        def select_row(request: gr.Request, evt: gr.SelectData):
            row = evt.row_value if evt.row_value else None
            run_id = str(row[0]) if row else ""
            return [run_id, *open_(request, run_id)]

        self.table.select(select_row, None, [self.run_id, *outputs], queue=False)
        self.branches.click(lambda run_id: tree_html((run_id or "").strip().lower()), self.run_id, self.tree,
                            queue=False)

    def _wire_owner_actions(self) -> None:
        def toggle(name: str):
            def flip(request: gr.Request, run_id, key):
                run_id = (run_id or "").strip().lower()
                owner = owner_of(request, key)
                found = default_repository().summaries([run_id]) if ID_PATTERN.fullmatch(run_id) else []
                if not found or not owner or found[0].owner != owner:
                    raise gr.Error("Only the run's owner can change it (open one of your runs first).",
                                   print_exception=False)
                default_repository().set_flag(run_id, owner, name, not getattr(found[0], name))
                # the exports are written anew: one made right after Publish said "public": false
                return [details(default_repository().summaries([run_id])[0]), *downloads(run_files(run_id))]
            return flip

        for button, name in ((self.favourite, "favourite"), (self.publish, "public")):
            self.refresh_on(button.click(toggle(name), [self.run_id, self.browser_key],
                                         [self.details, self.json, self.csv], queue=False).success)

        def ask(run_id):
            run_id = (run_id or "").strip().lower()
            if not ID_PATTERN.fullmatch(run_id):
                raise gr.Error("Open a run first.", print_exception=False)
            return [gr.Row(visible=True), f"Delete run `{run_id}`? Its link will say \"not found\"."]

        self.delete.click(ask, self.run_id, [self.confirm_row, self.confirm_text], queue=False)
        self.cancel.click(lambda: gr.Row(visible=False), None, self.confirm_row, queue=False)

        def delete(request: gr.Request, run_id, key):
            run_id = (run_id or "").strip().lower()
            owner = owner_of(request, key)
            if not owner or not ID_PATTERN.fullmatch(run_id) or not default_repository().delete(run_id, owner=owner):
                raise gr.Error("Only the run's owner can delete it (or it is already gone).", print_exception=False)
            gr.Info(f"Deleted run {run_id}.")
            cleared = ["", "", "", *[gr.Plot(visible=False) for _ in self.plots], *downloads(None), ""]
            return [gr.Row(visible=False), "", f"Deleted run `{run_id}`.", *cleared]   # details .. tree

        self.refresh_on(self.confirm.click(delete, [self.run_id, self.browser_key],
                                           [self.confirm_row, self.run_id, self.link, self.details, self.text,
                                            self.metrics, *self.plots, self.json, self.csv, self.tree],
                                           queue=False).success)

        imports = ClientLimits(rate=IMPORTS_PER_MINUTE, window_s=60.0, share=IMPORTS_PER_MINUTE)

        def do_import(request: gr.Request, text, key):
            if imports.admit(client_key(request)) is not None:
                raise gr.Error(f"Too many imports: at most {IMPORTS_PER_MINUTE} a minute per visitor; "
                               "try again in a minute.", print_exception=False)
            try:
                run_ids, comparison_id = import_export(default_repository(), text, owner_of(request, key),
                                                       check=render)
            except InvalidExport as exc:
                raise gr.Error(str(exc), print_exception=False)
            base = base_url(request)
            links = ", ".join(run_url(base, i) for i in run_ids)
            extra = f"; comparison {base}/?compare={comparison_id}" if comparison_id else ""
            return ["", f"Imported {len(run_ids)} run(s) as new runs of yours: {links}{extra}"]

        self.refresh_on(self.do_import.click(do_import, [self.paste, self.browser_key], [self.paste, self.imported],
                                             queue=False).success)


def build_history_tab(browser_key: gr.BrowserState) -> HistoryTab:
    return HistoryTab(browser_key)
