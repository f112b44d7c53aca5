"""DEL: self-speculation from the target's own early layers, with a dynamic exit layer.

The draft is the target cut after layer l (its first l layers, then the final norm and the LM
head: playground/drafts.py). It proposes up to d tokens; the full model verifies them in one pass.
Which (l, d) is worth it depends on how often layer l already agrees with the full model, so:

- Shadow tokens ("logit lens"): the verification pass returns every layer's hidden states, so each
  layer's early-exit prediction at every verified position costs one LM-head product, not a forward.
  Only positions up to the first rejection count: after it the context is wrong. Only the layers the
  plan could ever choose are read (reachable_layers) [ours].
- alpha_l: each layer's agreement rate with the full model's argmax, exponentially decayed so it
  follows the context (hits and totals both decay; alpha = hits / totals). The plan reads it with
  a prior of one disagreement that fades like any old observation [ours]: a layer seen to agree
  once (alpha = 1) would otherwise be handed an 8-token draft at once (on open-ended text such first
  drafts from layers 5-20 of SmolLM2 were all rejected, 17 plain steps' worth of work in a 96-token
  answer); after 20 agreeing observations the plan trusts it at 0.99.
- Plan: maximise tokens per loaded layer TPL(l, d) = E[tokens | l, d] / cost(l, d) with
  E = 1 + a + ... + a^d = (1 - a^(d+1)) / (1 - a), a = alpha_l, and cost = d (l + h) + v_d (L + h)
  layers. h is the LM head's size in layers: DEL's formula has h = 0; on a small model the head
  is several layers' worth of weights (8 on SmolLM2-135M), so by default it is counted [ours].
  v_d is what verifying d + 1 tokens costs in plain one-token passes: DEL's formula has v_d = 1 (on
  a GPU a pass over a few tokens costs what one token's does); on a CPU it does not (a 9-token pass
  costs ~2 plain ones here), so by default v_d is read from the pass costs measured at warm-up
  (cost_model.py) [ours]; without them (no warm-up) it is 1.
  If no (l, d) beats plain decoding (1 / (L + h)), the round drafts nothing.
- Dynamic draft exiting: drafting stops early when the draft's top probability drops below a threshold.
- At start-up (the server's warm-up) every layer's agreement is measured once per model on its own greedy
  continuation of the warm-up prompt; where the plan on it is plain steps at every layer, a run's first
  lens reading waits 16 rounds instead of coming at round 1 [ours]. The run's own alpha starts from
  nothing either way.

KV cache choice: the draft SHARES the target's cache. The first l layers of the full model compute
exactly the keys and values the draft needs for the committed text, so the draft runs on the
target's cache directly (its layers write into their own slots 0..l-1); before verification those
slots are cropped back to the committed length. Nothing is recomputed for the prefix and no second
cache is kept; the price is that the root and the drafts run through layers < l twice (draft, then
verification), which is what a self-speculative draft costs anyway.

Greedy verification equals plain greedy whatever (l, d) is; sampling mode uses speculative
sampling against q = the early exit's warped distribution (alpha still measures argmax agreement).
"""

from __future__ import annotations

import weakref

import torch

from playground import cpu_linear
from playground.drafts import truncated_view
from playground.events import LayerAcceptanceEvent, NoticeEvent
from playground.row_stats import argmax, top_tokens

from ..base import Param, Strategy
from . import acceptance
from .cost_model import cost_model_for
from .fallback import PlainFallback
from .rounds import AcceptanceStats, PlainStepNotice, committed_count, node_q, prefill_with_root, round_events
from .tree import keep_prefix
from .verify import chain_tree, check_sampling, make_warp, probabilities, sampling_params, verify_chain


# --- per-layer agreement ("shadow tokens") ---------------------------------------------------

