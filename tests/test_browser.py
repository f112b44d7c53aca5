"""The UI in a real headless browser (Debian's chromium driven by Playwright): type, Generate, watch
the text stream and the plots draw, find the run in History, reopen it by share link, Stop, and
see HTML in a prompt shown as text. Then the speculative methods as a new user meets them: pick the
method, see its parameters (and only its), Generate, and read the draft tree, the acceptance plots
and the metrics on the page."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from playwright.sync_api import expect

from strategies import REGISTRY
from visualizers.metrics import DECODE_RATE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_log(tmp_path_factory):
    return tmp_path_factory.mktemp("log") / "server.log"


@pytest.fixture(scope="module")
def server(embedded, server_log, tmp_path_factory):
    port = free_port()
    db = tmp_path_factory.mktemp("ui") / "runs.sqlite3"
    env = {**os.environ, "PLAYGROUND_DB": str(db), "PLAYGROUND_PORT": str(port), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "PLAYGROUND_MAX_NEW_TOKENS_CAP": "256"}
    log = open(server_log, "w+")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600      # a busy 2-core machine: warm-up (pass costs, greedy rate) is minutes
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"app exited early:\n{log.read()[-3000:]}")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("app did not start within 600 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "the browser tests need Debian's chromium (scripts/test.sh installs it)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    yield pg
    context.close()


def set_prompt(page, text):
    box = page.locator("#prompt textarea")
    box.fill(text)


def set_max_tokens(page, n):
    field = page.get_by_label("max new tokens").first
    field.fill(str(n))
    field.press("Enter")


def wait_finished(page, timeout=120_000):
    page.locator("#metrics", has_text="stopped by").wait_for(timeout=timeout)


def test_generate_streams_text_and_plots_then_history(server, page):
    page.goto(server)
    # History lists this browser's own runs: its key is made on the first load (a run before it has no owner)
    page.wait_for_function("() => localStorage.getItem('decoding-playground-owner')", timeout=30_000)
    set_prompt(page, "Write a short poem about the sea.")
    set_max_tokens(page, 48)
    page.click("#generate button, button#generate")
    tokens = page.locator("#output .dp-tok")
    tokens.first.wait_for(timeout=60_000)
    seen = []
    while "stopped by" not in (page.locator("#metrics").inner_text() or ""):
        seen.append(tokens.count())
        time.sleep(0.2)
    final = tokens.count()
    assert final == 48
    assert any(0 < n < final for n in seen), f"text did not stream: counts seen {sorted(set(seen))}"
    page.locator("#plot-entropy .js-plotly-plot").wait_for(timeout=30_000)
    page.locator("#plot-probability .js-plotly-plot").wait_for(timeout=30_000)
    tip = tokens.first.get_attribute("data-tip")
    assert tip.startswith("p = ") and "\u25b6" in tip                        # alternatives on hover
    link = page.locator("#run-link").inner_text()
    run_id = link.split("`")[1] if "`" in link else link.split("run ")[1].split()[0]

    page.get_by_role("tab", name="History").click()
    page.locator("#history-table", has_text="Write a short poem about the sea.").wait_for(timeout=30_000)

    # the share link reopens the run from stored events (no model call)
    page.goto(f"{server}/?run={run_id}")
    page.locator("#shared-output .dp-tok").first.wait_for(timeout=30_000)
    assert page.locator("#shared-output .dp-tok").count() == 48


def test_html_in_a_prompt_is_shown_as_text(server, page):
    page.goto(server)
    xss = "<img src=x onerror=alert(1)>"
    set_prompt(page, xss)
    set_max_tokens(page, 6)
    page.click("#generate button, button#generate")
    wait_finished(page)
    assert page.locator("#output img").count() == 0
    assert xss in page.locator("#output .dp-prompt").inner_text()
    assert page.dialogs == []


def test_bad_input_shows_a_clear_message_and_the_app_keeps_serving(server, page):
    page.goto(server)
    set_prompt(page, "   ")
    page.click("#generate button, button#generate")
    page.get_by_text("The prompt is empty").first.wait_for(timeout=30_000)
    set_prompt(page, "Say hi.")
    set_max_tokens(page, 4)
    page.click("#generate button, button#generate")
    wait_finished(page)
    assert page.locator("#output .dp-tok").count() >= 1


def test_stop_button_stops_and_saves(server, page):
    """Asks for more than the server's cap (256 here): the page says it was clamped; then Stop."""
    page.goto(server)
    set_prompt(page, "Write a very long story about a dragon.")
    set_max_tokens(page, 1000)
    page.click("#generate button, button#generate")
    page.locator("#output .dp-tok").first.wait_for(timeout=60_000)
    expect(page.locator("#output .dp-notice")).to_have_text("max_new_tokens 1000 was clamped to the server cap of 256.")
    page.click("#stop button, button#stop")
    wait_finished(page, timeout=60_000)
    assert metrics_table(page)["stopped by"] == "stopped"
    assert page.locator("#output .dp-tok").count() < 256
    page.locator("#run-link", has_text="Saved as run").wait_for(timeout=30_000)


