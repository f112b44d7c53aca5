"""Decoding Playground: watch language-model decoding methods work, token by token."""

import os as _os

from .config import default_cache_dir as _cache_dir

__version__ = "0.1.0"

# torch keeps the compiled decode step (compiled_step.py) on disk: beside the converted models it
# outlives /tmp (a restarted Space). Set on import, as loading a model already settles torch's folder.
_os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_cache_dir() / "inductor"))
