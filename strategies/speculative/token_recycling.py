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
import itertools
from collections.abc import Callable, Iterator
import weakref

import torch

from playground import cpu_linear
from playground.events import StatsEvent
from playground.row_stats import top_tokens

from ..base import Param
from .cost_model import CostModel, best_size, cost_model_for
from .loop import Draft, SpeculationLoop
from .rounds import PlainStepNotice, prefill_with_root
from .tree import DraftTree

BUDGETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)   # draft nodes per round (0: a plain greedy step)
MAX_DEPTH = 8
WARM_ROWS = 128          # prompt positions M is warmed from (the latest ones: the likeliest to recur)


# The "shared" matrix mode: one hot M (and its rank statistics) per model and k, as in the paper.
_SHARED: "weakref.WeakKeyDictionary[torch.nn.Module, dict[int, tuple[torch.Tensor, RankHits]]]" = \
    weakref.WeakKeyDictionary()


def _shared(model, vocab: int, k: int) -> tuple[torch.Tensor, "RankHits"]:
    return _SHARED.setdefault(model, {}).setdefault(k, (torch.zeros(vocab, k, dtype=torch.long), RankHits(k)))


def shared_matrix(model, vocab: int, k: int) -> torch.Tensor:
    return _shared(model, vocab, k)[0]


def shared_rank_hits(model, k: int) -> "RankHits":
    return _SHARED[model][k][1]


class RankHits:
    """How often rank r of M[token] is the target's greedy next token, counted at accepted nodes
    (where the context is the real one). Starts from a weak prior that favours low ranks, set below
    what a one-node draft needs to pay on our CPU (~0.2): plain rounds still count hits at the root, so
    the rates are learned without drafting, and a tree is grown once they are seen to be high (with a
    prior of 0.3, open-ended answers began with rounds of one rejected node: 0.93x plain steps)."""

    PRIOR = 0.1          # the rank-1 hit rate assumed before any observation; rank r: PRIOR / r

    def __init__(self, k: int, prior_weight: float = 4.0):
        self.hits = [self.PRIOR / (r + 1) * prior_weight for r in range(k)]    # plain floats: a round records
        self.trials = prior_weight                                             # one or a few nodes

    def record(self, rows: list[list[int]], targets: list[int]) -> None:
        """rows: M rows (k tokens each) before the update; targets: the target's argmax at those nodes."""
        for row, target in zip(rows, targets):
            if target in row:
                self.hits[row.index(target)] += 1          # a row's top-k tokens are distinct
        self.trials += len(targets)

    def rates(self) -> list[float]:
        return [hits / self.trials for hits in self.hits]


def template_nodes(rates: list[float]) -> Iterator[tuple[int, int, float]]:
    """Template positions (parent index, rank, estimated acceptance) in best-first order of estimated
    acceptance (the product of rank rates along the path), so any prefix is a tree and the estimates
    never increase.

    Lazily: a node's children are tried from its best rank down, so a popped node adds at most two
    candidates (its best child and its next sibling), never all k children (this runs every round).
    The order is the full frontier's: an unpushed sibling never beats the one before it."""
    order = sorted(range(len(rates)), key=lambda r: -rates[r])       # ranks, best first (ties: lower rank)
    heap = [(-rates[order[0]], 0, order[0], 1, 0, -1.0)]            # (-value, parent, rank, depth, i in order, parent's -value)
    made = 0
    while heap:
        neg_value, parent, rank, depth, i, parent_neg = heapq.heappop(heap)
        made += 1                                            # its node index (0 is the root)
        yield parent, rank, -neg_value
        if i + 1 < len(order):
            heapq.heappush(heap, (parent_neg * rates[order[i + 1]], parent, order[i + 1], depth, i + 1, parent_neg))
        if depth < MAX_DEPTH:
            heapq.heappush(heap, (neg_value * rates[order[0]], made, order[0], depth + 1, 0, neg_value))