def lens_tokens(model, hidden_states: tuple[torch.Tensor, ...], final_tokens: torch.Tensor,
                layers: list[int] | None = None) -> torch.Tensor:
    """(len(layers), positions) argmax of each listed layer's early exit (0-based layer indices; default all)
    at the first `positions` rows (positions = len(final_tokens)). hidden_states[m] for m < L is
    un-normalised (apply the final norm); the last layer's row is the verification pass's own argmax,
    `final_tokens`: it is not multiplied again."""
    positions, count = len(final_tokens), len(hidden_states) - 1
    layers = list(range(count)) if layers is None else layers
    early = [m for m in layers if m < count - 1]
    rows = [final_tokens.cpu()[None]] if count - 1 in layers else []
    if early:
        stacked = torch.stack([hidden_states[m + 1][0, :positions] for m in early])    # (len(early), n, H)
        head = model.lm_head        # through the forward's own product kernels (MKL's took 16 ms a read here)
        with torch.inference_mode():
            early_logits = cpu_linear.linear(model.model.norm(stacked), head.weight, head.bias).float().cpu()
            rows.insert(0, top_tokens(early_logits.flatten(0, 1))[:, 0].view(len(early), positions))
    return torch.cat(rows)            # compared with tokens picked on the CPU


def reachable_layers(layers: int, head: float, max_length: int, verify: torch.Tensor | None) -> int:
    """How many exit layers (1..n) the plan could ever choose: those that beat plain decoding even if every
    draft were accepted (alpha = 1, where TPL is largest). TPL falls as l grows, so they are a prefix; a
    deeper layer's agreement can change no decision, and its shadow tokens are not read [ours]: on
    SmolLM2-135M at this CPU's measured pass costs that is layers 1-15 of 29, a lens product of 15 rows
    instead of 29 (~9 ms instead of ~12 on 2 cores). With DEL's v_d = 1 every layer but the last is
    reachable."""
    if max_length < 1:
        return 0
    best = tpl_table(torch.ones(layers, dtype=torch.float64), head, max_length, verify)[:layers - 1].max(-1).values
    return int((best > 1.0 / (layers + head)).sum())


class LayerAgreement:
    """Decayed hit and observation counts per exit layer: alpha_l = hits_l / seen_l."""

    def __init__(self, layers: int, decay: float):
        self.decay = decay
        self.hits = torch.zeros(layers, dtype=torch.float64)
        self.seen = torch.zeros(layers, dtype=torch.float64)
        self.doubt = torch.full((layers,), self.DOUBT, dtype=torch.float64)   # the plan's prior, fading
        self.version = 0               # observations so far: a plan made from alpha holds until it changes
        self._lists = (None, [], [])   # (version, alpha, seen) as lists, for the events

    def observe(self, matches: torch.Tensor, layers: slice | list[int] = slice(None)) -> None:
        """matches (layers, positions) bool, one column per verified position, oldest first; layers: which
        layers the rows are (default all)."""
        self.version += 1
        for column in matches.T.double():
            self.hits[layers] = self.decay * self.hits[layers] + column
            self.seen[layers] = self.decay * self.seen[layers] + 1
            self.doubt[layers] = self.decay * self.doubt[layers]

    DOUBT = 1.0    # disagreements the plan assumes before any observation (module notes)

    @property
    def alpha(self) -> torch.Tensor:
        """The measured agreement rate (shown)."""
        return torch.where(self.seen > 0, self.hits / self.seen.clamp(min=1e-12), torch.zeros_like(self.seen))

    def as_lists(self) -> tuple[list[float], list[float]]:
        """(alpha, seen) as lists for the round's event, made once per change (most rounds learn nothing)."""
        if self._lists[0] != self.version:
            self._lists = (self.version, self.alpha.tolist(), self.seen.tolist())
        return self._lists[1], self._lists[2]

    @property
    def planning_alpha(self) -> torch.Tensor:
        """What the plan trusts: hits / (seen + doubt), near alpha once a layer has been seen often."""
        return self.hits / (self.seen + self.doubt)


# --- choosing the exit layer and draft length --------------------------------------------------

