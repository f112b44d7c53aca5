"""Best-first search over an abstract problem: the core of A*-decoding, with no model in it.

A node is a state with g (cost so far) and h (estimate to go); the search pops the lowest f = g + h,
ties broken by depth, deeper first (ALGORITHMS.md §12: it avoids a breadth explosion), then by age. A goal
is never expanded: popping one ends the search. Expanding is the caller's generator (it may stream its own
events, e.g. a model's tokens) returning the children; the search streams a `Record` per push, pop, drop
(queue over its cap: the worst goes) and duplicate (a state already seen is not queued again), so a view
can animate it. The queue is capped and identical states are queued once (the first path to reach a state
keeps it: in step decoding a state is its token sequence, so a second path to it is rare).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Hashable, Iterable


@dataclass
class Node:
    id: int
    parent: int | None
    state: Any
    g: float
    h: float
    depth: int
    goal: bool = False
    data: dict = field(default_factory=dict)      # the caller's own (a lane, a step's text)

    @property
    def f(self) -> float:
        return self.g + self.h

    def rank(self) -> tuple:
        """Lower is better: f, then deeper first, then older first."""
        return (self.f, -self.depth, self.id)


@dataclass(frozen=True)
class Child:
    """What expanding yields for one successor: its state, the cost of the move and its h."""

    state: Any
    cost: float
    h: float
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Record:
    kind: str            # push | pop | drop | duplicate
    node: Node
    queue: int           # queue size after this record
    expansions: int


Expand = Callable[[Node], Generator[Any, None, list[Child]]]


def plain(fn: Callable[[Node], Iterable[Child]]) -> Expand:
    """Wrap a pure expand function (node -> children) as the generator `BestFirst.run` expects."""
    def expand(node: Node):
        return list(fn(node))
        yield                                       # pragma: no cover (makes this a generator)
    return expand


class BestFirst:
    """A capped, deduplicating best-first search with an expansion budget. Its state (nodes, goals,
    queue, expansions) stays readable while it runs, so a stopped caller can pick the best so far."""

    def __init__(self, budget: int, cap: int, is_goal: Callable[[Node], bool],
                 key: Callable[[Any], Hashable] = lambda state: state):
        if budget < 1 or cap < 1:
            raise ValueError("budget and cap must be >= 1")
        self.budget, self.cap, self.is_goal, self.key = budget, cap, is_goal, key
        self.nodes: list[Node] = []
        self.queue: list[tuple[tuple, Node]] = []  # a heap of (rank, node)
        self.seen: set = set()
        self.expansions = 0
        self.outcome = ""                          # why it ended: goal | budget | exhausted

    def make(self, parent: Node | None, state, cost: float, h: float, data: dict | None = None) -> Node:
        g = (parent.g if parent else 0.0) + cost
        node = Node(len(self.nodes), parent.id if parent else None, state, g, h,
                    parent.depth + 1 if parent else 0, data=dict(data or {}))
        node.goal = parent is not None and self.is_goal(node)
        self.nodes.append(node)
        return node

    def push(self, node: Node) -> list[Record]:
        key = self.key(node.state)
        if key in self.seen:
            return [Record("duplicate", node, len(self.queue), self.expansions)]
        self.seen.add(key)
        heapq.heappush(self.queue, (node.rank(), node))
        dropped = None
        if len(self.queue) > self.cap:             # drop the worst (the largest rank; maybe this one)
            worst = max(range(len(self.queue)), key=lambda i: self.queue[i][0])
            _, dropped = self.queue.pop(worst)
            heapq.heapify(self.queue)
        out = [Record("push", node, len(self.queue), self.expansions)]
        return out + ([Record("drop", dropped, len(self.queue), self.expansions)] if dropped else [])

    def run(self, root_state, root_h: float, expand: Expand) -> Generator[Any, None, Node]:
        """Search from the root; yields Records (and whatever `expand` yields); returns the chosen node:
        the first goal popped, else (budget spent or queue empty) the best goal seen, else the best open
        node (else the best node made)."""
        yield from self.push(self.make(None, root_state, 0.0, root_h))
        while self.queue:
            if self.expansions >= self.budget:
                self.outcome = "budget"
                return self.best()
            _, node = heapq.heappop(self.queue)
            yield Record("pop", node, len(self.queue), self.expansions)
            if node.goal:
                self.outcome = "goal"
                return node
            children = yield from expand(node)
            self.expansions += 1
            for child in children:
                yield from self.push(self.make(node, child.state, child.cost, child.h, child.data))
        self.outcome = "exhausted"
        return self.best()

    def best(self) -> Node:
        """The best node so far: the best goal, else the best open node, else the best node made."""
        goals = [n for n in self.nodes if n.goal]
        pool = goals or [n for _, n in self.queue] or self.nodes[1:] or self.nodes
        return min(pool, key=Node.rank)
