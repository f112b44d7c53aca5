"""Momentum decoding (Lan et al., arXiv 2212.02175): generation as exploration of a token graph.

The prompt and the output are a walk on a directed graph whose nodes are token ids. Each step takes
the top-k candidates and "resists" those that would re-enter the graph, in proportion to how long the
repeated n-gram would become: s(c) = p(c) - alpha * R(l(c)), choose argmax s. Defaults follow the
authors' code (github gmftbyGMFTBY/MomentumDecoding, models/utlis_ngram.py, test.py): k = 5,
alpha = 0.2, N_max = 5, and the resistance table used at submission (Dec 2022),
R = {0:0, 1:1, 2:3, 3:4, 4:5, 5:5}; a repetition length missing from the table counts as infinite
(blocked), as there.

The official code rescans every occurrence of each candidate at every step; here an incremental
n-gram index (a set of every 2..N_max-gram seen so far, grown by N_max - 1 tuples per token) answers
the same question in k * N_max look-ups, so a step costs the forward pass and almost nothing else.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence

import networkx as nx

from playground.events import MomentumStepEvent, NoticeEvent, StatsEvent

from ..base import InvalidParameter, Param, Strategy

DEFAULT_RESISTANCE = "0,1,3,4,5,5"
MAX_TABLE = 16
REP_ORDERS = (2, 3, 4)
# the chosen token's per-step numbers (the method trace's panel titles)
LENGTH_KEY = "l: length of the n-gram the token would repeat (0 = new edge)"
LABEL_KEY = "label: 0 greedy token new, 1 greedy kept though a repeat, 2 greedy overridden"
PENALTY_KEY = "penalty alpha * R(l)"


def parse_resistance(text: str) -> tuple[float, ...]:
    """R(0), R(1), ... from "0,1,3,4,5,5" (commas or spaces; "inf" blocks that length). Raises
    InvalidParameter in one clear line."""
    parts = [p for p in text.replace(",", " ").split()]
    if not parts:
        raise InvalidParameter("resistance needs at least one value: R(0), R(1), ... e.g. 0,1,3,4,5,5")
    if len(parts) > MAX_TABLE:
        raise InvalidParameter(f"resistance has {len(parts)} values; at most {MAX_TABLE} (R(0) to R({MAX_TABLE - 1}))")
    table = []
    for i, part in enumerate(parts):
        try:
            value = float(part)
        except ValueError:
            raise InvalidParameter(f"resistance value R({i}) = {part!r} is not a number (or 'inf')") from None
        if value != value or value < 0:
            raise InvalidParameter(f"resistance value R({i}) = {part!r} must be >= 0 (or 'inf')")
        table.append(value)
    return tuple(table)


def resistance(table: Sequence[float], length: int) -> float:
    """R(l): the table's entry, infinite beyond its end (the official lookup's default)."""
    return table[length] if length < len(table) else math.inf


class TokenGraph:
    """The token graph of one sequence: a networkx DiGraph (node = token id, edge visits counted) and an
    index of every n-gram (2 <= n <= n_max) in the sequence, both grown one token at a time."""

    def __init__(self, tokens: Iterable[int], n_max: int):
        self.n_max = n_max
        self.tokens: list[int] = []
        self.graph = nx.DiGraph()
        self.ngrams: set[tuple[int, ...]] = set()
        for token in tokens:
            self.add(token)

    def add(self, token: int) -> tuple[bool, int]:
        """Append `token`; returns (it is a new node, visits of the edge from the previous token after this)."""
        new_node = token not in self.graph
        if new_node:
            self.graph.add_node(token)
        visits = 0
        if self.tokens:
            prev = self.tokens[-1]
            edge = self.graph.get_edge_data(prev, token)
            visits = (edge["visits"] if edge else 0) + 1
            self.graph.add_edge(prev, token, visits=visits)
        self.tokens.append(token)
        t = self.tokens
        for n in range(2, min(self.n_max, len(t)) + 1):
            self.ngrams.add(tuple(t[-n:]))
        return new_node, visits

    def repetition_length(self, candidate: int) -> int:
        """l(c): 0 if c never occurred; else the largest n in [2, n_max] such that the last n-1 tokens
        followed by c already occurred as an n-gram; else 1."""
        if candidate not in self.graph:
            return 0
        t = self.tokens
        for n in range(min(self.n_max, len(t) + 1), 1, -1):
            if (*t[len(t) - n + 1:], candidate) in self.ngrams:
                return n
        return 1


def repetition_rates(tokens: Sequence[int], orders: Iterable[int] = REP_ORDERS) -> dict[int, float]:
    """rep-n = 1 - distinct n-grams / n-grams, the share of repeated n-grams in `tokens` (SimCTG's
    measure, as a fraction); 0 when the sequence has no n-gram of that order."""
    rates = {}
    for n in orders:
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        rates[n] = 1 - len(set(grams)) / len(grams) if grams else 0.0
    return rates


class RepetitionMeter:
    """repetition_rates of a growing sequence, one token at a time (no rescan)."""

    def __init__(self, orders: Iterable[int] = REP_ORDERS):
        self.orders = tuple(orders)
        self.tokens: list[int] = []
        self.seen = {n: set() for n in self.orders}
        self.total = Counter()

    def add(self, token: int) -> None:
        self.tokens.append(token)
        for n in self.orders:
            if len(self.tokens) >= n:
                self.seen[n].add(tuple(self.tokens[-n:]))
                self.total[n] += 1

    def rates(self) -> dict[int, float]:
        return {n: 1 - len(self.seen[n]) / self.total[n] if self.total[n] else 0.0 for n in self.orders}

    def values(self) -> dict[str, float]:
        rates = self.rates()
        out = {f"rep-{n}": round(r, 4) for n, r in rates.items()}
        out["diversity"] = round(math.prod(1 - r for r in rates.values()), 4)
        return out


def choose(probs: Sequence[float], lengths: Sequence[int], table: Sequence[float], alpha: float
           ) -> tuple[int, list[float], list[float], bool]:
    """Index of argmax_c p(c) - alpha * R(l(c)) over candidates in top-k order (ties: the earlier, so
    index 0, the greedy token, wins a tie); penalties; scores; whether every candidate was blocked (then
    0: greedy). alpha = 0 means no resistance at all (0 * inf is taken as 0)."""
    penalties = [alpha * resistance(table, l) if alpha else 0.0 for l in lengths]
    scores = [p - r for p, r in zip(probs, penalties)]
    if all(s == -math.inf for s in scores):
        return 0, penalties, scores, True
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return best, penalties, scores, False


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


class Momentum(Strategy):
    name = "momentum"
    title = "Momentum decoding (token-graph resistance)"
    summary = ("Greedy within the top-k, resisting candidates that would re-enter the token graph of prompt + "
               "output: score = p - alpha * R(l), l the length of the n-gram the candidate would repeat "
               "(0 new token, 1 seen token, up to N_max). Defaults from the authors' code: k=5, alpha=0.2, "
               "N_max=5, R = 0,1,3,4,5,5 (the table at submission; their later code blocks 4-grams instead: "
               "0,0,0,0,5). A length beyond the table is blocked (infinite), as in their code; if every "
               "candidate is blocked the greedy token is taken and a notice says so. The n-gram search is "
               "an incremental index, not the official per-step rescan (same l).")
    paper = "https://arxiv.org/abs/2212.02175"
    params = (
        Param("k", "int", 5, 1, 50, help="Candidates considered per step (top-k by probability).", step=1),
        Param("alpha", "float", 0.2, 0.0, 5.0, help="Weight of the resistance; 0 = plain greedy.", step=0.01),
        Param("n_max", "int", 5, 2, 8, help="Longest repeated n-gram measured (l is at most this).", step=1),
        Param("resistance", "text", DEFAULT_RESISTANCE, high=200,
              help="R(0), R(1), ... R(l) for each repetition length l, comma-separated; 'inf' blocks that "
                   "length; a length past the end of the table counts as inf. Paper era: 0,1,3,4,5,5; "
                   "n-gram blocking (their later code): 0,0,0,0,5; linear (GPT2-XL note): 0,1,2,3,4,5."),
    )

    def check(self) -> None:
        self.table = parse_resistance(self.p["resistance"])

    def decode(self, s):
        import torch

        k, alpha, table = self.p["k"], self.p["alpha"], self.table
        graph = TokenGraph(s.prompt_ids, self.p["n_max"])
        meter = RepetitionMeter()
        labels = Counter()
        blocked_steps = 0
        cache = s.new_cache()
        logits = s.prefill(cache)
        while True:
            step = len(s.output_ids)
            # The TokenEvent's own description already holds the top TOP_ALTERNATIVES tokens and their p (in
            # float64): for k within it, read the candidates there and add no pass over the vocabulary.
            described = s.describe(0, logits, step)
            alts = described.alternatives
            if k <= len(alts) and (len(alts) < 2 or alts[0].prob != alts[1].prob):
                ids, probs = [a.token_id for a in alts[:k]], [a.prob for a in alts[:k]]
            else:                                  # a wider top-k, or a tie at the top: greedy = argmax goes first
                greedy = int(logits.argmax())
                ids = torch.topk(logits, min(k, logits.shape[-1])).indices.tolist()
                if ids[0] != greedy:
                    ids.remove(greedy) if greedy in ids else ids.pop()
                    ids.insert(0, greedy)
                logz = torch.logsumexp(logits, -1)    # the logits' own dtype: a float64 exp over the vocabulary is slow
                probs = (logits[ids].double() - float(logz)).exp().tolist()
            lengths = [graph.repetition_length(c) for c in ids]
            index, penalties, scores, blocked = choose(probs, lengths, table, alpha)
            token = ids[index]
            label = 0 if lengths[0] == 0 else (1 if index == 0 else 2)
            labels[label] += 1
            source = graph.tokens[-1] if graph.tokens else -1
            first = step == 0
            prompt_nodes = [[t, s.token_text(t)] for t in graph.graph.nodes] if first else []
            prompt_edges = [[a, b, d["visits"]] for a, b, d in graph.graph.edges(data=True)] if first else []
            new_node, visits = graph.add(token)
            meter.add(token)
            extra = {LENGTH_KEY: float(lengths[index]), LABEL_KEY: float(label)}
            if blocked:                            # the chosen token's penalty is infinite: not a number to plot
                extra["blocked (R = inf)"] = 1.0
            else:
                extra[PENALTY_KEY] = penalties[index]
            # the step's view first: the UI draws at the first token, and the graph should be there
            yield MomentumStepEvent(
                step=step,
                candidates=[{"token_id": c, "text": s.token_text(c), "p": p, "l": l, "penalty": _finite(r),
                             "score": _finite(sc)}
                            for c, p, l, r, sc in zip(ids, probs, lengths, penalties, scores)],
                chosen=index, label=label, source=source, target=token, new_node=new_node, edge_visits=visits,
                blocked=blocked, prompt_nodes=prompt_nodes, prompt_edges=prompt_edges)
            logprob = math.log(probs[index]) if probs[index] > 0 else -745.0     # exp underflows below ~-745
            described.token_id, described.logprob, described.extra = token, logprob, extra
            yield s.emit(described)
            if blocked:
                blocked_steps += 1
                yield NoticeEvent("momentum-blocked",
                                  f"every top-{k} candidate was blocked (infinite resistance) at {blocked_steps} "
                                  f"step(s), latest step {step}: the greedy token was taken there")
            yield StatsEvent({**meter.values(), "greedy new node (0)": labels[0],
                              "greedy kept, repeat (1)": labels[1], "greedy overridden (2)": labels[2],
                              "graph nodes": graph.graph.number_of_nodes()})
            if s.is_eos(token) or not s.room():
                return
            logits = s.forward([token], cache)[0][0]
