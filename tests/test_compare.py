"""Compare: the side-by-side table, the overlay traces and the token diff on hand-made events; a live
comparison through the tab's handler on the embedded model (runs and the comparison saved, one model);
saved runs drawn as a comparison; bad input refused with a message naming the column."""

from __future__ import annotations

import math
from types import SimpleNamespace

import gradio as gr
import pytest

from playground import models
from playground.events import MetricsEvent, RunStarted, StatsEvent, TokenEvent
from playground.ui import compare as compare_ui
from playground.ui.compare import CompareTab, UnknownRuns, compare_outputs
from storage import default_repository
from visualizers.compare import (MEAN_ENTROPY, diff_html, entropy_overlay_figure, mean_entropy,
                                 probability_overlay_figure, table_rows, token_diff)
from visualizers.metrics import metrics_rows


def run_events(strategy: str, texts: list[str], entropies: list[float], probs: list[float],
               acceptance: float | None = None, ttft: float = 0.25) -> list:
    """A finished run as the runner would frame it, with made-up but distinct numbers."""
    start = RunStarted(run_id=strategy * 2, model_id="m", dtype="float32", strategy=strategy, params={"k": 1},
                       seed=0, prompt="p", prompt_tokens=3, max_new_tokens=len(texts))
    toks = [TokenEvent(index=i, token_id=i, text=t, logprob=math.log(p), entropy=h, alternatives=[])
            for i, (t, h, p) in enumerate(zip(texts, entropies, probs))]
    method = {"acceptance rate": acceptance} if acceptance is not None else {}
    metrics = MetricsEvent(new_tokens=len(texts), elapsed_s=2.0, time_to_first_token_s=ttft,
                           tokens_per_s=len(texts) / 2.0, forward_passes=len(texts) + 1,
                           tokens_per_forward=len(texts) / (len(texts) + 1), model_bytes=1, bandwidth_gb_s=0.0,
                           machine_bandwidth_gb_s=None, stop_reason="length", method=method)
    stats = [StatsEvent(method)] if method else []
    return [start, *toks, *stats, metrics]


A = run_events("greedy", [" The", " cat", " sat", " down"], [1.0, 2.0, 0.5, 0.5], [0.9, 0.5, 0.8, 0.7])
B = run_events("sampling", [" The", " dog", " sat", " down", "."], [1.0, 3.0, 0.2, 0.1, 0.7],
               [0.9, 0.1, 0.6, 0.9, 0.4], acceptance=0.625, ttft=0.5)


def test_token_diff_marks_exactly_the_changed_tokens():
    pieces = token_diff([" The", " cat", " sat", " down"], [" The", " dog", " sat", " down", "."])
    assert [(p.op, p.text) for p in pieces] == [
        ("equal", " The"), ("delete", " cat"), ("insert", " dog"), ("equal", " sat"), ("equal", " down"),
        ("insert", "."),
    ]
    # a token common in a long output must not be taken for junk (difflib's autojunk) and marked changed
    pieces = token_diff([" the", " cat"] * 150, [" the", " dog"] * 150)
    assert [p.text for p in pieces if p.op == "equal"] == [" the"] * 150
    assert [(p.op, p.text) for p in token_diff([], [" x"])] == [("insert", " x")]


def test_diff_html_escapes_and_marks_insertions_and_deletions():
    evil = run_events("top_h", [" The", "<img src=x onerror=alert(1)>", " sat", " down"], [1] * 4, [0.5] * 4)
    html = diff_html([A, evil])
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert '<del class="dp-diff-del"' in html and ">&lt;img" in html.split('<ins class="dp-diff-ins"')[1]
    assert "3 of 4 tokens of A kept" in html
    two = diff_html([A, B])
    deleted = [chunk.split("</del>")[0].rsplit(">", 1)[1] for chunk in two.split("<del")[1:]]
    inserted = [chunk.split("</ins>")[0].rsplit(">", 1)[1] for chunk in two.split("<ins")[1:]]
    assert deleted == [" cat"] and inserted == [" dog", "."]
    assert diff_html([A]) == ""


def test_table_reads_each_runs_own_numbers_and_defines_mean_entropy():
    rows = dict(table_rows([A, B]))
    assert rows["method"] == ["greedy", "sampling"]
    assert rows["new tokens"] == ["4", "5"]
    assert rows["tokens / s (all time in the method)"] == ["2.000", "2.500"]
    assert rows["target forward passes"] == ["5", "6"]
    assert rows["tokens / target pass"] == ["0.800", "0.833"]
    assert rows["acceptance rate (speculative methods)"] == ["-", "0.625"]
    assert rows["time to first token (s)"] == ["0.250", "0.500"]
    assert rows[MEAN_ENTROPY] == ["1.000", "1.000"]          # (1+2+.5+.5)/4 and (1+3+.2+.1+.7)/5
    assert mean_entropy(A[:1]) is None
    skew = run_events("greedy", [" a", " b"], [0.0, 3.0], [0.5, 0.5])
    assert dict(table_rows([skew, A]))[MEAN_ENTROPY][0] == "1.500"


