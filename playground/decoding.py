"""DecodeSession: what a strategy gets to work with during one run.

It owns the model handle, the prompt, the seeded generator, the forward-pass counters and the
committed output. Strategies call `forward` (never the model directly, so passes are counted)
and `commit` (which turns a chosen token and the logits it came from into a TokenEvent).
"""

from __future__ import annotations

import math
import time
import weakref
from typing import Callable, Iterator

import torch
from transformers import DynamicCache

from . import lean_forward, low_bit
from .kv_cache import GrowingCache
from .config import settings
from .events import Alternative, Event, TokenEvent
from .row_stats import RowStats, row_stats

TOP_ALTERNATIVES = 5

_WEIGHT_BYTES: "weakref.WeakKeyDictionary[torch.nn.Module, int]" = weakref.WeakKeyDictionary()


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights one forward pass of `model` reads: its own parameters, each shared tensor
    once (tied embeddings; a truncated view counts only the layers it runs), those held as exact low-bit
    codes at the codes' size (low_bit.py: what a step or a draft's pass reads; a run's one prompt pass of
    more than low_bit.MAX_ROWS tokens reads their float32 copies, and is counted the same). Cached per
    model object, so a pass costs one dictionary look-up, and a dropped view frees its entry."""
    known = _WEIGHT_BYTES.get(model)
    if known is None:
        seen: set[int] = set()
        known = 0
        for p in model.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                known += p.numel() * p.element_size()
        known -= low_bit.bytes_saved(model)
        _WEIGHT_BYTES[model] = known
    return known


# A token's text is a property of the tokenizer: decoded once per tokenizer and id (a decode is ~30 us,
# and every token shows its top alternatives' texts).
_TOKEN_TEXTS: "weakref.WeakKeyDictionary[object, dict[int, str]]" = weakref.WeakKeyDictionary()


def _texts_of(tokenizer) -> dict[int, str] | None:
    try:
        return _TOKEN_TEXTS.setdefault(tokenizer, {})
    except TypeError:              # not weak-referenceable: decoded every time
        return None


class DecodeSession:
    def __init__(self, model, tokenizer, prompt_ids: list[int], max_new_tokens: int,
                 eos_ids: set[int], seed: int, draft_model=None, lean: bool | None = None):
        self.model = model
        self.draft_model = draft_model
        # The lean forward (lean_forward.py) is the same computation without transformers' per-call overhead.
        self.lean = settings().forward == "lean" if lean is None else lean
        self.tokenizer = tokenizer
        self._texts = _texts_of(tokenizer)
        self.prompt_ids = list(prompt_ids)
        self.max_new_tokens = max_new_tokens
        self.eos_ids = set(eos_ids)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.output_ids: list[int] = []
        self.forward_passes = 0
        self.draft_forward_passes = 0
        self.reward_forward_passes = 0      # passes that score text (rewards), not generate it
        self.lane_tokens = 0                # tokens added to lanes (playground/lanes.py); 0: one sequence
        self.lanes_started = 0
        self.weight_bytes_read = 0          # every pass's weights, target and draft alike
        self.prompt_pass_done_at: float | None = None   # perf_counter after the latest prompt pass
        self._text = ""

    # --- model calls -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def new_cache(self) -> DynamicCache:
        """An empty KV cache for this model: a DynamicCache that grows in place (kv_cache.py)."""
        return GrowingCache(self.model.config)

    def forward(self, input_ids: torch.Tensor | list[int], cache=None, last_only: bool = True, **kwargs):
        """One counted target forward pass. Returns logits (rows, V) as float, and the model output.
        `input_ids=None, inputs_embeds=(1, n, hidden)` feeds vectors instead of tokens (counted the same)."""
        self.forward_passes += 1
        return self._call(self.model, input_ids, cache, last_only, kwargs)

    def draft_forward(self, input_ids: torch.Tensor | list[int], cache=None, last_only: bool = True, **kwargs):
        """One counted forward pass of the draft model (same contract as `forward`)."""
        if self.draft_model is None:
            raise RuntimeError("this method needs a draft model")
        self.draft_forward_passes += 1
        return self._call(self.draft_model, input_ids, cache, last_only, kwargs)

    def reward_forward(self, input_ids: torch.Tensor | list[int], cache=None, last_only: bool = True,
                       model=None, **kwargs):
        """One counted pass that scores text rather than generating it (a judge question, a reward
        model: `model`, default the target). Same contract as `forward`."""
        self.reward_forward_passes += 1
        model = model if model is not None else self.model
        self.weight_bytes_read += weight_bytes(model)
        return self._run(model, input_ids, cache, last_only, kwargs)     # never a prompt pass: decode time

    def _is_prompt_pass(self, cache) -> bool:
        """A pass that fills a cache still short of the prompt (all but its last token, which some
        methods keep as the first round's root): prefill, for the target or a draft alike."""
        return cache is None or cache.get_seq_length() < len(self.prompt_ids) - 1

    def _call(self, model, input_ids, cache, last_only: bool, kwargs: dict):
        prompt_pass = self._is_prompt_pass(cache)
        self.weight_bytes_read += weight_bytes(model)
        result = self._run(model, input_ids, cache, last_only, kwargs)
        if prompt_pass:      # the latest wins: a draft's own prompt pass is prefill too
            self.prompt_pass_done_at = time.perf_counter()
        return result

    def _run(self, model, input_ids, cache, last_only: bool, kwargs: dict):
        if input_ids is None:          # an `inputs_embeds=(batch, n, hidden)` pass (superposed decoding)
            if kwargs.get("inputs_embeds") is None:
                raise ValueError("a forward pass needs input_ids or inputs_embeds")
            kwargs = {**kwargs, "inputs_embeds": kwargs["inputs_embeds"].to(self.device)}
        else:
            if not torch.is_tensor(input_ids):
                input_ids = torch.tensor([input_ids], dtype=torch.long)
            if input_ids.dim() == 1:
                input_ids = input_ids[None]
            input_ids = input_ids.to(self.device)
        # masks and positions are built on the CPU by the methods; the model may sit on a GPU (models.py)
        kwargs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in kwargs.items()}
        logits_to_keep = kwargs.pop("logits_to_keep", 1 if last_only else 0)   # the last n rows only, if asked
        # hidden_rows=n: out.hidden_states[-1] holds (at least) the last n rows of the final, normalised, state
        hidden_rows = kwargs.pop("hidden_rows", 0)
        with torch.inference_mode():
            if self.lean and lean_forward.supports(model):
                out = lean_forward.forward(model, input_ids, cache, logits_to_keep=logits_to_keep,
                                           hidden_rows=hidden_rows, **kwargs)
            else:
                out = model(input_ids=input_ids, cache=cache, use_cache=cache is not None,
                            logits_to_keep=logits_to_keep, **({"output_hidden_states": True} if hidden_rows else {}),
                            **kwargs)
        logits = out.logits[:, -1] if last_only else out.logits
        return logits.cpu(), out     # methods pick tokens on the CPU (their seeded generators live there); no copy on a CPU

    def prefill(self, cache) -> torch.Tensor:
        """Run the prompt through the model; returns next-token logits (V,)."""
        logits, _ = self.forward(self.prompt_ids, cache)
        return logits[0]

    # --- committing output -------------------------------------------------------------
    def room(self) -> bool:
        return len(self.output_ids) < self.max_new_tokens

    def is_eos(self, token_id: int) -> bool:
        return token_id in self.eos_ids

    def token_text(self, token_id: int) -> str:
        text = self._texts.get(token_id) if self._texts is not None else None
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            if self._texts is not None:
                self._texts[token_id] = text
        return text

    def _append_text(self, token_id: int) -> str:
        """Text this token adds to the output. Multi-byte characters split over tokens show
        on the token that completes them (a partial byte decodes to U+FFFD and is held back)."""
        self.output_ids.append(token_id)
        full = self.tokenizer.decode(self.output_ids, skip_special_tokens=False)
        if full.endswith("\ufffd"):
            return ""
        piece, self._text = full[len(self._text):], full
        return piece

    def describe(self, token_id: int, logits: torch.Tensor, index: int, logp: torch.Tensor | None = None,
                 probs: torch.Tensor | None = None, stats: RowStats | None = None, **fields) -> TokenEvent:
        """A TokenEvent for `token_id` chosen from `logits` (V,), without committing it: its log-probability,
        the entropy and the top alternatives of softmax(logits), read from the row's RowStats (row_stats.py;
        `stats` where the caller already has them). logp (V,): a float64 log-softmax the caller already has
        (a warped law, sampling), and probs (V,) its exp: then they are read instead."""
        if logp is None and probs is None:
            stats = row_stats(logits) if stats is None else stats
            lse = float(stats.lse[0])
            alternatives = [Alternative(int(i), self.token_text(int(i)), math.exp(v - lse))
                            for v, i in zip(stats.values[0, :TOP_ALTERNATIVES].tolist(),
                                            stats.indices[0, :TOP_ALTERNATIVES].tolist())]
            return TokenEvent(index=index, token_id=token_id, text="", logprob=float(logits.flatten()[token_id]) - lse,
                              entropy=float(stats.entropy[0]), alternatives=alternatives, **fields)
        logp = torch.log_softmax(logits.double(), -1) if logp is None else logp
        probs = logp.exp() if probs is None else probs
        # 0 log 0 = 0: the clamp keeps 0 * -inf from becoming NaN (xlogy does the same, 4x slower here)
        entropy = float(-torch.dot(probs.flatten(), logp.flatten().clamp(min=torch.finfo(logp.dtype).min)))
        top = torch.topk(probs, min(TOP_ALTERNATIVES, probs.shape[-1]))
        alternatives = [Alternative(int(i), self.token_text(int(i)), float(p))
                        for p, i in zip(top.values.tolist(), top.indices.tolist())]
        return TokenEvent(index=index, token_id=token_id, text="", logprob=float(logp[token_id]),
                          entropy=entropy, alternatives=alternatives, **fields)

    def commit(self, token_id: int, logits: torch.Tensor, logp: torch.Tensor | None = None,
               probs: torch.Tensor | None = None, stats: RowStats | None = None, **fields) -> TokenEvent:
        """Append a chosen token to the output and describe it (logits: the distribution it came from)."""
        return self.emit(self.describe(token_id, logits, len(self.output_ids), logp, probs, stats, **fields))

    def emit(self, event: TokenEvent) -> TokenEvent:
        """Commit a token described earlier (beam search describes candidates before choosing)."""
        event.index = len(self.output_ids)
        event.text = self._append_text(event.token_id)
        return event

    def spawn_generator(self) -> torch.Generator:
        """An independent generator seeded from this run's, so a draft's draws never shift the
        target's acceptance draws (and a seeded run still repeats exactly)."""
        return torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=self.generator)))

    def side_generator(self, stream: int) -> torch.Generator:
        """A generator of its own for a method's draws that are not tokens (resampling particles), seeded
        from (seed, stream) without touching the token generator: one lane draws exactly what plain
        sampling draws with the same seed, whatever the method does between tokens."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + 7919 * (stream + 1)) % 2**63)

    def sample(self, logits: torch.Tensor) -> int:
        """Draw one token from softmax(logits) with this run's seeded generator."""
        probs = torch.softmax(logits.double(), -1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


class StopRun(Exception):
    """Thrown into a strategy's generator when the user presses Stop. A strategy that holds output
    it has not committed yet (beam search commits only at the end) catches it, yields that output,
    and returns; any other strategy just ends where it is."""


class Stopwatch:
    """Time spent inside a method's generator (never in whoever draws its events), and where in that
    time the prompt pass ended and the first token arrived. One definition for every method:
    prefill_s = busy time up to the end of the latest prompt pass; decode_s = the busy time after it."""

    def __init__(self, session: DecodeSession):
        self.session = session
        self.busy = 0.0
        self.prefill_s = 0.0             # no prompt pass (a one-token prompt kept as the root): nothing to prefill
        self.first_token_s: float | None = None

    @property
    def decode_s(self) -> float:
        return self.busy - self.prefill_s

    def run(self, events: Iterator[Event], stopping: Callable[[], bool] = lambda: False) -> Iterator[Event]:
        """Yield `events`, timing each step of the method; the caller's time between steps is not counted.
        Once `stopping()` holds, StopRun is thrown into the method (once), and what it still yields (a
        beam's best hypothesis) is yielded and timed like the rest; then `stopped` is True."""
        self.stopped = False
        while True:
            start = time.perf_counter()
            try:
                if stopping() and not self.stopped:
                    self.stopped = True
                    event = events.throw(StopRun())
                else:
                    event = next(events)
            except (StopIteration, StopRun):
                return
            finally:
                self._account(start, time.perf_counter())
            if isinstance(event, TokenEvent) and self.first_token_s is None:
                self.first_token_s = self.busy
            yield event

    def _account(self, start: float, end: float) -> None:
        done = self.session.prompt_pass_done_at
        if done is not None and start <= done <= end:      # a prompt pass ended in this step
            self.prefill_s = self.busy + (done - start)
        self.busy += end - start