# --- speculative methods, clicked through as a new user would ---------------------------------

SPEC_PROMPT = "Write a short poem about the sea."
SPEC_TOKENS = 16


def pick_method(page, name):
    """Open the Method dropdown and click the method's title, as a user does."""
    box = page.get_by_label("Method", exact=True)
    box.click()
    page.get_by_role("option", name=REGISTRY[name].title, exact=True).click()
    expect(box).to_have_value(REGISTRY[name].title)


def set_param(page, name, value):
    """Type into a slider's number box (the visible one: only the chosen method's group is shown)."""
    field = page.get_by_role("spinbutton", name=name).filter(visible=True)
    expect(field).to_have_count(1)
    field.fill(str(value))
    field.press("Enter")


def expect_only_params_of(page, name):
    """The chosen method's parameter labels are on screen; every other method's are not. (The groups
    have no elem_id, so this goes by the labels a user reads.)"""
    own = [p.name for p in REGISTRY[name].params]
    others = sorted({p.name for n, cls in REGISTRY.items() if n != name for p in cls.params} - set(own))
    for param in own:
        expect(page.get_by_text(param, exact=True).filter(visible=True),
               f"{name}: parameter {param!r} not shown").to_have_count(1)
    for param in others:
        expect(page.get_by_text(param, exact=True).filter(visible=True),
               f"{name}: another method's parameter {param!r} is shown").to_have_count(0)


def metrics_table(page) -> dict[str, str]:
    rows = page.locator("#metrics table tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))")
    return {row[0]: row[1] for row in rows if len(row) == 2}


def number(text: str) -> float:
    return float(text.replace(",", ""))


def shown_tokens(page) -> list[str]:
    return page.locator("#output .dp-tok").evaluate_all("els => els.map(e => e.textContent)")


def generate_and_wait(page, max_new):
    set_max_tokens(page, max_new)
    expect(page.get_by_role("spinbutton", name="max new tokens")).to_have_value(str(max_new))
    page.click("#generate button, button#generate")
    wait_finished(page)
    page.locator("#run-link", has_text="Saved as run").wait_for(timeout=30_000)


def expect_panels(page, drawn, hidden):
    for key in drawn:
        expect(page.locator(f"#plot-{key} .js-plotly-plot"), f"panel {key} not drawn").to_be_visible()
    for key in hidden:
        expect(page.locator(f"#plot-{key}"), f"panel {key} should be hidden").to_be_hidden()


def expect_speculation_metrics(page, name, new_tokens, draft):
    m = metrics_table(page)
    assert m["method"] == name
    assert m["stopped by"] == "length", m
    assert int(number(m["new tokens"])) == new_tokens
    passes = int(number(m["target forward passes"]))       # the draft's passes are a row of their own
    assert 1 <= passes <= new_tokens, m                       # every verification commits at least one token
    assert number(m["tokens / target pass"]) == pytest.approx(new_tokens / passes, abs=1e-3)
    speedup = float(m["speed-up vs greedy (decode)"].rstrip("x"))    # shown to 2 decimals: within half of one
    assert speedup == pytest.approx(number(m[DECODE_RATE]) / number(m["greedy decode tokens / s"]), abs=0.0051)
    assert 0 <= number(m["acceptance rate"]) <= 1
    assert number(m["verification rounds"]) >= 1
    if draft:
        assert int(number(m["draft forward passes"])) > 0, m
    else:
        assert "draft forward passes" not in m
    return m


@pytest.fixture(scope="module")
def greedy_tokens(embedded):
    """What greedy decoding shows for SPEC_PROMPT, computed in-process (no browser), for the lossless checks."""
    from playground.events import TokenEvent
    from playground.runner import GenerationRequest, execute, prepare
    from visualizers.text import visible

    req = GenerationRequest(prompt=SPEC_PROMPT, strategy="greedy", max_new_tokens=SPEC_TOKENS, seed=0, chat=True)
    events = execute(prepare(req, loaded=embedded))
    return [visible(e.text) or "\u200b" for e in events if isinstance(e, TokenEvent)]


@pytest.fixture
def clean_server_log(server, server_log):
    """Fails the test when the server logged a traceback while it ran."""
    start = server_log.stat().st_size
    yield
    with open(server_log, errors="replace") as f:
        f.seek(start)
        new = f.read()
    assert "Traceback" not in new, f"the server logged an exception:\n{new[-3000:]}"


def test_each_method_shows_only_its_own_parameters(server, page, clean_server_log):
    page.goto(server)
    page.locator("#prompt textarea").wait_for(timeout=30_000)
    expect_only_params_of(page, "greedy")
    for name in ("token_recycling", "speculative", "spectr", "rsd", "dyspec", "early_exit", "greedy"):
        pick_method(page, name)
        expect_only_params_of(page, name)
    pick_method(page, "speculative")
    expect(page.get_by_label("Draft model (speculative methods)")).to_have_value("")   # default draft