def test_overlays_draw_every_column_on_one_plot():
    entropy = entropy_overlay_figure([A, B])
    assert [t.name for t in entropy.data] == ["A: greedy", "B: sampling"]
    assert list(entropy.data[1].y) == [1.0, 3.0, 0.2, 0.1, 0.7] and list(entropy.data[0].x) == [0, 1, 2, 3]
    probability = probability_overlay_figure([A, B])
    assert [round(y, 6) for y in probability.data[1].y] == [0.9, 0.1, 0.6, 0.9, 0.4]
    assert entropy_overlay_figure([A[:1], B[:1]]) is None
    evil = run_events("greedy", ["<b>x</b>"], [1.0], [0.5])
    assert "<b>" not in "".join(entropy_overlay_figure([evil, A]).data[0].text)


# --- the tab's handlers on the embedded model -------------------------------------------------------------

KEY = "0123456789abcdef0123456789abcdef"
PROMPT = "Name a colour."


@pytest.fixture(scope="module")
def tab():
    with gr.Blocks():
        return CompareTab(gr.State({}), gr.State(""))


def form_values(tab, columns: list[tuple[str, dict]], max_new=5, seed=7, n=None) -> list:
    """What the page would send: shared settings, then every column's method and parameter widgets
    (their defaults, with `columns`' overrides); columns past n keep greedy."""
    values = [n or len(columns), "embedded", "", "float32", max_new, seed, True, PROMPT]
    for i, (method, params, keys) in enumerate(tab.forms):
        name, overrides = columns[i] if i < len(columns) else ("greedy", {})
        values += [name, *(overrides.get(p, box.value) if m == name else box.value
                           for (m, p), box in zip(keys, params))]
    return values


def request(session="compare-test"):
    return SimpleNamespace(username=None, session_hash=session)


def run_live(tab, values, session="compare-test", stop_after=None):
    yields = []
    for i, out in enumerate(tab.live(request(session), None, KEY, *values)):
        yields.append(out)
        if stop_after is not None and i + 1 == stop_after:
            compare_ui._stops.stop(session)
    return yields


def test_a_live_comparison_saves_its_runs_and_itself_on_one_loaded_model(tab, embedded, monkeypatch):
    def second_load(*args, **kwargs):
        raise AssertionError("a comparison must not load the model again")

    monkeypatch.setattr(models, "_load", second_load)
    prepared = compare_ui.prepare_columns(tab.requests(tuple(form_values(
        tab, [("greedy", {}), ("sampling", {"temperature": 0.8})]))))
    assert all(p.loaded is embedded for p in prepared)       # the models' cache's one object, never a copy

    before = default_repository().count()
    yields = run_live(tab, form_values(tab, [("greedy", {}), ("sampling", {"temperature": 0.8, "top_k": 5})]))
    link = yields[-1][len(tab.view.outputs)]
    comparison_id = link.split("?compare=")[1].rstrip(")")
    saved = default_repository().comparison(comparison_id)
    assert saved.owner == f"browser:{KEY}" and len(saved.run_ids) == 2
    assert default_repository().count() == before + 2
    rows = [default_repository().get(run_id) for run_id in saved.run_ids]
    assert [r.method for r in rows] == ["greedy", "sampling"]
    assert {(r.prompt, r.seed, r.owner) for r in rows} == {(PROMPT, 7, f"browser:{KEY}")}
    assert all(r.new_tokens == 5 for r in rows) and rows[1].params["top_k"] == 5
    assert saved.config["columns"][1]["params"]["temperature"] == 0.8 and saved.config["seed"] == 7

    final = yields[-1]
    table = final[len(tab.view.outputs) - 4]
    assert "A: greedy" in table and "B: sampling" in table and "running" not in table
    a_text = compare_ui.MAX_COLUMNS + 1
    a_counts = [y[a_text].count('class="dp-tok"') for y in yields if not is_skip(y[a_text])]
    assert 1 in a_counts and a_counts[-1] == 5       # column A streamed: its first token was drawn alone
    tables = [y[len(tab.view.outputs) - 4] for y in yields if not is_skip(y[len(tab.view.outputs) - 4])]
    assert len(tables) == 1 + 2 + 1          # cleared at the start, after each column, at the end
    titles = [last_value(yields, compare_ui.MAX_COLUMNS + c * (3 + len(tab.view.columns[0].plots)))
              for c in range(2)]
    assert all(f"?run={run_id})" in title for title, run_id in zip(titles, saved.run_ids))
    # the table's numbers are each run's own metrics panel's, read from the saved events
    own = dict(metrics_rows(default_repository().events(saved.run_ids[1])))
    mine = dict(table_rows([default_repository().events(i) for i in saved.run_ids]))
    assert mine["tokens / s (all time in the method)"][1] == own["tokens / s (all time in the method)"]
    assert mine["time to first token (s)"][1] == own["time to first token (s)"]
    # drawn again from the stored events, the same texts and table (what a link shows)
    again = compare_outputs(saved.run_ids)
    width = 3 + len(tab.view.columns[0].plots)
    for column in range(2):
        text_at = compare_ui.MAX_COLUMNS + column * width + 1
        assert again[text_at] == last_value(yields, text_at)
    assert again[-4] == table


