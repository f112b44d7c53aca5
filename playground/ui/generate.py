"""The Generate tab: the form built from the strategy registry, Generate / Stop, and the live view."""

from __future__ import annotations

import html
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr

from strategies import REGISTRY
from visualizers import PANELS

from ..config import settings
from ..gpu import on_gpu
from ..limits import GENERATION, ClientLimits, admit_request
from ..model_thread import MODEL_THREAD
from ..models import EMBEDDED, EMBEDDED_NAME, available_models
from ..prompts import PROMPT_SETS
from ..runner import GenerationRequest, InvalidRequest, PreparedRun, prepare
from .branch import BranchPanel
from .common import StopFlags, method_help, outputs_for, panel_plots, param_component, share_link, stream
from .identity import owner_of

_stops = StopFlags()


@dataclass
class Form:
    """The Generate form's components, in the order `request_from_inputs` reads them."""
    model: gr.Dropdown
    draft: gr.Textbox
    dtype: gr.Radio
    method: gr.Dropdown
    max_new: gr.Number
    seed: gr.Number
    chat: gr.Checkbox
    prompt: gr.Textbox
    params: list[Any]
    param_keys: list[tuple[str, str]]

    def inputs(self) -> list[Any]:
        return [self.model, self.draft, self.dtype, self.method, self.max_new, self.seed, self.chat, self.prompt,
                *self.params]


def request_from_inputs(param_keys: list[tuple[str, str]], inputs: tuple) -> GenerationRequest:
    """The Generate form's values (model, draft, dtype, method, max new tokens, seed, chat, prompt,
    then every method's parameters) as a request; only the chosen method's parameters go in."""
    model_id, draft_id, dtype_name, method_name, max_new_tokens, seed_value, use_chat, prompt_text = inputs[:8]
    params = {p: v for (m, p), v in zip(param_keys, inputs[8:]) if m == method_name}
    return GenerationRequest(prompt=prompt_text, strategy=method_name, params=params, model_id=model_id,
                             dtype=dtype_name, max_new_tokens=64 if max_new_tokens is None else max_new_tokens,
                             seed=seed_value if seed_value is not None else 0, chat=bool(use_chat),
                             draft_model_id=(draft_id or "").strip() or None)


def method_form(label: str = "Method") -> tuple[gr.Dropdown, gr.Markdown, list[gr.Group], list[Any], list[tuple[str, str]]]:
    """The method picker and one (hidden unless picked) group of parameter widgets per method; each call
    makes its own components (Compare has one per column, told apart by `label`)."""
    names = list(REGISTRY)
    method = gr.Dropdown([(REGISTRY[n].title, n) for n in names], value="greedy", label=label)
    help_text = gr.Markdown(method_help("greedy"))
    groups, inputs, keys = [], [], []
    for name in names:
        with gr.Group(visible=name == "greedy") as group:
            for param in REGISTRY[name].params:
                inputs.append(param_component(param))
                keys.append((name, param.name))
        groups.append(group)

    def pick(name):
        return [gr.Group(visible=n == name) for n in names] + [method_help(name)]

    method.change(pick, method, groups + [help_text])
    return method, help_text, groups, inputs, keys


def cleared_outputs(message: str = "") -> list[Any]:
    """The Generate tab's outputs emptied (text, link, metrics, plots; the greedy references kept), with
    the refusal's reason in the text area: the toast fades, the reason should not."""
    text = f'<div class="dp-error" role="alert">{html.escape(message)}</div>' if message else ""
    return [text, "", "", *[gr.Plot(value=None, visible=False) for _ in PANELS], gr.skip()]


def live_page(request: gr.Request, prepared: PreparedRun, references, key) -> Iterator[list[Any]]:
    """A prepared run streamed into the Generate tab's outputs (text, link, metrics, plots, references);
    the Stop button stops it (by browser session), and a closed page stops it at once."""
    with _stops.held(request.session_hash) as stop, \
            closing(stream(prepared, stop, references, owner_of(request, key))) as page:
        for events, run_id, updated in page:
            outputs = outputs_for(events)
            yield [outputs[0], share_link(run_id) if run_id else "", *outputs[1:],
                   updated if updated is not None else gr.skip()]


