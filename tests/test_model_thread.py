"""The server's model thread (playground/model_thread.py): every step of a served run executes on the one
thread that loaded the model, so torch keeps one OpenMP team (two teams on two cores made served greedy
~20 % slower than the CLI). No timings here: the tests check which thread ran each step, and that the
served tokens equal the CLI path's."""

from __future__ import annotations

import socket
import threading

import pytest

from playground import decoding
from playground.events import TokenEvent
from playground.model_thread import MODEL_THREAD, ModelThread
from playground.runner import GenerationRequest, execute, prepare


def serving(model_thread: ModelThread):
    """Serve `model_thread` on a fresh thread; returns (thread, stop)."""
    running = threading.Event()
    running.set()
    started = threading.Event()

    def serve():
        started.set()
        model_thread.serve(running=running.is_set)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait()
    while not model_thread.serving():
        pass
    return thread, running.clear


def test_each_step_and_the_close_run_on_the_serving_thread():
    model_thread = ModelThread()
    seen, closed_on = [], []

    def counting():
        try:
            for i in range(3):
                seen.append(threading.get_ident())
                yield i
        finally:
            closed_on.append(threading.get_ident())

    assert list(model_thread.steps(counting())) == [0, 1, 2]          # not serving: the caller's own thread
    assert set(seen) == set(closed_on) == {threading.get_ident()}
    seen.clear(), closed_on.clear()
    thread, stop = serving(model_thread)
    try:
        steps = model_thread.steps(counting())
        assert next(steps) == 0
        steps.close()                                                  # a page closed mid-run
        assert seen == [thread.ident] and closed_on == [thread.ident]
        with pytest.raises(ZeroDivisionError):                         # the caller gets the step's exception
            model_thread.call(lambda: 1 / 0)
    finally:
        stop()
        thread.join(5)
    assert not thread.is_alive() and not model_thread.serving()
    assert model_thread.call(threading.get_ident) == threading.get_ident()   # stopped: runs here again


def test_a_job_queued_when_the_server_stops_fails_instead_of_hanging():
    model_thread = ModelThread()
    running = threading.Event()
    running.set()
    entered, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=model_thread.serve, kwargs={"running": running.is_set}, daemon=True)
    thread.start()
    while not model_thread.serving():
        pass
    blocker = threading.Thread(target=model_thread.call, args=(lambda: (entered.set(), release.wait()),))
    blocker.start()
    entered.wait(5)
    outcome = []
    waiter = threading.Thread(target=lambda: outcome.append(_error_of(lambda: model_thread.call(lambda: "ran"))))
    waiter.start()
    while model_thread._jobs.empty():          # the second job is queued behind the running one
        pass
    running.clear()
    release.set()
    waiter.join(5)
    assert outcome == ["the server is shutting down"]


def _error_of(fn):
    try:
        return fn()
    except RuntimeError as exc:
        return str(exc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_served_greedy_run_decodes_on_the_model_thread_and_equals_the_cli(embedded, monkeypatch):
    """Through gradio's API (a real app, no browser), as `python app.py` serves: every forward pass of the
    run happens on the thread serving MODEL_THREAD, none on gradio's workers, and the tokens are the
    CLI path's (execute on the caller's thread) for the same greedy request."""
    from gradio_client import Client

    from playground.ui import build_app
    from storage import default_repository

    request = dict(prompt="Name three rivers.", max_new_tokens=12)
    cli = [e.token_id for e in execute(prepare(GenerationRequest(**request), embedded)) if isinstance(e, TokenEvent)]

    passes_on = []
    real_forward = decoding.DecodeSession.forward

    def watched(self, *args, **kwargs):        # the real forward, with the thread it ran on noted
        passes_on.append(threading.get_ident())
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(decoding.DecodeSession, "forward", watched)
    app = build_app()
    port = free_port()
    app.launch(server_port=port, prevent_thread_lock=True, quiet=True, _frontend=False)   # no 3 s probe (server.py)
    thread, stop = serving(MODEL_THREAD)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        _, link, *_ = client.predict("", "embedded", "", "float32", "greedy", request["max_new_tokens"], 0, True,
                                     request["prompt"], api_name="/run")
    finally:
        stop()
        thread.join(5)
        app.close()
    run_id = link.split("`")[1]
    served = [e.token_id for e in default_repository().events(run_id) if isinstance(e, TokenEvent)]
    assert served == cli and len(served) == request["max_new_tokens"]
    assert passes_on and set(passes_on) == {thread.ident}
