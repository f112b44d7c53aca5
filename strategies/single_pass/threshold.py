"""AdaDec's entropy threshold, fitted for the loaded model (AdaDec, SYSUSELab/AdaDec
`src/learn_threshold/logistic_regression.py`).

Teacher-force a few reference answers through the model and log, at every answer token, the
next-token entropy (nats) and whether the reference token was the model's rank-1 choice. Fit a
class-balanced logistic regression of rank-1 correctness on entropy, choose the probability cut
that maximises balanced accuracy, and convert that cut back to an entropy value: the step entropy
above which greedy is more likely wrong than right, i.e. where AdaDec pauses.

Differences from the authors' script, all stated in the UI's help: our references are a handful of
short texts written for this project (theirs: ground-truth solutions of a code benchmark); class
balance by weights (theirs: undersampling the larger class); the cut is chosen on all observations
by balanced accuracy (theirs: plain accuracy on a 20% held-out split); the fit is a 2-parameter
Newton iteration in torch with sklearn's default L2 penalty (C = 1) on the slope.

`python -m strategies.single_pass.threshold [model]` prints the fitted value for a model.
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass

import torch

FALLBACK_THRESHOLD = 1.0      # ALGORITHMS.md: no published value for SmolLM2; "about 1.0"
MAX_FITTED = 8                # models whose fitted threshold is kept in memory

# (question, reference answer): plain Q&A and a few code snippets, written for this project.
REFERENCES: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many days are there in a week?", "There are seven days in a week."),
    ("What do plants need to grow?",
     "Plants need sunlight, water, air and nutrients from the soil to grow."),
    ("Why is the sky blue?",
     "The sky looks blue because air scatters blue light from the sun more than red light."),
    ("What is 12 plus 30?", "12 plus 30 is 42."),
    ("Name three primary colors.", "The three primary colors are red, blue and yellow."),
    ("Write a Python function that returns the sum of a list of numbers.",
     "def total(numbers):\n    result = 0\n    for n in numbers:\n        result += n\n    return result"),
    ("Write a Python function that checks whether a number is even.",
     "def is_even(n):\n    return n % 2 == 0"),
    ("Write a Python function that reverses a string.",
     "def reverse(text):\n    return text[::-1]"),
)


@dataclass(frozen=True)
class Fit:
    threshold: float              # nats; pause when a step's entropy >= threshold
    weight: float                 # logistic slope on entropy (negative when entropy predicts errors)
    bias: float
    cut: float                    # the probability cut chosen
    balanced_accuracy: float
    observations: int
    rank1: int                    # observations where the reference token was the argmax
    seconds: float = 0.0
    fallback: bool = False        # entropy did not predict errors: FALLBACK_THRESHOLD was used

    def words(self) -> str:
        if self.fallback:
            return (f"Threshold {self.threshold:.3f} nats (fallback: on {self.observations} reference tokens "
                    f"entropy did not predict rank-1 errors).")
        return (f"Threshold {self.threshold:.3f} nats, fitted for this model on {self.observations} reference "
                f"tokens ({self.rank1} ranked 1): P(rank 1) = sigmoid({self.weight:.2f} H + {self.bias:.2f}), "
                f"pausing where P(rank 1) < {self.cut:.2f} (a probability), balanced accuracy "
                f"{self.balanced_accuracy:.2f}.")


def _prompt_ids(tokenizer, question: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                            add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer.encode(f"Question: {question}\nAnswer:", add_special_tokens=False)]


def observations(model, tokenizer, references=REFERENCES) -> tuple[torch.Tensor, torch.Tensor]:
    """(entropy, rank-1) at every reference answer token, teacher-forced: one pass per reference."""
    entropies, correct = [], []
    for question, answer in references:
        prompt = _prompt_ids(tokenizer, question)
        target = [int(i) for i in tokenizer.encode(answer, add_special_tokens=False)]
        ids = torch.tensor([prompt + target], device=next(model.parameters()).device)
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].double().cpu()
        logp = torch.log_softmax(logits, -1)
        entropies.append(-(logp.exp() * logp).nan_to_num().sum(-1))
        correct.append(logits.argmax(-1) == torch.tensor(target))
    return torch.cat(entropies), torch.cat(correct)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1.0, iterations: int = 50) -> tuple[float, float]:
    """Class-balanced logistic regression P(y=1 | x) = sigmoid(w x + b) by Newton's method: each class
    weighs n / (2 n_class) per example; L2 penalty l2/2 * w^2 on the slope (sklearn's C = 1/l2)."""
    x, y = x.double(), y.double()
    n, pos = len(y), float(y.sum())
    if pos in (0.0, n):
        raise ValueError("both classes are needed to fit a threshold")
    weights = torch.where(y > 0, n / (2 * pos), n / (2 * (n - pos)))
    X = torch.stack([x, torch.ones_like(x)], 1)
    theta = torch.zeros(2, dtype=torch.float64)
    penalty = torch.tensor([l2, 0.0], dtype=torch.float64)
    for _ in range(iterations):
        p = torch.sigmoid(X @ theta)
        grad = X.T @ (weights * (p - y)) + penalty * theta
        hess = (X.T * (weights * p * (1 - p))) @ X + torch.diag(penalty) + 1e-12 * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        theta = theta - step
        if float(step.abs().max()) < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def balanced_accuracy(predicted: torch.Tensor, y: torch.Tensor) -> float:
    y = y.bool()
    return 0.5 * (float((predicted & y).sum()) / max(1, int(y.sum()))
                  + float((~predicted & ~y).sum()) / max(1, int((~y).sum())))


def fit_threshold(x: torch.Tensor, y: torch.Tensor) -> Fit:
    """Fit the logistic model, choose the probability cut (0.01 .. 0.99, as in the authors' script)
    that maximises balanced accuracy, and return the entropy at which P(rank 1) equals that cut."""
    w, b = fit_logistic(x, y)
    y = y.bool()
    if not w < 0:
        return Fit(FALLBACK_THRESHOLD, w, b, float("nan"), float("nan"), len(y), int(y.sum()), fallback=True)
    p = torch.sigmoid(w * x.double() + b)
    best_cut, best = 0.5, -1.0
    for k in range(1, 100):
        cut = k / 100
        score = balanced_accuracy(p >= cut, y)
        if score > best + 1e-12:
            best_cut, best = cut, score
    threshold = (math.log(best_cut / (1 - best_cut)) - b) / w
    return Fit(max(0.0, threshold), w, b, best_cut, best, len(y), int(y.sum()))


_FITTED: "weakref.WeakKeyDictionary[torch.nn.Module, Fit]" = weakref.WeakKeyDictionary()


def fitted(model, tokenizer) -> Fit:
    """The threshold fitted for `model`, computed once per model object (at most MAX_FITTED kept)."""
    known = _FITTED.get(model)
    if known is None:
        start = time.perf_counter()
        x, y = observations(model, tokenizer)
        try:
            fit = fit_threshold(x, y)
        except ValueError:       # one class only: nothing to separate
            fit = Fit(FALLBACK_THRESHOLD, 0.0, 0.0, float("nan"), float("nan"), len(y), int(y.sum()), fallback=True)
        known = Fit(**{**fit.__dict__, "seconds": time.perf_counter() - start})
        while len(_FITTED) >= MAX_FITTED:
            _FITTED.pop(next(iter(_FITTED.keys())))
        _FITTED[model] = known
    return known


if __name__ == "__main__":
    import sys

    from playground.models import load_model

    loaded = load_model(sys.argv[1] if len(sys.argv) > 1 else "embedded")
    print(fitted(loaded.model, loaded.tokenizer).words())