def in_process(embedded, name, prompt, max_new, **params):
    """The same run without a browser: its metrics, to compare with the page's exactly. Sizes are pinned
    (no cost model in play), so the counts cannot depend on how busy this machine is."""
    from playground.runner import GenerationRequest, generate

    req = GenerationRequest(prompt=prompt, strategy=name, params=params, max_new_tokens=max_new, seed=0, chat=True)
    return generate(req, embedded)[-1]


def expect_same_counts(page, expected):
    """The page's counts are the in-process run's, exactly (and its rate its own ratio of them)."""
    m = metrics_table(page)
    assert int(number(m["new tokens"])) == expected.new_tokens
    assert int(number(m["target forward passes"])) == expected.forward_passes
    assert m["tokens / target pass"] == f"{expected.tokens_per_forward:,.3f}"
    assert int(number(m["verification rounds"])) == expected.method["verification rounds"]
    assert m["acceptance rate"] == f"{expected.method['acceptance rate']:,.3f}"
    return m


def test_token_recycling_draws_its_draft_tree_and_acceptance(server, page, embedded, greedy_tokens,
                                                             clean_server_log):
    page.goto(server)
    set_prompt(page, SPEC_PROMPT)
    pick_method(page, "token_recycling")
    expect(page.get_by_role("spinbutton", name="max_nodes")).to_be_visible()
    expect(page.get_by_text("gamma", exact=True)).to_have_count(0)
    page.get_by_role("checkbox", name="adaptive", exact=True).filter(visible=True).uncheck()          # a pinned tree: 8 nodes every round
    set_param(page, "max_nodes", 8)
    generate_and_wait(page, SPEC_TOKENS)

    assert shown_tokens(page) == greedy_tokens                           # lossless: the greedy text
    expect_panels(page, drawn=("entropy", "probability", "tree", "acceptance", "acceptance_depth"),
                  hidden=("rejection", "layer_acceptance", "draft_probability"))   # recycled drafts have no q
    expect(page.locator("#plot-tree .gtitle")).to_have_text("Token Recycling draft tree")
    assert page.locator("#plot-tree .scatterlayer .point").count() >= 3  # root, a draft, the target's token
    expect_speculation_metrics(page, "token_recycling", SPEC_TOKENS, draft=False)
    m = expect_same_counts(page, in_process(embedded, "token_recycling", SPEC_PROMPT, SPEC_TOKENS,
                                            adaptive=False, max_nodes=8))
    assert number(m["tree budget (nodes)"]) == 8
    expect(page.locator("#output .dp-notice")).to_have_count(0)          # drafting was never switched off
    expect_only_params_of(page, "token_recycling")                       # still the same group after the run


def test_speculative_with_the_default_draft_model(server, page, embedded, greedy_tokens, clean_server_log):
    page.goto(server)
    set_prompt(page, SPEC_PROMPT)
    pick_method(page, "speculative")
    set_param(page, "gamma", 1)                                          # default 4 (adaptive: the most per round)
    generate_and_wait(page, SPEC_TOKENS)

    assert shown_tokens(page) == greedy_tokens                           # temperature 0: equals greedy
    expect_panels(page, drawn=("entropy", "probability", "tree", "method", "acceptance", "acceptance_depth",
                               "draft_probability"), hidden=("layer_acceptance",))
    assert page.locator("#plot-tree .scatterlayer .point").count() >= 2
    m = expect_speculation_metrics(page, "speculative", SPEC_TOKENS, draft=True)
    assert number(m["draft tokens per round"]) <= 1                     # gamma from the page reached the method
    expected = in_process(embedded, "speculative", SPEC_PROMPT, SPEC_TOKENS, gamma=1)
    expect_same_counts(page, expected)
    assert int(number(m["draft forward passes"])) == expected.draft_forward_passes
    assert m["draft model"] == "embedded@layers=24"                     # the run's record names the default draft


def test_rsd_with_sampling_shows_p_versus_q(server, page, clean_server_log):
    page.goto(server)
    set_prompt(page, SPEC_PROMPT)
    pick_method(page, "rsd")
    set_param(page, "temperature", 0.8)
    expect(page.get_by_role("radio", name="3,2,1")).to_be_checked()     # the default tree shape
    generate_and_wait(page, 12)

    assert len(shown_tokens(page)) == 12
    # at temperature 0 there is no p-vs-q panel; sampling draws it at the rejections
    expect_panels(page, drawn=("tree", "acceptance", "acceptance_depth", "rejection", "draft_probability"),
                  hidden=("layer_acceptance",))
    expect_speculation_metrics(page, "rsd", 12, draft=True)


