"""Trace events: the one spine of the app.

A strategy yields these; the runner adds timing and metrics; visualizers draw them; storage
saves them as JSON; a saved run re-renders from them without touching the model. Every event
is a plain dataclass of JSON types, tagged with its `type` when serialised.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

EVENT_TYPES: dict[str, type["Event"]] = {}


def event_type(name: str):
    """Register a dataclass as an event kind under `name` (the JSON `type` tag)."""

    def register(cls):
        cls.type = name
        EVENT_TYPES[name] = cls
        return cls

    return register


@dataclass
class Event:
    type: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **dataclasses.asdict(self)}


def event_from_dict(data: dict[str, Any]) -> Event:
    data = dict(data)
    cls = EVENT_TYPES[data.pop("type")]
    names = {f.name for f in dataclasses.fields(cls)}
    event = cls(**{k: v for k, v in data.items() if k in names})
    # Nested dataclasses come back as dicts; each event type knows how to revive its own.
    return event.revive() if hasattr(event, "revive") else event


@dataclass
class Alternative:
    token_id: int
    text: str
    prob: float


@event_type("run_started")
@dataclass
class RunStarted(Event):
    run_id: str
    model_id: str
    dtype: str
    strategy: str
    params: dict[str, Any]
    seed: int
    prompt: str
    prompt_tokens: int
    max_new_tokens: int
    notices: list[str] = field(default_factory=list)
    # What re-running exactly needs beyond the request (runs saved before these fields load with
    # the defaults, which mean "not recorded").
    draft_model_id: str = ""      # resolved: the default draft is named, "" = the method uses none
    chat: bool | None = None      # the chat-template switch
    prompt_ids: list[int] = field(default_factory=list)   # the templated prompt the model actually saw
    forward: str = ""             # PLAYGROUND_FORWARD: "lean" or "transformers"
    torch_threads: int = 0
    versions: dict[str, str] = field(default_factory=dict)   # python, torch, transformers, ...
    lossless: bool | None = None  # this configuration's output equals greedy token for token (None: not recorded)
    # A branch (playground/branching.py) continues another run from one of its tokens: prompt_ids above
    # = the parent's prompt ids + the inherited tokens + the chosen token(s), so it re-renders alone.
    parent_id: str | None = None          # the run it left
    parent_position: int | None = None    # the parent's token index replaced by the chosen token(s)
    prefix: str | None = None             # output text inherited from the parent (and its own ancestors)
    prefix_ids: list[int] | None = None
    chosen: str | None = None             # the token(s) picked at the branch point
    chosen_ids: list[int] | None = None


@event_type("token")
@dataclass
class TokenEvent(Event):
    """One committed output token, with the model's own view of that step.

    `logprob`, `entropy` (nats) and `alternatives` come from the model's untempered
    distribution, so runs of different methods are comparable; `kept` is the number of
    tokens a truncation rule left in play, `sampled_prob` the token's probability in the
    distribution it was actually drawn from.
    """

    index: int
    token_id: int
    text: str
    logprob: float
    entropy: float
    alternatives: list[Alternative]
    kept: int | None = None
    sampled_prob: float | None = None
    extra: dict[str, float] = field(default_factory=dict)  # method-specific per-step numbers

    def revive(self) -> "TokenEvent":
        self.alternatives = [a if isinstance(a, Alternative) else Alternative(**a) for a in self.alternatives]
        return self


@dataclass
class TreeNode:
    id: int
    parent: int | None
    token_id: int
    text: str
    score: float                  # method-defined: cumulative logprob for beams, q or p for drafts
    logprob: float | None = None
    status: str = "open"          # open | kept | pruned | finished | chosen | accepted | rejected | bonus
    label: str = ""
    draft_prob: float | None = None   # a draft node's q given its parent (draft-model methods)


@event_type("lane_token")
@dataclass
class LaneTokenEvent(Event):
    """One token added to one lane: a sequence among several decoded together (playground/lanes.py).
    The run's answer is committed separately, as TokenEvents, once the method has chosen a lane.
    `logprob` and `entropy` are the model's untempered view, as in TokenEvent."""

    lane: int
    index: int                    # position in the lane's own output
    token_id: int
    text: str                     # what this token adds to the lane's text
    logprob: float
    entropy: float
    step: int = 0                 # the method's step (a reasoning step for particle methods)