def is_skip(value) -> bool:
    return isinstance(value, dict) and value == gr.skip()


def last_value(yields, index):
    """The last value a live comparison sent to one output (skips are not values)."""
    return [y[index] for y in yields if not is_skip(y[index])][-1]


def test_load_saved_draws_saved_runs_and_saves_them_as_a_comparison(tab, embedded):
    yields = run_live(tab, form_values(tab, [("greedy", {}), ("top_h", {})], max_new=4, seed=3))
    first_id = yields[-1][len(tab.view.outputs)].split("?compare=")[1].rstrip(")")
    run_ids = default_repository().comparison(first_id).run_ids
    out = tab.load_saved(f" {run_ids[1]},{run_ids[0]} ", request(), KEY)
    second_id = out[-1].split("?compare=")[1].rstrip(")")
    assert second_id != first_id and default_repository().comparison(second_id).run_ids == [run_ids[1], run_ids[0]]
    assert "A: top_h" in out[-5] and "B: greedy" in out[-5]
    for bad, says in [(run_ids[0], "2 to 4"), (",".join(run_ids * 3), "2 to 4"), ("x" * 5000, "characters"),
                      (f"{run_ids[0]}, <script>", "Not a run id"), (f"{run_ids[0]} {'f' * 32}", "No saved run")]:
        with pytest.raises(gr.Error, match=says):
            tab.load_saved(bad, request(), KEY)
    with pytest.raises(UnknownRuns):
        compare_outputs(["0" * 32, run_ids[0]])


def test_bad_columns_are_refused_naming_the_column(tab, embedded):
    with pytest.raises(gr.Error, match=r"Column B \(sampling\).*temperature"):
        run_live(tab, form_values(tab, [("greedy", {}), ("sampling", {"temperature": -1.0})]))
    for n in (1, 5, "3; drop", 2.5, True):
        with pytest.raises(gr.Error, match="columns must be 2 to 4"):
            run_live(tab, form_values(tab, [("greedy", {}), ("greedy", {})], n=n))
    with pytest.raises(gr.Error, match="takes .* values"):
        run_live(tab, form_values(tab, [("greedy", {}), ("greedy", {})])[:-3])
    with pytest.raises(gr.Error, match="Column A.*prompt is empty"):
        values = form_values(tab, [("greedy", {}), ("greedy", {})])
        values[7] = "  "
        run_live(tab, values)


def test_stop_ends_the_comparison_and_keeps_what_ran(tab, embedded):
    before = default_repository().count()
    yields = run_live(tab, form_values(tab, [("greedy", {}), ("greedy", {}), ("greedy", {})], max_new=40),
                      session="stopper", stop_after=1)
    link = yields[-1][len(tab.view.outputs)]
    assert "stopped" in link
    saved = default_repository().comparison(link.split("?compare=")[1].rstrip(")"))
    assert len(saved.run_ids) == 1 and default_repository().count() == before + 1
    assert default_repository().get(saved.run_ids[0]).status == "stopped"
    assert "stopper" not in compare_ui._stops


def test_a_comparison_queues_with_generations_and_asks_at_the_door(embedded):
    """Its event joins the one generation group (one model run at a time with Generate's) through the
    fairness check; Stop and drawing saved runs never queue."""
    from playground.limits import GENERATION
    from playground.ui import build_app

    demo = build_app()
    by_name = {}
    for dep in demo.fns.values():
        for target in dep.targets:
            block = demo.blocks.get(target[0])
            by_name.setdefault(getattr(block, "elem_id", None), []).append(dep)
    run = by_name["compare-run"][0]
    assert run.concurrency_id == GENERATION and run.queue is not False
    verdicts = run.validator(SimpleNamespace(username=None), *[None] * len(run.inputs))
    assert len(verdicts) == len(run.inputs) and all(v["is_valid"] for v in verdicts)   # one verdict per input
    assert all(dep.queue is False for dep in by_name["compare-stop"] + by_name["compare-load"])
