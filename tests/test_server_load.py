"""A real server (python app.py) under the loads and probes of issue 11: eight clients generating at once,
one client flooding, a kill mid-run, a bad database, hostile API calls. Cheap on purpose: no warm-up,
a few tokens per run. Clients are told apart by X-Forwarded-For (PLAYGROUND_TRUST_PROXY=1), as behind
the Spaces proxy; the only timing asserted is the one the issue asks for (reads within a second)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
READ_BOUND_S = 1.0          # the bound for reads during a flood: on the median read (below)
NOTHING_WAITS_S = 5.0       # no read may wait behind a generation (each of the flood's takes longer than this)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """python app.py on a free port and its own database, started and stopped by the test."""

    def __init__(self, db: Path, log: Path, **env):
        self.db, self.log, self.port = db, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PLAYGROUND_DB": str(db), "PLAYGROUND_PORT": str(self.port), "HF_HUB_OFFLINE": "1",
                    "GRADIO_ANALYTICS_ENABLED": "False", "PLAYGROUND_WARM_UP": "0", "PLAYGROUND_TRUST_PROXY": "1",
                    **{k: str(v) for k, v in env.items()}}
        self.env.pop("DATABASE_URL", None)
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "Server":
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=self.env,
                                     stdout=open(self.log, "a"), stderr=subprocess.STDOUT)
        if wait:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                try:
                    if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200 and self.config():
                        return self
                except (httpx.HTTPError, json.JSONDecodeError):
                    pass
                time.sleep(0.5)
            raise AssertionError("server did not start:\n" + self.log.read_text()[-3000:])
        return self

    def config(self) -> dict:
        return httpx.get(f"{self.url}/config", timeout=5).json()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rows(self) -> list[sqlite3.Row]:
        with sqlite3.connect(self.db) as db:
            db.row_factory = sqlite3.Row
            return db.execute("SELECT id, prompt, output, status FROM runs").fetchall()


class Generation:
    """The /run endpoint over raw HTTP (queue/join, then the event stream), with the form's defaults."""

    def __init__(self, config: dict):
        self.dep = next(d for d in config["dependencies"] if d.get("api_name") == "run")
        components = {c["id"]: c for c in config["components"]}
        self.defaults = [components[i].get("props", {}).get("value") for i in self.dep["inputs"]]
        labels = [components[i].get("props", {}).get("label") for i in self.dep["inputs"]]
        self.index = {name: labels.index(label) for name, label in
                      {"model": "Model", "method": "Method", "max_new": "max new tokens", "seed": "seed",
                       "prompt": "Prompt"}.items()}
        first_beam = [i for i, c in enumerate(self.dep["inputs"]) if components[c].get("props", {}).get("label") == "num_beams"]
        self.index["num_beams"] = first_beam[0]

    def body(self, **fields) -> dict:
        data = list(self.defaults)
        for name, value in fields.items():
            data[self.index[name]] = value
        return {"data": data, "fn_index": self.dep["id"], "session_hash": uuid.uuid4().hex[:12],
                "trigger_id": None, "event_data": None}

    def join(self, url: str, client: str, **fields) -> tuple[httpx.Response, dict]:
        body = self.body(**fields)
        response = httpx.post(f"{url}/gradio_api/queue/join", content=json.dumps(body),
                              headers={"content-type": "application/json", "x-forwarded-for": client}, timeout=30)
        return response, body

    def result(self, url: str, client: str, body: dict, timeout: float = 240) -> dict:
        """The process_completed message of this session's event."""
        with httpx.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": body["session_hash"]},
                          headers={"x-forwarded-for": client}, timeout=timeout) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message
        raise AssertionError("stream ended without a result")

    def run(self, url: str, client: str, **fields) -> dict:
        response, body = self.join(url, client, **fields)
        assert response.status_code == 200, response.text[:500]
        return self.result(url, client, body)


# The History tab's reads by their handlers' names (gradio names an endpoint after its function).
READS = {"list": ("show", "history_rows"), "open": ("open_", "open_run")}