def build_generate_tab(greedy_references: gr.State, browser_key: gr.BrowserState, tabs: gr.Tabs | None = None,
                       limits: ClientLimits | None = None) -> Form:
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            # the models at hand offline, listed when the page is built; typing any Hub id or folder still works
            model = gr.Dropdown(available_models(), value=settings().default_model, label="Model",
                                allow_custom_value=True, elem_id="model",
                                info=f"'{EMBEDDED}' = {EMBEDDED_NAME}; or type a Hub id / local folder")
            draft = gr.Textbox(value="", label="Draft model (speculative methods)",
                               info="empty = the method's default; any model sharing the tokenizer")
            dtype = gr.Radio(["float32", "bfloat16"], value=settings().default_dtype, label="dtype")
            method, _, _, param_inputs, param_keys = method_form()
            # No maximum here: the server clamps (and says so), the one rule for the page and the API.
            max_new = gr.Number(value=64, minimum=1, precision=0, label="max new tokens",
                                info=f"the server cap is {settings().max_new_tokens_cap}; "
                                     "more is clamped to it, with a notice")
            seed = gr.Number(value=0, precision=0, label="seed")
            chat = gr.Checkbox(value=True, label="chat template (off: raw continuation)")
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", lines=3, value="What is the capital of France?", elem_id="prompt")
            gr.Examples([[text] for texts in PROMPT_SETS.values() for text in texts], [prompt],
                        label="Examples: open-ended questions, then grounded edits (try prompt lookup)",
                        example_labels=[f"{kind}: {text.splitlines()[0][:48]}"
                                        for kind, texts in PROMPT_SETS.items() for text in texts])
            with gr.Row():
                generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                stop_btn = gr.Button("Stop", elem_id="stop")
            text = gr.HTML(elem_id="output")
            branch = BranchPanel()           # click a token: its alternatives, continue from there (branch.py)
            link = gr.Markdown(elem_id="run-link")
            metrics = gr.HTML(elem_id="metrics")
            plots = panel_plots(prefix="plot-")
    form = Form(model, draft, dtype, method, max_new, seed, chat, prompt, param_inputs, param_keys)

    @on_gpu
    def run(request: gr.Request, references, key, *inputs):
        # gradio injects `request` by position, so the inputs arrive as one flat tuple
        try:
            # on the model thread: loading a model there keeps torch's thread team one (model_thread.py)
            prepared = MODEL_THREAD.call(lambda: prepare(request_from_inputs(param_keys, inputs)))
        except InvalidRequest as exc:
            yield cleared_outputs(str(exc))  # the toast must not sit over the previous run's output
            raise gr.Error(str(exc), print_exception=False)
        yield from live_page(request, prepared, references, key)

    gen_inputs = [greedy_references, browser_key, *form.inputs()]
    gen_outputs = [text, link, metrics, *plots, greedy_references]
    limits = limits or ClientLimits.from_settings()   # the app's ledger: rate and queue share per visitor (limits.py)

    shown_at = next(i for i, c in enumerate(gen_inputs) if c is prompt)   # the refusal shows on the prompt box

    def admit(request: gr.Request, *inputs):
        """Runs when a generation asks to join the queue, before it takes a place: a flood is refused here.
        gradio wants one verdict per input."""
        refusal = admit_request(limits, request)
        verdicts = [gr.validate(True, "") for _ in gen_inputs]
        if refusal:
            verdicts[shown_at] = gr.validate(False, refusal)
        return verdicts

    # one concurrency group for everything that runs a model; reads are queue=False and never wait behind it
    for trigger in (generate_btn.click, prompt.submit):
        trigger(run, gen_inputs, gen_outputs, concurrency_limit=settings().concurrency, concurrency_id=GENERATION,
                validator=admit)

    def stop_run(request: gr.Request):
        _stops.stop(request.session_hash)

    stop_btn.click(stop_run, None, None, concurrency_limit=None, queue=False)
    branch.wire(tabs, gen_inputs, gen_outputs, lambda form_values: request_from_inputs(param_keys, form_values),
                live_page, limits)
    return form
