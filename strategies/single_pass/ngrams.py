"""Interpolated n-gram statistics over token ids, for superposed decoding's re-scoring.

Tables are counts of (context, next token) for context lengths 1..5 (orders 2-6), built from token id
sequences tokenised with the run's OWN tokenizer. They are kept as sorted uint64 hashes in numpy arrays
(a few MB for a few hundred thousand tokens, where Python dicts of tuples would take hundreds), and a
look-up of every (draft, candidate) pair of a step is a handful of vectorised `searchsorted` calls.

P_n(v | context) = count(context, v) / count(context); a context never seen at order n is skipped (it
adds nothing), as in the reference code's interpolation: png(v | d) = sum_n lambda_n * P_n(v | last n-1
tokens of draft d). Counts from several tables (the shipped corpus, the prompt, the user's own text)
add up.

The shipped corpus (playground/corpus/) is tokenised lazily, once per tokenizer, and cached in memory
(a bounded LRU of tokenizers).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

CORPUS_DIR = Path(__file__).resolve().parents[2] / "playground" / "corpus"
CORPUS_FILES = ("python_reference.txt",)
MAX_CONTEXT = 5                       # orders 2..6
_BASE = np.uint64(1_000_003)          # hash multiplier (wrapping uint64 arithmetic)
_CACHE_SIZE = 4                       # tokenizers whose corpus tables are kept


def _hashes(tokens: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every window: (context hash, context+next hash), for windows of `context` + 1 tokens.
    A separator (-1) inside a window makes it unmatchable by any real query (ids are >= 0)."""
    n = len(tokens) - context
    if n <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    shifted = (tokens + 1).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = np.zeros(n, np.uint64)
        for j in range(context):
            h = h * _BASE + shifted[j:j + n]
        full = h * _BASE + shifted[context:context + n]
    return h, full


def _query_hash(context: Sequence[int]) -> np.uint64:
    with np.errstate(over="ignore"):
        h = np.uint64(0)
        for t in context:
            h = h * _BASE + np.uint64(int(t) + 1)
    return h


class NGramTable:
    """Sorted context / (context, next) hashes for context lengths 1..MAX_CONTEXT of some token sequences."""

    def __init__(self, sequences: Iterable[Sequence[int]]):
        joined: list[int] = []
        for seq in sequences:
            joined.extend(int(t) for t in seq)
            joined.append(-1)                 # documents do not run into each other
        tokens = np.asarray(joined, dtype=np.int64)
        self.tokens = len(joined) - joined.count(-1) if joined else 0
        self.contexts: dict[int, np.ndarray] = {}
        self.pairs: dict[int, np.ndarray] = {}
        for c in range(1, MAX_CONTEXT + 1):
            h, full = _hashes(tokens, c)
            self.contexts[c], self.pairs[c] = np.sort(h), np.sort(full)

    def counts(self, context_hash: np.uint64, pair_hashes: np.ndarray, c: int) -> tuple[int, np.ndarray]:
        """count(context) and count(context, v) for each candidate v's pair hash."""
        ctx, pairs = self.contexts[c], self.pairs[c]
        total = int(np.searchsorted(ctx, context_hash, "right") - np.searchsorted(ctx, context_hash, "left"))
        if total == 0:
            return 0, np.zeros(len(pair_hashes), np.int64)
        return total, np.searchsorted(pairs, pair_hashes, "right") - np.searchsorted(pairs, pair_hashes, "left")


class NGramModel:
    """Interpolated n-gram probabilities from several tables (counts add up)."""

    def __init__(self, tables: Sequence[NGramTable], weights: Sequence[float]):
        if len(weights) > MAX_CONTEXT:
            raise ValueError(f"at most {MAX_CONTEXT} interpolation weights (orders 2..{MAX_CONTEXT + 1})")
        self.tables = [t for t in tables if t.tokens]
        self.weights = [float(w) for w in weights]

    def probs(self, history: Sequence[int], candidates: Sequence[int]) -> np.ndarray:
        """png(v | history) for each candidate v: sum over context lengths c of lambda_c * P(v | last c
        tokens), contexts never seen skipped. 0 where no seen context predicts v."""
        cand = np.asarray([int(v) + 1 for v in candidates], dtype=np.uint64)
        out = np.zeros(len(cand), dtype=np.float64)
        for c, weight in enumerate(self.weights, start=1):
            if weight == 0 or len(history) < c:
                continue
            h = _query_hash(history[-c:])
            with np.errstate(over="ignore"):
                pair_hashes = h * _BASE + cand
            total, hits = 0, np.zeros(len(cand), np.int64)
            for table in self.tables:
                t, k = table.counts(h, pair_hashes, c)
                total += t
                hits = hits + k
            if total:
                out += weight * hits / total
        return out


_CORPUS_TABLES: "OrderedDict[object, NGramTable]" = OrderedDict()
_LOCK = threading.Lock()


def corpus_text() -> list[str]:
    """The shipped corpus as paragraphs (blank-line separated)."""
    paragraphs: list[str] = []
    for name in CORPUS_FILES:
        text = (CORPUS_DIR / name).read_text(encoding="utf-8")
        paragraphs.extend(p.strip() for p in text.split("\n\n") if p.strip())
    return paragraphs


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _tokenizer_key(tokenizer) -> object:
    name = getattr(tokenizer, "name_or_path", "") or ""
    return (type(tokenizer).__qualname__, name, len(tokenizer) if hasattr(tokenizer, "__len__") else None,
            id(tokenizer) if not name else 0)


def corpus_table(tokenizer) -> NGramTable:
    """The shipped corpus tokenised with `tokenizer`, built once per tokenizer (bounded LRU cache)."""
    key = _tokenizer_key(tokenizer)
    with _LOCK:
        if key in _CORPUS_TABLES:
            _CORPUS_TABLES.move_to_end(key)
            return _CORPUS_TABLES[key]
    table = NGramTable(encode(tokenizer, p) for p in corpus_text())
    with _LOCK:
        _CORPUS_TABLES[key] = table
        while len(_CORPUS_TABLES) > _CACHE_SIZE:
            _CORPUS_TABLES.popitem(last=False)
    return table
