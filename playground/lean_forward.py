"""A lean forward pass for Llama-architecture models, in the spirit of gpt-fast.

transformers' `LlamaForCausalLM.__call__` spends a third of a one-token step on a 2-core CPU
outside the matrix multiplies: mask building, hooks, kwargs plumbing, output dataclasses. This
is the same computation over the model's OWN weights and KV cache (a transformers
`DynamicCache`, so cropping, `keep_path`, beam reordering all keep working), written straight
through: embed -> 30 x (norm, attention, norm, MLP) -> norm -> head.

It is the same math in the same op order; decode-step logits are bitwise equal to transformers'
on the embedded model (tests/test_lean_forward.py checks equality on the tiny models and
closeness on the embedded one, for prefill, causal chains, tree masks, batches and hidden
states). Any model it does not recognise, or PLAYGROUND_FORWARD=transformers, takes the
transformers path.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import compiled_step, cpu_linear
from .config import settings


@dataclass
class LeanOutput:
    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


def supports(model) -> bool:
    """Llama layout with the plain pieces this file implements (no tensor-parallel split, no
    sliding window, silu MLP, biases handled by the Linear modules themselves)."""
    config = getattr(model, "config", None)
    if config is None or config.model_type != "llama" or getattr(config, "pretraining_tp", 1) != 1:
        return False
    if config.hidden_act != "silu" or getattr(config, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
        return False
    inner = getattr(model, "model", None)
    if getattr(model, "lm_head", None) is None:          # a sequence classifier has a score head instead
        return False
    return all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb"))


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True: may attend) as the additive one SDPA adds to scores; an additive one unchanged."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def causal_mask(n: int, past: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Additive (1, 1, n, past + n) mask: every new token sees the cache and the new tokens up to itself."""
    mask = torch.zeros(n, past + n, dtype=dtype, device=device)
    mask[:, past:] = torch.triu(torch.full((n, n), torch.finfo(dtype).min, dtype=dtype, device=device), 1)
    return mask[None, None]


# Layers fed the same input (q | k | v, gate | up) multiply one stacked weight: one product, one
# thread fork, instead of three or two. Stacked once per layer; the layers' own weights then become
# views into the stack, so memory does not grow and transformers' path reads the same numbers.
_STACKED: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[torch.Tensor, torch.Tensor | None]]" = \
    weakref.WeakKeyDictionary()


def stacked(*linears: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (sum of outs, in), bias or None) of Linear layers fed the same input."""
    known = _STACKED.get(linears[0])
    if known is not None and known[0].data_ptr() == linears[0].weight.data_ptr():
        return known                                   # still the views made below (not moved or reloaded)
    with torch.inference_mode(False), torch.no_grad():   # plain tensors: the model stays usable outside inference
        weight = torch.cat([layer.weight for layer in linears])
        bias = None if all(layer.bias is None for layer in linears) else torch.cat(
            [layer.bias if layer.bias is not None else weight.new_zeros(layer.out_features) for layer in linears])
        start = 0
        for layer in linears:
            layer.weight.data = weight[start:start + layer.out_features]
            start += layer.out_features
    _STACKED[linears[0]] = (weight, bias)
    return weight, bias


def rms_norm(norm, x):
    """LlamaRMSNorm as one call for float32 (the module computes in float32, so for other dtypes it
    rounds differently: those go through the module)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
    return norm(x)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass(frozen=True)
class LayerPlan:
    """One decoder layer as the forward reads it: its stacked weights, norms and head counts, looked up
    once per model. A step reads ~25 module attributes per layer otherwise (nn.Module.__getattr__ and
    the stack's memo: ~0.8 ms of a 20 ms step on the embedded model)."""
    index: int
    input_norm: torch.nn.Module
    post_norm: torch.nn.Module
    qkv: tuple[torch.Tensor, torch.Tensor | None]          # q | k | v stacked: (q + 2 kv heads) * head_dim rows
    o: tuple[torch.Tensor, torch.Tensor | None]
    gate_up: tuple[torch.Tensor, torch.Tensor | None]      # gate | up stacked
    down: tuple[torch.Tensor, torch.Tensor | None]
    gate_out: int
    q_heads: int
    kv_heads: int
    head_dim: int
    scaling: float

    @classmethod
    def of(cls, index: int, layer) -> "LayerPlan":
        attn, mlp = layer.self_attn, layer.mlp
        head_dim = attn.head_dim
        return cls(index, layer.input_layernorm, layer.post_attention_layernorm,
                   stacked(attn.q_proj, attn.k_proj, attn.v_proj), (attn.o_proj.weight, attn.o_proj.bias),
                   stacked(mlp.gate_proj, mlp.up_proj), (mlp.down_proj.weight, mlp.down_proj.bias),
                   mlp.gate_proj.out_features, attn.q_proj.out_features // head_dim,
                   attn.k_proj.out_features // head_dim, head_dim, attn.scaling)


_PLANS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, list[LayerPlan]]]" = weakref.WeakKeyDictionary()


def _fingerprint(inner) -> tuple:
    """Where the first and last layers' weights live: a model cast, moved or reloaded as a whole gets a
    new plan (checking every layer would cost a third of what the plan saves)."""
    first, last = inner.layers[0], inner.layers[-1]
    return len(inner.layers), first.self_attn.q_proj.weight.data_ptr(), last.mlp.down_proj.weight.data_ptr()


