"""The Gradio app. Built entirely from the strategy registry and the visualizer panels:
nothing here knows about any particular decoding method."""


import html
import threading
import time
from contextlib import closing
from typing import Any, Iterator

import gradio as gr

from storage import default_repository
from strategies import REGISTRY, Param
from visualizers import CSS, PANELS, render

from .baseline import References, remember
from .config import settings
from .events import Event, MetricsEvent, TokenEvent
from .models import EMBEDDED, EMBEDDED_NAME, load_model
from .prompts import PROMPT_SETS
from .runner import GenerationRequest, InvalidRequest, PreparedRun, execute, prepare, warm_up

# Drawing must cost the generator under 10 % of its time: redraw at most every MIN_INTERVAL_S,
# and never sooner than RENDER_FACTOR x the last drawing's cost.
MIN_INTERVAL_S = 0.4
RENDER_FACTOR = 15
HISTORY_COLUMNS = ["run id", "when (UTC)", "method", "model", "prompt", "output", "tokens", "tok/s", "status"]

_stops: dict[str, threading.Event] = {}


def _param_component(param: Param):
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


def _method_help(name: str) -> str:
    cls = REGISTRY[name]
    link = f" [paper]({cls.paper})" if cls.paper else ""
    return f"{html.escape(cls.summary)} {html.escape(cls.lossless_help())}{link}"


def _outputs_for(events: list[Event]) -> list[Any]:
    drawn = render(events)
    plots = [gr.Plot(value=drawn.figures[p.key], visible=drawn.figures[p.key] is not None) for p in PANELS]
    return [drawn.text_html, drawn.metrics_html, *plots]


def _share_link(run_id: str) -> str:
    base = settings().public_url.rstrip("/")
    return f"Saved as run `{run_id}` · [share link]({base}/?run={run_id})"


def _history_rows() -> list[list[Any]]:
    rows = []
    for r in default_repository().recent(100):
        rows.append([r.id, r.created_at.strftime("%Y-%m-%d %H:%M:%S"), r.method, r.model_id,
                     r.prompt[:80], r.output[:80], r.tokens, round(r.tokens_per_s, 2), r.status])
    return rows


def request_from_inputs(param_keys: list[tuple[str, str]], inputs: tuple) -> GenerationRequest:
    """The Generate form's values (model, draft, dtype, method, max new tokens, seed, chat, prompt,
    then every method's parameters) as a request; only the chosen method's parameters go in."""
    model_id, draft_id, dtype_name, method_name, max_new_tokens, seed_value, use_chat, prompt_text = inputs[:8]
    params = {p: v for (m, p), v in zip(param_keys, inputs[8:]) if m == method_name}
    return GenerationRequest(prompt=prompt_text, strategy=method_name, params=params, model_id=model_id,
                             dtype=dtype_name, max_new_tokens=64 if max_new_tokens is None else max_new_tokens,
                             seed=seed_value if seed_value is not None else 0, chat=bool(use_chat),
                             draft_model_id=(draft_id or "").strip() or None)


def stream(prepared: PreparedRun, stop: threading.Event, references: References | None
           ) -> Iterator[tuple[list[Event], str | None, References | None]]:
    """A run as the page sees it: (events so far, None, None) at each redraw, paced so drawing costs the
    method little, then (all events, saved run id, this user's greedy references updated by the run).
    `references` is this browser session's own (a gr.State), never another visitor's."""
    run = execute(prepared, stop, references=references)
    events: list[Event] = []
    saved = False
    last_draw, draw_cost = 0.0, 0.0
    try:
        for event in run:
            events.append(event)
            if isinstance(event, MetricsEvent):
                break
            now = time.perf_counter()
            first = isinstance(event, TokenEvent) and event.index == 0
            if first or now - last_draw >= max(MIN_INTERVAL_S, RENDER_FACTOR * draw_cost):
                yield events, None, None                       # the caller draws while we wait here
                last_draw = time.perf_counter()
                draw_cost = last_draw - now
        run_id = default_repository().save(events)
        saved = True
        yield events, run_id, remember(references, events)
    finally:
        if not saved:       # the page was closed mid-run: stop the method, keep what it made
            stop.set()
            events.extend(run)
            if events and isinstance(events[-1], MetricsEvent):
                default_repository().save(events)


