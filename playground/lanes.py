"""Lanes: many sequences decoded together over one prompt cache.

Glossary
  lane   one sequence: the shared prompt, then its own tokens. It keeps a stable id for its whole life;
         events name lanes by id, so a view can replay the population.
  row    where a live lane sits in the batch. Rows change when lanes are selected, forked or freed.
  hole   a cache column a row must not see: the slot a paused row filled while other rows advanced.
         Every row attends through a mask of its own (`seen`), so holes cost memory, never correctness;
         `compact` squeezes them out.

One batched forward per step advances every live lane by one token: each row's position is its own
length (the count of columns it has seen), and an additive mask hides everything it has not. Selecting
rows (resampling, pruning, forking) gathers the cache rows; nothing is recomputed. A lane that sits a
step out (its reasoning step is over, or it finished) takes a pad token into a hole and keeps its logits.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import torch

from .events import LaneTokenEvent, TokenEvent

PAD = 0          # the token a paused row feeds; its column is a hole, so the id never matters


@dataclass
class Lane:
    id: int
    parent: int | None                            # the lane it was forked from (None: sampled fresh)
    tokens: list[int] = field(default_factory=list)
    described: list[TokenEvent] = field(default_factory=list)   # each token as the answer would show it
    text: str = ""
    finished: str = ""                            # "" while live; else why it ended: eos | length | ...
    data: dict = field(default_factory=dict)      # the method's own per-lane numbers (rewards, step start)

    def fork(self, new_id: int) -> "Lane":
        """A copy with its own lists (never aliased: extending one must not extend the other)."""
        return replace(self, id=new_id, parent=self.id, tokens=list(self.tokens),
                       described=list(self.described), data=dict(self.data))


@dataclass
class PromptState:
    """A filled cache of the prompt alone (batch 1) and the next-token logits after it (V,)."""

    cache: object
    logits: torch.Tensor


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where attention is allowed, the dtype's minimum where not (a bool mask is wrong under eager)."""
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