class Reads:
    """The History tab's list and open-a-run endpoints, called as a visitor's page calls them (queue=False:
    one POST each), and the share-link page itself."""

    def __init__(self, config: dict):
        components = {c["id"]: c for c in config["components"]}
        self.calls = {}
        for kind, names in READS.items():
            dep = next(d for name in names for d in config["dependencies"] if d.get("api_name") == name)
            assert dep.get("queue") is False, f"{dep['api_name']} must not queue"
            props = [components[i].get("props", {}) for i in dep["inputs"]]
            self.calls[kind] = (dep["api_name"], [p.get("value") for p in props],
                                [i for i, p in enumerate(props) if "run id" in str(p.get("label", "")).lower()])

    def __call__(self, url: str, kind: str, client: str, run_id: str = "") -> tuple[float, dict | str]:
        start = time.perf_counter()
        if kind == "page":
            response = httpx.get(f"{url}/?run={run_id}", timeout=30, headers={"x-forwarded-for": client})
            assert response.status_code == 200
            return time.perf_counter() - start, response.text
        api_name, data, id_at = self.calls[kind]
        data = list(data)
        for i in id_at:
            data[i] = run_id
        response = httpx.post(f"{url}/gradio_api/run/{api_name}", json={"data": data}, timeout=30,
                              headers={"x-forwarded-for": client})
        answer = response.json()
        assert response.status_code == 200 and "data" in answer, answer
        return time.perf_counter() - start, answer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    served = Server(folder / "runs.sqlite3", folder / "server.log").start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def generation(server):
    return Generation(server.config())


def test_health_uploads_and_direct_posts(server, generation):
    health = httpx.get(f"{server.url}/healthz").json()
    assert health["status"] == "ok" and health["database"] == "ok"
    upload = httpx.post(f"{server.url}/gradio_api/upload", files={"files": ("x.bin", b"0" * 100_000)})
    assert upload.status_code == 403 and upload.json()["detail"] == "This app takes no uploads."
    direct = httpx.post(f"{server.url}/gradio_api/run/predict", json=generation.body(prompt="hi"))
    assert direct.status_code == 404 and "join the queue" in direct.json()["detail"]
    page = httpx.get(server.url, headers={"Accept-Encoding": "gzip"})     # the page is megabytes of text
    assert page.status_code == 200 and page.headers.get("content-encoding") == "gzip"
    assert int(page.headers.get("content-length", len(page.content))) < len(page.text) / 3


def test_eight_concurrent_clients_all_complete_and_are_saved_once(server, generation):
    before = {r["id"] for r in server.rows()}
    prompts = [f"Client {i}: name a colour." for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: generation.run(server.url, f"10.0.0.{i + 1}", prompt=prompts[i], max_new=6),
                                range(8)))
    assert all(r["success"] for r in results), [r.get("output") for r in results if not r["success"]]
    assert all("Saved as run" in r["output"]["data"][1] for r in results)
    new = [r for r in server.rows() if r["id"] not in before]
    assert sorted(r["prompt"] for r in new) == sorted(prompts)            # each once
    assert {r["status"] for r in new} <= {"length", "eos"}


