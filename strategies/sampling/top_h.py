"""Top-H: entropy-bounded truncation (Baghaei et al., NeurIPS 2025, arXiv 2509.02510).

Tokens are added in descending probability while the entropy of the kept set stays within a
budget proportional to the model's own entropy. Three stopping rules, P the top-n probabilities:

* "authors" (default; "released" in runs saved before the transformers rule was told apart): the
  authors' released logit_processor.py: keep token k while the *unnormalised* partial entropy
  -sum_{i<=k} P_i log P_i <= alpha * (-sum_{i<n} P_i log P_i).
* "transformers": transformers' `TopHLogitsWarper`: the same loop on P renormalised within the
  top-n (transformers fixes n = 100).
* "normalized": the paper's constraint H(q) <= alpha * H(p), q the renormalised kept set.

"authors" and "transformers" agree exactly when the top-n holds all the mass s = sum(P) (vocab <=
top_n) and otherwise often differ: renormalised, the test reads
partial_k + sigma_k log s <= alpha * (partial_n + s log s), sigma_k the mass of tokens 0..k, and the
two log s terms cancel only at s = 1.

All are computed in nats; each rule is the same in bits (both sides scale together).
Temperature is applied exactly once, before the entropies (the released code applied it twice
when combined with transformers' own temperature warper).
"""

from __future__ import annotations

from ..base import InvalidParameter, Param, Strategy
from . import warpers
from .warpers import (TOP_H_ALIASES, TOP_H_CRITERIA, AliasedChoice, top_h_criterion, top_h_criterion_help,
                       top_h_keep)


# What each criterion holds under the budget (the trace names it, so the number is what it says).
MEASURED = {"authors": "kept partial entropy, -sum p log p over the kept set (nats, not renormalised)",
            "transformers": "kept partial entropy within the renormalised top-n (nats)",
            "normalized": "kept-set entropy H(q), q renormalised (nats)"}


class TopH(Strategy):
    name = "top_h"
    title = "Top-H (entropy-bounded truncation)"
    summary = ("Keep the most probable tokens while an entropy of the kept set stays within alpha x an "
               "entropy of the model's distribution; which entropies is the criterion's choice (see below).")
    paper = "https://arxiv.org/abs/2509.02510"
    params = (
        Param("alpha", "float", 0.4, 0.01, 1.0, help="Entropy budget coefficient in (0, 1]; paper suggests 0.3-0.5.", step=0.01),
        Param("temperature", "float", 1.0, 0.05, 5.0, help="Applied once, before the entropies (paper's scripts use 2.0).", step=0.05),
        Param("top_n", "int", 100, 1, 1000, help="Only the n most probable tokens are candidates.", step=1),
        AliasedChoice("criterion", "choice", "authors", choices=TOP_H_CRITERIA, aliases=TOP_H_ALIASES,
                      help=top_h_criterion_help("n")),
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
            extra = {"budget (nats)": budget, MEASURED[top_h_criterion(criterion)]: kept_h, "kept mass": kept_mass}
            yield s.commit(token, logits, kept=kept, sampled_prob=float(warped.softmax(-1)[token]), extra=extra)
            if s.is_eos(token) or not s.room():
                return
            logits = s.forward([token], cache)[0][0]