def best_first_template(rates: list[float], max_nodes: int) -> tuple[list[tuple[int, int]], list[float]]:
    """The first max_nodes template positions (parent index, rank) and each one's estimate."""
    nodes = list(itertools.islice(template_nodes(rates), max_nodes))
    return [(parent, rank) for parent, rank, _ in nodes], [value for _, _, value in nodes]


def choose_budget(values: list[float], costs: CostModel, limit: int, context: int = 0) -> int:
    """Draft nodes per round: the size with the most expected tokens per second at this context
    length (0 nodes, a plain step, whenever no tree pays)."""
    budgets = [b for b in BUDGETS if b <= limit] or [limit]
    expected = [0.0] + torch.tensor(values, dtype=torch.float64).cumsum(0).tolist()   # expected[b]: b nodes
    return best_size(expected, costs, budgets, context)


def frozen_budget(rates: list[float], costs: CostModel, limit: int, context: int) -> tuple[list[tuple[int, int]], list[float], int]:
    """choose_budget's answer on frozen costs, growing the template only as far as a bigger tree could
    still win: past n nodes a budget b gains at most (b - n) times the n-th estimate (they never
    increase), and once no bigger budget can beat the best so far even then, the search stops. The
    same budget as the full template gives (ties: the smaller, as best_size), at a fraction of its
    cost while no tree pays (~0.2 ms a round otherwise, 1 % of a plain step).
    Returns (positions, estimates, budget)."""
    budgets = [b for b in BUDGETS if b <= limit] or [limit]
    round_costs = costs.round_costs([b + 1 for b in budgets], context)
    nodes = template_nodes(rates)
    positions, values, gain = [], [], 0.0
    best, best_rate = None, 0.0
    for index, budget in enumerate(budgets):
        for parent, rank, value in itertools.islice(nodes, budget - len(positions)):
            positions.append((parent, rank))
            values.append(value)
            gain += value
        rate = (1 + gain) / round_costs[index]
        if best is None or rate > best_rate:
            best, best_rate = budget, rate
        last = values[-1] if values else max(rates, default=0.0)
        if all((1 + gain + (b - len(values)) * last) / cost <= best_rate
               for b, cost in zip(budgets[index + 1:], round_costs[index + 1:])):
            break
    return positions[:best], values, best


def grow_tree(root: int, matrix: torch.Tensor, positions: list[tuple[int, int]],
              warm: Callable[[int, list[int]], None] | None = None) -> DraftTree:
    """Follow the template through M; a position whose token repeats a sibling's is dropped with
    its subtree (it would be verified twice). warm(token, tree tokens so far): called before M[token]
    is read (Token Recycling writes a held-back prompt row then)."""
    tree = DraftTree.rooted(root)
    node_of = [0]                                            # template index -> tree node (None: dropped)
    siblings: dict[int, set[int]] = {0: set()}
    for parent, rank in positions:
        at = node_of[parent]
        if at is not None and warm is not None:
            warm(tree.tokens[at], tree.tokens)
        token = None if at is None else int(matrix[tree.tokens[at], rank])
        if token is None or token in siblings[at]:
            node_of.append(None)
            continue
        siblings[at].add(token)
        node = tree.add(at, token)
        siblings[node] = set()
        node_of.append(node)
    return tree


