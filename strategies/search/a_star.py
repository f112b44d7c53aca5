"""A*-decoding (Chatziveroglou, arXiv 2505.13672; ALGORITHMS.md §12): best-first search over reasoning steps.

A state is a partial solution: the prompt, then the steps so far. Expanding it samples k candidate next
steps as k lanes in one batched growth; each candidate is scored by the step reward r, h = 1 - r, and
g grows by the chosen cost (zero | badness lambda*(1-r) | nll lambda * mean NLL of the step). A goal is
a finished lane (eos or the length limit). The search core is best_first.py (pure, tested without a model).

Each expansion builds fresh lanes from a copy of the prompt's cache and reads the state's tokens in one pass
(counted as a forward pass and as decode time), so the cache is always exact: states are popped in any
order, and keeping every open state's cache would cost memory.
"""

from __future__ import annotations

from dataclasses import replace

from playground.events import LaneEvent, NoticeEvent, StatsEvent, TreeEvent, TreeNode
from playground.lanes import Lane, Lanes, PromptState

from ..base import Param, StopRun, Strategy
from ..sampling.warpers import MIN_SAMPLING_TEMPERATURE, family_params
from ..scaling.population import extract_answer
from ..scaling.rewards import NEUTRAL, make_reward, reward_params
from ..scaling.steps import Sampler, grow_step, step_text
from .best_first import BestFirst, Child, Node, Record

TITLE = "A* tree (nodes: steps; score f = g + h)"


def lanes_at(s, node: Node, k: int, first_id: int, prompt: PromptState | None) -> Lanes:
    """k lanes that continue the node's state: its tokens and their descriptions are each lane's own,
    so the length limit, the step text and a trace-scoped reward see the whole solution so far. The
    prompt's cache is copied from the first expansion; the state's tokens are read in one pass."""
    if not node.state:
        return Lanes(s, k, first_id=first_id)
    prefix = Lane(node.data["lane"], None, list(node.state), list(node.data["described"]), node.data["text"])
    return Lanes(s, k, prefix=prefix, prompt=prompt, first_id=first_id)


def step_cost(kind: str, lam: float, reward: float, logprobs: list[float]) -> float:
    """g's increment for one step: zero, badness lambda*(1 - r), or lambda * mean NLL of the step."""
    if kind == "badness":
        return lam * (1.0 - reward)
    if kind == "nll":
        return lam * (-sum(logprobs) / len(logprobs)) if logprobs else 0.0
    return 0.0


