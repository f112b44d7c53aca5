"""The UI in a real headless browser (Debian's chromium driven by Playwright): type, Generate, watch
the text stream and the plots draw, find the run in History, reopen it by share link, Stop, and
see HTML in a prompt shown as text."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(embedded, tmp_path_factory):
    port = free_port()
    db = tmp_path_factory.mktemp("ui") / "runs.sqlite3"
    env = {**os.environ, "PLAYGROUND_DB": str(db), "PLAYGROUND_PORT": str(port), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "PLAYGROUND_MAX_NEW_TOKENS_CAP": "256"}
    log = open(tmp_path_factory.mktemp("log") / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
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
        pytest.fail("app did not start within 180 s")
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
    page.locator("#history-output .dp-tok").first.wait_for(timeout=30_000)
    assert page.locator("#history-output .dp-tok").count() == 48


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
    page.goto(server)
    set_prompt(page, "Write a very long story about a dragon.")
    set_max_tokens(page, 250)
    page.click("#generate button, button#generate")
    page.locator("#output .dp-tok").first.wait_for(timeout=60_000)
    page.click("#stop button, button#stop")
    page.locator("#metrics", has_text="stopped").wait_for(timeout=60_000)
    assert "stopped by\tstopped" in page.locator("#metrics").inner_text().replace("  ", "\t") or \
        "stopped" in page.locator("#metrics").inner_text()
    assert page.locator("#output .dp-tok").count() < 250
    page.locator("#run-link", has_text="Saved as run").wait_for(timeout=30_000)
