"""Top-H: entropy-bounded truncation (Baghaei et al., NeurIPS 2025, arXiv 2509.02510).

Tokens are added in descending probability while the entropy of the kept set stays within a
budget proportional to the model's own entropy. Two stopping rules:

* "released" (default): the rule in the authors' released logits processor and in transformers'
  `TopHLogitsWarper`: with P the top-n probabilities, keep token k while the *unnormalised*
  partial entropy -sum_{i<=k} P_i log P_i <= alpha * (-sum_{i<n} P_i log P_i).
* "normalized": the paper's constraint H(q) <= alpha * H(p), q the renormalised kept set.

Both are computed in nats; the rule is the same in bits (both sides scale together).
Temperature is applied exactly once, before the entropies (the released code applied it twice
when combined with transformers' own temperature warper).

transformers renormalises P within the top-n before taking entropies; the released code does
not. The two agree exactly when the top-n holds all the mass (vocab <= top_n) and differ only
by that missing tail otherwise.
"""

from __future__ import annotations

from ..base import InvalidParameter, Param, Strategy
from . import warpers
from .warpers import TOP_H_CRITERIA, top_h_keep


class TopH(Strategy):
    name = "top_h"
    title = "Top-H (entropy-bounded truncation)"
    summary = "Keep the most probable tokens while the kept set's entropy stays under alpha x the model's entropy."
    paper = "https://arxiv.org/abs/2509.02510"
    params = (
        Param("alpha", "float", 0.4, 0.01, 1.0, help="Entropy budget coefficient in (0, 1]; paper suggests 0.3-0.5.", step=0.01),
        Param("temperature", "float", 1.0, 0.05, 5.0, help="Applied once, before the entropies (paper's scripts use 2.0).", step=0.05),
        Param("top_n", "int", 100, 1, 1000, help="Only the n most probable tokens are candidates.", step=1),
        Param("criterion", "choice", "released", choices=TOP_H_CRITERIA,
              help="released: the authors' code and transformers' rule; normalized: H(q) <= alpha H(p)."),
    )

    def check(self):
        if not 0 < self.p["alpha"] <= 1:
            raise InvalidParameter("alpha must be in (0, 1]")

    def decode(self, s):
        cache = s.new_cache()
        logits = s.prefill(cache)
        alpha, top_n, criterion = self.p["alpha"], self.p["top_n"], self.p["criterion"]
        while True:
            tempered = warpers.temperature(logits.double(), self.p["temperature"])
            kept, budget, kept_h, kept_mass = top_h_keep(tempered, alpha, top_n, criterion)
            warped = warpers.top_h(tempered, alpha, top_n, criterion)
            token = s.sample(warped)
            extra = {"budget (nats)": budget, "kept-set entropy (nats)": kept_h, "kept mass": kept_mass}
            yield s.commit(token, logits, kept=kept, sampled_prob=float(warped.softmax(-1)[token]), extra=extra)
            if s.is_eos(token) or not s.room():
                return
            logits = s.forward([token], cache)[0][0]