class Lanes:
    """N lanes over one prompt cache: `push` a token per lane, `peek` at extra tokens, `select` rows."""

    def __init__(self, session, n: int, prefix: Lane | None = None, prompt: "PromptState | None" = None,
                 first_id: int = 0):
        """n lanes after the prompt. `prefix`: every lane continues this lane (its tokens, descriptions and
        text), as a search does when it re-opens a state; its tokens are read in one pass. `prompt`: the
        prompt's own cache and logits from an earlier Lanes (`prompt_state`), copied so the prompt is not
        read again. Lane ids are first_id, first_id + 1, ..."""
        if n < 1:
            raise ValueError("at least one lane")
        self.session = session
        if prompt is None:
            self.cache = session.new_cache()
            self.first = session.prefill(self.cache)                 # (V,): one prompt pass for all lanes
        else:
            self.cache, self.first = copy.deepcopy(prompt.cache), prompt.logits
        logits = self.first
        chain = list(prefix.tokens) if prefix is not None else []
        if chain:                                                    # the cache holds the prompt: not a prompt pass
            logits = session.forward(chain, self.cache)[0][0]
        self.cache.batch_repeat_interleave(n)
        self.seen = torch.ones(n, len(session.prompt_ids) + len(chain), dtype=torch.bool)   # (rows, columns)
        self.logits = logits[None].expand(n, -1).clone()             # (rows, V): each row's next-token logits
        self.lanes = [prefix.fork(first_id + i) if prefix is not None else Lane(id=first_id + i, parent=None)
                      for i in range(n)]
        self.freed: list[Lane] = []                                  # lanes taken out of the batch, kept as records
        self._next_id = first_id + n
        session.lanes_started += n

    def prompt_state(self) -> "PromptState":
        """The prompt's cache (row 0's first columns: every row sees the prompt, and compaction keeps seen
        columns first and in order) and the logits after it, for later Lanes to start from."""
        prompt_length = len(self.session.prompt_ids)
        cache = self.session.new_cache()
        for index, layer in enumerate(self.cache.layers):
            cache.update(layer.keys[:1, :, :prompt_length].clone(), layer.values[:1, :, :prompt_length].clone(), index)
        return PromptState(cache, self.first)

    def __len__(self) -> int:
        return len(self.lanes)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.session.model.parameters()).dtype

    def lengths(self) -> torch.Tensor:
        """(rows,) each row's length: prompt plus its own tokens, which is also its next position."""
        return self.seen.sum(1)

    # --- one step ----------------------------------------------------------------------------------
    def push(self, tokens: list[int | None], step: int = 0) -> list[LaneTokenEvent]:
        """Append tokens[r] to row r (None: the row sits this step out) and run ONE batched forward for
        the next logits. Returns the lane token events, each described from the logits it was drawn from."""
        if len(tokens) != len(self.lanes):
            raise ValueError(f"{len(tokens)} tokens for {len(self.lanes)} lanes")
        for lane, token in zip(self.lanes, tokens):      # check every row before changing any
            if token is not None and lane.finished:
                raise ValueError(f"lane {lane.id} finished ({lane.finished}); a finished lane is never extended")
        events = [self._append(row, token, step) for row, token in enumerate(tokens) if token is not None]
        if events:
            self._advance(tokens)
        return events

    def _append(self, row: int, token: int, step: int) -> LaneTokenEvent:
        lane = self.lanes[row]
        described = self.session.describe(token, self.logits[row], len(lane.tokens))
        lane.tokens.append(token)
        full = self.session.tokenizer.decode(lane.tokens, skip_special_tokens=False)
        piece = "" if full.endswith("\ufffd") else full[len(lane.text):]   # a split character shows when whole
        if piece:
            lane.text = full
        described.text = piece
        lane.described.append(described)
        self.session.lane_tokens += 1
        return LaneTokenEvent(lane=lane.id, index=described.index, token_id=token, text=piece,
                              logprob=described.logprob, entropy=described.entropy, step=step)

    def _advance(self, tokens: list[int | None]) -> None:
        active = torch.tensor([t is not None for t in tokens])                       # (rows,)
        ids = torch.tensor([[PAD if t is None else t] for t in tokens])              # (rows, 1)
        positions = self.lengths()[:, None]                                          # (rows, 1)
        self.seen = torch.cat([self.seen, active[:, None]], 1)                       # (rows, T + 1)
        mask = additive(self.seen, self.dtype)[:, None, None, :]                     # (rows, 1, 1, T + 1)
        logits, _ = self.session.forward(ids, self.cache, attention_mask=mask, position_ids=positions)
        self.logits = torch.where(active[:, None], logits, self.logits)

    def peek(self, chains: list[list[int]]) -> torch.Tensor:
        """Next-token logits (rows, V) after each row's own chain of extra tokens (a judge question, a
        reference answer), counted as ONE reward pass; then the chains are forgotten (the cache is cropped
        back), so the lanes are exactly as before."""
        logits = self.peek_all(chains)
        return logits[torch.arange(len(chains)), torch.tensor([len(c) for c in chains]) - 1]

    def peek_all(self, chains: list[list[int]]) -> torch.Tensor:
        """`peek`, keeping the logits at EVERY position of the chains (rows, n, V), n the longest chain
        (a row's positions past its own chain are padding): what a score over a chain's tokens needs."""
        if len(chains) != len(self.lanes) or not all(chains):
            raise ValueError("one non-empty chain per lane")
        rows, n, past = len(chains), max(map(len, chains)), self.seen.shape[1]
        ids = torch.tensor([c + [PAD] * (n - len(c)) for c in chains])              # (rows, n)
        real = torch.arange(n)[None] < torch.tensor([len(c) for c in chains])[:, None]   # (rows, n)
        positions = self.lengths()[:, None] + torch.arange(n)[None]                  # (rows, n)
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool))[None] & real[:, None, :]  # (rows, n, n)
        allowed = torch.cat([self.seen[:, None, :].expand(rows, n, past), causal], 2)     # (rows, n, past + n)
        logits, _ = self.session.reward_forward(ids, self.cache, last_only=False, position_ids=positions,
                                                attention_mask=additive(allowed, self.dtype)[:, None])
        self.cache.crop(-n)
        return logits

    # --- the population ----------------------------------------------------------------------------
    def finish(self, row: int, reason: str) -> None:
        """Mark a lane finished: it stays a row (it can still be selected and copied) but never grows."""
        self.lanes[row].finished = reason

    def live(self) -> list[int]:
        return [row for row, lane in enumerate(self.lanes) if not lane.finished]

    def select(self, rows: list[int]) -> list[Lane]:
        """Keep these rows, in this order. A row named twice is forked: the first mention is the lane
        itself, each further one a copy with a new id whose parent is the original. Rows not named are
        dropped. The cache rows are gathered, never recomputed."""
        index = torch.tensor(rows)
        self.cache.reorder_cache(index)
        self.seen, self.logits = self.seen[index], self.logits[index]
        kept, taken = [], set()
        for row in rows:
            lane = self.lanes[row]
            if row in taken:
                lane = lane.fork(self._next_id)
                self._next_id += 1
                self.session.lanes_started += 1
            taken.add(row)
            kept.append(lane)
        self.lanes = kept
        self.compact()
        return kept

    def free(self, rows: list[int]) -> None:
        """Take rows out of the batch (their lanes stay readable in `freed`): later steps cost less."""
        gone = set(rows)
        self.freed += [self.lanes[r] for r in sorted(gone)]
        self.select([r for r in range(len(self.lanes)) if r not in gone])

    def compact(self) -> None:
        """Squeeze holes out of the cache: each row's seen columns move to the front, in order. Keys carry
        their positions (rotary), so moving a column never changes what attention computes."""
        counts = self.seen.sum(1)                                                    # (rows,)
        width = int(counts.max()) if len(counts) else 0
        if width == self.seen.shape[1] or not len(counts):
            return
        order = torch.sort((~self.seen).to(torch.int8), dim=1, stable=True).indices[:, :width]  # (rows, width)
        for layer in self.cache.layers:
            index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys, layer.values = layer.keys.gather(2, index), layer.values.gather(2, index)
        self.seen = torch.arange(width)[None] < counts[:, None]

    def commit(self, lane: Lane):
        """Yield the lane's tokens as the run's answer (TokenEvents), in order."""
        for described in lane.described:
            yield self.session.emit(replace(described))
