"""Speculative sampling (Leviathan et al. 2023; Chen et al. 2023) with a separate draft model.

Each round the draft proposes gamma tokens one by one; the target scores all gamma + 1 positions
in ONE forward pass; the drafts are accepted left to right and the first rejection is replaced by
the target's own choice (greedy: its argmax; sampling: a draw from the residual max(0, p - q)).
If every draft survives, the target's distribution after the last one gives a bonus token.

Greedy mode (temperature 0) equals plain greedy token for token. Sampling mode applies the same
temperature / top-k / top-p to BOTH p and q before the ratio, so the output is distributed exactly
as plain sampling with those settings.

Caches: the target cache holds the committed text minus its last token (the "root", fed again in
front of the drafts); the draft cache holds any prefix of the committed text and is fed what it
lacks. After a round both are cropped back to what is still valid (ALGORITHMS.md s.0.2).

The round machinery here (verify_chain, chain_round) is shared with DEL (early_exit.py), whose
drafts are a chain too, only from the target's own early layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache

from playground.events import TreeEvent, TreeNode, VerifyEvent

from . import acceptance
from .base import Param, Strategy
from .sampling import Sampling
from .tree_attention import AcceptanceStats, keep_prefix, tokens_to_commit
from .warpers import kept_count

REJECTION_TOP = 10


# --- warping: one function for p and q -------------------------------------------------------

def make_warp(temperature: float, top_k: int, top_p: float) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The sampling chain (temperature -> top-k -> top-p) as logits -> logits; None means greedy."""
    if temperature <= 0:
        return None
    return Sampling(temperature=temperature, top_k=top_k, top_p=top_p).warp


def probabilities(logits: torch.Tensor, warp) -> torch.Tensor:
    """softmax(warp(logits)) in float64; untempered softmax in greedy mode (shown as p and q)."""
    logits = logits.double()
    return torch.softmax(warp(logits) if warp else logits, -1)


def sampling_params() -> tuple[Param, ...]:
    return (
        Param("temperature", "float", 0.0, 0.0, 5.0,
              help="0 = greedy verification (output equals greedy); > 0 = speculative sampling.", step=0.05),
        Param("top_k", "int", 0, 0, 1000, help="Top-k applied to both target and draft (0 = off).", step=1),
        Param("top_p", "float", 1.0, 0.01, 1.0, help="Top-p applied to both target and draft (1 = off).", step=0.01),
    )


# --- verifying a chain of drafts --------------------------------------------------------------

@dataclass
class ChainVerdict:
    accepted: int                    # leading drafts accepted
    next_token: int                  # the target's token after them (correction or bonus)
    p: torch.Tensor                  # (n + 1, V) target probabilities (warped in sampling mode)
    rejection: dict | None = None    # p, q at the first rejection (sampling mode only)


def verify_chain(target_logits: torch.Tensor, drafts: list[int], q: torch.Tensor | None, warp,
                 generator: torch.Generator) -> ChainVerdict:
    """target_logits (n + 1, V) after root, x_1..x_n; q (n, V) the draft distributions x_i came from.

    Greedy (warp None): accept while x_i is the target's argmax, then take the argmax.
    Sampling: accept x_i with prob min(1, p_i(x_i) / q_i(x_i)); at the first rejection draw from
    norm(max(0, p_i - q_i)) and stop; if all pass, draw the bonus from p_{n+1}.
    """
    p = probabilities(target_logits, warp)
    if warp is None:
        best = target_logits.argmax(-1).tolist()
        n = next((i for i, x in enumerate(drafts) if x != best[i]), len(drafts))
        return ChainVerdict(n, best[n], p)
    for i, x in enumerate(drafts):
        index, token = acceptance.speculative_accept(p[i], q[i], torch.tensor([x]), generator)
        if int(index) < 0:
            return ChainVerdict(i, int(token), p, {"position": i, "draft": x, "p": p[i], "q": q[i]})
    return ChainVerdict(len(drafts), int(acceptance.sample(p[-1:], generator)), p)


def rejection_record(session, rejection: dict, top: int = REJECTION_TOP) -> dict:
    """The VerifyEvent.rejection dict: p, q and the residual over the tokens that matter there
    (the largest of p and q, and always the rejected draft token)."""
    p, q, draft = rejection["p"], rejection["q"], rejection["draft"]
    residual = acceptance.residual(p, q)
    ids = torch.topk(torch.maximum(p, q), min(top, p.shape[-1])).indices.tolist()
    if draft not in ids:
        ids[-1] = draft
    return {"token_ids": ids, "texts": [session.token_text(i) for i in ids],
            "p": [float(p[i]) for i in ids], "q": [float(q[i]) for i in ids],
            "residual": [float(residual[i]) for i in ids], "draft_token": draft, "position": rejection["position"]}


# --- one round as events -------------------------------------------------------------------------

