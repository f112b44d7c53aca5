"""Reading a prompt file: one JSON object per line, so users bench their own workload.

Accepted per line: {"prompt": "...", "category": "..."} (category optional), or Spec-Bench's own
{"turns": ["...", ...], "category": "..."}, of which the first turn is used (a multi-turn chat's
later turns depend on the model's first answer, which differs per model). Blank lines are skipped.
Errors name the line, so a hand-written file is easy to fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MAX_PROMPTS = 1000            # a bench is run by its owner, but a typo'd path should not run for a day
MAX_PROMPT_CHARS = 100_000    # the runner's own limit, said here with the line number


@dataclass(frozen=True)
class BenchPrompt:
    prompt: str
    category: str
    label: str                 # how the prompt is named in the report (its question_id, else its line)


class PromptFileError(ValueError):
    pass


def parse_line(text: str, number: int) -> BenchPrompt | None:
    """One line of the file as a prompt (None for a blank line); number: 1-based, for messages."""
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptFileError(f"line {number}: not JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise PromptFileError(f"line {number}: expected a JSON object, got {type(row).__name__}")
    prompt = row.get("prompt")
    if prompt is None and isinstance(row.get("turns"), list) and row["turns"]:
        prompt = row["turns"][0]
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptFileError(f"line {number}: needs a non-empty \"prompt\" string (or a \"turns\" list)")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PromptFileError(f"line {number}: the prompt is {len(prompt):,} characters; the limit is "
                              f"{MAX_PROMPT_CHARS:,}")
    category = row.get("category", "all")
    if not isinstance(category, str) or not category.strip():
        raise PromptFileError(f"line {number}: \"category\" must be a non-empty string")
    label = str(row.get("question_id", f"line {number}"))
    return BenchPrompt(prompt=prompt, category=category.strip(), label=label)


def read_prompts(path: str | Path) -> list[BenchPrompt]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError(f"cannot read {path}: {exc}") from None
    prompts = [p for number, line in enumerate(lines, 1) if (p := parse_line(line, number)) is not None]
    if not prompts:
        raise PromptFileError(f"{path}: no prompts")
    if len(prompts) > MAX_PROMPTS:
        raise PromptFileError(f"{path}: {len(prompts)} prompts; the limit is {MAX_PROMPTS}")
    return prompts
