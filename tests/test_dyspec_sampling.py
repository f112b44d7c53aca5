"""DySpec's sampling mode: the output follows the target's warped distribution, although the tree's
shape depends on the draws; ranking an already-drawn token by its own q (the greedy rule) does not.

Target: build_tiny_llama(seed=0); draft: build_tiny_llama(seed=1). Greedy mode equals plain greedy:
test_speculative_greedy.py runs dyspec (temperature 0 is the default) in all its greedy checks.
"""

from __future__ import annotations

import heapq

import pytest
import torch
from transformers import DynamicCache
from test_speculative_sampling import (PROMPTS, assert_follows_target, chi_square_fails, rounds, run, sample_many,
                                      warped_target)
from test_speculative_sampling import draft, target  # noqa: F401  (the same tiny target and draft fixtures)

from playground.decoding import DecodeSession
from playground.events import StatsEvent, TreeEvent
from strategies import REGISTRY
from strategies.speculative import acceptance
from strategies.base import InvalidParameter
from strategies.speculative.dyspec import GrownTree, sample_draft_tree
from strategies.speculative.tree import DraftTree

pytestmark = pytest.mark.usefixtures("one_thread")

TEMPERATURE, TOP_K = 1.5, 24
TREE = {"budget": 6, "width": 2, "branching": 3, "max_depth": 4}




def test_sampling_output_follows_the_target(target, draft, tiny_tokenizer):
    """600 seeds, three new tokens each: the first token follows the target's warped p(. | prompt) and
    the second its marginal (chi-square at p ~ 1e-4); the accept and residual paths both run, and the
    trees' shapes vary with the draws."""
    runs, prompt = 600, PROMPTS[0]
    strategy = REGISTRY["dyspec"](temperature=TEMPERATURE, top_k=TOP_K, **TREE)
    shapes = set()

    def record_shape(events):
        tree = next(e for e in events if isinstance(e, TreeEvent))
        shapes.add(tuple(n.parent for n in tree.nodes if n.status != "bonus"))

    firsts, seconds, accepted_first = sample_many(strategy, target, draft, tiny_tokenizer, prompt, runs, record_shape)
    assert_follows_target(target, prompt, firsts, seconds, TEMPERATURE, TOP_K)
    assert 0.1 * runs < accepted_first < 0.9 * runs
    assert len(shapes) > 1 and all(len(shape) == TREE["budget"] + 1 for shape in shapes)
    vocab = target.config.vocab_size
    # the check has power: the draft's own distribution is clearly rejected
    q_first = warped_target(draft, prompt, TEMPERATURE, TOP_K)
    stat, critical = chi_square_fails(torch.bincount(torch.tensor(firsts), minlength=vocab).double(), q_first + 1e-9)
    assert stat > 2 * critical, (stat, critical)


# --- the rule that makes it exact, on synthetic distributions ------------------------------------

def drawn_value_tree(root, root_q, expand, budget, width, branching, max_depth, generator) -> GrownTree:
    """WRONG on purpose: each candidate is drawn as soon as its slot opens and ranked by its own draft
    probability, so a low-q draw loses its place to other slots more often than a high-q one."""
    tree = DraftTree.rooted(root)
    grown = GrownTree(tree, [1.0], [1.0], 1)
    left, heap = {}, []

    def draw_next(node):
        if len(tree.children(node)) < branching and float(left[node].sum()) > 0:
            token = int(acceptance.sample(left[node][None], generator))
            left[node][token] = 0.0
            heapq.heappush(heap, (-grown.value[node] * float(grown.q_at[node][token]), node, token))

    def open_node(node, q):
        grown.q_at[node], left[node] = q, q.clone()
        if tree.depth(node) < max_depth:
            draw_next(node)

    open_node(0, root_q)
    while heap and len(tree) - 1 < budget:
        for _ in range(min(width, budget - (len(tree) - 1))):
            if not heap:
                break
            _, parent, token = heapq.heappop(heap)
            tree.add(parent, token)
            grown.q.append(float(grown.q_at[parent][token]))
            grown.value.append(grown.value[parent] * grown.q[-1])
            draw_next(parent)
        if len(tree) - 1 >= budget:
            break
        for offset, q in enumerate(expand(tree, grown.fed)):
            open_node(grown.fed + offset, q)
        grown.fed = len(tree)
    return grown