class AStar(Strategy):
    name = "a_star"
    title = "A*-decoding (best-first over reasoning steps)"
    summary = ("Best-first search over partial solutions: expand the state with the lowest f = g + h by sampling "
               "k next steps in one batch; h = 1 - step reward. The paper uses a process reward model; here "
               "the reward is an offline substitute, and g is ours (the paper's was not verified). Each expansion "
               "re-reads its state's tokens in one pass (the prompt's cache is kept).")
    paper = "https://arxiv.org/abs/2505.13672"
    many_sequences = True
    row_params = ("k",)   # memory bound: Strategy.footprint
    params = (
        Param("k", "int", 4, 1, 8, help="Candidate next steps per expansion (lanes grown together).", step=1),
        Param("budget", "int", 16, 1, 64, help="Expansions at most; then the best finished (else best-f) state.",
              step=1),
        Param("queue_cap", "int", 64, 1, 256, help="Open states kept at most (the worst f is dropped).", step=1),
        Param("cost", "choice", "zero", choices=("zero", "badness", "nll"),
              help="g per step (ours): zero (pure best-first on the reward); badness lambda*(1 - r); "
                   "nll lambda * mean negative log-prob of the step."),
        Param("cost_lambda", "float", 0.5, 0.0, 2.0, help="lambda in the cost.", step=0.05),
        Param("step_tokens", "int", 48, 1, 256, help="A step ends at a blank line or after this many tokens.",
              step=1),
        *reward_params(),
        *family_params(temperature_default=0.8, temperature_low=MIN_SAMPLING_TEMPERATURE),
    )

    def check(self):
        make_reward(self.p)

    def decode(self, s):
        p, reward = self.p, make_reward(self.p)
        sampler = Sampler(p, s.generator)
        search = BestFirst(p["budget"], p["queue_cap"], is_goal=lambda n: bool(n.data.get("finished")),
                           key=tuple)
        self.reward_calls = 0

        prompt: list[PromptState] = []                  # the prompt's cache, once the first expansion read it

        def expand(node: Node):
            lanes = lanes_at(s, node, p["k"], search.expansions * p["k"], prompt[0] if prompt else None)
            prompt[:] = prompt or [lanes.prompt_state()]
            for lane in lanes.lanes:
                yield LaneEvent("spawn", lane.id, search.expansions, parent=node.data.get("lane"))
            yield from grow_step(lanes, sampler, search.expansions, p["step_tokens"])
            rows = list(range(len(lanes)))
            rewards = reward.score(lanes, rows, final=False)
            self.reward_calls += len(rows)
            children = []
            for row, (lane, r) in enumerate(zip(lanes.lanes, rewards)):
                logprobs = [d.logprob for d in lane.described[lane.data["step_start"]:]]
                yield LaneEvent("score", lane.id, search.expansions, reward=r, text=lane.text)
                data = {"lane": lane.id, "described": lane.described, "text": lane.text,
                        "finished": lane.finished, "reward": r, "step": step_text(lanes, row)}
                cost = step_cost(p["cost"], p["cost_lambda"], r, logprobs)
                children.append(Child(tuple(lane.tokens), cost, 1.0 - r, data))
            return children

        tree: dict[int, TreeNode] = {}
        stream = search.run((), 1.0 - NEUTRAL, expand)
        try:
            while True:
                try:
                    item = next(stream)
                except StopIteration as end:
                    chosen = end.value
                    break
                if isinstance(item, Record):
                    event = self.on_record(item, tree, search)
                    if event is not None:
                        yield event
                else:
                    yield item
        except StopRun:
            chosen = search.best()
            yield NoticeEvent("a_star", f"Stopped: the output is the best state so far (f={chosen.f:.3f}).")
        else:
            yield NoticeEvent("a_star", self.outcome_words(search, chosen))
        yield StatsEvent(self.stats(search))
        yield from self.answer(s, chosen, tree)

    def on_record(self, record: Record, tree: dict[int, TreeNode], search: BestFirst):
        """Keep the tree's nodes up to date; one TreeEvent per pop (the state about to be expanded or
        returned, and its children pushed by the previous expansion)."""
        node = record.node
        status = {"push": "finished" if node.goal else "open", "pop": "kept",
                  "drop": "pruned", "duplicate": "pruned"}[record.kind]
        tree[node.id] = TreeNode(id=node.id, parent=node.parent, token_id=node.state[-1] if node.state else -1,
                                 text=node.data.get("step", "") if node.parent is not None else "(prompt)",
                                 score=node.f, status=status,
                                 label=f"f={node.f:.3f} g={node.g:.3f} h={node.h:.3f}")
        if record.kind != "pop":
            return None
        return TreeEvent(step=record.expansions, nodes=list(tree.values()), reset=record.expansions == 0
                         and node.parent is None, title=TITLE, preview=node.data.get("text", ""))

    def stats(self, search: BestFirst) -> dict:
        return {"expansions": search.expansions, "queue size": len(search.queue),
                "reward calls": self.reward_calls, "states": len(search.nodes)}

    @staticmethod
    def outcome_words(search: BestFirst, chosen: Node) -> str:
        if search.outcome == "goal":
            return f"A finished state was popped after {search.expansions} expansions (f={chosen.f:.3f})."
        kind = "finished" if chosen.goal else "unfinished (best f)"
        why = "the budget ran out" if search.outcome == "budget" else "the queue ran empty"
        return f"No goal was popped ({why}): the output is the best {kind} state (f={chosen.f:.3f})."

    def answer(self, s, chosen: Node, tree: dict[int, TreeNode]):
        node = tree.get(chosen.id)
        if node is not None:
            node.status = "chosen"
        yield TreeEvent(step=chosen.depth, nodes=[node] if node else [], reset=False, title=TITLE,
                        chosen=chosen.id)
        text = chosen.data.get("text", "")
        yield LaneEvent("chosen", chosen.data.get("lane", 0), chosen.depth, reward=chosen.data.get("reward"), text=text,
                        answer=extract_answer(text))
        for described in chosen.data.get("described", []):
            yield s.emit(replace(described))