def test_grounded_example_with_prompt_lookup_copies_several_tokens_per_pass(server, page, embedded,
                                                                          clean_server_log):
    """A user clicks a grounded example (its answer repeats the prompt) and runs prompt lookup with
    transformers' fixed draft length: drafts copied from the prompt are accepted several at a time.
    The counts are the in-process run's exactly; how fast that is lives in the benchmark, not here."""
    from playground.prompts import PROMPT_SETS

    page.goto(server)
    page.locator("#prompt textarea").wait_for()
    page.get_by_text("grounded: Rewrite this text in the past tense:").click()
    expect(page.locator("#prompt textarea")).to_have_value(PROMPT_SETS["grounded"][2])
    pick_method(page, "prompt_lookup")
    page.get_by_role("radio", name="fixed").filter(visible=True).check()
    generate_and_wait(page, 48)
    m = metrics_table(page)
    assert m["method"] == "prompt_lookup"
    expected = in_process(embedded, "prompt_lookup", PROMPT_SETS["grounded"][2], 48, draft_length="fixed")
    expect_same_counts(page, expected)
    assert expected.tokens_per_forward > 1.5, expected                  # 4-5 measured: whole clauses copied
    assert m["speed-up vs greedy (decode)"].endswith("x") and "greedy" in m["greedy reference"]


# --- many sequences at once ------------------------------------------------------------------------

LANE_METHOD = "particle_filter"


def test_particle_filter_streams_its_lanes_weights_and_ancestry(server, page, clean_server_log):
    """A user picks particle filtering with 4 particles and small steps, presses Generate, and watches the
    lanes decode: the lane cards, the weights and the ancestry draw WHILE the run streams (before the
    metrics table), then the chosen particle's text is committed as the answer, and the metrics show."""
    page.goto(server)
    set_prompt(page, "What is 12 + 30? Think step by step.")
    pick_method(page, LANE_METHOD)
    for name, value in (("n", 4), ("step_tokens", 12)):   # set_param would match "n" in every label; cap: ~4 steps
        field = page.get_by_role("spinbutton", name=f"number input for {name}", exact=True).filter(visible=True)
        expect(field).to_have_count(1)
        field.fill(str(value))
        field.press("Enter")
    set_max_tokens(page, 48)
    expect(page.get_by_role("spinbutton", name="max new tokens")).to_have_value("48")
    page.click("#generate button, button#generate")

    seen_while_streaming = set()
    while "stopped by" not in (page.locator("#metrics").inner_text() or ""):
        for key in ("weights", "ancestry"):
            if page.locator(f"#plot-{key} .js-plotly-plot").is_visible():
                seen_while_streaming.add(key)
        if page.locator("#output .dp-lane").count() >= 4 and page.locator("#output .dp-tok").count() == 0:
            seen_while_streaming.add("lane cards")
        time.sleep(0.2)
    assert seen_while_streaming == {"weights", "ancestry", "lane cards"}, seen_while_streaming

    page.locator("#run-link", has_text="Saved as run").wait_for(timeout=30_000)
    expect_panels(page, drawn=("weights", "ess", "ancestry"), hidden=("tree", "acceptance", "rejection"))
    answer = "".join(shown_tokens(page)).replace("\u200b", "")
    assert answer.strip(), "no answer committed"
    chosen = page.locator("#output .dp-lane-chosen .dp-lane-text")
    expect(chosen).to_have_count(1)
    assert chosen.text_content() == answer                          # the committed answer is the chosen lane's text
    m = metrics_table(page)
    assert m["method"] == LANE_METHOD and m["stopped by"] in ("eos", "length", "complete"), m
    assert 1 <= int(number(m["new tokens"])) <= 48
    assert page.dialogs == []


def test_adadec_draws_its_entropy_trace_and_pauses_live(server, page, clean_server_log):
    """A user picks AdaDec, sets theta to 0.5 nats, presses Generate and watches: the entropy trace with the
    threshold line and the pause table (candidates, rollouts, scores) draw WHILE the run streams; the
    finished run shows the fraction of steps paused in the trace's title."""
    page.goto(server)
    set_prompt(page, "Write a Python function that returns the largest of three numbers.")
    pick_method(page, "adadec")
    box = page.get_by_role("textbox", name="threshold").filter(visible=True)
    expect(box).to_have_count(1)
    expect(box).to_have_value("fitted")
    box.fill("0.5")
    box.press("Tab")
    set_max_tokens(page, 20)
    expect(page.get_by_role("spinbutton", name="max new tokens")).to_have_value("20")
    page.click("#generate button, button#generate")

    seen_while_streaming = set()
    while "stopped by" not in (page.locator("#metrics").inner_text() or ""):
        for key in ("adadec_entropy", "adadec_pauses"):
            if page.locator(f"#plot-{key} .js-plotly-plot").is_visible():
                seen_while_streaming.add(key)
        time.sleep(0.2)
    assert seen_while_streaming == {"adadec_entropy", "adadec_pauses"}, seen_while_streaming
    page.locator("#run-link", has_text="Saved as run").wait_for(timeout=30_000)
    expect_panels(page, drawn=("adadec_entropy", "adadec_pauses"), hidden=("tree", "weights", "acceptance"))
    expect(page.locator("#plot-adadec_entropy")).to_contain_text("steps paused")
    expect(page.locator("#plot-adadec_pauses")).to_contain_text("chosen")
    m = metrics_table(page)
    assert m["method"] == "adadec" and 1 <= int(number(m["new tokens"])) <= 20
    assert page.dialogs == []