@event_type("lane")
@dataclass
class LaneEvent(Event):
    """A moment in one lane's life, so a view (or a saved run) can replay the population.

    kind: spawn (a new lane; `parent` is the lane it was forked from, None for a fresh sample) |
    score (a reward was computed) | finish (it ended: `reason` eos, length, step limit) | prune (dropped by
    the method: `reason` says why) | chosen (the lane the method returned).
    """

    kind: str
    lane: int
    step: int
    parent: int | None = None
    weight: float | None = None
    reward: float | None = None
    reason: str = ""
    text: str = ""                # the lane's whole text at this moment (shown on hover)
    answer: str = ""              # the final answer extracted from the text (votes), if any


@event_type("population")
@dataclass
class PopulationEvent(Event):
    """One step of a population method (particles, samples, beams over steps): each lane's reward and
    normalised weight, the effective sample size, and what the method did with them.

    `weights` is a simplex over `lanes`; `ess` = 1 / sum(w^2), in [1, N]; `temperature` the annealing
    temperature the weights were tempered with (1 = untempered); `survivors` the lanes after resampling or
    pruning (a lane named twice was copied), empty when the population was kept as it was."""

    step: int
    lanes: list[int]
    rewards: list[float]
    weights: list[float]
    ess: float
    temperature: float = 1.0
    survivors: list[int] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)
    note: str = ""                # what happened, in words ("resampled (ESS 1.7 < N/2)")


@event_type("tree")
@dataclass
class TreeEvent(Event):
    """The search or draft tree after one step (cumulative for beam search)."""

    step: int
    nodes: list[TreeNode]
    preview: str = ""             # best uncommitted text so far (shown greyed while streaming)
    title: str = ""
    reset: bool = True            # True: a new tree (one per speculative step); False: grow the last one
    chosen: int | None = None     # a node whose root path is the answer (highlighted)

    def revive(self) -> "TreeEvent":
        self.nodes = [n if isinstance(n, TreeNode) else TreeNode(**n) for n in self.nodes]
        return self


@event_type("verify")
@dataclass
class VerifyEvent(Event):
    """One draft-then-verify round of a speculative method (the tree itself goes in a TreeEvent).

    `depth_accepted[d]` says whether the round's accepted path reached depth d+1, for every
    depth at which the round proposed at least one draft token: the per-position acceptance.
    `rejection`, for sampling modes, holds the top tokens at the round's final rejection with their
    target p, draft q and `residual`: the law the recovered token was actually drawn from (one
    candidate: norm(max(0, p - q)); K candidates by recursive rejection: p after K updates; SpecTr:
    the K-SEQ residual), described in words by `residual_rule`; keys token_ids, texts, p, q,
    residual, draft_token, rejected_tokens, recovered_token, residual_rule, position.
    """

    step: int
    drafted: int                  # draft tokens proposed this round (tree nodes, root excluded)
    accepted: int                 # of them accepted
    emitted: int                  # tokens committed this round (accepted + bonus or correction)
    depth_accepted: list[bool] = field(default_factory=list)
    rejection: dict[str, Any] | None = None
    source: str = ""              # where the drafts came from (draft model, layer 12, retrieval, ...)


@event_type("stats")
@dataclass
class StatsEvent(Event):
    """Method-specific running numbers (e.g. beam count, acceptance). Last one wins in metrics."""

    values: dict[str, float]


