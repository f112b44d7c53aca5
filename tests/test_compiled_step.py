"""The compiled one-token step and verification pass (playground/compiled_step.py) compute what the eager
ones compute, on a tiny float32 llama (one real compilation of each: ~20 s cold on 2 cores, seconds from
torch's disk cache)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from playground import compiled_step, kv_cache, lean_forward
from playground.kv_cache import GrowingCache

from conftest import build_tiny_llama
from strategies.speculative.tree import DraftTree, tree_mask


@pytest.fixture(scope="module")
def model():
    return build_tiny_llama(seed=11, layers=2).to(torch.float32)


@pytest.fixture(scope="module")
def step(model):
    step = compiled_step.prepare(model)
    assert step is not None and step.ready, "the step did not compile (is a C++ compiler installed?)"
    return step


def greedy(model, prompt: list[int], steps: int, compiled: bool) -> tuple[list[int], torch.Tensor, GrowingCache]:
    """Greedy tokens through lean_forward, the last logits (V,) and the cache left behind."""
    cache = GrowingCache(model.config)
    with torch.inference_mode(), (compiled_step.paused(model) if not compiled else torch.inference_mode()):
        logits = lean_forward.forward(model, torch.tensor([prompt]), cache).logits[0, -1]
        tokens = []
        for _ in range(steps):
            tokens.append(int(logits.argmax()))
            logits = lean_forward.forward(model, torch.tensor([[tokens[-1]]]), cache).logits[0, -1]
    return tokens, logits, cache


def count_calls(step, monkeypatch, graph: str = "fn") -> list[int]:
    calls = [0]
    fn = getattr(step, graph)

    def counted(*args):
        calls[0] += 1
        return fn(*args)
    monkeypatch.setattr(step, graph, counted)
    return calls


def test_compiled_decoding_equals_eager_across_buffer_regrowth(model, step, monkeypatch):
    monkeypatch.setattr(kv_cache, "SPARE", 4)           # buffers re-made (new capacities) during the run
    calls = count_calls(step, monkeypatch)
    eager_tokens, eager_logits, eager_cache = greedy(model, [5, 9, 2, 40, 7], 60, compiled=False)
    assert calls[0] == 0
    tokens, logits, cache = greedy(model, [5, 9, 2, 40, 7], 60, compiled=True)
    assert calls[0] == 60                                # every step after the prompt went through the graph
    assert tokens == eager_tokens
    torch.testing.assert_close(logits, eager_logits, atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(cache.layers, eager_cache.layers):
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.values, theirs.values, atol=1e-5, rtol=1e-5)


def test_which_passes_the_graphs_take(model, step, monkeypatch):
    """The step graph: the plain one-token step; the pass graph: 2 to MAX_PASS_ROWS tokens of one sequence on
    a cached context; everything else (a prompt, a cache without buffers, a batch, too many rows) is eager."""
    calls, passes = count_calls(step, monkeypatch), count_calls(step, monkeypatch, "fn_pass")
    ids = torch.tensor([[3, 4, 5]])
    with torch.inference_mode():
        lean_forward.forward(model, ids, DynamicCache(config=model.config))         # no buffers to write into
        cache = GrowingCache(model.config)
        lean_forward.forward(model, ids, cache)                                      # a prompt
        lean_forward.forward(model, torch.tensor([[8]]), cache, position_ids=torch.tensor([[9]]))
        lean_forward.forward(model, torch.arange(compiled_step.MAX_PASS_ROWS + 1)[None] % 90, cache)
        batch = GrowingCache(model.config)
        lean_forward.forward(model, torch.tensor([[3, 4], [5, 6]]), batch)
        lean_forward.forward(model, torch.tensor([[6, 7], [8, 9]]), batch)
        assert calls[0] == passes[0] == 0
        lean_forward.forward(model, torch.tensor([[8]]), cache)
        assert calls[0] == 1
        lean_forward.forward(model, torch.tensor([[6, 7]]), cache)                   # a chain
        lean_forward.forward(model, torch.arange(compiled_step.MAX_PASS_ROWS)[None] % 90, cache)
        assert calls[0] == 1 and passes[0] == 2


def eager_and_compiled(model, prompt: list[int], fed: list[int], **kwargs):
    """Two caches holding `prompt`, each fed `fed` in one pass (eager, then compiled): both outputs and caches."""
    results = []
    for compiled in (False, True):
        cache = GrowingCache(model.config)
        with torch.inference_mode(), (compiled_step.paused(model) if not compiled else torch.inference_mode()):
            lean_forward.forward(model, torch.tensor([prompt]), cache)
            results.append((lean_forward.forward(model, torch.tensor([fed]), cache, **kwargs), cache))
    return results


def assert_same(eager, compiled) -> None:
    (theirs, their_cache), (ours, our_cache) = eager, compiled
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=1e-5)
    assert our_cache.get_seq_length() == their_cache.get_seq_length()
    for mine, other in zip(our_cache.layers, their_cache.layers):
        torch.testing.assert_close(mine.keys, other.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine.values, other.values, atol=1e-5, rtol=1e-5)


def test_a_compiled_chain_pass_equals_the_eager_one(model, step, monkeypatch):
    monkeypatch.setattr(kv_cache, "SPARE", 2)           # the pass's rows regrow the buffers
    passes = count_calls(step, monkeypatch, "fn_pass")
    eager, compiled = eager_and_compiled(model, [5, 9, 2, 40, 7], [11, 12, 13, 14, 15, 16, 17], logits_to_keep=0)
    assert passes[0] == 1 and compiled[0].logits.shape == (1, 7, 96)
    assert_same(eager, compiled)


def test_a_compiled_tree_pass_reads_its_mask_and_positions(model, step, monkeypatch):
    """A tree: siblings at the same depth (rotary position) that must not see each other. A pass that ignored
    the mask or the positions, or wrote its rows elsewhere in the cache, differs from the eager one."""
    passes = count_calls(step, monkeypatch, "fn_pass")
    tree = DraftTree([20, 31, 32, 41, 42, 51], [-1, 0, 0, 1, 1, 3])
    prompt = [5, 9, 2, 40, 7]
    positions = torch.tensor([[len(prompt) + d for d in tree.depths]])
    for mask in (tree_mask(tree, len(prompt), torch.float32), tree_mask(tree, len(prompt), torch.float32) == 0):
        eager, compiled = eager_and_compiled(model, prompt, tree.tokens, logits_to_keep=0, attention_mask=mask,
                                             position_ids=positions, output_hidden_states=True)
        assert_same(eager, compiled)
        assert len(compiled[0].hidden_states) == model.config.num_hidden_layers + 1
        for mine, theirs in zip(compiled[0].hidden_states, eager[0].hidden_states):
            assert mine.shape == theirs.shape == (1, len(tree), model.config.hidden_size)
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    assert passes[0] == 2
    chain, _ = eager_and_compiled(model, prompt, tree.tokens, logits_to_keep=0)[1]
    assert not torch.allclose(chain.logits, compiled[0].logits, atol=1e-3)      # the mask mattered


def test_a_compiled_pass_keeps_the_last_rows_asked_for(model, step):
    eager, compiled = eager_and_compiled(model, [5, 9, 2], [4, 6, 8], logits_to_keep=2, hidden_rows=1)
    assert compiled[0].logits.shape == (1, 2, 96) and compiled[0].hidden_states[0].shape == (1, 1, 32)
    assert_same(eager, compiled)
    torch.testing.assert_close(compiled[0].hidden_states[0], eager[0].hidden_states[0][:, -1:], atol=1e-5, rtol=1e-5)


def test_a_step_that_asks_for_hidden_states_gets_the_eager_ones(model, step, monkeypatch):
    """DEL's logit lens reads every layer's hidden state on a plain step: the compiled step returns them in
    transformers' order (embedding, each layer's output, the last normalised), as the eager step does."""
    calls = count_calls(step, monkeypatch)
    with torch.inference_mode():
        caches = [GrowingCache(model.config) for _ in range(2)]
        outputs = []
        for cache, compiled in zip(caches, (False, True)):
            with compiled_step.paused(model) if not compiled else torch.inference_mode():
                lean_forward.forward(model, torch.tensor([[3, 4, 5]]), cache)
                outputs.append(lean_forward.forward(model, torch.tensor([[8]]), cache, output_hidden_states=True))
        assert calls[0] == 1
        eager, ours = outputs
        assert len(ours.hidden_states) == len(eager.hidden_states) == model.config.num_hidden_layers + 1
        for mine, theirs in zip(ours.hidden_states, eager.hidden_states):
            assert mine.shape == theirs.shape == (1, 1, model.config.hidden_size)
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
        assert lean_forward.forward(model, torch.tensor([[9]]), caches[1]).hidden_states is None


def test_after_a_compiled_step_keys_and_values_are_made_when_read(model, step):
    with torch.inference_mode():
        cache = GrowingCache(model.config)
        lean_forward.forward(model, torch.tensor([[3, 4, 5]]), cache)
        lean_forward.forward(model, torch.tensor([[8]]), cache)
        layer = cache.layers[-1]
        assert layer.rows == 4 and cache.get_seq_length() == 4 and layer.rows == 4    # counted without views
        keys = layer.keys
        assert layer.rows is None and keys.shape[2] == 4 and keys.data_ptr() == layer.buffers[0].data_ptr()
        assert layer.values.shape[2] == 4 and layer.values.data_ptr() == layer.buffers[1].data_ptr()


def test_the_rotary_table_gives_the_embeddings_own_numbers(model, step):
    """The step reads cos / sin from a table instead of calling the rotary embedding every step: the same
    numbers, bit for bit, at every position, also after the table was outgrown and remade."""
    rotary, like = model.model.rotary_emb, torch.zeros(1)
    for position in (0, 1, 7, 500, 1023, 1024, 3000):
        cos, sin = step.rotary(position, like)
        want_cos, want_sin = rotary(like, torch.tensor([[position]]))
        assert cos.shape == (1, 1, 1, want_cos.shape[-1])
        assert torch.equal(cos, want_cos[:, None]) and torch.equal(sin, want_sin[:, None]), position
    assert step.table[0].shape[0] == 6002                                            # remade twice as long


def test_each_model_runs_its_own_graph(model, step):
    """Two models of different shapes, each compiled: neither runs on the other's graph (the graphs
    have no guards, so sharing one would fail or compute garbage)."""
    other = build_tiny_llama(seed=14, layers=3, vocab=80).to(torch.float32)
    assert compiled_step.prepare(other) is not None
    for each in (model, other):
        assert greedy(each, [3, 1, 4, 1, 5], 12, compiled=True)[0] == greedy(each, [3, 1, 4, 1, 5], 12, compiled=False)[0]


def test_a_failed_compile_leaves_the_eager_step(monkeypatch):
    other = build_tiny_llama(seed=12, layers=1).to(torch.float32)

    def broken(self):
        raise RuntimeError("no C++ compiler")
    monkeypatch.setattr(compiled_step.CompiledStep, "compile", broken)
    assert compiled_step.prepare(other) is None and compiled_step.for_model(other) is None
    with torch.inference_mode():
        cache = GrowingCache(other.config)
        lean_forward.forward(other, torch.tensor([[3, 4]]), cache)
        assert lean_forward.forward(other, torch.tensor([[5]]), cache).logits.shape == (1, 1, 96)


def test_float64_models_are_not_compiled():
    assert compiled_step.prepare(build_tiny_llama(seed=13, layers=1)) is None


def test_tensors_made_outside_inference_mode_reuse_the_graphs(model, step, monkeypatch):
    """Methods build tokens and masks outside inference mode; the graphs were compiled on inference tensors and
    guard on dispatch keys: such inputs once recompiled the pass graph every few rounds (tens of seconds each)."""
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    tree = DraftTree([20, 31, 32, 41], [-1, 0, 0, 1])
    ids, mask = torch.tensor([tree.tokens]), tree_mask(tree, 3, torch.float32)       # normal tensors
    positions = torch.tensor([[3 + d for d in tree.depths]])
    with torch.inference_mode():
        cache = GrowingCache(model.config)
        lean_forward.forward(model, torch.tensor([[5, 9, 2]]), cache)
    assert not ids.is_inference() and not mask.is_inference()
    with torch.inference_mode():
        lean_forward.forward(model, ids, cache, attention_mask=mask, position_ids=positions)
    step_ids = torch.tensor([[7]])
    with torch.inference_mode():
        lean_forward.forward(model, step_ids, cache)
