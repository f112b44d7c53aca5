"""The in-place KV cache (playground/kv_cache.py) holds what transformers' DynamicCache holds, after any
mix of what the methods do to a cache, and a step writes only its own rows."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import DynamicCache

from playground import kv_cache
from playground.kv_cache import GrowingCache
from strategies.speculative.tree import keep_path

from conftest import build_tiny_llama


@pytest.fixture(scope="module")
def config():
    return build_tiny_llama(seed=5, layers=2).config


def same(a, b):
    assert a.get_seq_length() == b.get_seq_length()
    for la, lb in zip(a.layers, b.layers):
        assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)


def rows(batch: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, n, 4, generator=g), torch.randn(batch, 2, n, 4, generator=g)


@pytest.mark.parametrize("seed", range(6))
def test_any_mix_of_updates_crops_paths_and_reorders_matches_dynamic_cache(config, seed, monkeypatch):
    monkeypatch.setattr(kv_cache, "SPARE", 3)          # buffers fill up and are re-made often
    rng = random.Random(seed)
    batch = rng.choice((1, 2))
    ours, theirs = GrowingCache(config), DynamicCache(config=config)
    assert all(isinstance(layer, kv_cache.GrowingLayer) for layer in ours.layers)
    with torch.inference_mode():
        for op in range(60):
            length = theirs.get_seq_length()
            kind = rng.choice(("update", "update", "step", "crop", "path", "reorder") if length else ("update",))
            if kind == "step":                            # what the compiled step does to every layer
                for layer in range(len(ours.layers)):
                    k, v = rows(batch, 1, seed * 1000 + op * 10 + layer)
                    mine = ours.layers[layer]
                    mine.reserve(length + 1)
                    mine.buffers[0][:, :, length], mine.buffers[1][:, :, length] = k[:, :, 0], v[:, :, 0]
                    mine.rows = length + 1                # keys and values made when next read
                    theirs.update(k, v, layer)
                assert ours.get_seq_length() == length + 1 and ours.layers[0].rows == length + 1
            elif kind == "update":
                n = rng.randint(1, 5)                     # a pass of n tokens: every layer gets n rows
                for layer in range(len(ours.layers)):
                    k, v = rows(batch, n, seed * 1000 + op * 10 + layer)
                    got, want = ours.update(k, v, layer), theirs.update(k, v, layer)
                    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
            elif kind == "crop":
                cut = rng.randint(1, length)
                ours.crop(-cut), theirs.crop(-cut)
            elif kind == "path":                          # a tree round: keep some later rows in order
                past = rng.randint(0, length - 1)
                path = sorted(rng.sample(range(length - past), rng.randint(1, length - past)))
                keep_path(ours, past, path), keep_path(theirs, past, path)
            else:
                order = torch.tensor([rng.randrange(batch) for _ in range(batch)])
                ours.batch_select_indices(order), theirs.batch_select_indices(order)
            if rng.random() < 0.3:                        # not after every op: the next op must work on unread rows
                same(ours, theirs)
        same(ours, theirs)


def test_a_step_writes_into_the_buffer_instead_of_copying_the_cache(config):
    cache = GrowingCache(config)
    with torch.inference_mode():
        cache.update(*rows(1, 40, 0), 0)
        start = cache.layers[0].keys.data_ptr()
        for step in range(kv_cache.SPARE - 1):
            keys, _ = cache.update(*rows(1, 1, step + 1), 0)
            assert keys.data_ptr() == start and keys.shape[2] == 41 + step
        cache.crop(-5)
        keys, _ = cache.update(*rows(1, 1, 99), 0)
        assert keys.data_ptr() == start                   # a cropped cache is still a prefix of its buffer
