"""The Compare tab: saved runs side by side, re-drawn from their stored events."""

from __future__ import annotations

import html

import gradio as gr

from storage import default_repository
from visualizers import PANELS

from .common import outputs_for, panel_plots


def compare(*run_ids: str) -> list:
    result = []
    for run_id in run_ids:
        events = default_repository().events((run_id or "").strip()) or []
        if not events:
            result += [f"<i>No saved run {html.escape(repr(run_id or ''))}</i>", "",
                       *[gr.Plot(visible=False) for _ in PANELS]]
        else:
            result += outputs_for(events)
    return result


def build_compare_tab() -> None:
    gr.Markdown("Two saved runs side by side (re-drawn from their stored events).")
    boxes, outputs = [], []
    with gr.Row():
        for side in ("A", "B"):
            with gr.Column():
                boxes.append(gr.Textbox(label=f"Run {side} id"))
                outputs += [gr.HTML(), gr.HTML(), *panel_plots()]
    gr.Button("Compare").click(compare, boxes, outputs)
