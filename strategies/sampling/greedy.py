"""Greedy decoding: always the most probable next token. The reference every lossless method must equal."""

from __future__ import annotations

from playground.row_stats import row_stats

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
            stats = row_stats(logits)         # the argmax and the token's description in one read of the row
            token = int(stats.indices[0, 0])
            yield s.commit(token, logits, stats=stats)
            if s.is_eos(token) or not s.room():
                return
            logits = s.forward([token], cache)[0][0]
