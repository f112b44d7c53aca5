"""The run loop: validate a request, run a strategy, and wrap its events with timing and metrics.

The runner owns everything that is the same for every method: limits, seeding, counting
forward passes, timing (only the time spent inside the strategy, so drawing the UI never
counts against a method), cancellation and the final metrics event.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

from strategies import REGISTRY, InvalidParameter, Strategy, UnknownStrategy

from . import baseline
from .config import settings
from .decoding import DecodeSession
from .events import ErrorEvent, Event, MetricsEvent, RunStarted, StatsEvent, TokenEvent
from .hardware import machine_bandwidth_gb_s
from .models import EMBEDDED, LoadedModel, ModelLoadError, load_model

MAX_PROMPT_CHARS = 100_000
DEFAULT_DRAFT = f"{EMBEDDED}@layers=24"   # the embedded model's first 24 of 30 layers (playground/drafts.py)
MAX_SEED = 2**63 - 1


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
        number = float(value)
        if number != int(number):
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError):
        raise InvalidRequest(f"{name} must be a whole number, got {value!r}") from None


def prepare(request: GenerationRequest, loaded: LoadedModel | None = None) -> PreparedRun:
    """Check and clamp a request; load its model. Raises InvalidRequest with one clear line."""
    notices: list[str] = []
    prompt = request.prompt if isinstance(request.prompt, str) else ""
    if not prompt.strip():
        raise InvalidRequest("The prompt is empty: type something for the model to continue.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"The prompt is {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}.")
    try:
        strategy = REGISTRY[request.strategy](**(request.params or {})) if request.strategy in REGISTRY \
            else None
    except InvalidParameter as exc:
        raise InvalidRequest(f"{request.strategy}: {exc}") from None
    if strategy is None:
        raise InvalidRequest(str(UnknownStrategy(request.strategy)))
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
    prompt_ids = loaded.encode_prompt(prompt, chat=request.chat)
    room = loaded.context_length - len(prompt_ids)
    if room < 1:
        raise InvalidRequest(
            f"The prompt is {len(prompt_ids):,} tokens; this model's context holds {loaded.context_length:,}."
        )
    if max_new > room:
        notices.append(f"max_new_tokens was reduced to {room} to fit the model's context.")
        max_new = room
    return PreparedRun(request, loaded, strategy, prompt_ids, max_new, seed, notices, draft)


def execute(run: PreparedRun, cancel: threading.Event | None = None, run_id: str | None = None) -> Iterator[Event]:
    """Run the strategy and yield its events, framed by RunStarted and MetricsEvent."""
    loaded = run.loaded
    session = DecodeSession(loaded.model, loaded.tokenizer, run.prompt_ids, run.max_new_tokens,
                            loaded.eos_ids, run.seed, draft_model=run.draft.model if run.draft else None)
    yield RunStarted(run_id=run_id or uuid.uuid4().hex, model_id=loaded.model_id, dtype=loaded.dtype,
                     strategy=run.strategy.name, params=dict(run.strategy.p), seed=run.seed,
                     prompt=run.request.prompt, prompt_tokens=len(run.prompt_ids),
                     max_new_tokens=run.max_new_tokens, notices=run.notices)
    events = run.strategy.decode(session)
    busy, first_token_s, new_tokens, stop_reason, method = 0.0, None, 0, "length", {}
    try:
        while True:
            start = time.perf_counter()
            try:
                event = next(events)
            except StopIteration:
                break
            finally:
                busy += time.perf_counter() - start      # time inside the method only
            if isinstance(event, TokenEvent):
                new_tokens += 1
                first_token_s = busy if first_token_s is None else first_token_s
                if event.token_id in loaded.eos_ids:
                    stop_reason = "eos"
            elif isinstance(event, StatsEvent):
                method.update(event.values)
            yield event
            if cancel is not None and cancel.is_set():
                stop_reason = "stopped"
                break
    except Exception as exc:  # a failing step ends this run, never the app; the message is kept
        stop_reason = "error"
        yield ErrorEvent(f"{type(exc).__name__}: {exc}")
    finally:
        events.close()
    bytes_per_pass = loaded.n_bytes
    passes = session.forward_passes
    decode_rate, greedy = compare_with_greedy(run, new_tokens, busy, first_token_s, stop_reason)
    yield MetricsEvent(
        new_tokens=new_tokens,
        elapsed_s=busy,
        time_to_first_token_s=first_token_s,
        tokens_per_s=new_tokens / busy if busy > 0 else 0.0,
        forward_passes=passes,
        tokens_per_forward=new_tokens / passes if passes else 0.0,
        model_bytes=bytes_per_pass,
        bandwidth_gb_s=bytes_per_pass * passes / busy / 1e9 if busy > 0 else 0.0,
        machine_bandwidth_gb_s=machine_bandwidth_gb_s(),
        stop_reason=stop_reason,
        method=method,
        draft_forward_passes=session.draft_forward_passes,
        decode_tokens_per_s=decode_rate,
        greedy_tokens_per_s=greedy.tokens_per_s if greedy else None,
        greedy_reference=greedy.how if greedy else "",
        speedup_vs_greedy=decode_rate / greedy.tokens_per_s if greedy and decode_rate and greedy.tokens_per_s else None,
    )


def compare_with_greedy(run: PreparedRun, new_tokens: int, busy: float, first_token_s: float | None,
                        stop_reason: str) -> tuple[float | None, baseline.GreedySpeed | None]:
    """This run's decode rate and plain greedy's for the same model in this session (a greedy run
    becomes the reference; another method's finished run measures one if there is none yet)."""
    rate = baseline.decode_rate(new_tokens, busy, first_token_s)
    if rate is None or stop_reason == "error":
        return rate, None
    if run.strategy.name == "greedy":
        baseline.record_greedy(run.loaded, new_tokens, busy, first_token_s)
    if stop_reason == "stopped":        # the user wants control back: never start a measurement now
        return rate, baseline.known_speed(run.loaded)
    return rate, baseline.greedy_speed(run.loaded, run.prompt_ids)


WARM_UP_PROMPT = "Write a short story about a robot who learns to paint."


def warm_up(loaded: LoadedModel) -> None:
    """Before any visitor's run: time the model's verification passes (strategies/cost_model.py)
    and its greedy decode rate (baseline.py), while nothing else competes for the cores."""
    from strategies.speculative.cost_model import warm_up as time_passes

    time_passes(DecodeSession(loaded.model, loaded.tokenizer, [], 1, set(), 0))
    baseline.greedy_speed(loaded, loaded.encode_prompt(WARM_UP_PROMPT, chat=True),
                          where="at start-up, before any browser drew (run greedy here for a like-for-like reference)")


def generate(request: GenerationRequest, loaded: LoadedModel | None = None,
             cancel: threading.Event | None = None) -> list[Event]:
    """Convenience: prepare and run to the end, returning all events."""
    return list(execute(prepare(request, loaded), cancel))
