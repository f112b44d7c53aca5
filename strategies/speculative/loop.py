"""The one round loop of the speculative family.

Every round: draft (`grow`), score the whole draft in ONE target pass (tree attention), judge it
(`accept`: greedy or the method's acceptance rule), keep the committed rows in the target's and the
draft's caches, and emit the round's events. A method says only how it drafts, how it judges, and
what it learns after a round (`after_round`); nothing else differs between methods.

The first round speculates straight from the prompt: the prompt pass caches the whole prompt, its
last token is the first root and the pass's last row is the target after it, so the first round feeds
only its drafts (and makes no pass when it has none, just as greedy's first token costs none).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Iterator

import torch

from playground.events import Event, NoticeEvent

from ..base import Strategy
from .cost_model import cost_model_for
from .drafters import DraftCache
from .fallback import KEY, PlainFallback
from .rounds import AcceptanceStats, committed_count, node_q, prefill_with_root, round_events
from .tree import DraftTree, keep_path, verify_after_root, verify_tree
from .verify import Verdict, check_sampling, greedy_verdict, make_warp, recursive_rejection_verdict


@dataclass
class Draft:
    """One round's proposal."""

    tree: DraftTree
    q_at: dict[int, torch.Tensor] | None = None    # sampling: node -> the draft law its children came from (V,)
    q: list[float | None] | None = None            # per node, the draft probability shown (None: not drafted)
    labels: list[str] | None = None                # extra hover text per node
    source: str = "draft model"
    context: Any = None                            # whatever the method's accept / after_round need


class SpeculationLoop(Strategy):
    lossless = True
    tree_title = "Draft tree"

    def check(self):
        if "temperature" in self.p:
            check_sampling(self.p)

    # --- what a method says ---------------------------------------------------------------------
    def grow(self, s, root: int, room: int, warp, generator: torch.Generator) -> Draft:
        """This round's draft below `root`; room: the deepest draft position that can still be committed."""
        raise NotImplementedError

    def accept(self, draft: Draft, logits: torch.Tensor, warp, generator: torch.Generator) -> Verdict:
        """Default: greedy, or recursive rejection sampling for siblings drawn without replacement."""
        if warp is None:
            return greedy_verdict(draft.tree, logits)
        return recursive_rejection_verdict(draft.tree, logits, draft.q_at, warp, generator)

    def after_round(self, s, draft: Draft, logits: torch.Tensor, verdict: Verdict, seconds: float | None,
                    step: int) -> Iterator[Event]:
        """Learn from the round (cost models, acceptance statistics); may yield events. seconds: the
        verification pass's time; None when no pass of the tree's size ran (the first round, whose root
        ran in the prompt pass)."""
        return iter(())

    def prefill(self, s, cache) -> tuple[int, torch.Tensor]:
        """Cache the whole prompt; return its last token, the first root, and the target's logits after it (V,)."""
        root, logits, _ = prefill_with_root(s, cache)
        return root, logits

    def falls_back(self) -> bool:
        """Whether this run may fall back to plain steps when its drafts do not pay (fallback.py): methods
        that size their drafts themselves and draft cheaply (no draft model) say yes; fixed sizes are
        the user's choice and are kept."""
        return False

    # --- the loop --------------------------------------------------------------------------------
    @staticmethod
    def target_pass(s, tree: DraftTree, cache, root_logits: torch.Tensor | None) -> tuple[torch.Tensor, float | None]:
        """Logits (n, V) of ONE timed target pass over the tree; in the first round only its drafts are fed
        (root_logits (V,): the root ran in the prompt pass) and no pass of the tree's size is timed (None)."""
        if root_logits is not None:
            return verify_after_root(s, tree, cache, root_logits), None
        start = time.perf_counter()
        logits = verify_tree(s, tree, cache)
        return logits, time.perf_counter() - start

    @property
    def draft_cache(self):
        """The draft model's KV cache (tests check it holds exactly the committed rows)."""
        return self.drafts.cache

    def decode(self, s):
        warp = make_warp(self.p) if "temperature" in self.p else None
        draft_gen = s.spawn_generator()                  # draft draws never shift the target's acceptance draws
        self.cache = cache = s.new_cache()               # exposed for tests: committed minus the root
        root, root_logits = self.prefill(s, cache)       # the root already ran: the first round feeds only drafts
        self.drafts = DraftCache(s, s.prompt_ids[:-1]) if self.needs_draft else None
        stats, step = AcceptanceStats(), 0
        costs = cost_model_for(s.model)
        # Only on costs frozen at warm-up: a decision from passes timed in this run would depend on the load.
        guard = PlainFallback() if self.falls_back() and costs.frozen else None
        while True:
            room = s.max_new_tokens - len(s.output_ids) - 1
            draft = self.grow(s, root, room, warp, draft_gen)   # grown even when not used: the method learns from it
            forced = guard is not None and guard.plain(step) and len(draft.tree) > 1
            if forced:
                draft = replace(draft, tree=DraftTree.rooted(root), q_at=None, q=None, labels=None,
                                source="plain step (drafts did not pay)")
            past_len = cache.get_seq_length() - (root_logits is not None)
            logits, seconds = self.target_pass(s, draft.tree, cache, root_logits)
            root_logits = None
            verdict = self.accept(draft, logits, warp, s.generator)
            path = verdict.path[:committed_count(s, draft.tree, verdict)]
            keep_path(cache, past_len, path)             # the last committed token stays out: the next root
            if self.drafts:
                self.drafts.keep(draft.tree, path)
            done = yield from round_events(s, draft.tree, logits, verdict, step, stats, warp, source=draft.source,
                                           title=self.tree_title, q=draft.q or node_q(draft.tree, draft.q_at),
                                           labels=draft.labels)
            for event in self.after_round(s, draft, logits, verdict, seconds, step):
                # While the fallback holds, its notice is the one that says why there are no drafts.
                if not (guard and (forced or guard.fallen) and isinstance(event, NoticeEvent) and event.key == KEY):
                    yield event
            if guard:
                context = past_len + 1
                yield from guard.record(step, len(draft.tree) - 1, len(path), costs.round_cost(len(draft.tree), context),
                                        costs.cost(1, context))
            if done:
                return
            root, step = s.output_ids[-1], step + 1
