"""Model loading as a hostile visitor tries it: many spellings of one folder, many folders, folders that
exist or not, remote code, uncached Hub ids offline. Real folders (tmp_path), never the network."""

from __future__ import annotations

import gc
import json
import weakref

import pytest

from playground import models
from playground.config import settings
from playground.models import ModelLoadError, load_model, loaded_ids


def tiny_folder(path, seed=0):
    """A real transformers folder: a 2-layer random llama and a word-level fast tokenizer."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    from conftest import build_tiny_llama

    vocab = {"<unk>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, 96)}}
    raw = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<eos>").save_pretrained(path)
    build_tiny_llama(seed).to("cpu").float().save_pretrained(path)
    return path


@pytest.fixture
def env(monkeypatch):
    """Set PLAYGROUND_* variables for one test; the settings and the model cache are restored after."""
    saved = models._cache.copy()

    def set_env(**values):
        for name, value in values.items():
            monkeypatch.setenv(name, str(value))
        settings.cache_clear()

    yield set_env
    monkeypatch.undo()
    settings.cache_clear()
    with models._lock:
        models._cache.clear()
        models._cache.update(saved)


def test_every_spelling_of_a_folder_is_one_model(env, tmp_path):
    env(PLAYGROUND_MODEL_CACHE=4)
    folder = tiny_folder(tmp_path / "m")
    (tmp_path / "link").symlink_to(folder)
    spellings = [f"{folder}/", f"{folder}/./", f"/{folder}/", f"{folder}/../m", str(tmp_path / "link")]
    first = load_model(str(folder), "float32")
    for spelling in spellings:
        assert load_model(spelling, "float32") is first
    assert first.model_id == str(folder.resolve())
    assert [key for key in loaded_ids() if key[0].startswith(str(tmp_path))] == [(str(folder.resolve()), "float32")]


def test_the_cache_keeps_the_most_recently_used_and_frees_the_rest(env, tmp_path):
    env(PLAYGROUND_MODEL_CACHE=2)
    folders = [tiny_folder(tmp_path / f"m{i}", seed=i) for i in range(3)]
    first = weakref.ref(load_model(str(folders[0]), "float32").model)
    load_model(str(folders[1]), "float32")
    load_model(str(folders[0]), "float32")           # used again: now m1 is the oldest
    load_model(str(folders[2]), "float32")
    held = [key[0] for key in loaded_ids()]
    assert held[-2:] == [str(folders[0].resolve()), str(folders[2].resolve())]
    assert str(folders[1].resolve()) not in held and len(held) == 2
    load_model(str(folders[1]), "float32")
    gc.collect()
    assert first() is None, "an evicted model's weights must be freed"


def _error(model_id) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model(model_id, "float32")
    return str(info.value).replace(repr(model_id), "<id>")


def test_one_error_whether_or_not_a_folder_exists(env, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "afile").write_text("x")
    messages = {_error(str(tmp_path / name)) for name in ("missing", "empty", "broken", "afile")}
    messages.add(_error("/etc"))
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    messages.add(_error(f"{tmp_path}/link/./"))       # said as asked: never the resolved target of a link
    assert len(messages) == 1, messages
    message = messages.pop()
    assert "Could not load model <id>" in message and "Error" not in message


def test_remote_code_never_runs_unless_enabled(env, tmp_path):
    folder = tiny_folder(tmp_path / "evil")
    marker = tmp_path / "ran"
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evil_llama"           # unknown to transformers: only the repository's code could load it
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                    "from transformers import LlamaConfig, LlamaForCausalLM\n"
                                    "class EvilConfig(LlamaConfig):\n    model_type = 'evil_llama'\n"
                                    "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    _error(str(folder))
    assert not marker.exists()
    env(PLAYGROUND_TRUST_REMOTE_CODE=1)           # the operator's switch: now it runs (the check above can fail)
    try:
        load_model(str(folder), "float32")
    except ModelLoadError:
        pass
    assert marker.exists()


def test_allow_list_serves_only_embedded_and_listed_hub_ids(env, tmp_path):
    folder = tiny_folder(tmp_path / "real")
    env(PLAYGROUND_ALLOWED_MODELS="HuggingFaceTB/SmolLM2-360M-Instruct, org/other")
    for hostile in (str(folder), f"{folder}/", "org/unlisted", "../etc", "embedded@layers=2x"):
        with pytest.raises(ModelLoadError, match="not offered on this server; it serves: embedded, "
                                                 "HuggingFaceTB/SmolLM2-360M-Instruct, org/other"):
            models.resolve_id(hostile)
    for fine in ("embedded", "embedded@layers=24", "org/other", " org/other "):
        models.resolve_id(fine)


def test_an_uncached_hub_id_offline_fails_without_the_network(env, monkeypatch):
    env(HF_HUB_OFFLINE=1)

    def no_network(model_id):
        raise AssertionError("offline: the Hub must not be asked")

    monkeypatch.setattr(models, "_hub_reachable", no_network)
    message = _error("nobody-here/no-such-model-0")
    assert "(offline)" in message


@pytest.mark.parametrize("bad", [123, "x" * 400, "bad\ud800id", "a\x00b"])
def test_model_ids_that_are_not_ids(env, bad):
    with pytest.raises(ModelLoadError, match="model id"):
        models.resolve_id(bad)


# --- fairness: the per-client ledger (playground/limits.py) ----------------------------------------

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_rate_limit_is_a_sliding_window():
    from playground.limits import ClientLimits

    clock = Clock()
    limits = ClientLimits(rate=3, window_s=10, share=99, clock=clock)
    for t in (0.0, 4.0, 6.0):
        clock.now = t
        assert limits.admit("a") is None
    clock.now = 7.5
    assert limits.admit("a") == "Too many generations: at most 3 per 10 s per visitor; try again in 3 s."
    assert limits.admit("b") is None, "another client is not affected"
    clock.now = 10.0                                  # the start at 0 leaves the window exactly now
    assert limits.admit("a") is None
    clock.now = 11.0
    assert "try again in 3 s" in limits.admit("a")    # the next to leave started at 4: 4 + 10 - 11


def test_the_queue_share_counts_what_gradio_holds_and_fresh_admissions():
    from playground.limits import BURST_S, ClientLimits

    clock = Clock()
    limits = ClientLimits(rate=99, window_s=60, share=2, clock=clock)
    assert limits.admit("a", busy=1) is None
    message = limits.admit("a", busy=2, wait_s=41.2)
    assert message == ("You already have 2 generations waiting or running (this server's share per visitor); "
                       "try again in 42 s.")
    assert limits.admit("a", busy=0) is None          # two admissions in the last BURST_S: queued or not yet seen
    assert "try again in 1 s" in limits.admit("a", busy=0)
    clock.now = BURST_S + 0.1
    assert limits.admit("a", busy=1) is None


def test_the_ledger_forgets_the_quietest_clients_first():
    from playground.limits import ClientLimits

    limits = ClientLimits(rate=1, window_s=60, share=9, clock=Clock(), max_clients=3)
    for name in "abcd":
        assert limits.admit(name) is None
    assert list(limits._starts) == ["b", "c", "d"]


# --- what the README says about configuration and deployment -------------------------------------

def test_every_setting_read_from_the_environment_is_documented():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = "".join(p.read_text() for folder in ("playground", "storage") for p in (root / folder).rglob("*.py"))
    read = set(re.findall(r"PLAYGROUND_[A-Z_]+", code))
    readme = (root / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("## Limits")]
    assert read and not read - set(re.findall(r"PLAYGROUND_[A-Z_]+", table)), read - set(re.findall(r"PLAYGROUND_[A-Z_]+", table))


def test_the_gradio_sdk_version_in_the_readme_is_the_pinned_one():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pinned = re.search(r"^gradio==(\S+)", (root / "requirements.txt").read_text(), re.M).group(1)
    readme = (root / "README.md").read_text()
    assert f"sdk_version: {pinned}" in readme and 'python_version: "3.12"' in readme


def test_visitors_are_told_apart_by_forwarded_address_only_behind_a_trusted_proxy(env):
    from types import SimpleNamespace

    from playground.limits import client_key

    request = SimpleNamespace(username=None, headers={"x-forwarded-for": "1.2.3.4, 10.0.0.1"},
                              client=SimpleNamespace(host="10.0.0.1"))
    env(PLAYGROUND_TRUST_PROXY=0)
    assert client_key(request) == "ip:10.0.0.1"
    env(PLAYGROUND_TRUST_PROXY=1)
    assert client_key(request) == "ip:1.2.3.4"
    assert client_key(SimpleNamespace(username="ana", headers={}, client=None)) == "user:ana"


def test_health_says_down_when_the_database_is(env, tmp_path):
    from starlette.testclient import TestClient
    from starlette.applications import Starlette

    from playground.server import app_kwargs

    app = Starlette(**app_kwargs())
    env(PLAYGROUND_DB=str(tmp_path / "ok.sqlite3"))
    assert TestClient(app).get("/healthz").status_code == 200
    (tmp_path / "bad.sqlite3").write_bytes(b"not a database " * 100)
    env(PLAYGROUND_DB=str(tmp_path / "bad.sqlite3"))
    down = TestClient(app).get("/healthz")
    assert down.status_code == 503 and down.json() == {"status": "down", "database": "unreachable"}
    assert TestClient(app).post("/gradio_api/upload", files={"files": ("a", b"x")}).status_code == 403


def test_every_generation_passes_the_door():
    """In the built app: whatever runs a model is in the generation group with the admission check;
    reads are timed under a flood in tests/test_server_load.py."""
    from playground.limits import GENERATION
    from playground.ui import build_app

    fns = list(build_app().fns.values())
    generating = [f for f in fns if f.concurrency_id == GENERATION]
    assert len(generating) >= 2 and all(f.validator is not None and f.queue for f in generating)
    assert all(f.concurrency_id == GENERATION for f in fns if f.validator is not None)
    assert {f.api_name for f in generating} >= {"run", "run_1"}


def test_login_setting(env):
    from playground.server import auth

    env(PLAYGROUND_AUTH="ana:s3cret:with:colons")
    assert auth() == ("ana", "s3cret:with:colons")
    env(PLAYGROUND_AUTH="no-password")
    with pytest.raises(SystemExit, match="PLAYGROUND_AUTH must be user:password"):
        auth()
    env(PLAYGROUND_AUTH="")
    assert auth() is None
