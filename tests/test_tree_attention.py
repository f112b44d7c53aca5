"""Tree attention: one forward over a token tree equals sequential forwards along every root path."""

from __future__ import annotations

import random

import pytest
import torch

from playground.decoding import DecodeSession
from strategies.speculative.tree import (DraftTree, draft_tree_forward, greedy_accept, keep_path, keep_prefix,
                                       tree_mask, verify_tree)


def random_tree(rng: random.Random, size: int, vocab: int) -> DraftTree:
    tree = DraftTree.rooted(rng.randrange(vocab))
    for _ in range(size - 1):
        tree.add(rng.randrange(len(tree)), rng.randrange(vocab))
    return tree


def sequential_logits(model, ids: list[int]) -> torch.Tensor:
    """Plain causal forward, no cache tricks: logits (len(ids), V)."""
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0]


def session_for(model, tokenizer, prompt, draft=None):
    return DecodeSession(model, tokenizer, prompt, 8, set(), 0, draft_model=draft)


@pytest.mark.parametrize("prefix", [[], [3], [5, 17, 33, 2, 9]])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tree_logits_equal_sequential_path_logits(tiny_model, tiny_tokenizer, prefix, seed):
    rng = random.Random(seed)
    tree = random_tree(rng, size=rng.randrange(2, 14), vocab=tiny_model.config.vocab_size)
    session = session_for(tiny_model, tiny_tokenizer, prefix + [tree.tokens[0]])
    cache = session.new_cache()
    if prefix:
        session.forward(prefix, cache)
    logits = verify_tree(session, tree, cache)
    assert session.forward_passes == 1 + bool(prefix)   # the whole tree is ONE pass
    assert cache.get_seq_length() == len(prefix) + len(tree)
    for node in range(len(tree)):
        path_tokens = [tree.tokens[i] for i in tree.path(node)]
        expected = sequential_logits(tiny_model, prefix + path_tokens)[-1]
        torch.testing.assert_close(logits[node], expected, rtol=1e-9, atol=1e-9)


def test_tree_in_two_feeds_equals_one(tiny_model, tiny_tokenizer):
    """Growing a tree level by level on a cache (start > 0) gives the same rows as one pass."""
    tree = random_tree(random.Random(7), 12, tiny_model.config.vocab_size)
    prefix = [4, 8, 15]
    s = session_for(tiny_model, tiny_tokenizer, prefix, draft=tiny_model)
    whole = s.new_cache()
    s.forward(prefix, whole)
    one = verify_tree(s, tree, whole)
    grown = s.new_cache()
    s.forward(prefix, grown)
    first = draft_tree_forward(s, tree, grown, start=0)[:5]   # pretend only 5 nodes existed
    partial = DraftTree(tree.tokens[:5], tree.parents[:5])
    keep_prefix(grown, len(prefix))
    draft_tree_forward(s, partial, grown)
    rest = draft_tree_forward(s, tree, grown, start=5)
    torch.testing.assert_close(torch.cat([first, rest]), one, rtol=1e-9, atol=1e-9)
    assert s.draft_forward_passes == 3


def test_keep_path_leaves_the_cache_of_a_sequential_run(tiny_model, tiny_tokenizer):
    tree = DraftTree.rooted(11)
    a = tree.add(0, 20)
    tree.add(0, 21)
    b = tree.add(a, 30)
    tree.add(a, 31)
    c = tree.add(b, 40)
    prefix = [1, 2, 3]
    s = session_for(tiny_model, tiny_tokenizer, prefix)
    cache = s.new_cache()
    s.forward(prefix, cache)
    verify_tree(s, tree, cache)
    keep_path(cache, len(prefix), [0, a, b, c])
    assert cache.get_seq_length() == len(prefix) + 4
    # the next token on top of the kept cache sees exactly prefix + path
    after, _ = s.forward([50], cache)
    expected = sequential_logits(tiny_model, prefix + [11, 20, 30, 40, 50])[-1]
    torch.testing.assert_close(after[0], expected, rtol=1e-9, atol=1e-9)


def test_mask_blocks_everything_but_prefix_ancestors_and_self():
    tree = DraftTree([1, 2, 3, 4], [-1, 0, 0, 1])
    mask = tree_mask(tree, 2, torch.float64)
    assert mask.shape == (1, 1, 4, 6)
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 1, 0], [1, 1, 1, 1, 0, 1]]
    assert tree_mask(tree, 2, torch.float64, start=2).shape == (1, 1, 2, 6)


def test_greedy_accept_follows_parent_argmax():
    tree = DraftTree([0, 5, 6, 7, 8], [-1, 0, 0, 2, 2])
    logits = torch.zeros(5, 10)
    logits[0, 6] = 1      # root predicts 6 -> node 2
    logits[2, 8] = 1      # node 2 predicts 8 -> node 4
    logits[4, 3] = 1      # no child 3 -> stop
    assert greedy_accept(tree, logits) == [0, 2, 4]
    assert tree.path(4) == [0, 2, 4] and tree.depth(4) == 2 and tree.children(2) == [3, 4]
    with pytest.raises(AssertionError):
        DraftTree([1, 2], [-1, 1])
