"""Compare: the side-by-side table, the overlay traces and the token diff on hand-made events; a live
comparison through the tab's handler on the embedded model (runs and the comparison saved, one model);
saved runs drawn as a comparison; bad input refused with a message naming the column."""

from __future__ import annotations

import math
import threading
from types import SimpleNamespace

import gradio as gr
import pytest

from playground.events import MetricsEvent, RunStarted, StatsEvent, TokenEvent
from visualizers.compare import (MEAN_ENTROPY, diff_html, entropy_overlay_figure, mean_entropy,
                                 probability_overlay_figure, table_rows, token_diff)


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
    # a repeated common token must not be taken for junk (autojunk) and marked changed
    many = [" a"] * 250 + [" b"]
    assert all(p.op == "equal" for p in token_diff(many, many))
    assert token_diff([], [" x"]) == [token_diff([], [" x"])[0]] and token_diff([], [" x"])[0].op == "insert"


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
