"""One verification round as events, the same for every speculative method, greedy or sampling.

After the target has scored a tree and a verifier has given its Verdict, `round_events` yields:
the TreeEvent (root, drafts accepted / cut / rejected, the target's own token), the VerifyEvent
(drafted, accepted, emitted, per-depth acceptance, the rejection with the residual drawn from),
the committed TokenEvents and a StatsEvent. Tokens are committed up to the first EOS and within
the length limit; drafts on the accepted path beyond that are shown as "pruned" (cut).

Node probabilities are shown in float64 from the same (warped, in sampling mode) distribution
the verifier judged, computed only on the rows the tree uses (untempered: from each row's RowStats,
row_stats.py, which also describe the committed tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from playground.events import NoticeEvent, StatsEvent, TreeEvent, TreeNode, VerifyEvent
from playground.row_stats import row_stats

from . import acceptance
from .tree import DraftTree
from .verify import Verdict

REJECTION_TOP = 10
PLAIN_STEPS = "drafts do not pay on this machine now: plain steps (one token per target pass)"


@dataclass
class AcceptanceStats:
    """Running numbers of a speculative run (shown in the StatsEvent after every round)."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0
    drafting_rounds: int = 0

    def update(self, drafted: int, accepted: int, emitted: int) -> StatsEvent:
        self.rounds += 1
        self.drafting_rounds += drafted > 0
        self.drafted += drafted
        self.accepted += accepted
        self.emitted += emitted
        values = {"verification rounds": self.rounds, "rounds that drafted": self.drafting_rounds,
                  "mean committed tokens per round": self.emitted / self.rounds,
                  "draft tokens per round": self.drafted / self.rounds}
        if self.drafted:                                  # no rate from nothing
            values["acceptance rate"] = self.accepted / self.drafted
        return StatsEvent(values)


class PlainStepNotice:
    """Says when an adaptive method's cost model has stopped drafting, so a run of plain steps is never
    mistaken for speculation: raised after STREAK rounds in a row in which a draft was possible but none
    was proposed, withdrawn when a round drafts again. Rounds where no draft was possible (nothing to
    copy, no room left) say nothing either way."""

    STREAK = 3

    def __init__(self):
        self.shown, self.streak, self.since = False, 0, 0

    def update(self, plain: bool, step: int):
        """step: this round's index (0-based). Yields a NoticeEvent when the state changes."""
        self.streak = self.streak + 1 if plain else 0
        self.since = step if self.streak == 1 else self.since
        if plain and not self.shown and self.streak >= self.STREAK:
            self.shown = True
            yield NoticeEvent("drafting", f"{PLAIN_STEPS}, since round {self.since + 1}", active=True)
        elif not plain and self.shown:
            self.shown = False
            yield NoticeEvent("drafting", f"drafting again from round {step + 1}", active=False)


def prefill_with_root(session, cache, hidden_rows: int = 0) -> tuple[int, torch.Tensor, tuple | None]:
    """Cache the WHOLE prompt in one prompt pass: its last token is the first round's root, already run,
    and the pass's last row is the target after it, so a first round without drafts costs no pass of its
    own (the pass greedy makes; caching all but the last token cost one extra weight read per run).
    Returns (root, the target's logits after it (V,), the pass's hidden states: with hidden_rows n, the
    last of them holds the last n prompt positions' final normalised states; else None)."""
    logits, out = session.forward(session.prompt_ids, cache, last_only=False, logits_to_keep=1, hidden_rows=hidden_rows)
    return session.prompt_ids[-1], logits[0, -1], out.hidden_states if hidden_rows else None


def tokens_to_commit(session, proposed: list[int]) -> int:
    """How many of `proposed` may be committed: up to and including the first EOS, within room."""
    room = session.max_new_tokens - len(session.output_ids)
    for i, token in enumerate(proposed[:room]):
        if session.is_eos(token):
            return i + 1
    return min(len(proposed), room)


def committed_count(session, tree: DraftTree, verdict: Verdict) -> int:
    return tokens_to_commit(session, verdict.proposed(tree))


def node_q(tree: DraftTree, q_at: dict[int, torch.Tensor] | None) -> list[float | None]:
    """Each node's draft probability given its parent, where the draft gave one (root: None)."""
    q_at = q_at or {}
    return [None] + [float(q_at[p][t]) if p in q_at else None for p, t in zip(tree.parents[1:], tree.tokens[1:])]


