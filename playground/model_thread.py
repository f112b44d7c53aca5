"""The server's model thread: every step of a run executes on the thread that loaded and warmed the model.

Why: torch's OpenMP runtime (libgomp) gives each thread that starts parallel work its own team of helper
threads, and while it manages more threads than the machine has CPUs it stops spin-waiting between
operations (about 100 spins instead of about 300,000) and puts its helpers to sleep in the kernel.
Gradio runs each step of a generator on whichever of its worker threads is free, so a server had two
teams (the main thread's, from loading and warming the model, and a worker's, from decoding): on a
2-core machine every one of a decode step's few hundred parallel operations then woke its helper
through the kernel, and greedy ran about 20 % below the CLI, which decodes on the thread that loaded
the model. Handing each step to that one thread keeps one team.

Outside `serve` (the CLI, tests, a ZeroGPU call in a forked process) `call` simply runs the function.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")
POLL_S = 0.1          # how often an idle model thread checks that the server still runs (gradio's own pace)


class ModelThread:
    def __init__(self):
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()        # a job is queued only while a thread serves, so none is stranded
        self._ident: int | None = None
        self._pid: int | None = None
        self.steps_run = 0                   # jobs this thread ran (tests read it)

    def serve(self, running: Callable[[], bool]) -> None:
        """Run queued jobs on the calling thread while `running()` holds; then fail whatever is still queued."""
        with self._lock:
            self._ident, self._pid = threading.get_ident(), os.getpid()
        try:
            while running():
                try:
                    job = self._jobs.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                job()
        finally:
            with self._lock:
                self._ident = None
            while not self._jobs.empty():
                self._jobs.get_nowait()(stopped=True)

    def serving(self) -> bool:
        """A serving thread in this process (a forked ZeroGPU worker has the flag but not the thread)."""
        return self._ident is not None and self._pid == os.getpid()

    def call(self, fn: Callable[[], T]) -> T:
        """fn() on the model thread (at once, on this thread, when none serves or this is it)."""
        with self._lock:
            if not self.serving() or threading.get_ident() == self._ident:
                queued = False
            else:
                future: Future = Future()
                self._jobs.put(lambda stopped=False: self._settle(future, fn, stopped))
                queued = True
        return future.result() if queued else fn()

    def _settle(self, future: Future, fn: Callable, stopped: bool) -> None:
        if stopped:
            future.set_exception(RuntimeError("the server is shutting down"))
            return
        self.steps_run += 1
        try:
            future.set_result(fn())
        except BaseException as exc:  # the caller's own exception, raised in the caller's thread
            future.set_exception(exc)

    def steps(self, iterator: Iterator[T]) -> Iterator[T]:
        """`iterator` with each of its steps (and its closing) executed on the model thread."""
        done = object()
        try:
            while True:
                item = self.call(lambda: next(iterator, done))
                if item is done:
                    return
                yield item
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                self.call(close)


MODEL_THREAD = ModelThread()