def test_superposed_draws_its_drafts_weights_and_candidates_live(server, page, clean_server_log):
    """A user picks superposed decoding, turns the n-gram filter off (to watch the drafts collapse) and
    presses Generate: the drafts side by side, the superposition weights and the candidate table draw
    WHILE the run streams, before any answer token (the best draft is committed at the end)."""
    page.goto(server)
    set_prompt(page, "The history of the city begins")
    pick_method(page, "superposed")
    toggle = page.get_by_role("checkbox", name="ngram", exact=True).filter(visible=True)
    expect(toggle).to_have_count(1)
    expect(toggle).to_be_checked()
    toggle.uncheck()
    set_max_tokens(page, 64)
    expect(page.get_by_role("spinbutton", name="max new tokens")).to_have_value("64")
    page.click("#generate button, button#generate")

    keys = ("superposed_drafts", "superposed_weights", "superposed_candidates")
    for key in keys:                                   # each panel draws while the run is still going
        page.locator(f"#plot-{key} .js-plotly-plot").wait_for(state="visible", timeout=60_000)
    assert "stopped by" not in (page.locator("#metrics").inner_text() or ""), "the panels drew only at the end"
    assert page.locator("#output .dp-tok").count() == 0           # the best draft is committed at the end
    wait_finished(page)
    page.locator("#run-link", has_text="Saved as run").wait_for(timeout=30_000)
    expect_panels(page, drawn=keys, hidden=("tree", "weights", "acceptance"))
    expect(page.locator("#plot-superposed_drafts")).to_contain_text("n-gram off")
    expect(page.locator("#plot-superposed_candidates")).to_contain_text("kept")
    assert "".join(shown_tokens(page)).strip(), "no answer committed"
    m = metrics_table(page)
    assert m["method"] == "superposed" and m["stopped by"] in ("eos", "length", "complete"), m
    assert int(number(m["target forward passes"])) == int(number(m["new tokens"]))   # one pass per step
    assert page.dialogs == []


def test_momentum_draws_its_token_graph_live(server, page, clean_server_log):
    """A user picks momentum decoding with its defaults and presses Generate: the token graph, the
    p-vs-resisted-score bars and the label trace draw WHILE the run streams (before the metrics table),
    and the metrics end with the repetition measure rep-n."""
    page.goto(server)
    set_prompt(page, "List the days of the week, again and again:")
    pick_method(page, "momentum")
    max_new = 64
    set_max_tokens(page, max_new)
    expect(page.get_by_role("spinbutton", name="max new tokens")).to_have_value(str(max_new))
    page.click("#generate button, button#generate")
    seen_while_streaming = set()
    while "stopped by" not in (page.locator("#metrics").inner_text() or ""):
        for key in ("momentum_graph", "momentum_bars", "momentum_labels"):
            if page.locator(f"#plot-{key} .js-plotly-plot").is_visible():
                seen_while_streaming.add(key)
        time.sleep(0.2)
    assert seen_while_streaming == {"momentum_graph", "momentum_bars", "momentum_labels"}, (
        seen_while_streaming, page.locator("#metrics").inner_text(), page.locator("#output").inner_text()[:500])
    page.locator("#run-link", has_text="Saved as run").wait_for(timeout=30_000)
    expect_panels(page, drawn=("momentum_graph", "momentum_bars", "momentum_labels"), hidden=("tree", "weights"))
    expect(page.locator("#plot-momentum_graph")).to_contain_text("Token graph")
    m = metrics_table(page)
    assert m["method"] == "momentum" and 0 <= number(m["rep-2"]) <= 1, m
    assert 1 <= int(number(m["new tokens"])) <= max_new
    assert page.dialogs == []


