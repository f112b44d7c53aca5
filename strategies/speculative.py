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

The round machinery here is shared: verify_chain with DEL (early_exit.py), whose drafts are a chain
too, only from the target's own early layers; Verdict and round_events (a round as TreeEvent,
VerifyEvent, TokenEvents and StatsEvent; a chain is a tree) with the tree methods RSD and SpecTr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache

from playground.events import TreeEvent, TreeNode, VerifyEvent

from . import acceptance
from .base import InvalidParameter, Param, Strategy
from .sampling import Sampling
from .tree_attention import AcceptanceStats, DraftTree, keep_prefix, tokens_to_commit
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


def check_sampling(values: dict) -> None:
    """Temperatures between 0 (greedy) and the sampling chain's lowest would fail mid-run; refuse them up front."""
    low = next(p.low for p in Sampling.params if p.name == "temperature")
    if 0 < values["temperature"] < low:
        raise InvalidParameter(f"temperature must be 0 (greedy) or at least {low}, got {values['temperature']}")


def sampling_params() -> tuple[Param, ...]:
    return (
        Param("temperature", "float", 0.0, 0.0, 5.0,
              help="0 = greedy verification (output equals greedy); > 0 = speculative sampling.", step=0.05),
        Param("top_k", "int", 0, 0, 1000, help="Top-k applied to both target and draft (0 = off).", step=1),
        Param("top_p", "float", 1.0, 0.01, 1.0, help="Top-p applied to both target and draft (1 = off).", step=0.01),
    )


# --- verdicts: what a round accepted ---------------------------------------------------------------

@dataclass
class Verdict:
    path: list[int]                  # accepted tree nodes, root (node 0) first
    next_token: int                  # the target's own token after the path (correction or bonus)
    rejection: dict | None = None    # sampling modes: node, draft token, p and q where all drafts failed

    @property
    def accepted(self) -> int:
        return len(self.path) - 1

    def proposed(self, tree: DraftTree) -> list[int]:
        return [tree.tokens[n] for n in self.path[1:]] + [self.next_token]


def chain_tree(root: int, drafts: list[int]) -> DraftTree:
    """A chain is a tree: node i + 1 is draft i, under node i."""
    return DraftTree([root] + drafts, list(range(-1, len(drafts))))


def verify_chain(target_logits: torch.Tensor, drafts: list[int], q: torch.Tensor | None, warp,
                 generator: torch.Generator) -> Verdict:
    """target_logits (n + 1, V) after root, x_1..x_n; q (n, V) the draft distributions x_i came from.

    Greedy (warp None): accept while x_i is the target's argmax, then take the argmax.
    Sampling: accept x_i with prob min(1, p_i(x_i) / q_i(x_i)); at the first rejection draw from
    norm(max(0, p_i - q_i)) and stop; if all pass, draw the bonus from p_{n+1}.
    """
    if warp is None:
        best = target_logits.argmax(-1).tolist()
        n = next((i for i, x in enumerate(drafts) if x != best[i]), len(drafts))
        return Verdict(list(range(n + 1)), best[n])
    p = probabilities(target_logits, warp)
    for i, x in enumerate(drafts):
        index, token = acceptance.speculative_accept(p[i], q[i], torch.tensor([x]), generator)
        if int(index) < 0:
            return Verdict(list(range(i + 1)), int(token), {"node": i, "draft": x, "p": p[i], "q": q[i]})
    return Verdict(list(range(len(drafts) + 1)), int(acceptance.sample(p[-1:], generator)))


def rejection_record(session, rejection: dict, position: int, top: int = REJECTION_TOP) -> dict:
    """The VerifyEvent.rejection dict: p, q and the residual over the tokens that matter there
    (the largest of p and q, and always the rejected draft token); position = draft depth - 1."""
    p, q, draft = rejection["p"], rejection["q"], rejection["draft"]
    residual = acceptance.residual(p, q)
    ids = torch.topk(torch.maximum(p, q), min(top, p.shape[-1])).indices.tolist()
    if draft not in ids:
        ids[-1] = draft
    return {"token_ids": ids, "texts": [session.token_text(i) for i in ids],
            "p": [float(p[i]) for i in ids], "q": [float(q[i]) for i in ids],
            "residual": [float(residual[i]) for i in ids], "draft_token": draft, "position": position}


# --- one round as events -------------------------------------------------------------------------

def committed_count(session, tree: DraftTree, verdict: Verdict) -> int:
    """Tokens of the verdict that will be committed (cut at EOS and at the length limit)."""
    return tokens_to_commit(session, verdict.proposed(tree))


