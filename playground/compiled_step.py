"""A compiled decode step, as gpt-fast compiles its own: torch.compile over the whole step; and a compiled
verification pass, the same layers over a few tokens with a mask (a draft's chain or tree).

A one-token step is ~450 small operations (norms, rotary, attention, residuals) between the 121 weight
products; eagerly each pays Python and dispatcher overhead and a thread fork, about a third of the
step on a 2-core CPU. Compiled, the operations between products are fused into a few C++ loops. The
products are calls of low_bit.cpp's kernel where the weights are exact low-bit codes (the embedded model:
low_bit.py; a step 6.4-6.9 ms instead of 12-14); otherwise torch's compiler turns each one-row product
(written here as cpu_linear.split_linear's row-split batched product) into its own vectorised reduction
loops, one OpenMP region per layer. Attention (SDPA) is called between them.

The cache is the in-place one (kv_cache.py): the step writes its key and value rows into each layer's
buffer at the step's position and attends over the first length + 1 rows; one compilation with
symbolic lengths and capacities serves every context length and every run.

Used by lean_forward.forward for the plain one-token pass (one sequence, no mask, no positions,
float32 on the CPU), and only once `prepare` has compiled it (60 s on 2 cores the first time, ~9 s
from torch's on-disk cache after that; the pass below as much again: 72 s, ~9 s).

The verification pass is a second graph, symbolic in its token count (2 to MAX_PASS_ROWS, one compile for
all): a draft's tokens on top of a cached context, with the method's additive mask and rotary positions
(a tree's nodes sit at their depths) or, without them, the causal chain. Eagerly such a pass pays the same
per-operation overhead the eager step does. On the embedded model, same process, best of 5, after 32 / 640
tokens (ms, compiled vs eager): 2 tokens 22.0 / 28.9 vs 28.5 / 42.6, 4 tokens 33.7 / 43.5 vs 35.4 / 48.3, with the
one-token step at 18.3 / 23.1. Its products stay torch's batched product (with a symbolic row count the
compiler calls it rather than writing its own loops), which is why a 2-token pass still costs ~1.2x a step.
Prompts (an empty cache), batches and bigger passes stay eager. Logits differ from the eager step by float
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

from . import cpu_linear, lean_forward, low_bit
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
        # Each product's weight as exact low-bit codes where models.lay_out found them (low_bit.py), else None.
        self.codes = [tuple(low_bit.codes_of(w) for w, _ in (p.qkv, p.o, p.gate_up, p.down)) for p in self.plans]
        self.head_codes = low_bit.codes_of(model.lm_head.weight)
        # With codes every product of a pass up to low_bit.MAX_ROWS tokens is the codes' kernel, compiled or not
        self.max_pass_rows = low_bit.MAX_ROWS if self.head_codes is not None else MAX_PASS_ROWS
        # Static but for the lengths marked in __call__. Without guards: dynamo's checks of ~260 input tensors
        # cost 0.7 ms a step; the code is this model's own (own_copy), and `takes` admits only the inputs
        # the graph was made for.
        unguarded = {"guard_filter_fn": torch.compiler.skip_all_guards_unsafe, "size_asserts": False}
        self.fn = torch.compile(types.MethodType(own_copy(CompiledStep._step), self), fullgraph=True, options=unguarded)
        self.fn_pass = torch.compile(types.MethodType(own_copy(CompiledStep._pass), self), fullgraph=True,
                                     options=unguarded)
        self.ready = False
        self.ready_shapes = False
        self.ready_pass = False      # the verification pass compiled (after the step: `compile`)
        self.compile_s: float | None = None
        # cos / sin by position, (positions, 1, 1, 1, head_dim) each, made at first use (rotary); a rotary
        # embedding that changes with the length (dynamic, longrope: transformers' dynamic_rope_update) is
        # called every step instead
        rope = getattr(model.model.rotary_emb, "rope_type", "default")
        self.static_rope = "dynamic" not in rope and rope != "longrope"
        self.table: tuple[torch.Tensor, torch.Tensor] | None = None

    def _linear(self, x, weight, bias, codes: low_bit.Codes | None):
        if codes is not None:                   # the weight as its exact low-bit codes (low_bit.py)
            out = codes.linear(x)
        else:
            out = cpu_linear.split_linear(x, weight, cpu_linear.parts_for(weight.shape[0], self.threads))
        return out if bias is None else out + bias

    def _step(self, token, cos, sin, position, length, keys: list[torch.Tensor], values: list[torch.Tensor]):
        """token (1, 1); cos, sin (1, 1, 1, head_dim) at the step's position; position (1,) long;
        length: any tensor of shape (past + 1,), whose size is the rows attended over; keys[i], values[i]
        (1, kv heads, capacity, head_dim) layer i's buffers, written at `position`. Returns logits (1, 1, V) and
        the hidden states (layers + 1, 1, 1, hidden) in transformers' order (the embedding, each layer's output,
        the last one normalised): ~70 KB written a step, so a pass that asks for them (DEL's logit lens) stays
        compiled."""
        return self._layers(token, cos, sin, position, length.shape[0], None, keys, values)

    def _pass(self, tokens, cos, sin, position, mask, keys: list[torch.Tensor], values: list[torch.Tensor]):
        """tokens (1, n); cos, sin (1, 1, n, head_dim) at each token's rotary position; position (n,) long, the
        cache rows written (past .. past + n - 1); mask (1, 1, n, past + n) additive; keys, values as `_step`.
        Returns logits (1, n, V) and the hidden states (layers + 1, 1, n, hidden)."""
        return self._layers(tokens, cos, sin, position, mask.shape[-1], mask, keys, values)

    def _layers(self, tokens, cos, sin, position, rows, mask, keys, values):
        inner = self.model.model
        x = F.embedding(tokens, inner.embed_tokens.weight)                      # (1, n, hidden)
        n = tokens.shape[1]
        hidden = [x]
        for plan, codes, k_buffer, v_buffer in zip(self.plans, self.codes, keys, values):
            h = F.rms_norm(x, plan.input_norm.weight.shape, plan.input_norm.weight, plan.input_norm.variance_epsilon)
            qkv = self._linear(h, *plan.qkv, codes[0]).view(1, n, -1, plan.head_dim).transpose(1, 2)
            qk = qkv[:, :plan.q_heads + plan.kv_heads]
            qk = qk * cos + lean_forward.rotate_half(qk) * sin
            k_buffer.index_copy_(2, position, qk[:, plan.q_heads:])
            v_buffer.index_copy_(2, position, qkv[:, plan.q_heads + plan.kv_heads:])
            out = F.scaled_dot_product_attention(qk[:, :plan.q_heads], k_buffer[:, :, :rows], v_buffer[:, :, :rows],
                                                 attn_mask=mask, scale=plan.scaling,
                                                 enable_gqa=True)   # True with equal heads too: a factor of 1
            x = x + self._linear(out.transpose(1, 2).reshape(1, n, -1), *plan.o, codes[1])
            h = F.rms_norm(x, plan.post_norm.weight.shape, plan.post_norm.weight, plan.post_norm.variance_epsilon)
            gate, up = self._linear(h, *plan.gate_up, codes[2]).split(plan.gate_out, -1)
            x = x + self._linear(F.silu(gate) * up, *plan.down, codes[3])
            hidden.append(x)
        x = F.rms_norm(x, inner.norm.weight.shape, inner.norm.weight, inner.norm.variance_epsilon)
        hidden[-1] = x
        head = self.model.lm_head
        return self._linear(x, head.weight, head.bias, self.head_codes), torch.stack(hidden)

    def rotary(self, position: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (1, 1, 1, head_dim) at `position`, `like`'s dtype: rows of a table the model's own rotary
        embedding made once (again, twice as long, when outgrown). The same numbers as calling it for the one
        position (each entry is cos or sin of position * inv_freq, element by element), without its dozen
        operations a step (~0.15 ms)."""
        if not self.static_rope:
            cos, sin = self.model.model.rotary_emb(like, torch.tensor([[position]]))
            return cos[:, None], sin[:, None]
        self._grow_table(position, like)
        return self.table[0][position], self.table[1][position]

    def rotary_rows(self, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (1, 1, n, head_dim) at positions (n,) long, from the same table."""
        if not self.static_rope:
            cos, sin = self.model.model.rotary_emb(like, positions[None])
            return cos[:, None], sin[:, None]
        self._grow_table(int(positions.max()), like)
        n = positions.shape[0]
        return self.table[0][positions].view(1, 1, n, -1), self.table[1][positions].view(1, 1, n, -1)

    def _grow_table(self, position: int, like: torch.Tensor) -> None:
        if self.table is None or self.table[0].shape[0] <= position:
            cos, sin = self.model.model.rotary_emb(like, torch.arange(max(2 * (position + 1), 1024))[None])
            self.table = cos[0, :, None, None, None], sin[0, :, None, None, None]     # (positions, 1, 1, 1, head_dim)

    def takes(self, input_ids, cache, **kwargs) -> bool:
        """Whether this pass is the plain one-token step the compiled graph computes."""
        return (self.ready and input_ids is not None and tuple(input_ids.shape) == (1, 1)
                and isinstance(cache, GrowingCache) and torch.get_num_threads() == self.threads
                and kwargs.get("attention_mask") is None and kwargs.get("position_ids") is None
                and kwargs.get("inputs_embeds") is None
                and all(type(layer) is GrowingLayer for layer in cache.layers)
                and len(cache.layers) == len(self.plans))

    def takes_pass(self, input_ids, cache, attention_mask=None, position_ids=None, inputs_embeds=None) -> bool:
        """Whether this pass is a verification pass the second graph computes: 2 to max_pass_rows tokens of
        one sequence on a cached context, with no mask or a (1, 1, n, past + n) one, no positions or (1, n)."""
        if not (self.ready_pass and input_ids is not None and input_ids.dim() == 2 and input_ids.shape[0] == 1
                and 2 <= input_ids.shape[1] <= self.max_pass_rows and inputs_embeds is None
                and isinstance(cache, GrowingCache) and torch.get_num_threads() == self.threads
                and len(cache.layers) == len(self.plans) and all(type(layer) is GrowingLayer for layer in cache.layers)):
            return False
        n, past = input_ids.shape[1], cache.get_seq_length()
        return (past > 0 and (position_ids is None or tuple(position_ids.shape) == (1, n))
                and (attention_mask is None or (tuple(attention_mask.shape) == (1, 1, n, past + n)
                                                and attention_mask.dtype in (torch.bool, torch.float32))))

    def __call__(self, input_ids: torch.Tensor, cache: GrowingCache) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (1, 1, V) of the step after `cache`, whose layers gain the step's rows, and the hidden
        states stacked (layers + 1, 1, 1, hidden) in transformers' order."""
        past = self._reserve(cache, 1)
        position = torch.tensor([past])
        cos, sin = self.rotary(past, cache.layers[0].buffers[0])
        length = torch.empty(past + 1, dtype=torch.int8)
        keys, values = self._buffers(cache, not self.ready_shapes)
        if not self.ready_shapes:        # symbolic from the first compile: one graph for every length and capacity
            torch._dynamo.mark_dynamic(length, 0)
        logits, hidden = self.fn(_inference(input_ids), cos, sin, position, length, keys, values)
        self._hold(cache, past + 1)
        return logits, hidden

    def verify(self, input_ids: torch.Tensor, cache: GrowingCache, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The pass `takes_pass` admits: logits (1, n, V) and hidden states (layers + 1, 1, n, hidden); the cache
        gains the n rows. attention_mask additive or boolean (True: may attend), else causal; position_ids
        the rotary positions, else past .. past + n - 1."""
        n = input_ids.shape[1]
        past = self._reserve(cache, n)
        like = cache.layers[0].buffers[0]
        position = torch.arange(past, past + n)
        cos, sin = self.rotary_rows(position if position_ids is None else position_ids[0], like)
        if attention_mask is None:
            attention_mask = lean_forward.causal_mask(n, past, like.dtype)
        attention_mask = lean_forward.additive(attention_mask, like.dtype)
        first = not self.ready_pass
        keys, values = self._buffers(cache, first)
        if first:                        # symbolic in the token count and the context from the first compile
            for tensor, dims in ((input_ids, (1,)), (cos, (2,)), (sin, (2,)), (position, (0,)), (attention_mask, (2, 3))):
                for dim in dims:
                    torch._dynamo.mark_dynamic(tensor, dim)
        logits, hidden = self.fn_pass(_inference(input_ids), cos, sin, position, _inference(attention_mask), keys, values)
        self._hold(cache, past + n)
        return logits, hidden

    @staticmethod
    def _reserve(cache: GrowingCache, n: int) -> int:
        past = cache.get_seq_length()
        if past == 0:
            raise ValueError("the compiled step continues a cached prompt")
        for layer in cache.layers:
            layer.reserve(past + n)
        return past

    @staticmethod
    def _buffers(cache: GrowingCache, symbolic: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        keys, values = [layer.buffers[0] for layer in cache.layers], [layer.buffers[1] for layer in cache.layers]
        if symbolic:                     # one graph for every capacity
            for buffer in keys + values:
                torch._dynamo.mark_dynamic(buffer, 2)
        return keys, values

    @staticmethod
    def _hold(cache: GrowingCache, rows: int) -> None:
        for layer in cache.layers:
            layer.rows = rows            # keys and values: the buffers' first `rows` rows, made when read

    def compile(self) -> float:
        """Compile by running the step and the pass on a throw-away cache (two sizes each, so the graphs
        are symbolic in them from the start); returns the seconds it took."""
        start = time.perf_counter()
        cache = GrowingCache(self.model.config)
        with torch.inference_mode():
            lean_forward.forward(self.model, torch.tensor([[1, 2, 3]]), cache)
            self.ready = True
            for token in (4, 5):
                self(torch.tensor([[token]]), cache)
                self.ready_shapes = True
            for tokens in ([6, 7], [8, 9, 10]):
                self.verify(torch.tensor([tokens]), cache)
                self.ready_pass = True
        self.compile_s = time.perf_counter() - start
        return self.compile_s


# The biggest pass the second graph takes without low-bit codes (with them: low_bit.MAX_ROWS). Its products stay
# the row-split batched product, which beyond a few rows loses to the oneDNN product the eager pass then uses
# (cpu_linear.py): same process, best of 5, after 32 / 640 tokens, compiled vs eager, ms: 8 tokens 47 / 61 vs
# 51 / 87, but 11 tokens 78 / 103 vs 54 / 82.
MAX_PASS_ROWS = 8


def _inference(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` as an inference tensor, as the graphs were compiled with: their guards compare inputs' dispatch
    keys, and a token or mask tensor a method made outside inference mode recompiled the pass graph (tens of
    seconds, every few rounds: prompt lookup ran at 0.31x greedy on the grounded prompts until this)."""
    if tensor.is_inference():
        return tensor
    with torch.inference_mode():
        return tensor.clone()

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
                step.ready = step.ready_pass = False
                return None
            log.info("decode step compiled in %.1f s", step.compile_s)
            _STEPS[model] = step
    return step


@contextmanager
def paused(model):
    """The eager step and pass for a while (the roofline report times both)."""
    step = _STEPS.get(model)
    was = (step.ready, step.ready_pass) if step is not None else None
    if step is not None:
        step.ready = step.ready_pass = False
    try:
        yield
    finally:
        if step is not None:
            step.ready, step.ready_pass = was
