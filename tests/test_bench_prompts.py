"""The prompt-file bench's parser and arithmetic, on hand numbers (no model, no timing)."""

import json
import math

import pytest

from playground.benchmarks import HELD_OUT, TUNE
from playground.benchmarks.per_prompt import GENERATE, median_spread, run_order, spread, summarise
from playground.benchmarks.prompt_file import PromptFileError, parse_line, read_prompts
from playground.benchmarks.ratios import geomean, speed_ratio


def test_lines_in_both_formats():
    assert parse_line('{"prompt": "Hi", "category": "qa"}', 1).category == "qa"
    spec = parse_line('{"question_id": 7, "category": "writing", "turns": ["first", "second"]}', 2)
    assert (spec.prompt, spec.label) == ("first", "7")          # Spec-Bench's own line: the first turn
    assert parse_line('{"prompt": "x"}', 3).category == "all"
    assert parse_line("   ", 4) is None


@pytest.mark.parametrize("line, message", [("{oops", "line 5: not JSON"), ("[1]", "expected a JSON object"),
                                           ('{"category": "qa"}', 'non-empty "prompt"'),
                                           ('{"prompt": " "}', 'non-empty "prompt"'),
                                           ('{"prompt": "a", "category": 3}', '"category"')])
def test_bad_lines_name_the_line(line, message):
    with pytest.raises(PromptFileError, match=message):
        parse_line(line, 5)


def test_shipped_sets_are_disjoint_and_three_per_task(tmp_path):
    held, tune = read_prompts(HELD_OUT), read_prompts(TUNE)
    assert not {p.label for p in held} & {p.label for p in tune}
    for prompts in (held, tune):
        counts = {c: sum(p.category == c for p in prompts) for c in {p.category for p in prompts}}
        assert counts == {c: 3 for c in ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")}
    with pytest.raises(PromptFileError, match="no prompts"):
        (tmp_path / "empty.jsonl").write_text("\n")
        read_prompts(tmp_path / "empty.jsonl")


def test_ratio_and_geomean_on_hand_numbers():
    # 50 tokens in 2 s (25 tok/s) against 40 tokens in 4 s (10 tok/s): 2.5x
    assert speed_ratio(50, 2.0, 40, 4.0) == pytest.approx(2.5)
    assert geomean([2.0, 0.5]) == pytest.approx(1.0)            # the arithmetic mean would say 1.25
    assert geomean([1.0, 8.0, 27.0]) == pytest.approx(math.exp((math.log(8) + math.log(27)) / 3))
    with pytest.raises(ValueError):
        geomean([1.0, 0.0])


def test_summary_per_category_on_hand_timings():
    from playground.benchmarks.prompt_file import BenchPrompt

    prompts = [BenchPrompt("a", "x", "1"), BenchPrompt("b", "x", "2"), BenchPrompt("c", "y", "3")]
    ids = [1, 2, 3, 4]
    best = {}
    for i in range(3):
        best[i, GENERATE] = {"ids": ids, "tokens": 4, "wall": 1.0, "cpu": 2.0, "passes": 4}
        best[i, "greedy"] = {"ids": ids, "tokens": 4, "wall": 1.0, "cpu": 2.0, "passes": 4}
    # prompt_lookup: 2x, 8x faster on x's prompts (wall), and on y a different output at half the speed
    best[0, "prompt_lookup"] = {"ids": ids, "tokens": 4, "wall": 0.5, "cpu": 1.0, "passes": 2}
    best[1, "prompt_lookup"] = {"ids": ids, "tokens": 4, "wall": 0.125, "cpu": 2.0, "passes": 1}
    best[2, "prompt_lookup"] = {"ids": [9], "tokens": 1, "wall": 0.5, "cpu": 0.5, "passes": 1}
    best[0, "prompt_lookup"]["walls"] = [0.6, 0.5, 0.55]        # spread 10 %
    best[1, "prompt_lookup"]["walls"] = [0.125, 0.25]           # 50 %: the median of two is their mean
    result = summarise(["greedy", "prompt_lookup"], prompts, best, {})
    x = {r["method"]: r for r in result["categories"]["x"]}["prompt_lookup"]
    assert x["x_generate_wall"] == pytest.approx(4.0)                       # geomean(2, 8)
    assert x["x_generate_cpu"] == pytest.approx(math.sqrt(2.0))             # geomean(2, 1)
    assert x["tokens_per_pass"] == pytest.approx(8 / 3)
    assert x["spread"] == pytest.approx(0.5)                    # the upper median of (10 %, 50 %)
    assert {r["method"]: r for r in result["categories"]["y"]}["prompt_lookup"]["spread"] is None   # timed once
    whole = {r["method"]: r for r in result["categories"]["all"]}["prompt_lookup"]
    assert whole["x_generate_wall"] == pytest.approx((2 * 8 * 0.5) ** (1 / 3))   # y: 2 tok/s against 4
    assert whole["not_equal"] == ["3"]
    assert result["generate_tokens_per_s"]["all"] == pytest.approx(4.0)


def test_every_path_runs_once_in_every_slot_over_as_many_repeats():
    paths = ["greedy", "prompt_lookup", "generate"]
    orders = [run_order(paths, r) for r in range(3)]
    assert orders[0] == paths and orders[1] == ["prompt_lookup", "generate", "greedy"]
    for slot in range(3):
        assert sorted(order[slot] for order in orders) == sorted(paths)
    assert run_order(paths, 3) == paths


def test_spread_is_the_median_over_the_best_on_hand_timings():
    assert spread([1.2, 1.0, 1.1]) == pytest.approx(0.1)
    assert spread([1.0, 1.1, 1.3, 2.0]) == pytest.approx(0.2)   # even count: the mean of the middle two
    assert spread([2.0]) is None
    assert median_spread([[1.0, 1.1, 1.05], [2.0, 3.0, 2.0], [1.0]]) == pytest.approx(0.05)
    assert median_spread([[1.0]]) is None
