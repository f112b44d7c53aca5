"""Ancestral sampling through the warper chain (temperature and every truncation rule, Top-H included)."""

from __future__ import annotations

from ..base import Strategy
from .warpers import MIN_SAMPLING_TEMPERATURE, WarperChain, family_params, kept_count


class Sampling(Strategy):
    name = "sampling"
    title = "Sampling (temperature, top-k, top-p, min-p, typical, epsilon, eta, Top-H)"
    summary = ("Draw from the model's distribution after temperature and truncation, applied in the order "
               "temperature -> top-k -> top-p -> min-p -> typical-p -> epsilon -> eta -> Top-H.")
    paper = "https://arxiv.org/abs/1904.09751"
    params = family_params(temperature_default=1.0, temperature_low=MIN_SAMPLING_TEMPERATURE)

    def warp(self, logits):
        return WarperChain(self.p)(logits)

    def decode(self, s):
        warp = WarperChain(self.p)
        cache = s.new_cache()
        logits = s.prefill(cache)
        while True:
            warped = warp(logits.double())
            token = s.sample(warped)
            sampled_prob = float(warped.softmax(-1)[token])
            yield s.commit(token, logits, kept=kept_count(warped), sampled_prob=sampled_prob)
            if s.is_eos(token) or not s.room():
                return
            logits = s.forward([token], cache)[0][0]