def round_events(session, tree: DraftTree, logits: torch.Tensor, verdict: Verdict, step: int,
                 stats: AcceptanceStats, warp=None, *, source: str, title: str,
                 q: list[float | None] | None = None, labels: list[str] | None = None,
                 extra: Callable[[int], dict] | None = None):
    """Yield the round's events; returns whether the run is over.

    logits (n, V): row i is the target after node i's root path (untempered);
    q: per node, the draft probability shown as its score; labels: extra hover text per node."""
    proposed = verdict.proposed(tree)
    count = tokens_to_commit(session, proposed)
    rows = sorted(set(max(p, 0) for p in tree.parents) | set(verdict.path))
    scored = logits if len(rows) == len(logits) else logits[rows]      # every row (a plain round): no copy
    if warp is None:         # untempered: each row's RowStats give every number shown, in one read of the row
        if verdict.stats is not None:                                  # the verdict's, of every row
            summary, at = verdict.stats, {row: row for row in rows}
        else:
            summary, at = row_stats(scored), {row: i for i, row in enumerate(rows)}
        lse = summary.lse.tolist()

        def prob(row: int, token: int) -> float:
            return math.exp(float(logits[row, token]) - lse[at[row]])
    else:
        warped = warp(scored.double())                                 # once per row, not per token
        logp = dict(zip(rows, torch.log_softmax(warped, -1)))
        p = {row: values.exp() for row, values in logp.items()}
        kept = dict(zip(rows, torch.isfinite(warped).sum(-1).tolist()))   # tokens the warp kept

        def prob(row: int, token: int) -> float:
            return float(p[row][token])
    yield tree_event(session, tree, prob, verdict, count, step, title, q, labels)
    rejection = rejection_record(session, verdict.rejection, verdict.accepted) if verdict.rejection else None
    yield VerifyEvent(step=step, drafted=len(tree) - 1, accepted=verdict.accepted, emitted=count,
                      depth_accepted=[verdict.accepted >= d for d in range(1, tree.max_depth() + 1)],
                      rejection=rejection, source=source)
    for i, token in enumerate(proposed[:count]):
        node = verdict.path[i]                           # token i was predicted at node path[i]
        fields = {"extra": {"accepted draft": float(i < verdict.accepted), **(extra(i) if extra else {})}}
        if warp is None:         # untempered, the row's stats describe the committed token: read once
            yield session.commit(token, logits[node], stats=summary.row(at[node]), **fields)
        else:
            yield session.commit(token, logits[node], logp=logp[node], probs=p[node], sampled_prob=prob(node, token),
                                 kept=kept[node], **fields)
    yield stats.update(len(tree) - 1, verdict.accepted, count)
    return session.is_eos(proposed[count - 1]) or not session.room()


def tree_event(session, tree: DraftTree, prob: Callable[[int, int], float], verdict: Verdict, count: int, step: int,
               title: str, q: list[float | None] | None, labels: list[str] | None) -> TreeEvent:
    """Root, drafts (accepted / pruned: on the accepted path but cut at EOS or the length limit /
    rejected), and the target's own token. A node's score is its draft q where known, else its p
    (prob(row, token): p of token after node row's root path)."""
    committed, on_path = set(verdict.path[:count]), set(verdict.path)
    nodes = [TreeNode(id=0, parent=None, token_id=tree.tokens[0], text=session.token_text(tree.tokens[0]),
                      score=1.0, status="accepted", label="root")]
    for i in range(1, len(tree)):
        parent, token = tree.parents[i], tree.tokens[i]
        p_x, q_x = prob(parent, token), q[i] if q else None
        status = "accepted" if i in committed else ("pruned" if i in on_path else "rejected")
        label = f"p={p_x:.2f}" + ("" if q_x is None else f" q={q_x:.2f}") + (f" {labels[i]}" if labels else "")
        nodes.append(TreeNode(id=i, parent=parent, token_id=token, text=session.token_text(token),
                              score=p_x if q_x is None else q_x, logprob=math.log(p_x) if p_x > 0 else None,
                              status=status, label=label, draft_prob=q_x))
    chosen = verdict.path[count - 1]
    if count == len(verdict.path):                       # the target's own token was committed
        last, token = verdict.path[-1], verdict.next_token
        p_x = prob(last, token)
        kind = "bonus" if not tree.children(last) else "recovered"
        chosen = len(tree)
        nodes.append(TreeNode(id=chosen, parent=last, token_id=token, text=session.token_text(token), score=p_x,
                              logprob=math.log(p_x) if p_x > 0 else None, status="bonus",
                              label=f"p={p_x:.2f} ({kind})"))
    return TreeEvent(step=step, nodes=nodes, title=title, reset=True, chosen=chosen)


def rejection_record(session, rejection: dict, position: int, top: int = REJECTION_TOP) -> dict:
    """The VerifyEvent.rejection dict: p, q and the residual the recovered token was drawn from, over the
    tokens that matter there: the largest of p, q and that residual, and always the rejected candidates
    and the recovered token.

    rejection (verify.rejection): p, q, residual (V,) float64; draft (the first rejected candidate);
    rejected, recovered, rule where the verifier gave them. A record without a residual is the single-
    candidate case, whose residual is norm(max(0, p - q))."""
    p, q, draft = rejection["p"], rejection["q"], rejection["draft"]
    residual = rejection.get("residual")
    residual = acceptance.residual(p, q) if residual is None else residual
    rejected = list(rejection.get("rejected") or [draft])
    recovered = rejection.get("recovered")
    # the residual after K rejections can put its mass where p and q are both small: rank by it too
    ids = torch.topk(torch.maximum(torch.maximum(p, q), residual), min(top, p.shape[-1])).indices.tolist()
    must = list(dict.fromkeys(rejected + ([] if recovered is None else [recovered])))[:len(ids)]
    missing = [t for t in must if t not in ids]
    droppable = [i for i in reversed(range(len(ids))) if ids[i] not in must]   # the smallest first
    for slot, token in zip(droppable, missing):
        ids[slot] = token
    return {"token_ids": ids, "texts": [session.token_text(i) for i in ids],
            "p": [float(p[i]) for i in ids], "q": [float(q[i]) for i in ids],
            "residual": [float(residual[i]) for i in ids], "draft_token": draft, "position": position,
            "rejected_tokens": rejected, "recovered_token": recovered,
            "residual_rule": rejection.get("rule", "norm(max(0, p - q))")}
