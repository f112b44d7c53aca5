"""The scaling family's shared arithmetic: weights, effective sample size, resampling, answers and votes.

Pure functions on plain lists and tensors, so each is tested on hand-made inputs (tests/test_population.py).
"""

from __future__ import annotations

import math
import re
from collections import Counter

import torch

CLIP = 1e-7      # rewards are clipped to [CLIP, 1 - CLIP] before the logit (a reward of exactly 0 or 1 is infinite odds)


def logit(r: float) -> float:
    r = min(max(r, CLIP), 1 - CLIP)
    return math.log(r) - math.log(1 - r)


def softmax_weights(log_weights: list[float], temperature: float = 1.0) -> list[float]:
    """softmax(log_weights / temperature): a simplex (non-negative, sums to 1)."""
    return torch.softmax(torch.tensor(log_weights, dtype=torch.float64) / temperature, 0).tolist()


def ess(weights: list[float]) -> float:
    """Effective sample size 1 / sum(w^2) of normalised weights: N when equal, 1 when one lane has all."""
    return 1.0 / sum(w * w for w in weights)


def multinomial_resample(weights: list[float], n: int, generator: torch.Generator) -> list[int]:
    """n indices drawn independently with probabilities `weights` (Puri et al.'s default), sorted so
    copies of one lane sit together."""
    drawn = torch.multinomial(torch.tensor(weights, dtype=torch.float64), n, replacement=True, generator=generator)
    return sorted(drawn.tolist())


def systematic_resample(weights: list[float], n: int, generator: torch.Generator) -> list[int]:
    """n indices from one uniform offset and n evenly spaced pointers: lane i is copied floor or ceil of
    n * w_i times (lower variance than multinomial; with equal weights every lane exactly once)."""
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    cumulative, out, i = 0.0, [], 0
    for k in range(n):
        pointer = (u + k) / n
        while i < len(weights) - 1 and cumulative + weights[i] < pointer:
            cumulative += weights[i]
            i += 1
        out.append(i)
    return out


RESAMPLERS = {"multinomial": multinomial_resample, "systematic": systematic_resample}


def entropic_temperature(ess_value: float, n: int, step: int, max_steps: int, threshold: float = 0.5) -> float:
    """Entropic annealing (ePF, its_hub): when the population is collapsing (ESS/N < threshold) early in the
    run (step/max_steps < 0.5), flatten the weights with temperature max(1, (N/ESS) * (1 - step/max_steps));
    otherwise 1. Never below 1, so it only ever spreads the weights out, and it fades as the run goes on."""
    progress = step / max_steps
    if ess_value / n >= threshold or progress >= 0.5:
        return 1.0
    return max(1.0, (n / ess_value) * (1.0 - progress))


# --- answers ---------------------------------------------------------------------------------------

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
# Where an answer is announced: "#### 8", "answer is 8", "Answer: 8", "= 8" (the last such wins).
ANNOUNCED = re.compile(r"(?:####|answer(?:\s+is)?\s*[:=]?|=)\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)
# Numbers that only count things off: "Step 2", "2." or "2)" opening a line.
ENUMERATION = re.compile(r"(?:step\s+-?\d+|^\s*\d+[.)](?!\d))", re.IGNORECASE | re.MULTILINE)


def _number(text: str) -> str:
    number = text.replace(",", "")
    return number[:-2] if number.endswith(".0") else number


def extract_answer(text: str) -> str:
    """The final answer in a text: the content of the last \\boxed{...}; else the last announced number
    ("#### 8", "the answer is 8", "Answer: 8", "= 8"); else the last number that does not just count things
    off ("Step 2", a "2." opening a line); "" when there is none."""
    boxed = BOXED.findall(text)
    if boxed:
        return boxed[-1].strip()
    announced = ANNOUNCED.findall(text)
    if announced:
        return _number(announced[-1])
    counted = {m.end() for m in ENUMERATION.finditer(text)}
    numbers = [m for m in NUMBER.finditer(text)
               if m.end() not in counted and m.end() + 1 not in counted]
    return _number(numbers[-1].group()) if numbers else ""


def vote(answers: list[str], weights: list[float] | None = None) -> tuple[str, dict[str, float]]:
    """The answer with the most votes (summed weights when given) among non-empty answers, and the tally.
    Ties go to the answer seen first, so permuting samples with distinct tallies never changes the result."""
    tally: Counter[str] = Counter()
    for i, answer in enumerate(answers):
        if answer:
            tally[answer] += 1.0 if weights is None else weights[i]
    if not tally:
        return "", {}
    best = max(tally.values())
    winner = next(a for a in answers if a and tally[a] == best)
    return winner, dict(tally)