def refresh_rows(matrix: torch.Tensor, tokens: list[int], logits: torch.Tensor, order: list[int] | None = None,
                 top: torch.Tensor | None = None) -> int:
    """M[token] = top-k of the logits after it (equal logits: the lower token first), for every node, written
    in `order` (default: tree order), so where a token occurs at several nodes the last one written wins.
    Returns how many more rows of M are warm (top entry not token 0, M's initial fill) than before, so
    callers keep the count without scanning M's V rows. top (n, >= k): each node's top tokens where the
    round already has them (the verdict's RowStats)."""
    k = matrix.shape[1]
    if len(tokens) == 1:                                     # a plain round: the root's row only
        row = top_tokens(logits[:1], k)[0] if top is None else top[0, :k]
        was = matrix[tokens[0], 0].item() != 0
        matrix[tokens[0]] = row
        return (row[0].item() != 0) - was
    order = range(len(tokens)) if order is None else order
    last = {tokens[i]: i for i in order}
    rows, idx = torch.tensor(list(last.keys())), torch.tensor(list(last.values()))
    was = int(matrix[rows, 0].count_nonzero())
    matrix[rows] = top_tokens(logits[idx], k) if top is None else top[idx, :k]
    return int(matrix[rows, 0].count_nonzero()) - was


