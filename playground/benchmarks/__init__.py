"""Prompt files for `python -m playground bench --prompts FILE.jsonl`, and what they are measured with.

The shipped files are public prompts nobody here wrote (Spec-Bench; see NOTICE): speed-ups measured
only on prompts written for the bench say little about anyone else's workload.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
HELD_OUT = HERE / "spec_bench_18.jsonl"       # measured on, never tuned on
TUNE = HERE / "spec_bench_tune_18.jsonl"      # looked at while tuning
