"""The Gradio app, one module per tab. Built entirely from the strategy registry and the
visualizer panels: nothing here knows about any particular decoding method."""

from __future__ import annotations

import gradio as gr

from ..config import settings
from ..limits import ClientLimits
from .branch import token_scripts
from .common import stream
from .compare import build_compare_tab
from .generate import build_generate_tab, request_from_inputs
from .identity import browser_key_state, login_button, new_key
from .history import build_history_tab
from .share import SharedPanel

__all__ = ["build_app", "launch", "stream", "request_from_inputs"]


def build_app() -> gr.Blocks:
    with gr.Blocks(title="Decoding Playground") as demo:
        greedy_references = gr.State({})     # this browser session's own greedy runs (baseline.py)
        browser_key = browser_key_state()    # whose runs History lists (identity.py)
        limits = ClientLimits.from_settings()  # one ledger for every tab that runs a model (limits.py)
        gr.Markdown("## Decoding Playground\nPick a model and a decoding method, press **Generate**, and watch "
                    "the method work. Hover a token for its probability and the alternatives.")
        login_button()                       # Sign in with Hugging Face where the Space has OAuth (identity.py)
        token_scripts()                      # click a token to branch; tooltips kept on screen (branch.py)
        shared = SharedPanel()               # what a ?run= / ?compare= link opens, above the tabs (share.py)
        with gr.Tabs(selected="generate") as tabs:
            with gr.Tab("Generate", id="generate"):
                form = build_generate_tab(greedy_references, browser_key, tabs, limits)
            with gr.Tab("History", id="history"):
                history = build_history_tab(browser_key)
            with gr.Tab("Compare", id="compare"):
                compare = build_compare_tab(greedy_references, browser_key, limits)
        shared.wire(tabs, form)
        history.refresh_on(tabs.select)

        def compare_selected(request: gr.Request, ids_text, key):
            return [ids_text, gr.Tabs(selected="compare"), *compare.load_saved(ids_text, request, key)]

        history.compare.click(compare_selected, [history.selected, browser_key],
                              [compare.saved_ids, tabs, *compare.view.outputs, compare.link], queue=False)

        history.refresh_on(demo.load(new_key, browser_key, browser_key, queue=False).then)
        demo.load(shared.values, None, shared.outputs, queue=False)
    # api_open=False: queued events only through the queue (its door: server.QueueDoor), never by direct POST
    demo.queue(max_size=settings().queue_size, default_concurrency_limit=1, api_open=False)
    return demo


def launch(demo: gr.Blocks | None = None, host: str | None = None, port: int | None = None, preload: bool = True):
    """Kept for callers of playground.ui.launch: the start-up order lives in playground/server.py."""
    from ..server import launch as serve

    serve(demo, host, port, preload)
