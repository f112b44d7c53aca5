"""The model box offers what is at hand offline: the embedded model and its draft, folders converted
into the cache, Hub snapshots already downloaded; never what this server's allow-list refuses."""

from __future__ import annotations

import pytest

from playground.config import settings
from playground.models import available_models


@pytest.fixture
def at_hand(monkeypatch, tmp_path):
    """A cache folder with one converted model (and the embedded model's own copy), a Hub cache with one
    complete snapshot and one without a config (an interrupted download)."""
    from huggingface_hub import constants

    for folder in ("models/gemma-3-270m-q4_k_m", "models/smollm2-135m-instruct-q4_1",
                   "hub/models--org--tiny/snapshots/abc", "hub/models--org--partial/snapshots/abc"):
        (tmp_path / folder).mkdir(parents=True)
    for folder in ("models/gemma-3-270m-q4_k_m", "models/smollm2-135m-instruct-q4_1", "hub/models--org--tiny/snapshots/abc"):
        (tmp_path / folder / "config.json").write_text("{}")
    monkeypatch.setenv("PLAYGROUND_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    settings.cache_clear()
    yield tmp_path
    monkeypatch.undo()
    settings.cache_clear()


def test_offers_the_models_found_offline(at_hand):
    assert available_models() == ["embedded", "embedded@layers=24", str(at_hand / "models/gemma-3-270m-q4_k_m"),
                                  "org/tiny"]


def test_an_allow_list_hides_what_it_refuses(at_hand, monkeypatch):
    monkeypatch.setenv("PLAYGROUND_ALLOWED_MODELS", "org/tiny")
    settings.cache_clear()
    assert available_models() == ["embedded", "embedded@layers=24", "org/tiny"]      # no server folder
