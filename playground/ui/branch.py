"""Branch from a token, on the Generate tab: a click on a token of any saved run's view (Generate,
History, a shared link) shows that position's alternatives here; "Continue from here" runs the
Generate form's current method and parameters from that point (playground/branching.py) as a
new run, the clicker's own, streamed into the Generate tab's output."""

from __future__ import annotations

import dataclasses
import html
from typing import Any, Callable

import gradio as gr

from visualizers.text import TOOLTIP_JS, token_rank, visible

from ..config import settings
from ..branching import BranchPoint, branch_point, chosen_ids, make_branch, parse_pick
from ..gpu import on_gpu
from ..limits import GENERATION, ClientLimits, admit_request
from ..models import ModelLoadError, load_model
from ..runner import GenerationRequest, InvalidRequest, PreparedRun, prepare

# A click on a token writes '<run id>:<token index>' into the hidden pick box and presses the hidden
# button (event delegation: views are redrawn all the time). Only views of a run carry data-run.
BRANCH_JS = """
document.addEventListener('click', (e) => {
  const tok = e.target.closest ? e.target.closest('.dp-tok[data-index]') : null;
  const view = tok ? tok.closest('.dp-text[data-run]') : null;
  const box = document.querySelector('#branch-pick textarea, #branch-pick input');
  const open = document.querySelector('#branch-open button, button#branch-open');
  if (!view || !box || !open) return;
  box.value = view.dataset.run + ':' + tok.dataset.index;
  box.dispatchEvent(new Event('input', {bubbles: true}));
  setTimeout(() => open.click(), 50);
});
"""


def token_scripts() -> gr.HTML:
    """An empty element whose on-load script installs the page-wide token handlers (the branch click and
    the tooltips' side) once; built outside the tabs, so it runs whichever tab a visitor lands on."""
    script = "if (!window.dpTokenHandlers) {\n  window.dpTokenHandlers = true;\n" + BRANCH_JS + TOOLTIP_JS + "}\n"
    return gr.HTML("", js_on_load=script, elem_id="dp-token-scripts", container=False, padding=False)


def choices(point: BranchPoint) -> list[tuple[str, str]]:
    """(label, token id) per alternative at the branch point, most probable first; the run's own token
    is marked, and added when it is not among them (a sampled token outside the top-k)."""
    token = point.token
    ranked = sorted(token.alternatives, key=lambda a: -a.prob)
    mark = {token.token_id: "   (this run's token)"}
    rows = [(f"{visible(a.text)!r}   p = {a.prob:.3f}   rank {i}{mark.get(a.token_id, '')}", str(a.token_id))
            for i, a in enumerate(ranked, 1)]
    if token_rank(token) is None:
        rows.append((f"{visible(token.text)!r}   (this run's token, not in the top-{len(ranked)} shown)",
                     str(token.token_id)))
    return rows


def about(point: BranchPoint) -> str:
    """What the panel shows above the choices (escaped: token texts come from a model)."""
    token = point.token
    return (f'<div class="dp-branch-about">Branch from run <code>{html.escape(point.run_id[:8])}</code> at token '
            f'{point.position} of {len(point.tokens)}: it chose <code>{html.escape(repr(visible(token.text)))}</code>. '
            "Pick another token (or type one), then continue with the method and parameters set in the form.</div>")


def show(pick: str):
    """The alternatives at a clicked token (a read: no model, no queue)."""
    try:
        point = branch_point(*parse_pick(pick))
    except InvalidRequest as exc:
        raise gr.Error(str(exc), print_exception=False)
    rows = choices(point)
    return [gr.Group(visible=True), about(point), gr.Radio(choices=rows, value=str(point.token.token_id)), "",
            f"{point.run_id}:{point.position}", gr.Tabs(selected="generate")]


def branch_run(at: str, choice: Any, typed: Any, request: GenerationRequest) -> PreparedRun:
    """The branch as a prepared run: the form's method, parameters, length and seed on the parent's
    model, reading the parent's prompt ids + its tokens before the position + the chosen token(s)."""
    point = branch_point(*parse_pick(at))
    started = point.started
    try:
        loaded = load_model(started.model_id, started.dtype)
    except ModelLoadError as exc:
        raise InvalidRequest(str(exc)) from None
    ids, notice = chosen_ids(point, choice, typed, loaded.tokenizer)
    request = dataclasses.replace(request, prompt=started.prompt, model_id=started.model_id, dtype=started.dtype,
                                  chat=True if started.chat is None else started.chat,
                                  branch=make_branch(point, ids, loaded.tokenizer))
    prepared = prepare(request, loaded)
    if notice:
        prepared.notices.append(notice)
    return prepared


class BranchPanel:
    """The hidden pick box and button the page's click handler drives, and the (hidden until a click)
    panel of alternatives with "Continue from here"."""

    def __init__(self):
        self.pick = gr.Textbox(elem_id="branch-pick", visible="hidden")
        self.open = gr.Button("branch", elem_id="branch-open", visible="hidden")
        with gr.Group(visible=False, elem_id="branch-panel") as self.group:
            self.about = gr.HTML()
            self.choice = gr.Radio(label="Continue with", elem_id="branch-choice")
            self.typed = gr.Textbox(label="or type a token (encoded with the run's tokenizer; several tokens are "
                                          "all added, and said so)", elem_id="branch-typed", max_lines=1)
            self.go = gr.Button("Continue from here", variant="primary", elem_id="branch-continue")
        self.at = gr.Textbox(visible="hidden", elem_id="branch-at")    # the point shown: '<run id>:<index>'

    def wire(self, tabs: gr.Tabs | None, form_inputs: list[Any], outputs: list[Any],
             request_of: Callable[[tuple], GenerationRequest], live: Callable, limits: ClientLimits) -> None:
        """`form_inputs` start with (references, browser key); `request_of` reads the rest as the form's
        request; `live` streams a prepared run into `outputs` (the Generate tab's)."""
        shown = [self.group, self.about, self.choice, self.typed, self.at] + ([tabs] if tabs is not None else [])
        self.open.click(lambda pick: show(pick)[:len(shown)], self.pick, shown, queue=False)
        inputs = [self.at, self.choice, self.typed, *form_inputs]

        @on_gpu
        def go(request: gr.Request, at, choice, typed, references, key, *form):
            try:
                prepared = branch_run(at, choice, typed, request_of(form))
            except InvalidRequest as exc:
                raise gr.Error(str(exc), print_exception=False)
            yield from live(request, prepared, references, key)

        def admit(request: gr.Request, *values):
            """As Generate's: the same ledger, a refusal before the run takes a queue place."""
            refusal = admit_request(limits, request)
            verdicts = [gr.validate(True, "") for _ in inputs]
            if refusal:
                verdicts[2] = gr.validate(False, refusal)   # on the typed-token box, which is on screen
            return verdicts

        self.go.click(go, inputs, outputs, concurrency_limit=settings().concurrency, concurrency_id=GENERATION,
                      validator=admit)
