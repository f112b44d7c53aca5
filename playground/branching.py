"""Branching: continue a saved run from one of its tokens with another token (or the same one).

A click on token k of run R asks for R's alternatives at k; continuing with token t makes a
new run whose model reads R's prompt ids + R's tokens before k + t, saved with parent R and
position k. Everything here is reached from a public handler: the run id, the position and the
token are checked, and anyone holding a run's link may branch from it (the branch is theirs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from storage import default_repository
from storage.models import ID_PATTERN

from .events import Event, MetricsEvent, RunStarted, TokenEvent, from_dicts
from .runner import Branch, InvalidRequest

PICK = re.compile(r"\s*([0-9a-f]{32})\s*:\s*(\d{1,7})\s*")   # what the page's click handler writes
MAX_TYPED_CHARS = 200
MAX_TYPED_TOKENS = 16


@dataclass
class BranchPoint:
    """A saved run and one of its committed tokens: what a branch from there inherits."""
    run_id: str
    started: RunStarted
    tokens: list[TokenEvent]
    position: int

    @property
    def token(self) -> TokenEvent:
        return self.tokens[self.position]


def parse_pick(value: object) -> tuple[str, int]:
    """'<run id>:<token index>' from the page (or any API caller) as (run id, index), or a clear refusal."""
    match = PICK.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidRequest("Click a token of a saved run to branch from it (expected '<run id>:<token index>').")
    return match.group(1), int(match.group(2))


def parent_events(run_id: str) -> list[Event]:
    """A saved, finished run's events; a run still going (or cut off) has none to branch from yet."""
    if not isinstance(run_id, str) or not ID_PATTERN.fullmatch(run_id):
        raise InvalidRequest("That is not a run id (32 hexadecimal characters).")
    row = default_repository().get(run_id)
    if row is None:
        raise InvalidRequest(f"No saved run with id {run_id}.")
    if not row.events:
        raise InvalidRequest("This run is not saved yet (still running, or cut off): branch once it has finished.")
    return from_dicts(row.events)


def branch_point(run_id: str, position: object) -> BranchPoint:
    """The run's token at `position` (0 <= position < the number of its tokens), checked."""
    events = parent_events(run_id)
    started = events[0] if events else None
    if not isinstance(started, RunStarted) or not isinstance(events[-1], MetricsEvent):
        raise InvalidRequest("This saved run is incomplete; it cannot be branched.")
    if not started.prompt_ids:
        raise InvalidRequest("This run was saved before prompt ids were recorded; re-run it to branch from it.")
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < len(tokens):
        raise InvalidRequest(f"Token position {position!r} is not in this run: it has {len(tokens)} tokens "
                             f"(0 to {len(tokens) - 1}).")
    return BranchPoint(run_id, started, tokens, position)


def chosen_ids(point: BranchPoint, choice: object, typed: object, tokenizer) -> tuple[list[int], str | None]:
    """The token(s) to continue with, and a notice when typed text made several: typed text (encoded
    with the run's own tokenizer, up to MAX_TYPED_TOKENS tokens) wins over a picked alternative,
    which must be one of that position's alternatives (or the token the run chose)."""
    text = typed if isinstance(typed, str) else ""
    if text:
        if len(text) > MAX_TYPED_CHARS:
            raise InvalidRequest(f"The typed token is {len(text)} characters; at most {MAX_TYPED_CHARS}.")
        ids = [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]
        if not ids:
            raise InvalidRequest("The typed text encodes to no token.")
        if len(ids) > MAX_TYPED_TOKENS:
            raise InvalidRequest(f"The typed text is {len(ids)} tokens; a branch takes at most {MAX_TYPED_TOKENS}.")
        notice = None if len(ids) == 1 else f"The typed text {text!r} is {len(ids)} tokens; all of them were added."
        return ids, notice
    allowed = {a.token_id for a in point.token.alternatives} | {point.token.token_id}
    try:
        token_id = int(str(choice).strip())
    except ValueError:
        raise InvalidRequest("Pick one of the alternatives, or type a token.") from None
    if token_id not in allowed:
        raise InvalidRequest(f"Token id {token_id} is not among this position's alternatives; type it instead.")
    return [token_id], None


def make_branch(point: BranchPoint, ids: list[int], tokenizer) -> Branch:
    """The branch's prompt: the parent's prompt ids + its tokens before the position + `ids`; the
    inherited text carries the parent's own inherited prefix, so a branch of a branch shows it all."""
    started, before = point.started, point.tokens[:point.position]
    inherited = [t.token_id for t in before]
    prefix = (started.prefix or "") + (started.chosen or "") + "".join(t.text for t in before)
    prefix_ids = list(started.prefix_ids or []) + list(started.chosen_ids or []) + inherited
    return Branch(parent_id=point.run_id, position=point.position,
                  prompt_ids=list(started.prompt_ids) + inherited + ids, prefix=prefix, prefix_ids=prefix_ids, chosen=tokenizer.decode(ids), chosen_ids=list(ids))
