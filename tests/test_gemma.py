"""Gemma 3 270M (optional, `bash scripts/setup.sh --gemma`): the non-Llama path on a real model. Our
greedy (through the runner, on transformers' forward: the lean forward is Llama-only) equals
transformers' own `generate`, token for token, and the model box lists the converted folder."""

from __future__ import annotations

import os

import pytest
import torch

from playground import gemma

MISSING = f"Gemma 3 270M is not installed in {gemma.folder()}: run `bash scripts/setup.sh --gemma` (optional)"
if os.environ.get("PLAYGROUND_REQUIRE_GEMMA") and not gemma.converted():
    raise RuntimeError(MISSING + "; .ci/run installs it, so here it must be there")
pytestmark = pytest.mark.skipif(not gemma.converted(), reason=MISSING)


@pytest.fixture(scope="module")
def loaded(one_thread):
    from playground.models import load_model

    return load_model(str(gemma.folder()), "float32")


def test_greedy_equals_transformers_generate(loaded):
    from playground.events import TokenEvent
    from playground.runner import GenerationRequest, generate

    prompt = "The three primary colours are"
    events = generate(GenerationRequest(prompt, max_new_tokens=12, chat=False), loaded)
    ours = [e.token_id for e in events if isinstance(e, TokenEvent)]
    ids = torch.tensor([events[0].prompt_ids])
    with torch.no_grad():
        theirs = loaded.model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
    assert loaded.model.config.model_type.startswith("gemma3")
    assert ours == theirs[:len(ours)] and len(ours) >= 1
    assert len(ours) == len(theirs) or theirs[len(ours)] in loaded.eos_ids


def test_the_model_box_lists_it():
    from playground.models import available_models

    assert str(gemma.folder()) in available_models()
