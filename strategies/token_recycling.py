"""Token Recycling: draft trees built from the model's own discarded top-k predictions.

An adjacency matrix M (V x k) remembers, for every token, the top-k tokens the target most
recently predicted after it (the "trash" a greedy step throws away). Each round a tree is grown
from the last committed token through M, verified in ONE tree-attention pass, the longest greedy
path is accepted, and M is refreshed from every node's logits, rejected ones included.

Sized to the hardware (our design, not the paper's fixed 80-node template): a verification pass
over n tokens is timed on this machine (once per model and thread count, then refined by every
round), each rank r of M is tracked for how often it holds the target's next token, and every
round the tree is the best-first set of B template positions by estimated acceptance, with B
chosen to maximise expected tokens per second: (1 + sum of node acceptance estimates) / cost(B + 1).
"""

from __future__ import annotations

import heapq
import time
import weakref

import torch

from .base import Param, Strategy
from .tree_attention import AcceptanceStats, DraftTree, greedy_accept, greedy_round, verify_tree

BUDGETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)   # draft nodes per round the cost model may pick
MAX_DEPTH = 8


class CostModel:
    """Seconds per verification pass as a function of the number of tokens fed, measured here."""

    def __init__(self):
        self.seconds: dict[int, float] = {}
        self.tried: set[int] = set()

    def record(self, n_tokens: int, seconds: float) -> None:
        old = self.seconds.get(n_tokens)
        self.seconds[n_tokens] = seconds if old is None else 0.8 * old + 0.2 * seconds   # follow drift, damp noise

    def untried(self, sizes) -> list[int]:
        return [n for n in sizes if n not in self.tried]

    def cost(self, n_tokens: int) -> float:
        """Piecewise-linear through the measured sizes, made non-decreasing (a bigger pass never
        costs less; noise can say so); extrapolated flat-then-linear beyond the ends."""
        sizes = sorted(self.seconds)
        times = []
        for m in sizes:
            times.append(max([self.seconds[m]] + times[-1:]))
        if n_tokens <= sizes[0]:
            return times[0]
        for (a, ta), (b, tb) in zip(zip(sizes, times), zip(sizes[1:], times[1:])):
            if n_tokens <= b:
                return ta + (tb - ta) * (n_tokens - a) / (b - a)
        slope = (times[-1] - times[-2]) / (sizes[-1] - sizes[-2]) if len(sizes) > 1 else 0.0
        return times[-1] + slope * (n_tokens - sizes[-1])


# One cost model per (model, thread count), shared by every run in this process.
_COSTS: "weakref.WeakKeyDictionary[torch.nn.Module, dict[int, CostModel]]" = weakref.WeakKeyDictionary()


def cost_model_for(model) -> CostModel:
    return _COSTS.setdefault(model, {}).setdefault(torch.get_num_threads(), CostModel())


class RankHits:
    """How often rank r of M[token] is the target's greedy next token, counted at accepted nodes
    (where the context is the real one). Starts from a weak prior that favours low ranks."""

    def __init__(self, k: int, prior_weight: float = 4.0):
        self.hits = torch.tensor([0.3 / (r + 1) for r in range(k)], dtype=torch.float64) * prior_weight
        self.trials = prior_weight

    def record(self, rows: torch.Tensor, targets: torch.Tensor) -> None:
        """rows: (m, k) M rows before the update; targets: (m,) the target's argmax at those nodes."""
        self.hits += (rows == targets[:, None]).double().sum(0)
        self.trials += len(targets)

    def rates(self) -> list[float]:
        return (self.hits / self.trials).tolist()


def best_first_template(rates: list[float], max_nodes: int) -> tuple[list[tuple[int, int]], list[float]]:
    """Template positions (parent index, rank) in best-first order of estimated acceptance
    (product of rank rates along the path), and each one's estimate. Any prefix is a tree."""
    heap = [(-rates[r], 0, r, 1) for r in range(len(rates))]
    heapq.heapify(heap)
    positions, values = [], []
    while heap and len(positions) < max_nodes:
        neg_value, parent, rank, depth = heapq.heappop(heap)
        positions.append((parent, rank))
        values.append(-neg_value)
        me = len(positions)                                  # its node index (0 is the root)
        if depth < MAX_DEPTH:
            for r, rate in enumerate(rates):
                heapq.heappush(heap, (neg_value * rate, me, r, depth + 1))
    return positions, values


