"""A compiled one-token decode step, as gpt-fast compiles its own: torch.compile over the whole step.

A one-token step is ~450 small operations (norms, rotary, attention, residuals) between the 121 weight
products; eagerly each pays Python and dispatcher overhead and a thread fork, about a third of the
step on a 2-core CPU. Compiled, the operations between products are fused into a few C++ loops, and so
are the products: torch's compiler turns each one-row product (written here as cpu_linear.split_linear's
row-split batched product) into its own vectorised reduction loops, one OpenMP region per layer, with
attention (SDPA) called between regions.

The cache is the in-place one (kv_cache.py): the step writes its key and value rows into each layer's
buffer at the step's position and attends over the first length + 1 rows; one compilation with
symbolic lengths and capacities serves every context length and every run.

Used by lean_forward.forward for the plain one-token pass only (one sequence, no mask, no positions,
float32 on the CPU), and only once `prepare` has compiled it (~1 minute on 2 cores the first
time, seconds from torch's on-disk cache after that). Logits differ from the eager step by float
rounding (the fused norms sum in another order): ~1e-4 on logits ~20, like the eager path's own
one-row and many-row products; tests/test_compiled_step.py checks closeness and the same greedy tokens.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import types
import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from . import cpu_linear, lean_forward
from .kv_cache import GrowingCache, GrowingLayer

log = logging.getLogger(__name__)


def eligible(model) -> bool:
    """A float32 Llama-layout model (lean_forward.supports) on the CPU."""
    if not lean_forward.supports(model):
        return False
    weight = model.lm_head.weight
    return weight.dtype == torch.float32 and weight.device.type == "cpu"


def own_copy(function):
    """`function` with a code object of its own. Dynamo keeps compiled graphs per code object, so every
    model's step gets one: its graph, compiled without guards, is then never offered another model's
    inputs (a tiny test model's graph once ran on the embedded model's weights)."""
    code = function.__code__.replace(co_name=f"{function.__name__}_{next(_SERIAL)}")
    return types.FunctionType(code, function.__globals__, code.co_name, function.__defaults__, function.__closure__)


_SERIAL = itertools.count()


class CompiledStep:
    """The step for one model and thread count; `__call__` after `compile()` has run."""

    def __init__(self, model):
        self.model = model
        self.threads = torch.get_num_threads()
        self.plans = lean_forward.layer_plans(model.model)
        # Static but for the lengths marked in __call__. Without guards: dynamo's checks of ~260 input tensors
        # cost 0.7 ms a step; the code is this model's own (own_copy), and `takes` admits only the inputs
        # the graph was made for.
        step = types.MethodType(own_copy(CompiledStep._step), self)
        self.fn = torch.compile(step, fullgraph=True, options={"guard_filter_fn": torch.compiler.skip_all_guards_unsafe})
        self.ready = False
        self.ready_shapes = False
        self.compile_s: float | None = None
        # cos / sin by position, (positions, 1, 1, 1, head_dim) each, made at first use (rotary); a rotary
        # embedding that changes with the length (dynamic, longrope: transformers' dynamic_rope_update) is
        # called every step instead
        rope = getattr(model.model.rotary_emb, "rope_type", "default")
        self.static_rope = "dynamic" not in rope and rope != "longrope"
        self.table: tuple[torch.Tensor, torch.Tensor] | None = None

    def _linear(self, x, weight, bias):
        out = cpu_linear.split_linear(x, weight, cpu_linear.parts_for(weight.shape[0], self.threads))
        return out if bias is None else out + bias

    def _step(self, token, cos, sin, position, length, keys: list[torch.Tensor], values: list[torch.Tensor]):
        """token (1, 1); cos, sin (1, 1, 1, head_dim) at the step's position; position (1,) long;
        length: any tensor of shape (past + 1,), whose size is the rows attended over; keys[i], values[i]
        (1, kv heads, capacity, head_dim) layer i's buffers, written at `position`. Returns logits (1, 1, V) and
        the hidden states (1, layers + 1, hidden) in transformers' order (the embedding, each layer's output, the
        last one normalised): ~70 KB written a step, so a pass that asks for them (DEL's logit lens) stays compiled."""
        inner = self.model.model
        x = F.embedding(token, inner.embed_tokens.weight)                       # (1, 1, hidden)
        hidden = [x]
        rows = length.shape[0]
        for plan, k_buffer, v_buffer in zip(self.plans, keys, values):
            h = F.rms_norm(x, plan.input_norm.weight.shape, plan.input_norm.weight, plan.input_norm.variance_epsilon)
            qkv = self._linear(h, *plan.qkv).view(1, 1, -1, plan.head_dim).transpose(1, 2)
            qk = qkv[:, :plan.q_heads + plan.kv_heads]
            qk = qk * cos + lean_forward.rotate_half(qk) * sin
            k_buffer.index_copy_(2, position, qk[:, plan.q_heads:])
            v_buffer.index_copy_(2, position, qkv[:, plan.q_heads + plan.kv_heads:])
            out = F.scaled_dot_product_attention(qk[:, :plan.q_heads], k_buffer[:, :, :rows], v_buffer[:, :, :rows],
                                                 scale=plan.scaling, enable_gqa=True)   # True with equal heads too: a factor of 1
            x = x + self._linear(out.transpose(1, 2).reshape(1, 1, -1), *plan.o)
            h = F.rms_norm(x, plan.post_norm.weight.shape, plan.post_norm.weight, plan.post_norm.variance_epsilon)
            gate, up = self._linear(h, *plan.gate_up).split(plan.gate_out, -1)
            x = x + self._linear(F.silu(gate) * up, *plan.down)
            hidden.append(x)
        x = F.rms_norm(x, inner.norm.weight.shape, inner.norm.weight, inner.norm.variance_epsilon)
        hidden[-1] = x
        return self._linear(x, self.model.lm_head.weight, self.model.lm_head.bias), torch.cat(hidden, 1)

    def rotary(self, position: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (1, 1, 1, head_dim) at `position`, `like`'s dtype: rows of a table the model's own rotary
        embedding made once (again, twice as long, when outgrown). The same numbers as calling it for the one
        position (each entry is cos or sin of position * inv_freq, element by element), without its dozen
        operations a step (~0.15 ms)."""
        rotary = self.model.model.rotary_emb
        if not self.static_rope:
            cos, sin = rotary(like, torch.tensor([[position]]))
            return cos[:, None], sin[:, None]
        if self.table is None or self.table[0].shape[0] <= position:
            cos, sin = rotary(like, torch.arange(max(2 * (position + 1), 1024))[None])     # (1, positions, head_dim)
            self.table = cos[0, :, None, None, None], sin[0, :, None, None, None]
        return self.table[0][position], self.table[1][position]

    def takes(self, input_ids, cache, **kwargs) -> bool:
        """Whether this pass is the plain one-token step the compiled graph computes."""
        return (self.ready and input_ids is not None and tuple(input_ids.shape) == (1, 1)
                and isinstance(cache, GrowingCache) and torch.get_num_threads() == self.threads
                and kwargs.get("attention_mask") is None and kwargs.get("position_ids") is None
                and kwargs.get("inputs_embeds") is None
                and all(type(layer) is GrowingLayer for layer in cache.layers)
                and len(cache.layers) == len(self.plans))

    def __call__(self, input_ids: torch.Tensor, cache: GrowingCache) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (1, 1, V) of the step after `cache`, whose layers gain the step's rows, and the hidden
        states stacked (1, layers + 1, hidden) in transformers' order."""
        past = cache.get_seq_length()
        if past == 0:
            raise ValueError("the compiled step continues a cached prompt")
        for layer in cache.layers:
            layer.reserve(past + 1)
        position = torch.tensor([past])
        cos, sin = self.rotary(past, cache.layers[0].buffers[0])
        length = torch.empty(past + 1, dtype=torch.int8)
        keys, values = [layer.buffers[0] for layer in cache.layers], [layer.buffers[1] for layer in cache.layers]
        if not self.ready_shapes:        # symbolic from the first compile: one graph for every length and capacity
            torch._dynamo.mark_dynamic(length, 0)
            for buffer in keys + values:
                torch._dynamo.mark_dynamic(buffer, 2)
        logits, hidden = self.fn(input_ids, cos, sin, position, length, keys, values)
        for layer in cache.layers:
            layer.rows = past + 1        # keys and values: the buffers' first past + 1 rows, made when read
        return logits, hidden

    def compile(self) -> float:
        """Compile by running the step on a throw-away cache (two lengths, so the graph is symbolic in
        them from the start); returns the seconds it took."""
        start = time.perf_counter()
        cache = GrowingCache(self.model.config)
        with torch.inference_mode():
            lean_forward.forward(self.model, torch.tensor([[1, 2, 3]]), cache)
            self.ready = True
            for token in (4, 5):
                self(torch.tensor([[token]]), cache)
                self.ready_shapes = True
        self.compile_s = time.perf_counter() - start
        return self.compile_s


_STEPS: "weakref.WeakKeyDictionary[torch.nn.Module, CompiledStep]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def for_model(model) -> CompiledStep | None:
    """The model's compiled step once ready (None before, or where it does not apply)."""
    step = _STEPS.get(model)
    return step if step is not None and step.ready else None


def prepare(model) -> CompiledStep | None:
    """Compile the model's step (once per model; later calls return it). None where it does not apply
    or compiling failed (no C++ compiler, an unsupported torch): the eager step then stays in use."""
    if not eligible(model):
        return None
    with _LOCK:
        step = _STEPS.get(model)
        if step is None:
            step = CompiledStep(model)
            try:
                step.compile()
            except Exception as exc:            # the eager path is always there: a failed compile costs nothing else
                log.warning("the decode step was not compiled (%s: %s); the eager step is used",
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                step.ready = False
                return None
            log.info("decode step compiled in %.1f s", step.compile_s)
            _STEPS[model] = step
    return step


@contextmanager
def paused(model):
    """The eager step for a while (the roofline report times both)."""
    step = _STEPS.get(model)
    was = step is not None and step.ready
    if step is not None:
        step.ready = False
    try:
        yield
    finally:
        if step is not None:
            step.ready = was
