"""Our C++ torch operators (playground/*.cpp): compiled once per machine with the system's C++ compiler
(the one torch's own compiler needs), cached, and loaded into this process.

A source is compiled for this CPU (-march=native) against this torch's headers and libraries, into
PLAYGROUND_CACHE_DIR/kernels under a name keyed by the source, the flags, the torch version and the CPU
(a cache copied to another machine builds its own), with OpenMP: the library's OpenMP runtime is torch's,
already loaded, so both share one set of threads. Where it cannot be built (no compiler, a failed
build) `load` says False once, logs why, and callers keep their torch paths.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import threading
from pathlib import Path

import torch

from .config import settings

log = logging.getLogger(__name__)

_loaded: dict[str, bool] = {}
_lock = threading.Lock()


def _machine() -> str:
    """What -march=native compiles for: the CPU's model name and flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
    except OSError:
        return os.uname().machine


def _build(source: Path) -> Path:
    """The compiled library of `source` (~10 s on 2 cores the first time, then cached)."""
    from torch.utils import cpp_extension

    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}"
    flags = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++20", abi]
    key = hashlib.sha256(source.read_bytes() + " ".join(flags + [torch.__version__, _machine()]).encode()).hexdigest()[:16]
    target = settings().cache_dir / "kernels" / f"{source.stem}-{key}.so"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        libs = Path(torch.__file__).parent / "lib"
        command = [os.environ.get("CXX", "g++"), *flags, *(f"-I{p}" for p in cpp_extension.include_paths()),
                   str(source), "-o", str(tmp), f"-L{libs}", f"-Wl,-rpath,{libs}", "-lc10", "-ltorch_cpu"]
        subprocess.run(command, check=True, capture_output=True, timeout=300)
        tmp.replace(target)
    return target


def load(source: Path, fakes: dict) -> bool:
    """Build and load `source` once per process; `fakes`: {"playground::op": shape function} registered
    for torch's compiler. Whether its operators are available."""
    with _lock:
        if source.name not in _loaded:
            try:
                torch.ops.load_library(str(_build(source)))
                for name, shape in fakes.items():
                    torch.library.register_fake(name)(shape)
                _loaded[source.name] = True
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                detail = (getattr(exc, "stderr", b"") or b"")[-2000:]
                log.warning("%s unavailable, torch's own operations run instead: %s %s", source.name, exc, detail)
                _loaded[source.name] = False
        return _loaded[source.name]