@event_type("metrics")
@dataclass
class MetricsEvent(Event):
    """Measured, never estimated: every number comes from clocks and counters of this run."""

    new_tokens: int
    elapsed_s: float
    time_to_first_token_s: float | None
    tokens_per_s: float           # new_tokens / elapsed_s (prefill included)
    forward_passes: int
    tokens_per_forward: float
    model_bytes: int
    bandwidth_gb_s: float
    machine_bandwidth_gb_s: float | None
    stop_reason: str              # eos | length | complete (the method ended its answer) | stopped | time limit | error
    method: dict[str, float] = field(default_factory=dict)
    draft_forward_passes: int = 0
    # (new_tokens - 1) / decode_s: tokens after the first over seconds after the prompt pass. Runs
    # saved before prefill_s existed hold (new_tokens - 1) / (elapsed_s - time to first token) here.
    decode_tokens_per_s: float | None = None
    greedy_tokens_per_s: float | None = None      # plain greedy's decode rate, same model: the reference
    greedy_reference: str = ""                    # which greedy run measured it
    speedup_vs_greedy: float | None = None        # decode_tokens_per_s / greedy_tokens_per_s
    prefill_s: float | None = None                # time in the method until the latest prompt pass ended
    decode_s: float | None = None                 # elapsed_s - prefill_s
    weight_bytes_read: int | None = None          # weights of every pass run, target and draft
    weight_traffic_gb_s: float | None = None      # weight_bytes_read / elapsed_s (bandwidth_gb_s: target only)
    # Many sequences at once (playground/lanes.py): every token of every lane, and the reward's own passes.
    lane_tokens: int | None = None                # tokens generated across all lanes (None: one sequence)
    lane_tokens_per_s: float | None = None        # lane_tokens / elapsed_s
    samples: int | None = None                    # lanes ever started (forks included)
    reward_forward_passes: int = 0                # passes run to score lanes (judge questions, reward models)


@event_type("notice")
@dataclass
class NoticeEvent(Event):
    """Something the user should know about how the method is running right now, said in words
    (e.g. "drafts do not pay on this machine now: plain steps"). `key` groups notices of one kind
    so a view can show the latest per key; `active` False withdraws an earlier notice of that key."""

    key: str
    message: str
    active: bool = True


def notices(events: list[Event]) -> list[str]:
    """What the user should know about a run, in words: the runner's notices on the request (e.g. a
    clamped length), then the latest active NoticeEvent of each key, in the order they were raised."""
    fixed = [n for e in events if isinstance(e, RunStarted) for n in e.notices]
    latest: dict[str, str] = {}
    for event in events:
        if isinstance(event, NoticeEvent):
            latest.pop(event.key, None)          # a key raised again moves to its new place
            if event.active:
                latest[event.key] = event.message
    return fixed + list(latest.values())


@event_type("error")
@dataclass
class ErrorEvent(Event):
    message: str


def to_dicts(events: list[Event]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in events]


def from_dicts(items: list[dict[str, Any]]) -> list[Event]:
    return [event_from_dict(d) for d in items]


@event_type("layer_acceptance")
@dataclass
class LayerAcceptanceEvent(Event):
    """Self-speculation from early layers (DEL): how often each layer's early exit agrees with the
    full model, tracked over the run ("logit lens" acceptance), and the exit plan of this round.

    `alpha[m - 1]` is the decayed agreement rate of the exit after layer m (m = 1..L; the last is
    the full model, 1 by definition); `tpl[m - 1]` the best tokens-per-layer over draft lengths if
    drafting from layer m; `baseline_tpl` that of plain decoding (no draft). exit_layer 0 = no draft.
    """

    step: int
    alpha: list[float]
    samples: list[float]          # decayed number of observations behind each alpha
    tpl: list[float]
    baseline_tpl: float
    exit_layer: int
    draft_length: int