def choose_budget(values: list[float], costs: CostModel, limit: int) -> int:
    """Draft nodes per round: try each size once, then maximise expected tokens per second."""
    budgets = [b for b in BUDGETS if b <= limit] or [limit]
    todo = costs.untried([b + 1 for b in budgets])
    if todo:
        costs.tried.add(todo[0])
        return todo[0] - 1
    expected = torch.tensor(values).cumsum(0).tolist()
    return max(budgets, key=lambda b: (1 + expected[min(b, len(expected)) - 1]) / costs.cost(b + 1))


def grow_tree(root: int, matrix: torch.Tensor, positions: list[tuple[int, int]]) -> DraftTree:
    """Follow the template through M; a position whose token repeats a sibling's is dropped with
    its subtree (it would be verified twice)."""
    tree = DraftTree.rooted(root)
    node_of = [0]                                            # template index -> tree node (None: dropped)
    siblings: dict[int, set[int]] = {0: set()}
    for parent, rank in positions:
        at = node_of[parent]
        token = None if at is None else int(matrix[tree.tokens[at], rank])
        if token is None or token in siblings[at]:
            node_of.append(None)
            continue
        siblings[at].add(token)
        node = tree.add(at, token)
        siblings[node] = set()
        node_of.append(node)
    return tree


def refresh_rows(matrix: torch.Tensor, tokens: list[int], logits: torch.Tensor) -> None:
    """M[token] = top-k of the logits after it, for every node; the last node with a token wins."""
    last = {t: i for i, t in enumerate(tokens)}
    idx = torch.tensor(list(last.values()))
    matrix[torch.tensor(list(last.keys()))] = logits[idx].topk(matrix.shape[1], -1).indices


class TokenRecycling(Strategy):
    name = "token_recycling"
    title = "Token Recycling"
    summary = ("Recycles the model's own top-k predictions into a draft tree verified in one pass; "
               "tree size tuned to this machine's measured forward cost. Lossless.")
    paper = "https://arxiv.org/abs/2408.08696"
    lossless = True
    params = (
        Param("top_k", "int", 8, 1, 16, help="Candidates remembered per token (columns of M).", step=1),
        Param("max_nodes", "int", 64, 0, 128,
              help="Upper bound on draft nodes per round; the measured cost picks the size below it "
                   "(0 = no drafts: plain greedy through the same machinery).", step=1),
        Param("adaptive", "bool", True, help="Pick the tree size from measured cost and running acceptance; "
                                             "off: always max_nodes."),
    )

    def decode(self, s):
        k, limit = self.p["top_k"], self.p["max_nodes"]
        self.cache = cache = s.new_cache()                   # exposed for tests: committed minus the root
        prompt_logits, _ = s.forward(s.prompt_ids, cache, last_only=False)
        prompt_logits = prompt_logits[0]
        vocab = prompt_logits.shape[-1]
        # M starts as token 0 everywhere, warmed from the prompt: what the model predicted after each prompt token.
        self.matrix = matrix = torch.zeros(vocab, k, dtype=torch.long)
        refresh_rows(matrix, s.prompt_ids, prompt_logits)
        root = int(prompt_logits[-1].argmax())
        yield s.commit(root, prompt_logits[-1])
        if s.is_eos(root) or not s.room():
            return

        costs, hits, stats, step = cost_model_for(s.model), RankHits(k), AcceptanceStats(), 0
        while root is not None:
            positions, values = best_first_template(hits.rates(), limit)
            budget = choose_budget(values, costs, limit) if self.p["adaptive"] and limit else limit
            tree = grow_tree(root, matrix, positions[:budget])
            past_len = cache.get_seq_length()
            start = time.perf_counter()
            logits = verify_tree(s, tree, cache)
            costs.record(len(tree), time.perf_counter() - start)
            path = greedy_accept(tree, logits)
            tokens = torch.tensor(tree.tokens)
            hits.record(matrix[tokens[path]], logits[path].argmax(-1))
            refresh_rows(matrix, tree.tokens, logits)
            _, root = yield from greedy_round(s, tree, logits, cache, past_len, step, stats,
                                              source=f"recycled top-{k} (tree of {len(tree) - 1})",
                                              title="Token Recycling draft tree")
            step += 1
