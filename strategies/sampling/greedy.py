"""Greedy decoding: always the most probable next token. The reference every lossless method must equal."""

from __future__ import annotations

from ..base import Strategy


class Greedy(Strategy):
    name = "greedy"
    title = "Greedy"
    summary = "Argmax at every step; deterministic, the baseline for lossless methods."
    lossless = True

    @classmethod
    def lossless_help(cls) -> str:
        return "The reference: every lossless method is tested to equal it token for token."

    def is_lossless(self) -> bool:
        return False            # the reference itself: nothing to be lossless against

    def decode(self, s):
        cache = s.new_cache()
        logits = s.prefill(cache)
        while True:
            token = int(logits.argmax())
            yield s.commit(token, logits)
            if s.is_eos(token) or not s.room():
                return
            logits = s.forward([token], cache)[0][0]