def first_token_law(grow, trials: int):
    """Four tokens; the target likes token 1, which the draft rarely proposes (q = 0.1). Budget 2: the
    second node is either a sibling of the first draw x1 or its child. The correct rule decides from
    x1 alone (a sibling unless x1 = 3, whose child is near-certain); the wrong rule admits a drawn
    sibling only if its q beats q(x1) q(y1), which token 1 almost never does. The first emitted
    token comes from recursive rejection over the root's children."""
    f64 = lambda *values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    p, q = f64(0.05, 0.3, 0.6, 0.05), f64(0.4, 0.1, 0.0, 0.5)
    below = {0: f64(0.3, 0, 0, 0.7), 1: f64(0.3, 0, 0, 0.7), 3: f64(0.05, 0, 0, 0.95)}   # the draft after each token
    expand = lambda tree, start: [below[t] for t in tree.tokens[start:]]  # noqa: E731
    draws, verify = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    firsts, root_children = [], set()
    for _ in range(trials):
        tree = grow(0, q, expand, 2, 1, 3, 2, draws).tree     # budget 2, width 1, branching 3, depth 2
        children = torch.tensor([tree.tokens[c] for c in tree.children(0)])
        root_children.add(len(children))
        firsts.append(int(acceptance.recursive_rejection(p, q, children, verify)[1]))
    counts = torch.bincount(torch.tensor(firsts), minlength=4).double()
    return counts, p, root_children


def test_ranking_slots_before_the_draw_is_exact_and_ranking_drawn_tokens_is_not():
    counts, p, root_children = first_token_law(sample_draft_tree, 6000)
    stat, critical = chi_square_fails(counts, p)
    assert stat < critical, (stat, critical)
    assert root_children == {1, 2}                        # the shape does depend on the draws
    counts, p, _ = first_token_law(drawn_value_tree, 6000)
    stat, critical = chi_square_fails(counts, p)
    assert stat > critical, (stat, critical)              # token 1 comes out ~0.25 instead of 0.3


# --- caches, limits, a perfect draft ----------------------------------------------------------

def check_draft_cache(strategy, session, draft, tokenizer, max_depth):
    """The draft cache holds the committed text minus the root, less the accepted tokens it never ran
    (at most max_depth, fed in front of the next root), and its rows are a fresh run's rows."""
    committed = session.prompt_ids + session.output_ids
    length = strategy.draft_cache.get_seq_length()
    assert 0 <= len(committed) - 1 - length <= max_depth
    fresh = DynamicCache(config=draft.config)
    DecodeSession(draft, tokenizer, committed[:length], 1, set(), 0).prefill(fresh)
    for ours, theirs in zip(strategy.draft_cache.layers, fresh.layers):
        assert torch.allclose(ours.keys[..., :length, :], theirs.keys, atol=1e-10)
        assert torch.allclose(ours.values[..., :length, :], theirs.values, atol=1e-10)


def test_sampling_keeps_both_caches_and_stops_exactly(target, draft, tiny_tokenizer):
    params = dict(temperature=1.0, top_p=0.9, **TREE)
    for prompt in PROMPTS:
        session = DecodeSession(target, tiny_tokenizer, prompt, 24, set(), 3, draft_model=draft)
        strategy = REGISTRY["dyspec"](**params)
        for event in strategy.decode(session):
            if isinstance(event, StatsEvent):
                assert strategy.cache.get_seq_length() == len(prompt) + len(session.output_ids) - 1
                check_draft_cache(strategy, session, draft, tiny_tokenizer, TREE["max_depth"])
        assert len(session.output_ids) == 24
    free, _, _ = run(target, tiny_tokenizer, "dyspec", PROMPTS[1], draft_model=draft, **params)
    eos = free[5]
    for max_new, stop in ((5, ()), (24, (eos,))):
        ours, events, _ = run(target, tiny_tokenizer, "dyspec", PROMPTS[1], max_new, stop, draft_model=draft,
                              **params)
        assert len(ours) <= max_new and all(t not in stop for t in ours[:-1])
        assert len(ours) == max_new or ours[-1] in stop
        assert sum(v.emitted for v in rounds(events)) == len(ours)


def test_sampling_with_the_target_as_draft_accepts_every_round(target, tiny_tokenizer):
    """q = p at every node, so recursive rejection accepts the first child all the way to a leaf."""
    ours, events, session = run(target, tiny_tokenizer, "dyspec", PROMPTS[1], draft_model=target,
                                temperature=1.0, **TREE)
    assert len(ours) == 24
    assert all(v.accepted >= 1 for v in rounds(events)[:-1])
    assert session.forward_passes == len(rounds(events)) + 1      # the prompt pass, then ONE per round (each drafts)


def test_temperature_between_greedy_and_sampling_is_refused():
    with pytest.raises(InvalidParameter):
        REGISTRY["dyspec"](temperature=0.01)
