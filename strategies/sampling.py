"""Ancestral sampling with temperature and the common truncation rules (order in warpers.py)."""

from __future__ import annotations

from . import warpers
from .base import Param, Strategy


class Sampling(Strategy):
    name = "sampling"
    title = "Sampling (temperature, top-k, top-p, min-p, typical, epsilon, eta)"
    summary = ("Draw from the model's distribution after temperature and truncation, applied in the order "
               "temperature -> top-k -> top-p -> min-p -> typical-p -> epsilon -> eta.")
    paper = "https://arxiv.org/abs/1904.09751"
    params = (
        Param("temperature", "float", 1.0, 0.05, 5.0, help="Divide logits by T before everything else.", step=0.05),
        Param("top_k", "int", 0, 0, 1000, help="Keep the k most probable tokens (0 = off).", step=1),
        Param("top_p", "float", 1.0, 0.01, 1.0, help="Nucleus: smallest set with mass >= p (1 = off).", step=0.01),
        Param("min_p", "float", 0.0, 0.0, 1.0, help="Keep tokens with p >= min_p * p_max (0 = off).", step=0.01),
        Param("typical_p", "float", 1.0, 0.01, 1.0, help="Locally typical sampling mass (1 = off).", step=0.01),
        Param("epsilon", "float", 0.0, 0.0, 0.5, help="Drop tokens with p < epsilon (0 = off).", step=0.0001),
        Param("eta", "float", 0.0, 0.0, 0.5, help="Drop p < min(eta, sqrt(eta) exp(-H)) (0 = off).", step=0.0001),
    )

    def warp(self, logits):
        p = self.p
        logits = warpers.temperature(logits, p["temperature"])
        logits = warpers.top_k(logits, p["top_k"])
        logits = warpers.top_p(logits, p["top_p"])
        logits = warpers.min_p(logits, p["min_p"])
        logits = warpers.typical_p(logits, p["typical_p"])
        logits = warpers.epsilon(logits, p["epsilon"])
        return warpers.eta(logits, p["eta"])

    def decode(self, s):
        cache = s.new_cache()
        logits = s.prefill(cache)
        while True:
            warped = self.warp(logits.double())
            token = s.sample(warped)
            sampled_prob = float(warped.softmax(-1)[token])
            yield s.commit(token, logits, kept=warpers.kept_count(warped), sampled_prob=sampled_prob)
            if s.is_eos(token) or not s.room():
                return
            logits = s.forward([token], cache)[0][0]