def test_a_flood_from_one_client_leaves_others_reads_fast_and_their_runs_running(server, generation):
    reads = Reads(server.config())
    generation.run(server.url, "10.1.1.1", prompt="Something to read back.", max_new=4)
    saved = server.rows()[-1]["id"]
    flood_answers: list[int] = []
    messages: list[str] = []

    def flood(i):
        response, body = generation.join(server.url, "10.6.6.6", prompt=f"flood {i}", max_new=48)
        flood_answers.append(response.status_code)
        if response.status_code != 200:
            messages.append(json.dumps(response.json()))
        else:       # a flooder that listens: its admitted runs really run (an unheard one may be dropped early)
            generation.result(server.url, "10.6.6.6", body)

    latencies: list[float] = []
    other: dict = {}
    with ThreadPoolExecutor(40) as pool:
        flooding = [pool.submit(flood, i) for i in range(40)]
        runner = threading.Thread(target=lambda: other.update(
            generation.run(server.url, "10.2.2.2", prompt="Not the flooder: say hi.", max_new=6)))
        runner.start()
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:            # reads while the flood arrives and the queue works
            for kind in ("list", "open", "page"):
                took, _ = reads(server.url, kind, "10.1.1.1", saved)
                latencies.append(took)
        for f in flooding:
            f.result()
        runner.join(240)
    refused = [m for m in messages if "try again in" in m]
    median = sorted(latencies)[len(latencies) // 2]
    print(f"\nflood: {flood_answers.count(200)} of 40 admitted, {len(refused)} refused (429); reads: "
          f"n={len(latencies)}, median {median * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    assert flood_answers.count(200) <= 2 and flood_answers.count(429) == len(refused) >= 38
    assert median < READ_BOUND_S and max(latencies) < NOTHING_WAITS_S
    assert other.get("success") and "Saved as run" in other["output"]["data"][1]


def test_killed_mid_run_then_restarted(tmp_path):
    db = tmp_path / "runs.sqlite3"
    first = Server(db, tmp_path / "log").start()
    try:
        generation = Generation(first.config())
        finished = {generation.run(first.url, "10.0.0.1", prompt=f"Finished {i}: say hi.", max_new=4)["success"]
                    for i in range(2)}
        assert finished == {True}
        done = {r["id"]: (r["output"], r["status"]) for r in first.rows()}
        generation.join(first.url, "10.0.0.2", prompt="Write a very long story about the sea.", max_new=400)
        deadline = time.monotonic() + 120
        while not any(r["status"] == "running" for r in first.rows()):
            assert time.monotonic() < deadline, "the long run never started"
            time.sleep(0.2)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
    finally:
        first.stop()
    second = Server(db, tmp_path / "log").start()
    try:
        with sqlite3.connect(db) as check:
            assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = {r["id"]: r for r in second.rows()}
        assert {i: (rows[i]["output"], rows[i]["status"]) for i in done} == done
        (killed,) = [r for i, r in rows.items() if i not in done]
        assert killed["status"] == "interrupted" and killed["prompt"] == "Write a very long story about the sea."
    finally:
        second.stop()


def test_a_bad_database_stops_the_server_before_the_model(tmp_path):
    """The default model names a folder that does not exist: were the model loaded first, that would be the error."""
    db = tmp_path / "broken.sqlite3"
    db.write_bytes(b"this is not a database " * 300)
    server = Server(db, tmp_path / "log", PLAYGROUND_MODEL=str(tmp_path / "no-model")).start(wait=False)
    assert server.proc.wait(120) == 2
    log = server.log.read_text()
    assert f"error: The database {db} cannot be used: file is not a database." in log
    assert "Could not load model" not in log


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def test_hostile_calls_through_the_api(server, generation, tmp_path):
    """Each probe gets a clear message, nothing wrong is stored, memory stays bounded; the probes, their
    answers and the server's peak RSS are printed (pytest -s) for the issue's closing note."""
    peak = [rss_mb(server.proc.pid)]
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            peak.append(rss_mb(server.proc.pid))
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    before_rows = len(server.rows())
    answers = {}

    def probe(name, client, expect, **fields):
        time.sleep(1.1)      # one client per probe, spaced past the burst window: the limits are not what is probed
        response, body = generation.join(server.url, client, **fields)
        if response.status_code != 200:
            text = response.json().get("detail") or json.dumps(response.json())
        else:
            done = generation.result(server.url, client, body)
            text = done["output"].get("error") if not done["success"] else done["output"]["data"][0]
        answers[name] = str(text)[:240]
        assert text and expect in str(text), (name, text)

    for spelling in ("/etc/", "/etc/./", "//etc/", "/etc/../etc", str(tmp_path), str(tmp_path / "missing")):
        probe(f"model {spelling}", "10.3.0.1", f"Could not load model {spelling!r}: it is not a model folder on "
                                              "this server nor a Hub model cached here (offline).", model=spelling)
    probe("max new tokens 'abc'", "10.3.0.2", "Could not preprocess input component at index", max_new="abc")
    probe("seed [1]", "10.3.0.2", "Could not preprocess input component at index", seed=[1])
    probe("lone surrogate", "10.3.0.3", "lone surrogate (U+D800) at character 2", prompt="ab\ud800cd")
    probe("200,000-character prompt", "10.3.0.4", "the limit is 100,000", prompt="x" * 200_000)
    probe("beam 16, 25,000 characters", "10.3.0.5", "this server takes at most 4,096",
          method="beam", num_beams=16, prompt="the sea " * 3125)
    probe("beam 16, 3,000-token prompt", "10.3.0.5", "token rows; this server allows 32,768",
          method="beam", num_beams=16, prompt="sea " * 2900, max_new=64)
    probe("unknown method", "10.3.0.6", "", method="no_such_method")
    probe("control and bidi characters", "10.3.0.7", "3 control or direction-override characters removed",
          prompt="Hi \u202eevil\u202c\x1b[2J", max_new=2)
    sampling.set()
    stored = [r for r in server.rows()][before_rows:]
    assert [r["prompt"] for r in stored] == ["Hi evil[2J"]                # only the cleaned run was stored
    health = httpx.get(f"{server.url}/healthz").json()
    assert set(health["models"]) <= {"embedded", "embedded@layers=24"}, "no probe's model stayed loaded"
    report = {"peak_rss_mb": round(max(peak)), "rss_at_start_mb": round(peak[0]), "answers": answers}
    print("\n" + json.dumps(report, indent=1, ensure_ascii=True))
    assert max(peak) - peak[0] < 1024, "a probe grew the server's memory by a gigabyte"