def layer_plans(inner) -> list[LayerPlan]:
    """The plans of `inner.layers`, made once per model."""
    mark = _fingerprint(inner)
    known = _PLANS.get(inner)
    if known is None or known[0] != mark:
        plans = [LayerPlan.of(i, layer) for i, layer in enumerate(inner.layers)]
        known = _PLANS[inner] = (_fingerprint(inner), plans)   # stacking moved the weights into views
    return known[1]


def mlp(linear, plan: LayerPlan, x):
    """LlamaMLP: down(silu(gate(x)) * up(x)), gate and up as one product."""
    gate, up = linear(x, *plan.gate_up).split(plan.gate_out, -1)
    return linear(F.silu(gate) * up, *plan.down)


def attention(linear, plan: LayerPlan, x, cos, sin, cache, mask):
    batch, n, _ = x.shape
    q_heads, kv_heads = plan.q_heads, plan.kv_heads
    qkv = linear(x, *plan.qkv).view(batch, n, -1, plan.head_dim).transpose(1, 2)   # (batch, q + 2 kv heads, n, head_dim)
    # rotary position embedding (transformers' apply_rotary_pos_emb) on the q and k heads at once
    qk = qkv[:, :q_heads + kv_heads]
    qk = qk * cos + rotate_half(qk) * sin
    q, k, v = qk[:, :q_heads], qk[:, q_heads:], qkv[:, q_heads + kv_heads:]
    if cache is not None:
        k, v = cache.update(k, v, plan.index)
    # One query row needs no mask; a prompt on an empty cache is plainly causal; anything else
    # (a chain or a tree on top of the cache) comes with, or gets, an explicit additive mask.
    is_causal = mask is None and n > 1 and k.shape[2] == n
    if mask is None and n > 1 and not is_causal:
        mask = causal_mask(n, k.shape[2] - n, q.dtype, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=plan.scaling,
                                         enable_gqa=k.shape[1] != q.shape[1])
    return linear(out.transpose(1, 2).reshape(batch, n, -1), *plan.o)


def forward(model, input_ids: torch.Tensor, cache=None, attention_mask: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None, logits_to_keep: int = 0,
            output_hidden_states: bool = False, inputs_embeds: torch.Tensor | None = None,
            hidden_rows: int = 0, **_) -> LeanOutput:
    """The transformers call `model(input_ids, cache=, attention_mask=<4-D additive>, position_ids=,
    logits_to_keep=, output_hidden_states=)`, straight through. Hidden states follow transformers'
    convention: embeddings, each layer's un-normalised output, and the last one normalised.
    `inputs_embeds` (batch, n, hidden), with input_ids None, replaces the embedding look-up.
    `hidden_rows` n > 0 without output_hidden_states: hidden_states is just (the last n rows of the last,
    normalised, state,): what an LM head would read there, without holding every layer's rows."""
    step = compiled_step.for_model(model) if cache is not None else None
    if step is not None:
        if step.takes(input_ids, cache, attention_mask=attention_mask, position_ids=position_ids,
                      inputs_embeds=inputs_embeds):
            logits, hidden = step(input_ids, cache)             # the plain one-token step, compiled
        elif step.takes_pass(input_ids, cache, attention_mask, position_ids, inputs_embeds):
            logits, hidden = step.verify(input_ids, cache, attention_mask, position_ids)   # a draft's pass, compiled
        else:
            hidden = None
        if hidden is not None:
            return _compiled_output(logits, hidden, logits_to_keep, output_hidden_states, hidden_rows)
    inner = model.model
    linear = cpu_linear.linear if settings().cpu_linear else F.linear
    if inputs_embeds is not None:
        batch, n = inputs_embeds.shape[:2]
    else:
        batch, n = input_ids.shape
    past = cache.get_seq_length() if cache is not None else 0
    x = inputs_embeds if inputs_embeds is not None else inner.embed_tokens(input_ids)
    if position_ids is None:
        position_ids = torch.arange(past, past + n, device=x.device)[None].expand(batch, n)
    cos, sin = inner.rotary_emb(x, position_ids)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)                    # (batch, 1, n, head_dim): over every head
    if attention_mask is not None:
        attention_mask = additive(attention_mask, x.dtype)
    hidden = [x] if output_hidden_states else None
    for plan in layer_plans(inner):
        x = x + attention(linear, plan, rms_norm(plan.input_norm, x), cos, sin, cache, attention_mask)
        x = x + mlp(linear, plan, rms_norm(plan.post_norm, x))
        if hidden is not None:
            hidden.append(x)
    x = rms_norm(inner.norm, x)
    if hidden is not None:
        hidden[-1] = x
    if hidden is None and hidden_rows:
        hidden = [x[:, -hidden_rows:]]
    head = model.lm_head
    logits = linear(x[:, -logits_to_keep:] if logits_to_keep else x, head.weight, head.bias)
    return LeanOutput(logits, tuple(hidden) if hidden is not None else None)


def _compiled_output(logits, hidden, logits_to_keep: int, output_hidden_states: bool, hidden_rows: int) -> LeanOutput:
    """A compiled graph's logits (1, n, V) and stacked hidden states (layers + 1, 1, n, hidden) as forward returns them."""
    if logits_to_keep:
        logits = logits[:, -logits_to_keep:]
    if output_hidden_states:
        return LeanOutput(logits, hidden.unbind(0))                     # a tuple, as transformers
    return LeanOutput(logits, (hidden[-1][:, -hidden_rows:],) if hidden_rows else None)   # the last, normalised
