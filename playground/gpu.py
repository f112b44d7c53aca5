"""GPU where there is one. On a ZeroGPU Space, `spaces.GPU` lends the handler a GPU for the length of
one call, so generation is wrapped with it (lease = the run's time limit); elsewhere the `spaces`
package is absent and the wrapper changes nothing. Models go to CUDA in models.py (`device_map`)."""

from __future__ import annotations

from typing import Callable, TypeVar

from .config import settings

F = TypeVar("F", bound=Callable)


def on_gpu(fn: F) -> F:
    try:
        import spaces  # noqa: PLC0415 (only on Hugging Face Spaces)
    except ImportError:
        return fn
    return spaces.GPU(duration=int(settings().max_run_s) + 30)(fn)
