"""The Gradio app, one module per tab. Built entirely from the strategy registry and the
visualizer panels: nothing here knows about any particular decoding method."""

from __future__ import annotations

import gradio as gr

from visualizers import CSS

from ..config import settings
from ..models import load_model
from ..runner import warm_up
from .common import stream
from .compare import build_compare_tab
from .generate import build_generate_tab, request_from_inputs
from .identity import browser_key_state, new_key
from .history import build_history_tab, history_rows, open_run

__all__ = ["build_app", "launch", "stream", "request_from_inputs"]


def build_app() -> gr.Blocks:
    with gr.Blocks(title="Decoding Playground") as demo:
        greedy_references = gr.State({})     # this browser session's own greedy runs (baseline.py)
        browser_key = browser_key_state()    # whose runs History lists (identity.py)
        gr.Markdown("## Decoding Playground\nPick a model and a decoding method, press **Generate**, and watch "
                    "the method work. Hover a token for its probability and the alternatives.")
        with gr.Tabs(selected="generate") as tabs:
            with gr.Tab("Generate", id="generate"):
                build_generate_tab(greedy_references, browser_key)
            with gr.Tab("History", id="history"):
                history = build_history_tab()
            with gr.Tab("Compare", id="compare"):
                build_compare_tab()
        tabs.select(history_rows, None, history.table)

        def open_from_link(request: gr.Request):
            from storage import default_repository

            run_id = (request.query_params.get("run") or "").strip() if request else ""
            if not run_id or default_repository().events(run_id) is None:
                return [gr.skip(), gr.skip(), *[gr.skip() for _ in history.outputs]]
            return [gr.Tabs(selected="history"), run_id, *open_run(run_id)]

        demo.load(new_key, browser_key, browser_key, queue=False)
        demo.load(open_from_link, None, [tabs, history.run_id, *history.outputs])
    demo.queue(max_size=32, default_concurrency_limit=1)
    return demo


def launch(demo: gr.Blocks | None = None, host: str | None = None, port: int | None = None, preload: bool = True):
    from storage import default_repository

    default_repository().mark_interrupted()   # rows still "running" were cut off when the server last died
    if preload:
        warm_up(load_model())   # convert/cache the default model and time its passes before the first visitor
    demo = demo or build_app()
    demo.launch(server_name=host or settings().host, server_port=port or settings().port, css=CSS,
                footer_links=["api", "gradio"])