def expected_tokens(alpha: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """E[tokens | d] = sum_{i=0..d} alpha^i (the closed form (1 - a^(d+1)) / (1 - a), safe at a = 1)."""
    powers = alpha[..., None, None] ** torch.arange(int(lengths.max()) + 1, dtype=torch.float64)
    cumulative = powers.cumsum(-1)[..., 0, :]                                        # (..., d_max + 1)
    return cumulative[..., lengths]


def tpl_table(alpha: torch.Tensor, head: float, max_length: int, verify: torch.Tensor | None = None) -> torch.Tensor:
    """TPL(l, d) for l = 1..L (rows) and d = 1..max_length (columns); verify (max_length,): v_d, a pass
    over d + 1 tokens in one-token passes (None: 1, DEL's formula)."""
    layers = alpha.shape[0]
    lengths = torch.arange(1, max_length + 1)
    verify = torch.ones(max_length, dtype=torch.float64) if verify is None else verify[:max_length]
    cost = lengths[None].double() * (torch.arange(1, layers + 1)[:, None].double() + head) + verify * (layers + head)
    return expected_tokens(alpha, lengths) / cost


def verify_in_steps(costs, max_length: int, context: int) -> torch.Tensor:
    """v_d for d = 1..max_length: the measured cost of a (d + 1)-token round (cost_model.round_cost) over a
    one-token pass's."""
    step = costs.cost(1, context)
    return torch.tensor([costs.round_cost(d + 1, context) / step for d in range(1, max_length + 1)], dtype=torch.float64)


def plan(alpha: torch.Tensor, head: float, max_length: int, fixed_layer: int,
         fixed_length: int, verify: torch.Tensor | None = None) -> tuple[int, int, torch.Tensor]:
    """(exit layer, draft length, TPL table); (0, 0) = plain decoding wins this round.
    The full model (l = L) is a candidate only when asked for: it can never beat plain decoding."""
    layers = alpha.shape[0]
    table = tpl_table(alpha, head, max(max_length, 1), verify)
    if max_length < 1:
        return 0, 0, table
    allowed = torch.zeros_like(table, dtype=torch.bool)
    allowed[fixed_layer - 1 if fixed_layer else slice(0, layers - 1),
            fixed_length - 1 if fixed_length else slice(None)] = True
    masked = table.masked_fill(~allowed, -1.0)
    best = int(masked.argmax())
    layer, length = best // table.shape[1] + 1, best % table.shape[1] + 1
    if not (fixed_layer or fixed_length) and float(masked.max()) <= 1.0 / (layers + head):
        return 0, 0, table
    return layer, length, table


def head_in_layers(model) -> float:
    """The LM head's weight count over one decoder layer's: what one extra head product costs."""
    head = model.lm_head.weight.numel()
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    return head / layer


def crop_layers(cache, keep: int, layers: int) -> None:
    """Crop only the first `layers` cache slots back to `keep` tokens (the draft's own writes)."""
    for layer in cache.layers[:layers]:
        extra = layer.get_seq_length() - keep
        if extra > 0:
            layer.crop(-extra)


def round_cost(costs, model, layer: int, drafted: int, context: int) -> float:
    """Seconds a DEL round costs, from the warm-up's pass costs: the verification pass over root + drafts,
    and one pass of the first `layer` layers and the LM head per draft token (a share (l + h) / (L + h) of
    a one-token pass, h the head in layers)."""
    if not drafted:
        return costs.cost(1, context)
    layers, head = model.config.num_hidden_layers, head_in_layers(model)
    return costs.round_cost(drafted + 1, context) + drafted * costs.cost(1, context) * (layer + head) / (layers + head)


class LensSchedule:
    """When to read every layer's shadow tokens. Reading them costs about half a forward pass on a CPU;
    while no layer pays (plain steps) that cost is all DEL adds, and at every 4th round it made DEL
    0.81-0.88x plain greedy. So while DEL takes plain steps the next reading comes FIRST_GAP rounds
    later, and each gap after that doubles, up to MAX_GAP rounds (a layer that starts to agree is still
    seen within MAX_GAP rounds); as soon as a round drafts, every `every` rounds again. (With gaps of 8,
    16, 32 the readings were still 3 % of a 96-token answer on open-ended prompts.)"""

    FIRST_GAP, MAX_GAP = 16, 64

    def __init__(self, every: int):
        self.every, self.gap, self.last = every, every, None

    def due(self, step: int, drafting: bool) -> bool:
        return self.last is None or step - self.last >= (self.every if drafting else self.gap)

    def after(self, step: int, read: bool, drafting: bool) -> None:
        if drafting:
            self.gap = self.every
        elif read:
            self.gap = min(max(self.gap * 2, self.FIRST_GAP), max(self.MAX_GAP, self.every))
        if read:
            self.last = step

    def wait(self) -> None:
        """The first reading FIRST_GAP rounds in instead of at once (the layers were seen not to pay)."""
        self.last, self.gap = 0, max(self.FIRST_GAP, self.every)


# --- the layers' agreement, measured at start-up ----------------------------------------------------

WARM_UP_TOKENS = 32
_AT_START: "weakref.WeakKeyDictionary[torch.nn.Module, torch.Tensor]" = weakref.WeakKeyDictionary()


def measure_agreement(session, tokens: int = WARM_UP_TOKENS) -> torch.Tensor:
    """alpha_l (L,): how often each exit layer predicts what the full model does, over the model's own greedy
    continuation of the session's prompt (`tokens` positions; the last layer 1). The continuation is
    decoded, then run again as one pass with hidden states, and read through the logit lens one layer a
    product (29 products of 32 rows on SmolLM2-135M, ~0.5 s once per model)."""
    cache = session.new_cache()
    logits = session.prefill(cache)
    text: list[int] = []
    for _ in range(tokens):
        text.append(argmax(logits)[0])
        logits = session.forward(text[-1:], cache)[0][0]
    keep_prefix(cache, len(session.prompt_ids) - 1)
    logits, out = session.forward(session.prompt_ids[-1:] + text[:-1], cache, last_only=False,
                                  output_hidden_states=True)
    target = top_tokens(logits[0])[:, 0]
    rows = [lens_tokens(session.model, out.hidden_states, target, [m]) for m in range(len(out.hidden_states) - 1)]
    return (torch.cat(rows) == target).double().mean(-1)


def agreement_at_start(model) -> torch.Tensor | None:
    """What EarlyExit.warm_up measured for this model (None: no start-up measurement in this process)."""
    return _AT_START.get(model)


# --- the strategy ------------------------------------------------------------------------------

class EarlyExit(Strategy):
    name = "early_exit"
    title = "Self-speculation from early layers (DEL)"
    summary = ("The model's own first l layers draft; the full model verifies. Per-layer agreement is tracked "
               "live from the verification pass (logit lens) and (l, d) is chosen to maximise tokens per layer.")
    paper = "https://arxiv.org/abs/2504.05598"
    lossless = True
    tree_params = ("max_draft",)   # memory bound: Strategy.footprint
    params = (
        Param("exit_layer", "int", 0, 0, 64, help="Draft from this layer (0 = chosen live by DEL).", step=1),
        Param("draft_length", "int", 0, 0, 32, help="Draft tokens per round (0 = chosen live by DEL).", step=1),
        Param("max_draft", "int", 8, 1, 32, help="Longest draft DEL may choose.", step=1),
        Param("confidence", "float", 0.3, 0.0, 1.0,
              help="Dynamic draft exit: stop drafting when the draft's top probability falls below this (0 = off).",
              step=0.05),
        Param("decay", "float", 0.9, 0.0, 0.999, help="Per-observation decay of the per-layer agreement.", step=0.01),
        Param("count_head", "bool", True, help="Count the LM head's cost in TPL (DEL's formula does not)."),
        Param("count_verify", "bool", True,
              help="Count the verification pass over d + 1 tokens at its cost measured on this machine "
                   "(DEL's formula counts it as one plain pass, as on a GPU; on a CPU it costs more)."),
        Param("lens_every", "int", 4, 1, 64,
              help="Read every layer's shadow tokens every k rounds (1 = every round, as in DEL); in between only "
                   "the drafting layer learns, from its own drafts. On a CPU the L - 1 extra LM-head rows cost "
                   "about half a forward pass, hence 4 by default; while DEL takes plain steps the gaps are "
                   "16, 32, then 64 rounds. Where DEL chooses (l, d) itself, only the layers that could beat "
                   "plain steps at the measured pass costs (even if every draft were accepted) are read, and "
                   "where the per-layer agreement measured at start-up (on the model's own text) pays at no "
                   "layer, the first reading waits 16 rounds (a notice says so).", step=1),
    ) + sampling_params()

    def check(self):
        check_sampling(self.p)

    @classmethod
    def warm_up(cls, session) -> None:
        _AT_START[session.model] = measure_agreement(session)

    def wait_for_lens(self, s, head: float, costs, lens: LensSchedule):
        """Where the agreement measured at start-up pays at no exit layer (the plan on it is plain steps),
        the first lens reading waits FIRST_GAP rounds: on the held-out prompts DEL never drafted on
        SmolLM2-135M, and a reading at round 1 (~10 ms, 20 layers through the LM head) was ~2 % of a
        36-77-token answer. Says so once."""
        measured, longest = agreement_at_start(s.model), min(self.p["max_draft"], s.max_new_tokens - 1)
        if measured is None or longest < 1 or not self.falls_back():
            return
        verify = verify_in_steps(costs, longest, len(s.prompt_ids)) if self.p["count_verify"] and costs.frozen else None
        if plan(measured, head, longest, 0, 0, verify)[0] == 0:
            lens.wait()
            best = int(measured[:-1].argmax())
            yield NoticeEvent("logit lens", f"the logit lens is first read at round {lens.gap + 1}: at start-up no "
                                            f"exit layer paid on the model's own text (best agreement "
                                            f"{float(measured[best]):.2f}, layer {best + 1})")

    def decode(self, s):
        layers = s.model.config.num_hidden_layers
        fixed_layer = min(self.p["exit_layer"], layers)
        head = head_in_layers(s.model) if self.p["count_head"] else 0.0
        warp = make_warp(self.p)
        draft_gen = s.spawn_generator()
        agreement = LayerAgreement(layers, self.p["decay"])
        views: dict[int, torch.nn.Module] = {}
        self.cache = cache = s.new_cache()              # exposed for tests: committed minus the root
        root, root_logits, _ = prefill_with_root(s, cache)      # the root ran in the prompt pass
        planned, key = None, None
        stats, step, notice = AcceptanceStats(), 0, PlainStepNotice()
        lens = LensSchedule(self.p["lens_every"])
        automatic = self.falls_back()          # DEL chooses (l, d) itself
        costs = cost_model_for(s.model)
        yield from self.wait_for_lens(s, head, costs, lens)
        guard = PlainFallback() if self.falls_back() and costs.frozen else None    # fallback.py
        while True:
            context = s.prompt_ids + s.output_ids
            room = s.max_new_tokens - len(s.output_ids) - 1
            longest = min(self.p["draft_length"] or self.p["max_draft"], room)
            fixed_length = min(self.p["draft_length"], room) if longest else 0
            if key != (agreement.version, longest, fixed_length):      # alpha has not changed: nor has the plan
                key = (agreement.version, longest, fixed_length)
                verify = (verify_in_steps(costs, longest, len(context))
                          if self.p["count_verify"] and costs.frozen and longest else None)
                planned = plan(agreement.planning_alpha, head, longest, fixed_layer, fixed_length, verify)
                tpl = planned[2].max(-1).values.tolist()
                # the layers whose shadow tokens are read: all where the user fixed (l, d), else those that could pay
                lens_layers = (list(range(reachable_layers(layers, head, longest, verify))) + [layers - 1]
                               if automatic else None)
            layer, length, _ = planned
            forced = guard is not None and guard.plain(step) and layer > 0
            if forced:
                layer, length = 0, 0
            if root_logits is not None and layer:       # a first round that drafts: the draft starts at the root
                keep_prefix(cache, len(context) - 1)
                root_logits = None
            drafts, q = self.draft(s, views, layer, length, cache, root, warp, draft_gen)

            drafting = layer > 0 or not automatic
            # the prompt pass kept no hidden states; where no layer could pay there is nothing to read
            read_lens = root_logits is None and lens.due(step, drafting) and lens_layers != [layers - 1]
            if root_logits is None:
                logits, out = s.forward([root] + drafts, cache, last_only=False, output_hidden_states=read_lens)
                logits = logits[0]
            else:                                       # a plain first round: its pass was the prompt pass
                logits, out, root_logits = root_logits[None], None, None
            verdict = verify_chain(logits, drafts, q, warp, s.generator)
            self.learn(agreement, s.model, out, logits, drafts, verdict.accepted, layer,
                       lens_layers if read_lens else False, warp is None)
            lens.after(step, read_lens, drafting)
            alpha, seen = agreement.as_lists()          # after this round's learning
            yield LayerAcceptanceEvent(step=step, alpha=alpha, samples=seen, tpl=tpl,
                                       baseline_tpl=1.0 / (layers + head),
                                       exit_layer=layer, draft_length=len(drafts))
            tree = chain_tree(root, drafts)
            count = committed_count(s, tree, verdict)
            keep_prefix(cache, len(context) + count - 1)
            q_at = dict(enumerate(q)) if q is not None else None
            if guard:
                cost = round_cost(costs, s.model, layer, len(drafts), len(context))
                yield from guard.record(step, len(drafts), count, cost, costs.cost(1, len(context)))
            if automatic and longest > 0 and not (forced or (guard and guard.fallen)):
                yield from notice.update(layer == 0, step)             # DEL chose; a draft was possible
            source = (f"layer {layer}" if layer else
                      "plain step (drafts did not pay)" if forced else "no draft (plain step)")
            if (yield from round_events(s, tree, logits, verdict, step, stats, warp, source=source,
                                        title="Early-exit draft chain", q=node_q(tree, q_at),
                                        extra=lambda i: {"exit layer": float(layer),
                                                         "draft length": float(len(drafts))})):
                return
            root, step = s.output_ids[-1], step + 1

    def falls_back(self) -> bool:
        """Only where DEL chooses (l, d) itself: a fixed exit layer or draft length is the user's to keep."""
        return not (self.p["exit_layer"] or self.p["draft_length"])

    def draft(self, s, views, layer: int, length: int, cache, root: int, warp, generator):
        """Up to `length` tokens from the first `layer` layers, on the target's own cache (see the
        module notes); the draft's cache writes are cropped before returning."""
        if not layer or not length:
            return [], None
        if layer not in views:
            views[layer] = truncated_view(s.model, layer)
        s.draft_model = views[layer]                 # counted as draft passes by the session
        committed = cache.get_seq_length()
        drafts, rows, feed = [], [], [root]
        for _ in range(length):
            q = probabilities(s.draft_forward(feed, cache)[0][0], warp)
            token = int(q.argmax()) if warp is None else int(acceptance.sample(q[None], generator))
            drafts.append(token)
            rows.append(q)
            if s.is_eos(token) or float(q.max()) < self.p["confidence"]:   # dynamic draft exit
                break
            feed = [token]
        crop_layers(cache, committed, layer)
        return drafts, torch.stack(rows)

    @staticmethod
    def learn(agreement: LayerAgreement, model, out, logits, drafts: list[int], accepted: int, layer: int,
              read_lens: list[int] | None | bool, greedy: bool) -> None:
        """Update alpha from the positions whose context was right (up to the first rejection).
        read_lens: False (no lens this round), None (every layer's) or the 0-based layers to read."""
        valid = accepted + 1
        if read_lens is False and not (greedy and layer and drafts):
            return                     # a plain round between lens reads: nothing to learn (skip the argmax)
        target = top_tokens(logits[:valid])[:, 0]
        if read_lens is not False:
            agreement.observe(lens_tokens(model, out.hidden_states, target, read_lens) == target,
                              slice(None) if read_lens is None else read_lens)
        elif greedy and layer and drafts:
            # A greedy draft token IS the drafting layer's shadow token: learn from it for free.
            seen = min(valid, len(drafts))
            hits = torch.tensor(drafts[:seen]) == target[:seen]
            agreement.observe(hits[None], slice(layer - 1, layer))
