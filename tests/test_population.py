"""The scaling family's shared arithmetic on hand-made inputs: weights, ESS, resampling, entropic annealing,
answers and votes."""

from __future__ import annotations

import math

import pytest
import torch

from strategies.scaling.population import (
    entropic_temperature,
    ess,
    extract_answer,
    logit,
    multinomial_resample,
    softmax_weights,
    systematic_resample,
    vote,
)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_logit_is_finite_at_the_ends_and_odd():
    assert math.isfinite(logit(0.0)) and math.isfinite(logit(1.0))
    assert logit(0.5) == 0.0 and logit(0.8) == pytest.approx(-logit(0.2)) == pytest.approx(math.log(4))


@pytest.mark.parametrize("temperature", [0.1, 1.0, 7.0])
def test_weights_are_a_simplex_and_ess_is_between_1_and_n(temperature):
    log_weights = [-16.0, 0.3, 2.0, 2.0, 9.5]
    weights = softmax_weights(log_weights, temperature)
    assert all(w >= 0 for w in weights) and sum(weights) == pytest.approx(1.0, abs=1e-12)
    assert 1.0 <= ess(weights) <= len(weights)
    assert ess([0.25] * 4) == pytest.approx(4.0) and ess([1.0, 0.0, 0.0]) == pytest.approx(1.0)


def test_a_huge_temperature_gives_equal_weights():
    weights = softmax_weights([-5.0, 0.0, 4.0], 1e9)
    assert weights == pytest.approx([1 / 3] * 3, abs=1e-8)


@pytest.mark.parametrize("seed", range(20))
def test_systematic_with_equal_weights_keeps_every_lane_exactly_once(seed):
    assert systematic_resample([0.2] * 5, 5, generator(seed)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("seed", range(20))
def test_systematic_copies_each_lane_floor_or_ceil_of_n_w_times(seed):
    weights = [0.05, 0.5, 0.0, 0.3, 0.15]
    drawn = systematic_resample(weights, 8, generator(seed))
    assert len(drawn) == 8 and drawn == sorted(drawn)
    for lane, w in enumerate(weights):
        assert math.floor(8 * w) <= drawn.count(lane) <= math.ceil(8 * w)


@pytest.mark.parametrize("resample", [multinomial_resample, systematic_resample])
def test_resampling_keeps_n_and_never_draws_a_zero_weight(resample):
    weights = [0.0, 0.7, 0.0, 0.3]
    for seed in range(10):
        drawn = resample(weights, 4, generator(seed))
        assert len(drawn) == 4 and drawn == sorted(drawn)
        assert set(drawn) <= {1, 3}


def test_multinomial_draws_follow_the_weights():
    """Over many seeded draws each lane's share is close to its weight (3 standard errors)."""
    weights, n, rounds = [0.1, 0.6, 0.3], 10, 300
    counts = [0, 0, 0]
    for seed in range(rounds):
        for lane in multinomial_resample(weights, n, generator(seed)):
            counts[lane] += 1
    total = n * rounds
    for count, w in zip(counts, weights):
        assert abs(count / total - w) < 3 * math.sqrt(w * (1 - w) / total)


def test_entropic_temperature_is_at_least_one_and_one_when_the_population_is_healthy():
    n, steps = 8, 40
    for value in [1.0, 1.5, 2.0, 3.9, 4.0, 6.0, 8.0]:
        for step in range(1, steps + 1):
            tau = entropic_temperature(value, n, step, steps)
            assert tau >= 1.0
            if value / n >= 0.5 or step / steps >= 0.5:
                assert tau == 1.0
    assert entropic_temperature(1.0, 8, 4, 40) == pytest.approx(8 * (1 - 0.1))   # collapsed early: hot
    assert entropic_temperature(2.0, 8, 19, 40) == pytest.approx(4 * (1 - 19 / 40))


@pytest.mark.parametrize("text,answer", [
    ("Step 1: Tom has 3 apples.\nStep 2: He buys 5 more.", "5"),     # "Step 2" counts steps, not apples
    ("3 + 5 = 8 apples\n\nStep 2: Calculate", "8"),                  # an announced result beats a later step number
    ("The answer is 8.\n\n2. Check it", "8"),
    ("1. first\n2. second", ""),                                      # a numbered list holds no answer
    ("#### 42", "42"), ("Answer: -3", "-3"), ("x = 12.0", "12"),
])
def test_extract_answer_skips_step_and_list_numbers(text, answer):
    """Seen on the embedded model: 'Step 2:' made every lane's answer '2' and the vote unanimous."""
    assert extract_answer(text) == answer


def test_extract_answer_and_weighted_vote():
    assert extract_answer("so 3 + 4 = \\boxed{7}. Then 9") == "7"
    assert extract_answer("it is 1,250.0 apples") == "1250"
    assert extract_answer("no number") == ""
    assert vote(["7", "8", "7", ""])[0] == "7"
    winner, tally = vote(["7", "8", "7"], [0.1, 0.9, 0.2])
    assert winner == "8" and tally == pytest.approx({"7": 0.3, "8": 0.9})