@event_type("momentum_step")
@dataclass
class MomentumStepEvent(Event):
    """One step of momentum decoding (generation as exploration of a token graph): the top-k candidates
    with their probability p, repetition length l (0: a new node; 1: seen, no longer n-gram repeated;
    n: the last n-1 tokens + it already occurred), penalty alpha*R(l) (None: infinite, blocked) and score
    p - penalty (None: -inf); which one was chosen; and the graph delta, so a view grows the graph from
    events: the edge walked (source -> target), whether target is a new node, the edge's visits after
    this step (1: a new edge, >1: revisited). The first step also carries the prompt's graph.

    label (the official code's): 0 = the greedy token was a new node; 1 = greedy chosen though a
    repeat; 2 = greedy overridden. `blocked`: every candidate had an infinite penalty; greedy was taken."""

    step: int
    candidates: list[dict[str, Any]]   # token_id, text, p, l, penalty, score (top-k order)
    chosen: int                        # index into candidates
    label: int
    source: int                        # the token before this one (edge source)
    target: int                        # the chosen token id
    new_node: bool
    edge_visits: int
    blocked: bool = False
    prompt_nodes: list[list[Any]] = field(default_factory=list)   # first step: [token_id, text] per node
    prompt_edges: list[list[int]] = field(default_factory=list)   # first step: [source, target, visits]


@event_type("superposed_step")
@dataclass
class SuperposedStepEvent(Event):
    """One step of superposed decoding: the k drafts after the step (best first) with their texts so far,
    cumulative scores and the superposition weights their last tokens get in the NEXT input embedding
    (a simplex over drafts; drafts sharing a last token are merged: `merged` the distinct last tokens),
    `distinct` the number of distinct drafts (collapse shows as 1), and the step's k x m candidates:
    dicts {draft, token_id, text, lm_logprob, ngram_logprob (None: n-gram off), score, total, kept}
    where score = (1-alpha) log p_lm + alpha log p_ngram (- penalty when all of a draft's were -inf) and
    total the draft's cumulative score plus it. `kept` marks the candidates that became the new drafts."""

    step: int
    drafts: list[str]
    scores: list[float]
    weights: list[float]
    candidates: list[dict[str, Any]]
    distinct: int
    last_tokens: list[str] = field(default_factory=list)   # each draft's last token, as text
    merged: int = 0
    ngram: bool = True
    finished: bool = False             # the best candidate ended in EOS: the run's answer is drafts[0]
    # per draft: exp(-mean log p) of its tokens under the model's untempered distribution in the ONE
    # superposed stream (what the model saw: the mixed inputs, not each draft alone); empty in older runs
    perplexities: list[float] = field(default_factory=list)


@event_type("extract")
@dataclass
class ExtractEvent(Event):
    """Exact extract (strategies/single_pass/exact_extract.py): the passage, its top spans so far, ranked
    (each a dict: start_char, end_char, text = passage[start_char:end_char], logprob = log p(span) + log
    p(end), span_logprob, end_logprob, rank, tokens), greedy's free answer, and the search's progress.
    `chosen` indexes `spans` (the answer); `done` False while the search still runs (the last one wins)."""

    passage: str
    spans: list[dict[str, Any]]
    free_answer: str
    chosen: int | None = 0
    question: str = ""
    done: bool = True
    starts: int = 0               # start positions in the passage
    starts_scored: int = 0
    spans_scored: int = 0
    pruned: int = 0               # starts skipped by the bound
    search_passes: int = 0        # batched forwards of the search
    source: str = ""              # "fields" (the method's own prompt) or "prompt" (parsed from the run's prompt)


@event_type("pause")
@dataclass
class PauseEvent(Event):
    """AdaDec paused at output position `step` (the step's entropy >= threshold, nats; threshold None:
    infinite): each of the top-B candidates with its greedy rollout and score = (logprob + the rollout's
    log-probs) / (rollout length + 1); `chosen` marks the one committed (only its first token is kept).
    Candidates: token_id, text, logprob, rollout_ids, rollout_text, score, chosen. `forward_passes`:
    the rollouts' passes at this pause."""

    step: int
    entropy: float
    threshold: float | None
    candidates: list[dict[str, Any]]
    forward_passes: int = 0
