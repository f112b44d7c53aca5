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


def test_a_paired_ratio_compares_repeats_with_each_other_not_bests():
    from playground.benchmarks.per_prompt import paired_ratio

    # the machine is 1.5-1.6x slower in repeats 0 and 1 than in repeat 2; the method takes 1.02x greedy's
    # time in every repeat: paired says 1/1.02 (best-of would too here, but not once a stall hides its fast run)
    greedy = {"tokens": 10, "walls": [1.5, 1.6, 1.0]}
    method = {"tokens": 10, "walls": [1.53, 1.632, 1.02]}
    assert paired_ratio(method, greedy) == pytest.approx(1 / 1.02)
    # the median, not the mean: one repeat where only the method hit a stall moves nothing
    stalled = {"tokens": 10, "walls": [1.53, 1.632, 3.0]}
    assert paired_ratio(stalled, greedy) == pytest.approx(1 / 1.02)
    assert paired_ratio({"tokens": 20, "walls": [1.0, 1.5]}, {"tokens": 10, "walls": [1.0, 1.5]}) == pytest.approx(2.0)
    assert paired_ratio(method, {"tokens": 10, "walls": [1.0]}) is None          # not timed in the same repeats
    assert paired_ratio({"tokens": 10, "walls": [1.0]}, {"tokens": 10, "walls": [1.0]}) is None


def test_the_summary_pairs_repeats_against_our_greedy():
    from playground.benchmarks.prompt_file import BenchPrompt

    prompts = [BenchPrompt("a", "x", "1"), BenchPrompt("b", "x", "2")]
    best = {}
    for i in range(2):
        best[i, GENERATE] = {"ids": [1], "tokens": 1, "wall": 1.0, "cpu": 1.0, "passes": 1, "walls": [1.0, 1.0]}
        best[i, "greedy"] = {"ids": [1], "tokens": 1, "wall": 1.0, "cpu": 1.0, "passes": 1, "walls": [1.0, 2.0]}
    best[0, "token_recycling"] = {"ids": [1], "tokens": 1, "wall": 2.0, "cpu": 1.0, "passes": 1, "walls": [2.0, 2.0]}
    best[1, "token_recycling"] = {"ids": [1], "tokens": 1, "wall": 1.0, "cpu": 1.0, "passes": 1, "walls": [1.0, 2.0]}
    rows = summarise(["greedy", "token_recycling"], prompts, best, {})["categories"]["x"]
    tr = {r["method"]: r for r in rows}["token_recycling"]
    assert tr["x_greedy_wall"] == pytest.approx(math.sqrt(0.5))          # best 2.0 against best 1.0 on prompt a
    assert tr["x_greedy_paired"] == pytest.approx(math.sqrt(0.75))       # a: median(0.5, 1.0); b: 1.0
    assert {r["method"]: r for r in rows}["greedy"]["x_greedy_paired"] == pytest.approx(1.0)