def test_exact_extract_marks_the_span_and_ranks_the_spans(server, page, clean_server_log):
    """A user leaves exact extract's passage and question fields empty and writes 'Passage: ...
    Question: ...' as the prompt: the passage is shown with the chosen span marked while the search
    runs (before the answer is committed), the ranked spans and greedy's free answer beside it, and
    the top-spans bar chart; the committed answer is that span, a piece of the passage."""
    passage = "The Eiffel Tower was finished in 1889 for the World's Fair."
    page.goto(server)
    set_prompt(page, f"Passage: {passage}\nQuestion: When was the tower finished?")
    pick_method(page, "exact_extract")
    set_param(page, "max_span", 4)
    set_param(page, "batch", 2)                      # several batched passes: the view updates as it searches
    set_param(page, "free_tokens", 6)
    set_max_tokens(page, 8)
    expect(page.get_by_role("spinbutton", name="max new tokens")).to_have_value("8")
    page.click("#generate button, button#generate")
    marked_while_searching = False
    while "stopped by" not in (page.locator("#metrics").inner_text() or ""):
        if page.locator("#output .dp-tok").count() == 0 and page.locator("#output mark.dp-extract-chosen").count():
            marked_while_searching = True
        time.sleep(0.1)
    assert marked_while_searching
    page.locator("#run-link", has_text="Saved as run").wait_for(timeout=30_000)
    view = page.locator("#output .dp-extract")
    expect(view).to_contain_text("best span (exact)")
    expect(view).to_contain_text("Greedy's free answer")
    chosen = page.locator("#output mark.dp-extract-chosen").inner_text()
    assert chosen and chosen in passage
    expect(page.locator("#output .dp-extract-passage")).to_have_text(passage)
    assert page.locator("#output table.dp-extract-spans tr").count() == 1 + 10      # header + the top 10
    assert "".join(shown_tokens(page)) == chosen                                     # the answer is the span
    expect_panels(page, drawn=("extract_spans",), hidden=("tree", "weights"))
    expect(page.locator("#plot-extract_spans")).to_contain_text("Top spans")
    assert page.dialogs == []


# --- Compare: three methods live, then the same comparison drawn again in another browser ---------------

COMPARE_METHODS = ("greedy", "sampling", "top_h")
COMPARE_TOKENS = 6


def compare_table(page, prefix="compare") -> dict[str, list[str]]:
    rows = page.locator(f"#{prefix}-table table tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))")
    return {row[0]: row[1:] for row in rows}


def compare_texts(page, n, prefix="compare") -> list[list[str]]:
    return [page.locator(f"#{prefix}-text-{i} .dp-tok").evaluate_all("els => els.map(e => e.textContent)")
            for i in range(n)]


def test_compare_three_methods_live_then_the_same_in_a_new_browser(server, page, browser):
    page.goto(server)
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-n").get_by_text("3", exact=True).click()
    expect(page.locator("#compare-col-2")).to_be_visible()
    page.locator("#compare-prompt textarea").fill("Write a short poem about the sea.")
    tokens = page.get_by_label("new tokens per column")
    tokens.fill(str(COMPARE_TOKENS))
    tokens.press("Enter")
    for column, name in enumerate(COMPARE_METHODS[1:], start=1):
        box = page.get_by_label(f"Method {'ABC'[column]}", exact=True)
        box.click()
        page.get_by_role("option", name=REGISTRY[name].title, exact=True).click()
        expect(box).to_have_value(REGISTRY[name].title)
    page.click("#compare-run")
    page.locator("#compare-link", has_text="Saved as comparison").wait_for(timeout=150_000)

    texts = compare_texts(page, 3)
    assert [len(t) for t in texts] == [COMPARE_TOKENS] * 3
    table = compare_table(page)
    assert table[""] == [f"{'ABC'[i]}: {name}" for i, name in enumerate(COMPARE_METHODS)]
    assert table["new tokens"] == [str(COMPARE_TOKENS)] * 3
    assert table["method"] == list(COMPARE_METHODS)
    expect(page.locator("#compare-entropy .js-plotly-plot")).to_be_visible()
    expect(page.locator("#compare-diff")).to_contain_text("A: greedy → C: top_h")
    expect(page.locator("#compare-out-3")).to_be_hidden()
    link = page.locator("#compare-link a").get_attribute("href")
    assert "?compare=" in link

    # its link in another browser (a fresh context: no shared storage) shows the same, from stored events
    other = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        fresh = other.new_page()
        fresh.goto(f"{server}/?compare={link.split('?compare=')[1]}")
        fresh.locator("#shared-compare-table", has_text="new tokens").wait_for(timeout=60_000)
        assert compare_texts(fresh, 3, prefix="shared-compare") == texts
        assert compare_table(fresh, prefix="shared-compare") == table
    finally:
        other.close()
    assert page.dialogs == []


# --- History per browser, share links, fork, delete (helper 10a) --------------------------------

def generate_short(page, prompt, max_new=6) -> str:
    """Generate greedy on the page and return the saved run's id (a new one: the page may still show
    the previous run's link). Waits for the browser key to be made and stored on the page's first
    load (a run started before it has no owner)."""
    page.wait_for_function("() => localStorage.getItem('decoding-playground-owner')", timeout=30_000)
    before = re.search(r"[0-9a-f]{32}", page.locator("#run-link").inner_text())
    set_prompt(page, prompt)
    set_max_tokens(page, max_new)
    page.click("#generate button, button#generate")
    saved = page.wait_for_function("""(before) => { const el = document.querySelector('#run-link');
        const m = el && el.innerText.includes('Saved as run') && el.innerText.match(/[0-9a-f]{32}/);
        return m && m[0] !== before ? m[0] : null; }""", arg=before.group(0) if before else "", timeout=120_000)
    wait_finished(page)
    return saved.json_value()