def round_events(session, tree: DraftTree, target_logits: torch.Tensor, q_at: dict[int, torch.Tensor] | None,
                 verdict: Verdict, step: int, stats: AcceptanceStats, warp, source: str, title: str = "Draft tree",
                 extra: Callable[[int], dict] | None = None):
    """Yield the round's TreeEvent, VerifyEvent, committed TokenEvents and StatsEvent.

    target_logits (n, V): row i is the target after node i's root path; q_at[i]: the draft
    distribution node i's children were drawn from. Returns whether the run is over."""
    proposed = verdict.proposed(tree)
    count = tokens_to_commit(session, proposed)
    p = probabilities(target_logits, warp)
    yield tree_event(session, tree, p, q_at, verdict, count, step, title)
    rejection = rejection_record(session, verdict.rejection, verdict.accepted) if verdict.rejection else None
    yield VerifyEvent(step=step, drafted=len(tree) - 1, accepted=verdict.accepted, emitted=count,
                      depth_accepted=[verdict.accepted >= d for d in range(1, tree.max_depth() + 1)],
                      rejection=rejection, source=source)
    for i, token in enumerate(proposed[:count]):
        node = verdict.path[i]                           # token i was predicted at node path[i]
        fields = {"extra": {"accepted draft": float(i < verdict.accepted), **(extra(i) if extra else {})}}
        if warp is not None:
            fields.update(sampled_prob=float(p[node, token]), kept=kept_count(warp(target_logits[node].double())))
        yield session.commit(token, target_logits[node], **fields)
    yield stats.update(len(tree) - 1, verdict.accepted, count)
    return session.is_eos(proposed[count - 1]) or not session.room()


def tree_event(session, tree: DraftTree, p: torch.Tensor, q_at: dict[int, torch.Tensor] | None, verdict: Verdict,
               count: int, step: int, title: str) -> TreeEvent:
    """Root, drafts (accepted / rejected; score = the draft's q, label p and q), the target's token."""
    def node(i, parent, token, score, status, label, q=None):
        return TreeNode(id=i, parent=parent, token_id=token, text=session.token_text(token), score=score,
                        status=status, label=label, draft_prob=q)

    committed = set(verdict.path[:count])
    nodes = [node(0, None, tree.tokens[0], 1.0, "accepted", "root")]
    for i in range(1, len(tree)):
        parent, token = tree.parents[i], tree.tokens[i]
        p_x = float(p[parent, token])
        q_x = float(q_at[parent][token]) if q_at and parent in q_at else None
        nodes.append(node(i, parent, token, p_x if q_x is None else q_x, "accepted" if i in committed else "rejected",
                          f"p={p_x:.2f}" + ("" if q_x is None else f" q={q_x:.2f}"), q_x))
    chosen = verdict.path[count - 1]
    if count == len(verdict.path):                       # the target's own token was committed
        last, token = verdict.path[-1], verdict.next_token
        kind = "bonus" if not tree.children(last) else "correction"
        chosen = len(tree)
        nodes.append(node(chosen, last, token, float(p[last, token]), "bonus",
                          f"p={float(p[last, token]):.2f} ({kind})"))
    return TreeEvent(step=step, nodes=nodes, title=title, reset=True, chosen=chosen)


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
    params = (
        Param("gamma", "int", 4, 1, 16, help="Draft tokens proposed per round (the most, when adaptive).", step=1),
        Param("adaptive", "bool", True,
              help="Adapt the draft length to acceptance (transformers' heuristic schedule): +2 after a fully "
                   "accepted round, -1 after a rejection, between 1 and gamma."),
    ) + sampling_params()

    def check(self):
        check_sampling(self.p)

    def decode(self, s):
        warp = make_warp(self.p["temperature"], self.p["top_k"], self.p["top_p"])
        # The draft samples from its own stream, so its draws never shift the target's acceptance draws.
        draft_gen = s.spawn_generator()
        self.cache = cache = s.new_cache()              # exposed for tests: committed minus the root
        self.draft_cache = draft_cache = DynamicCache(config=s.draft_model.config)   # exposed for tests
        root = prefill_all_but_last(s, cache)
        stats, step, length = AcceptanceStats(), 0, self.p["gamma"]
        while True:
            context = s.prompt_ids + s.output_ids
            gamma = min(length, s.max_new_tokens - len(s.output_ids) - 1)
            drafts, q = self.draft(s, draft_cache, context, gamma, warp, draft_gen)
            target_logits = s.forward([root] + drafts, cache, last_only=False)[0][0]
            verdict = verify_chain(target_logits, drafts, q, warp, s.generator)
            tree = chain_tree(root, drafts)
            # Valid KV: the old context plus the committed drafts (the new root is not fed yet).
            keep = len(context) + committed_count(s, tree, verdict) - 1
            keep_prefix(cache, keep)
            keep_prefix(draft_cache, min(draft_cache.get_seq_length(), keep))
            q_at = dict(enumerate(q)) if q is not None else None
            if (yield from round_events(s, tree, target_logits, q_at, verdict, step, stats, warp, "draft model",
                                        "Draft chain")):
                return
            root, step = s.output_ids[-1], step + 1
            if self.p["adaptive"]:                       # depends on past rounds only, so still exact
                length = min(length + 2, self.p["gamma"]) if verdict.accepted == len(drafts) else max(1, length - 1)

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
