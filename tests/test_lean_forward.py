"""The lean forward (playground/lean_forward.py) computes what transformers computes.

Tiny float64 llamas: logits and hidden states agree to 1e-10 for a prompt, one-token steps, a
causal chain on top of the cache, a tree mask, a batch, and a truncated view; the caches they
leave behind agree too. The embedded model (float32): decode steps and prompts within 1e-3 (logits ~ 20), with the same greedy tokens
(the lean forward's few-row products are split over the cores, playground/row_split.py, so they
round differently from MKL's one-row product).
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from playground import lean_forward
from playground.drafts import truncated_view
from strategies.speculative.tree import DraftTree, tree_mask

from conftest import build_tiny_llama


def both(model, ids, past: list[int] | None = None, **kwargs):
    """(transformers output, lean output, transformers cache, lean cache) for `ids` fed after `past`."""
    caches = []
    for _ in range(2):
        cache = DynamicCache(config=model.config)
        if past:
            model(input_ids=torch.tensor([past]), cache=cache, use_cache=True)
        caches.append(cache)
    with torch.inference_mode():
        ref = model(input_ids=ids, cache=caches[0], use_cache=True, **kwargs)
        lean = lean_forward.forward(model, ids, caches[1], **kwargs)
    return ref, lean, caches[0], caches[1]


def assert_same_cache(a, b, atol=1e-10):
    assert a.get_seq_length() == b.get_seq_length()
    for la, lb in zip(a.layers, b.layers):
        torch.testing.assert_close(la.keys, lb.keys, atol=atol, rtol=0)
        torch.testing.assert_close(la.values, lb.values, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def model():
    return build_tiny_llama(seed=5, layers=3)


def test_supports_llama_only(model):
    assert lean_forward.supports(model)
    assert not lean_forward.supports(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("past", [None, [3, 7, 11]])
@pytest.mark.parametrize("n", [1, 4])
def test_prompt_steps_and_chains_match(model, past, n):
    ids = torch.tensor([[5, 9, 2, 40][:n]])
    ref, lean, ref_cache, lean_cache = both(model, ids, past, output_hidden_states=True)
    torch.testing.assert_close(lean.logits, ref.logits, atol=1e-10, rtol=0)
    assert len(lean.hidden_states) == len(ref.hidden_states) == model.config.num_hidden_layers + 1
    for a, b in zip(lean.hidden_states, ref.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    assert_same_cache(ref_cache, lean_cache)


def test_tree_mask_and_positions_match(model):
    tree = DraftTree.rooted(4)
    for parent, token in [(0, 8), (0, 9), (1, 10), (1, 11), (2, 12), (3, 13)]:
        tree.add(parent, token)
    past = [1, 2, 3, 5, 6]
    ids = torch.tensor([tree.tokens])
    positions = torch.tensor([[len(past) + d for d in tree.depths]])
    mask = tree_mask(tree, len(past), torch.float64)
    ref, lean, ref_cache, lean_cache = both(model, ids, past, attention_mask=mask, position_ids=positions)
    torch.testing.assert_close(lean.logits, ref.logits, atol=1e-10, rtol=0)
    assert_same_cache(ref_cache, lean_cache)


def test_batches_and_last_logits_match(model):
    ids = torch.tensor([[5, 9, 2], [7, 7, 1]])
    ref, lean, *_ = both(model, ids, logits_to_keep=1)
    assert lean.logits.shape == (2, 1, model.config.vocab_size)
    torch.testing.assert_close(lean.logits, ref.logits, atol=1e-10, rtol=0)


def test_hidden_rows_are_the_last_normalised_states_the_head_reads(model):
    """hidden_rows=n (Token Recycling's held prompt rows): only the last n rows of the last, normalised,
    state, transformers' hidden_states[-1] there, and the head over them gives those rows' logits."""
    ids = torch.tensor([[5, 9, 2, 40, 17]])
    ref, lean, *_ = both(model, ids, output_hidden_states=True)
    with torch.inference_mode():
        held = lean_forward.forward(model, ids, DynamicCache(config=model.config), logits_to_keep=1, hidden_rows=3)
        head = model.lm_head(held.hidden_states[0])
    assert len(held.hidden_states) == 1 and held.hidden_states[0].shape == (1, 3, model.config.hidden_size)
    torch.testing.assert_close(held.hidden_states[0], ref.hidden_states[-1][:, -3:], atol=1e-10, rtol=0)
    torch.testing.assert_close(head, ref.logits[:, -3:], atol=1e-10, rtol=0)
    assert held.logits.shape == (1, 1, model.config.vocab_size)


def test_truncated_view_matches(model):
    view = truncated_view(model, 2)
    ids = torch.tensor([[5, 9, 2, 40]])
    ref, lean, ref_cache, lean_cache = both(view, ids, [3, 4], output_hidden_states=True)
    torch.testing.assert_close(lean.logits, ref.logits, atol=1e-10, rtol=0)
    assert len(lean.hidden_states) == 3
    assert_same_cache(ref_cache, lean_cache)


def test_embedded_decode_steps_agree(embedded):
    model, tokenizer = embedded.model, embedded.tokenizer
    prompt = torch.tensor([tokenizer.encode("The quick brown fox")])
    ref, lean, ref_cache, lean_cache = both(model, prompt)
    torch.testing.assert_close(lean.logits, ref.logits, atol=1e-3, rtol=0)   # logits ~ 20: float32 rounding over 30 layers
    token_ref = token_lean = ref.logits[0, -1].argmax().view(1, 1)
    with torch.inference_mode():
        for _ in range(4):
            a = model(input_ids=token_ref, cache=ref_cache, use_cache=True).logits
            b = lean_forward.forward(model, token_lean, lean_cache).logits
            torch.testing.assert_close(b, a, atol=1e-3, rtol=0)
            assert torch.equal(a[0, -1].argmax(), b[0, -1].argmax())
            token_ref, token_lean = a[0, -1].argmax().view(1, 1), b[0, -1].argmax().view(1, 1)


def test_forward_setting_is_checked(monkeypatch):
    from playground.config import Settings

    monkeypatch.setenv("PLAYGROUND_FORWARD", "transformer")
    with pytest.raises(ValueError, match="PLAYGROUND_FORWARD must be one of lean, transformers"):
        Settings.from_env()
    monkeypatch.setenv("PLAYGROUND_FORWARD", "transformers")
    assert Settings.from_env().forward == "transformers"


def test_both_forward_paths_decode_the_same_greedy_text(model):
    from playground.decoding import DecodeSession
    from strategies import REGISTRY

    from conftest import TinyTokenizer

    outputs = []
    for lean in (True, False):
        session = DecodeSession(model, TinyTokenizer(), [4, 8, 15], 20, set(), 0, lean=lean)
        list(REGISTRY["greedy"]().decode(session))
        outputs.append(session.output_ids)
    assert outputs[0] == outputs[1] and len(outputs[0]) == 20
