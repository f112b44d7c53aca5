"""DecodeSession: what a strategy gets to work with during one run.

It owns the model handle, the prompt, the seeded generator, the forward-pass counters and the
committed output. Strategies call `forward` (never the model directly, so passes are counted)
and `commit` (which turns a chosen token and the logits it came from into a TokenEvent).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from . import lean_forward
from .config import settings
from .events import Alternative, TokenEvent

TOP_ALTERNATIVES = 5


class DecodeSession:
    def __init__(self, model, tokenizer, prompt_ids: list[int], max_new_tokens: int,
                 eos_ids: set[int], seed: int, draft_model=None, lean: bool | None = None):
        self.model = model
        self.draft_model = draft_model
        # The lean forward (lean_forward.py) is the same computation without transformers' per-call overhead.
        self.lean = settings().forward == "lean" if lean is None else lean
        self.tokenizer = tokenizer
        self.prompt_ids = list(prompt_ids)
        self.max_new_tokens = max_new_tokens
        self.eos_ids = set(eos_ids)
        self.generator = torch.Generator().manual_seed(seed)
        self.output_ids: list[int] = []
        self.forward_passes = 0
        self.draft_forward_passes = 0
        self._text = ""

    # --- model calls -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    def forward(self, input_ids: torch.Tensor | list[int], cache=None, last_only: bool = True, **kwargs):
        """One counted target forward pass. Returns logits (rows, V) as float, and the model output."""
        self.forward_passes += 1
        return self._call(self.model, input_ids, cache, last_only, kwargs)

    def draft_forward(self, input_ids: torch.Tensor | list[int], cache=None, last_only: bool = True, **kwargs):
        """One counted forward pass of the draft model (same contract as `forward`)."""
        if self.draft_model is None:
            raise RuntimeError("this method needs a draft model")
        self.draft_forward_passes += 1
        return self._call(self.draft_model, input_ids, cache, last_only, kwargs)

    def _call(self, model, input_ids, cache, last_only: bool, kwargs: dict):
        if not torch.is_tensor(input_ids):
            input_ids = torch.tensor([input_ids], dtype=torch.long)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        input_ids = input_ids.to(self.device)
        logits_to_keep = 1 if last_only else 0
        with torch.inference_mode():
            if self.lean and lean_forward.supports(model):
                out = lean_forward.forward(model, input_ids, cache, logits_to_keep=logits_to_keep, **kwargs)
            else:
                out = model(input_ids=input_ids, cache=cache, use_cache=cache is not None,
                            logits_to_keep=logits_to_keep, **kwargs)
        return out.logits[:, -1] if last_only else out.logits, out

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
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _append_text(self, token_id: int) -> str:
        """Text this token adds to the output. Multi-byte characters split over tokens show
        on the token that completes them (a partial byte decodes to U+FFFD and is held back)."""
        self.output_ids.append(token_id)
        full = self.tokenizer.decode(self.output_ids, skip_special_tokens=False)
        if full.endswith("\ufffd"):
            return ""
        piece, self._text = full[len(self._text):], full
        return piece

    def describe(self, token_id: int, logits: torch.Tensor, index: int, **fields) -> TokenEvent:
        """A TokenEvent for `token_id` chosen from `logits` (V,), without committing it."""
        logp = torch.log_softmax(logits.double(), -1)
        probs = logp.exp()
        entropy = float(-(torch.special.xlogy(probs, probs)).sum())
        top = torch.topk(probs, min(TOP_ALTERNATIVES, probs.shape[-1]))
        alternatives = [Alternative(int(i), self.token_text(int(i)), float(p))
                        for p, i in zip(top.values.tolist(), top.indices.tolist())]
        return TokenEvent(index=index, token_id=token_id, text="", logprob=float(logp[token_id]),
                          entropy=entropy, alternatives=alternatives, **fields)

    def commit(self, token_id: int, logits: torch.Tensor, **fields) -> TokenEvent:
        """Append a chosen token to the output and describe it (logits: the distribution it came from)."""
        return self.emit(self.describe(token_id, logits, len(self.output_ids), **fields))

    def emit(self, event: TokenEvent) -> TokenEvent:
        """Commit a token described earlier (beam search describes candidates before choosing)."""
        event.index = len(self.output_ids)
        event.text = self._append_text(event.token_id)
        return event

    def spawn_generator(self) -> torch.Generator:
        """An independent generator seeded from this run's, so a draft's draws never shift the
        target's acceptance draws (and a seeded run still repeats exactly)."""
        return torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=self.generator)))

    def sample(self, logits: torch.Tensor) -> int:
        """Draw one token from softmax(logits) with this run's seeded generator."""
        probs = torch.softmax(logits.double(), -1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