def chain_round(session, root: int, drafts: list[int], q: torch.Tensor | None, target_logits: torch.Tensor,
                verdict: ChainVerdict, step: int, stats: AcceptanceStats, warp, source: str,
                extra: Callable[[int], dict] | None = None):
    """Yield the round's TreeEvent, VerifyEvent, committed TokenEvents and StatsEvent.
    Returns the number of tokens committed and whether the run is over (EOS or length)."""
    proposed = drafts[:verdict.accepted] + [verdict.next_token]
    count = tokens_to_commit(session, proposed)
    yield chain_tree(session, root, drafts, q, verdict, count, step)
    yield VerifyEvent(step=step, drafted=len(drafts), accepted=verdict.accepted, emitted=count,
                      depth_accepted=[verdict.accepted > d for d in range(len(drafts))],
                      rejection=rejection_record(session, verdict.rejection) if verdict.rejection else None,
                      source=source)
    for i, token in enumerate(proposed[:count]):
        fields = {"extra": {"accepted draft": float(i < verdict.accepted), **(extra(i) if extra else {})}}
        if warp is not None:
            fields.update(sampled_prob=float(verdict.p[i, token]), kept=kept_count(warp(target_logits[i].double())))
        yield session.commit(token, target_logits[i], **fields)
    yield stats.update(len(drafts), verdict.accepted, count)
    return count, session.is_eos(proposed[count - 1]) or not session.room()


def chain_tree(session, root: int, drafts: list[int], q: torch.Tensor | None, verdict: ChainVerdict,
               count: int, step: int) -> TreeEvent:
    """The round's chain as a tree: root, drafts (accepted / rejected, score = q), the target's token."""
    def node(i, parent, token, score, status, label):
        return TreeNode(id=i, parent=parent, token_id=token, text=session.token_text(token), score=score,
                        status=status, label=label)

    nodes = [node(0, None, root, 1.0, "accepted", "root")]
    for i, x in enumerate(drafts):
        p_x = float(verdict.p[i, x])
        q_x = float(q[i, x]) if q is not None else float("nan")
        status = "accepted" if i < min(verdict.accepted, count) else "rejected"
        nodes.append(node(i + 1, i, x, q_x, status, f"p={p_x:.2f} q={q_x:.2f}"))
    chosen = min(verdict.accepted, count)
    if count > verdict.accepted:                           # the target's own token was committed
        n, token = verdict.accepted, verdict.next_token
        kind = "bonus" if n == len(drafts) else "correction"
        chosen = len(drafts) + 1
        nodes.append(node(chosen, n, token, float(verdict.p[n, token]), "bonus",
                          f"p={float(verdict.p[n, token]):.2f} ({kind})"))
    return TreeEvent(step=step, nodes=nodes, title="Draft chain", reset=True, chosen=chosen)


def prefill_all_but_last(session, cache) -> int:
    """Cache the prompt minus its last token, which becomes the first round's root."""
    if len(session.prompt_ids) > 1:
        session.forward(session.prompt_ids[:-1], cache)
    return session.prompt_ids[-1]


# --- the strategy ------------------------------------------------------------------------------

class SpeculativeSampling(Strategy):
    name = "speculative"
    title = "Speculative sampling (draft model)"
    summary = ("A small draft model proposes gamma tokens; the target checks them all in one pass and keeps "
               "the longest acceptable prefix. Greedy at temperature 0, exact sampling above it.")
    paper = "https://arxiv.org/abs/2211.17192"
    lossless = True
    needs_draft = True
    params = (Param("gamma", "int", 4, 1, 16, help="Draft tokens proposed per round.", step=1),) + sampling_params()

    def decode(self, s):
        warp = make_warp(self.p["temperature"], self.p["top_k"], self.p["top_p"])
        # The draft samples from its own stream, so its draws never shift the target's acceptance draws.
        draft_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=s.generator)))
        cache, draft_cache = s.new_cache(), DynamicCache(config=s.draft_model.config)
        root = prefill_all_but_last(s, cache)
        stats, step = AcceptanceStats(), 0
        while True:
            context = s.prompt_ids + s.output_ids
            gamma = min(self.p["gamma"], s.max_new_tokens - len(s.output_ids) - 1)
            drafts, q = self.draft(s, draft_cache, context, gamma, warp, draft_gen)
            target_logits = s.forward([root] + drafts, cache, last_only=False)[0][0]
            verdict = verify_chain(target_logits, drafts, q, warp, s.generator)
            count, done = yield from chain_round(s, root, drafts, q, target_logits, verdict, step, stats, warp,
                                                 source="draft model")
            if done:
                return
            # Valid KV: the old context plus the accepted drafts (the new root is not fed yet).
            keep_prefix(cache, len(context) + verdict.accepted)
            keep_prefix(draft_cache, min(draft_cache.get_seq_length(), len(context) + verdict.accepted))
            root, step = s.output_ids[-1], step + 1

    def draft(self, s, cache, context: list[int], gamma: int, warp, generator):
        """gamma draft tokens and the (gamma, V) distributions they came from (gamma draft passes)."""
        drafts, rows = [], []
        feed = context[cache.get_seq_length():]
        for _ in range(gamma):
            logits = s.draft_forward(feed, cache)[0][0]
            q = probabilities(logits, warp)
            token = int(q.argmax()) if warp is None else int(acceptance.sample(q[None], generator))
            drafts.append(token)
            rows.append(q)
            if s.is_eos(token):                            # nothing after EOS can be committed
                break
            feed = [token]
        return drafts, torch.stack(rows) if rows else None