def open_history(page):
    page.get_by_role("tab", name="History").click()
    page.locator("#history-info", has_text="Page ").wait_for(timeout=30_000)


def test_history_is_per_browser_and_a_link_opens_read_only_with_fork(server, page, browser):
    prompt = "Name one colour of the sky."
    page.goto(server)
    run_id = generate_short(page, prompt)
    open_history(page)
    page.locator("#history-table", has_text=prompt).wait_for(timeout=30_000)

    other = browser.new_context(viewport={"width": 1400, "height": 1000})
    other.grant_permissions(["clipboard-read", "clipboard-write"])
    try:
        fresh = other.new_page()
        fresh.goto(server)
        open_history(fresh)                       # a new context = a new browser key: not A's runs
        expect(fresh.locator("#history-table")).not_to_contain_text(prompt)
        expect(fresh.locator("#history-table")).not_to_contain_text(run_id)

        fresh.goto(f"{server}/?run={run_id}")     # the link: the saved result first, above the tabs
        expect(fresh.locator("#shared-title")).to_contain_text(f"Shared run {run_id}", timeout=30_000)
        expect(fresh.locator("#shared-output .dp-tok")).to_have_count(6, timeout=30_000)
        assert fresh.locator("#shared-output .dp-tok").all_inner_texts() == \
            page.locator("#output .dp-tok").all_inner_texts()
        assert fresh.locator("#shared").bounding_box()["y"] < fresh.get_by_role("tab", name="Generate").bounding_box()["y"]
        url = fresh.locator("#share-url textarea, #share-url input").first
        expect(url).to_have_value(re.compile(rf"^http://127\.0\.0\.1:\d+/\?run={run_id}$"))
        expect(url).not_to_be_editable()                                           # read-only
        fresh.click("#copy-link")
        expect(fresh.locator("#copy-status")).to_contain_text("Link copied", timeout=15_000)
        assert fresh.evaluate("navigator.clipboard.readText()") == url.input_value()
        expect(fresh.locator("#shared-json")).to_be_visible()

        fresh.click("#shared-fork")                # the settings go into the Generate form
        expect(fresh.locator("#prompt textarea")).to_have_value(prompt, timeout=30_000)
        expect(fresh.get_by_label("max new tokens").first).to_have_value("6")
        expect(fresh.get_by_label("Method", exact=True)).to_have_value(REGISTRY["greedy"].title)
        expect(fresh.locator("#shared")).to_be_hidden()

        fresh.goto(f"{server}/?run={run_id}")     # Re-run: the same settings, and Generate pressed
        fresh.click("#shared-rerun")
        fresh.locator("#run-link", has_text="Saved as run").wait_for(timeout=120_000)
        assert run_id not in fresh.locator("#run-link").inner_text()
        assert fresh.locator("#output .dp-tok").all_inner_texts() == page.locator("#output .dp-tok").all_inner_texts()

        # the owner deletes it (with confirmation); the link then says "not found"
        page.locator("#run-id textarea, #run-id input").first.fill(run_id)
        page.click("#open-run")
        page.locator("#history-output .dp-tok").first.wait_for(timeout=30_000)
        page.click("#history-delete")
        page.click("#history-delete-confirm")
        expect(page.locator("#history-link")).to_contain_text(f"Deleted run {run_id}", timeout=30_000)
        expect(page.locator("#history-table")).not_to_contain_text(prompt)
        fresh.goto(f"{server}/?run={run_id}")
        expect(fresh.locator("#shared-title")).to_contain_text("Not found", timeout=30_000)
    finally:
        other.close()
    assert page.dialogs == []


# --- Branch from a token, tooltips at the right edge, the error toast (helper 10c) ---------------

