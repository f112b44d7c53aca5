"""The History tab: saved runs, newest first; open one to re-draw it from its stored events."""

from __future__ import annotations

from typing import Any

import gradio as gr

from storage import default_repository

from .common import outputs_for, panel_plots, share_link

HISTORY_COLUMNS = ["run id", "when (UTC)", "method", "model", "prompt", "output", "tokens", "tok/s", "status"]


def history_rows() -> list[list[Any]]:
    rows = []
    for r in default_repository().recent(100):
        rows.append([r.id, r.created_at.strftime("%Y-%m-%d %H:%M:%S"), r.method, r.model_id,
                     r.prompt[:80], r.output[:80], r.tokens, round(r.tokens_per_s, 2), r.status])
    return rows


def open_run(run_id: str) -> list[Any]:
    """[link, text, metrics, *plots] of a saved run, re-drawn from its events (no model involved)."""
    run_id = (run_id or "").strip()
    events = default_repository().events(run_id) if run_id else None
    if events is None:
        raise gr.Error(f"No saved run with id {run_id!r}." if run_id else "Enter a run id.", print_exception=False)
    return [share_link(run_id), *outputs_for(events)]


class HistoryTab:
    """The tab's components; `outputs` are what `open_run` fills."""

    def __init__(self):
        self.refresh = gr.Button("Refresh")
        self.table = gr.Dataframe(headers=HISTORY_COLUMNS, value=history_rows, interactive=False,
                                  elem_id="history-table", wrap=True)
        with gr.Row():
            self.run_id = gr.Textbox(label="Run id (or click a row)", elem_id="run-id")
            self.open = gr.Button("Open", elem_id="open-run")
        self.link = gr.Markdown()
        self.text = gr.HTML(elem_id="history-output")
        self.metrics = gr.HTML()
        self.plots = panel_plots()
        self.outputs = [self.link, self.text, self.metrics, *self.plots]
        # reads never queue behind generations (queue=False: answered at once, even while the queue is full)
        self.open.click(open_run, self.run_id, self.outputs, queue=False)
        self.run_id.submit(open_run, self.run_id, self.outputs, queue=False)
        self.refresh.click(history_rows, None, self.table, queue=False)

        def select_row(evt: gr.SelectData):
            row = evt.row_value if evt.row_value else None
            run_id = row[0] if row else ""
            return [run_id, *open_run(run_id)]

        self.table.select(select_row, None, [self.run_id, *self.outputs], queue=False)


def build_history_tab() -> HistoryTab:
    return HistoryTab()