def build_app() -> gr.Blocks:
    names = list(REGISTRY)
    param_keys: list[tuple[str, str]] = []
    with gr.Blocks(title="Decoding Playground") as demo:
        greedy_references = gr.State({})     # this browser session's own greedy runs (baseline.py)
        gr.Markdown("## Decoding Playground\nPick a model and a decoding method, press **Generate**, and watch "
                    "the method work. Hover a token for its probability and the alternatives.")
        with gr.Tabs(selected="generate") as tabs:
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        model = gr.Textbox(value=settings().default_model, label="Model",
                                           info=f"'{EMBEDDED}' = {EMBEDDED_NAME}; or a Hub id / local folder")
                        draft = gr.Textbox(value="", label="Draft model (speculative methods)",
                                           info="empty = the method's default; any model sharing the tokenizer")
                        dtype = gr.Radio(["float32", "bfloat16"], value=settings().default_dtype, label="dtype")
                        method = gr.Dropdown([(REGISTRY[n].title, n) for n in names], value="greedy", label="Method")
                        method_help = gr.Markdown(_method_help("greedy"))
                        groups = []
                        param_inputs = []
                        for name in names:
                            with gr.Group(visible=name == "greedy") as group:
                                for param in REGISTRY[name].params:
                                    param_inputs.append(_param_component(param))
                                    param_keys.append((name, param.name))
                            groups.append(group)
                        # No maximum here: the server clamps (and says so), the one rule for the page and the API.
                        max_new = gr.Number(value=64, minimum=1, precision=0, label="max new tokens",
                                            info=f"the server cap is {settings().max_new_tokens_cap}; "
                                                 "more is clamped to it, with a notice")
                        seed = gr.Number(value=0, precision=0, label="seed")
                        chat = gr.Checkbox(value=True, label="chat template (off: raw continuation)")
                    with gr.Column(scale=2):
                        prompt = gr.Textbox(label="Prompt", lines=3, value="What is the capital of France?",
                                            elem_id="prompt")
                        gr.Examples([[text] for texts in PROMPT_SETS.values() for text in texts], [prompt],
                                    label="Examples: open-ended questions, then grounded edits (try prompt lookup)",
                                    example_labels=[f"{kind}: {text.splitlines()[0][:48]}"
                                                    for kind, texts in PROMPT_SETS.items() for text in texts])
                        with gr.Row():
                            generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                            stop_btn = gr.Button("Stop", elem_id="stop")
                        text = gr.HTML(elem_id="output")
                        link = gr.Markdown(elem_id="run-link")
                        metrics = gr.HTML(elem_id="metrics")
                        plots = [gr.Plot(label=p.label, visible=False, elem_id=f"plot-{p.key}") for p in PANELS]
            with gr.Tab("History", id="history"):
                refresh_btn = gr.Button("Refresh")
                table = gr.Dataframe(headers=HISTORY_COLUMNS, value=_history_rows, interactive=False,
                                     elem_id="history-table", wrap=True)
                with gr.Row():
                    run_id_box = gr.Textbox(label="Run id (or click a row)", elem_id="run-id")
                    open_btn = gr.Button("Open", elem_id="open-run")
                h_link = gr.Markdown()
                h_text = gr.HTML(elem_id="history-output")
                h_metrics = gr.HTML()
                h_plots = [gr.Plot(label=p.label, visible=False) for p in PANELS]
            with gr.Tab("Compare", id="compare"):
                gr.Markdown("Two saved runs side by side (re-drawn from their stored events).")
                with gr.Row():
                    compare_cols = []
                    for side in ("A", "B"):
                        with gr.Column():
                            box = gr.Textbox(label=f"Run {side} id")
                            c_text, c_metrics = gr.HTML(), gr.HTML()
                            c_plots = [gr.Plot(label=p.label, visible=False) for p in PANELS]
                            compare_cols.append((box, [c_text, c_metrics, *c_plots]))
                compare_btn = gr.Button("Compare")

        # --- events -------------------------------------------------------------------
        def pick_method(name):
            return [gr.Group(visible=n == name) for n in names] + [_method_help(name)]

        method.change(pick_method, method, groups + [method_help])

        def run(request: gr.Request, references, *inputs):
            # gradio injects `request` by position, so the inputs arrive as one flat tuple
            try:
                prepared = prepare(request_from_inputs(param_keys, inputs))
            except InvalidRequest as exc:
                raise gr.Error(str(exc), print_exception=False)
            stop = _stops[request.session_hash] = threading.Event()
            with closing(stream(prepared, stop, references)) as page:   # a closed page stops the run now
                for events, run_id, updated in page:
                    outputs = _outputs_for(events)
                    yield [outputs[0], _share_link(run_id) if run_id else "", *outputs[1:],
                           updated if updated is not None else gr.skip()]

        gen_inputs = [greedy_references, model, draft, dtype, method, max_new, seed, chat, prompt, *param_inputs]
        gen_outputs = [text, link, metrics, *plots, greedy_references]
        generate_btn.click(run, gen_inputs, gen_outputs, concurrency_limit=1)
        prompt.submit(run, gen_inputs, gen_outputs, concurrency_limit=1)

        def stop_run(request: gr.Request):
            if request.session_hash in _stops:
                _stops[request.session_hash].set()

        stop_btn.click(stop_run, None, None, concurrency_limit=None, queue=False)

        def open_run(run_id: str):
            run_id = (run_id or "").strip()
            events = default_repository().events(run_id) if run_id else None
            if events is None:
                raise gr.Error(f"No saved run with id {run_id!r}." if run_id else "Enter a run id.",
                               print_exception=False)
            outputs = _outputs_for(events)
            return [_share_link(run_id), *outputs]

        h_outputs = [h_link, h_text, h_metrics, *h_plots]
        open_btn.click(open_run, run_id_box, h_outputs)
        run_id_box.submit(open_run, run_id_box, h_outputs)
        refresh_btn.click(_history_rows, None, table)
        tabs.select(lambda: _history_rows(), None, table)

        def select_row(evt: gr.SelectData):
            row = evt.row_value if evt.row_value else None
            run_id = row[0] if row else ""
            return [run_id, *open_run(run_id)]

        table.select(select_row, None, [run_id_box, *h_outputs])

        def compare(a, b):
            result = []
            for run_id in (a, b):
                events = default_repository().events((run_id or "").strip()) or []
                if not events:
                    result += [f"<i>No saved run {html.escape(repr(run_id or ''))}</i>", "",
                               *[gr.Plot(visible=False) for _ in PANELS]]
                else:
                    result += _outputs_for(events)
            return result

        compare_btn.click(compare, [compare_cols[0][0], compare_cols[1][0]],
                          compare_cols[0][1] + compare_cols[1][1])

        def open_from_link(request: gr.Request):
            run_id = (request.query_params.get("run") or "").strip() if request else ""
            if not run_id or default_repository().events(run_id) is None:
                return [gr.skip(), gr.skip(), *[gr.skip() for _ in h_outputs]]
            return [gr.Tabs(selected="history"), run_id, *open_run(run_id)]

        demo.load(open_from_link, None, [tabs, run_id_box, *h_outputs])
    demo.queue(max_size=32, default_concurrency_limit=1)
    return demo


def launch(demo: gr.Blocks | None = None, host: str | None = None, port: int | None = None, preload: bool = True):
    if preload:
        warm_up(load_model())   # convert/cache the default model and time its passes before the first visitor
    demo = demo or build_app()
    demo.launch(server_name=host or settings().host, server_port=port or settings().port, css=CSS,
                footer_links=["api", "gradio"])