def test_branch_from_a_clicked_token_continues_with_another_and_marks_the_view(server, page):
    page.goto(server)
    parent = generate_short(page, "Name a colour of the sea.", max_new=8)
    texts = page.locator("#output .dp-tok").all_inner_texts()
    page.locator("#output .dp-tok").nth(2).click()                 # its alternatives, rank 1 first
    expect(page.locator("#branch-choice")).to_be_visible()
    options = page.locator("#branch-choice label")
    expect(options.first).to_contain_text("rank 1")
    assert options.count() >= 2
    options.nth(1).click()                                         # the second most probable token
    set_max_tokens(page, 4)
    page.click("#branch-continue button, button#branch-continue")
    page.locator("#output .dp-branch-point").wait_for(timeout=60_000)
    wait_finished(page)
    expect(page.locator("#output .dp-branch-note")).to_contain_text("at token 2")
    assert page.locator("#output .dp-inherited").inner_text() == "".join(texts[:2])
    expect(page.locator("#output .dp-tok")).to_have_count(4)      # only the branch's own tokens are its tokens
    expect(page.locator("#run-link")).to_contain_text("Saved as run")
    assert parent not in page.locator("#run-link").inner_text()     # a new run, with a link of its own
    open_history(page)                                             # a token of a run opened in History
    page.locator("#run-id textarea, #run-id input").first.fill(parent)
    page.click("#open-run")
    page.locator("#history-output .dp-tok").nth(5).click()
    expect(page.locator("#branch-choice")).to_be_visible()         # back on Generate, that run's position 5
    expect(page.locator("#branch-panel").first).to_contain_text(f"Branch from run {parent[:8]} at token 5 of 8")
    assert page.dialogs == []


def test_tooltips_at_the_right_edge_open_leftwards_and_say_the_rank(server, page):
    page.goto(server)
    generate_short(page, "Write two sentences about rivers.", max_new=40)   # long enough to wrap
    tokens = page.locator("#output .dp-tok")
    boxes = [tokens.nth(i).bounding_box() for i in range(tokens.count())]
    one_line = [i for i, b in enumerate(boxes) if b["height"] < 25]      # a token wrapped over two lines spans both
    right = max(one_line, key=lambda i: boxes[i]["x"] + boxes[i]["width"])
    for index in (0, right):
        tokens.nth(index).hover()
        tip = tokens.nth(index).evaluate("""el => { const r = el.getBoundingClientRect(), s = getComputedStyle(el, '::after');
            const w = parseFloat(s.width), left = el.classList.contains('dp-tip-left');
            return {left, from: left ? r.right - w : r.left, to: left ? r.right : r.left + w, view: innerWidth}; }""")
        assert 0 <= tip["from"] and tip["to"] <= tip["view"], (index, tip)
    assert page.locator("#output .dp-tip-left").count() >= 1
    assert "rank " in tokens.first.get_attribute("data-tip")


def test_an_error_toast_clears_the_previous_output(server, page):
    page.goto(server)
    generate_short(page, "Say hello.", max_new=4)
    set_prompt(page, "   ")
    page.click("#generate button, button#generate")
    expect(page.get_by_text("The prompt is empty").first).to_be_visible(timeout=30_000)
    expect(page.locator("#output .dp-tok")).to_have_count(0)
    expect(page.locator("#run-link")).not_to_contain_text("Saved as run")
    expect(page.locator("#output .dp-error")).to_contain_text("The prompt is empty")   # stays once the toast fades


def test_compare_selected_from_history_then_its_link_export_and_import_in_another_browser(server, page, browser):
    page.goto(server)
    prompts = ["Name a fruit.", "Name an animal."]
    run_ids = [generate_short(page, p, max_new=4) for p in prompts]
    assert run_ids[0] != run_ids[1]
    open_history(page)
    for run_id in run_ids:
        expect(page.locator("#history-table")).to_contain_text(run_id)
    for run_id in run_ids:
        box = page.locator("#history-ticks label", has_text=run_id[:8]).locator("input")
        box.check()
        expect(box).to_be_checked()
    page.click("#compare-selected")
    page.locator("#compare-link", has_text="Saved as comparison").wait_for(timeout=30_000)
    comparison_id = re.search(r"comparison ([0-9a-f]{32})", page.locator("#compare-link").inner_text()).group(1)
    texts = [page.locator(f"#compare-text-{i} .dp-tok").all_inner_texts() for i in range(2)]
    assert [len(t) for t in texts] == [4, 4]

    other = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    try:
        fresh = other.new_page()
        fresh.goto(f"{server}/?compare={comparison_id}")
        expect(fresh.locator("#shared-title")).to_contain_text(f"Shared comparison {comparison_id}", timeout=30_000)
        for i in range(2):
            expect(fresh.locator(f"#shared-compare-text-{i} .dp-tok")).to_have_count(4, timeout=30_000)
            assert fresh.locator(f"#shared-compare-text-{i} .dp-tok").all_inner_texts() == texts[i]
        with fresh.expect_download() as download:
            fresh.click("#shared-json")
        export = open(download.value.path(), encoding="utf-8").read()
        assert json.loads(export)["comparison"]["run_ids"] == run_ids

        fresh.click("#shared-close")
        open_history(fresh)
        fresh.get_by_text("Import a JSON export").click()
        fresh.locator("#import-text textarea").fill(export)
        fresh.click("#import-run")
        expect(fresh.locator("#import-result")).to_contain_text("Imported 2 run(s)", timeout=30_000)
        expect(fresh.locator("#history-table")).to_contain_text(prompts[0])      # now this browser's own
        expect(page.locator("#history-table")).not_to_contain_text("Imported")
    finally:
        other.close()
    assert page.dialogs == []