class TokenRecycling(SpeculationLoop):
    name = "token_recycling"
    title = "Token Recycling"
    summary = ("Recycles the model's own top-k predictions into a draft tree verified in one pass; "
               "tree size tuned to this machine's measured forward cost.")
    paper = "https://arxiv.org/abs/2408.08696"
    tree_title = "Token Recycling draft tree"
    tree_params = ("max_nodes",)   # memory bound: Strategy.footprint
    params = (
        Param("top_k", "int", 8, 1, 16, help="Candidates remembered per token (columns of M).", step=1),
        Param("max_nodes", "int", 64, 0, 128,
              help="Upper bound on draft nodes per round; the measured cost picks the size below it "
                   "(0 = no drafts: plain greedy through the same machinery).", step=1),
        Param("adaptive", "bool", True, help="Pick the tree size from measured cost and running acceptance; "
                                             "off: always max_nodes."),
        Param("matrix", "choice", "per run", choices=("per run", "shared"),
              help="per run: M starts empty and is warmed from the prompt's last 128 positions as trees first read "
                   "their rows (reproducible traces); shared: one M "
                   "per model, kept hot across runs as in the paper (later runs draft from earlier ones)."),
    )

    def prefill(self, s, cache):
        """Cache the whole prompt and hold back what M is warmed from: the final hidden states of the last
        WARM_ROWS prompt positions (the latest ones: the likeliest to recur), put through the LM head only
        as trees read their rows (warm_row). On this CPU no tree may ever pay, and then the head over 64-128
        rows (17-30 ms, two plain steps) bought nothing: Token Recycling read 0.90x greedy on the held-out
        translation prompts, whose answers are 36-77 tokens."""
        k = self.p["top_k"]
        shared = self.p["matrix"] == "shared"
        self.head = s.model.get_output_embeddings()
        vocab = self.head.weight.shape[0]
        # M starts as token 0 everywhere (per run), or is the model's hot shared matrix.
        self.matrix = shared_matrix(s.model, vocab, k) if shared else torch.zeros(vocab, k, dtype=torch.long)
        self.hits = shared_rank_hits(s.model, k) if shared else RankHits(k)
        self.costs, self.notice = cost_model_for(s.model), PlainStepNotice()
        # Only the last WARM_ROWS positions before the root: on a 700-token prompt all of them cost ~0.5 s on a
        # CPU, more than the drafts ever saved. The root's own row is the first round's to write (after_round),
        # as every later root's is.
        keep = min(WARM_ROWS, len(s.prompt_ids) - 1)
        root, logits, hidden = prefill_with_root(s, cache, hidden_rows=keep + 1 if keep else 0)
        window = s.prompt_ids[:-1][len(s.prompt_ids) - 1 - keep:]
        self.held = {token: i for i, token in enumerate(window)}                 # a later occurrence wins
        self.held_states = hidden[-1][0, -1 - keep:-1].clone() if keep else None   # (keep, hidden)
        self.warm_rows = int(self.matrix[:, 0].count_nonzero())     # then kept by refresh_rows' counts
        return root, logits

    def warm_up_matrix(self, tokens: list[int] | None = None) -> None:
        """Write held prompt rows into M (default: all of them): the top-k of the target's logits after each
        held token (its latest position in the window), except rows a round has written since, whose
        context is later. Through the forward's own product kernels (a few rows: the codes' kernel, ~0.8 ms
        a row; F.linear's MKL took ~10 ms for one)."""
        tokens = list(self.held) if tokens is None else [t for t in tokens if t in self.held]
        if not tokens:
            return
        with torch.inference_mode():
            logits = cpu_linear.linear(self.held_states[[self.held[t] for t in tokens]], self.head.weight, self.head.bias)
        self.warm_rows += refresh_rows(self.matrix, tokens, logits.float().cpu())
        for token in tokens:
            del self.held[token]

    def warm_row(self, token: int, tree_tokens: list[int]) -> None:
        """M[token] is about to be read (grow_tree): if its prompt row is still held back, write it now, with
        those of the tree's other held tokens (the likely next parents), in one LM-head product. Only the
        rows a tree reads are ever paid for: warming all 128 when the first tree was grown cost ~34 ms, five
        steps, in runs whose trees then drafted a few nodes (0.91x greedy on a held-out translation prompt)."""
        if token in self.held:
            self.warm_up_matrix(list(dict.fromkeys([token, *tree_tokens])))

    def write_rows(self, tokens: list[int], logits: torch.Tensor, order: list[int] | None = None,
                   top: torch.Tensor | None = None) -> None:
        """refresh_rows, and those tokens' held prompt rows are dropped: a round's row is the later one."""
        self.warm_rows += refresh_rows(self.matrix, tokens, logits, order, top)
        for token in tokens:
            self.held.pop(token, None)

    def falls_back(self) -> bool:
        return self.p["adaptive"] and self.p["max_nodes"] > 0

    def grow(self, s, root, room, warp, generator):
        limit = self.p["max_nodes"]
        context = len(s.prompt_ids) + len(s.output_ids)
        rates = self.hits.rates()
        if self.p["adaptive"] and limit and self.costs.frozen:
            positions, values, budget = frozen_budget(rates, self.costs, limit, context)
        else:
            positions, values = best_first_template(rates, limit)
            budget = choose_budget(values, self.costs, limit, context) if self.p["adaptive"] and limit else limit
        tree = grow_tree(root, self.matrix, positions[:budget], self.warm_row if self.held else None)
        return Draft(tree, source=f"recycled top-{self.p['top_k']} (tree of {len(tree) - 1})",
                     context=(budget, values))

    def after_round(self, s, draft, logits, verdict, seconds, step):
        tree, (budget, values) = draft.tree, draft.context
        self.costs.record(len(tree), seconds)
        path = verdict.path
        # greedy verification: the target's argmax at the path's nodes is what the round proposed. A node
        # whose row is still held back (not in M yet) says nothing about M's ranks: not counted.
        counted = [(tree.tokens[i], target) for i, target in zip(path, verdict.proposed(tree))
                   if tree.tokens[i] not in self.held]
        if counted:
            self.hits.record(self.matrix[[token for token, _ in counted]].tolist(), [target for _, target in counted])
        # The accepted path is the real context: its rows are written last, so they win over a
        # rejected node holding the same token (whose context never happened).
        on_path = set(path)
        stats = verdict.stats                     # the verdict's top tokens of each row, where it read them whole
        top = stats.indices if stats is not None and stats.indices.shape[1] >= self.matrix.shape[1] else None
        self.write_rows(tree.tokens, logits, [i for i in range(len(tree)) if i not in on_path] + path, top)
        if self.p["adaptive"] and self.p["max_nodes"] > 0:           # only the cost model can choose no tree
            yield from self.notice.update(budget == 0, step)
        yield StatsEvent({"tree budget (nodes)": budget, "expected tokens per round": 1 + sum(values[:budget]),
                          "rank-1 hit rate": self.hits.rates()[0],
                          "warm rows of M": self.warm_rows, "prompt rows held back": len(self.held)})
