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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from . import row_split
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


def causal_mask(n: int, past: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Additive (1, 1, n, past + n) mask: every new token sees the cache and the new tokens up to itself."""
    mask = torch.zeros(n, past + n, dtype=dtype, device=device)
    mask[:, past:] = torch.triu(torch.full((n, n), torch.finfo(dtype).min, dtype=dtype, device=device), 1)
    return mask[None, None]


def project(linear, module: torch.nn.Linear, x):
    return linear(x, module.weight, module.bias)


def mlp(linear, module, x):
    """LlamaMLP: down(act(gate(x)) * up(x))."""
    return project(linear, module.down_proj, module.act_fn(project(linear, module.gate_proj, x))
                   * project(linear, module.up_proj, x))


def attention(linear, layer_index: int, attn, x, cos, sin, cache, mask):
    batch, n, _ = x.shape
    head_dim = attn.head_dim
    q = project(linear, attn.q_proj, x).view(batch, n, -1, head_dim).transpose(1, 2)
    k = project(linear, attn.k_proj, x).view(batch, n, -1, head_dim).transpose(1, 2)
    v = project(linear, attn.v_proj, x).view(batch, n, -1, head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    if cache is not None:
        k, v = cache.update(k, v, layer_index)
    # One query row needs no mask; a prompt on an empty cache is plainly causal; anything else
    # (a chain or a tree on top of the cache) comes with, or gets, an explicit additive mask.
    is_causal = mask is None and n > 1 and k.shape[2] == n
    if mask is None and n > 1 and not is_causal:
        mask = causal_mask(n, k.shape[2] - n, q.dtype, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=attn.scaling,
                                         enable_gqa=k.shape[1] != q.shape[1])
    return project(linear, attn.o_proj, out.transpose(1, 2).reshape(batch, n, -1))


def forward(model, input_ids: torch.Tensor, cache=None, attention_mask: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None, logits_to_keep: int = 0,
            output_hidden_states: bool = False, inputs_embeds: torch.Tensor | None = None,
            **_) -> LeanOutput:
    """The transformers call `model(input_ids, cache=, attention_mask=<4-D additive>, position_ids=,
    logits_to_keep=, output_hidden_states=)`, straight through. Hidden states follow transformers'
    convention: embeddings, each layer's un-normalised output, and the last one normalised.
    `inputs_embeds` (batch, n, hidden), with input_ids None, replaces the embedding look-up."""
    inner = model.model
    linear = row_split.linear if settings().row_split else F.linear
    if inputs_embeds is not None:
        batch, n = inputs_embeds.shape[:2]
    else:
        batch, n = input_ids.shape
    past = cache.get_seq_length() if cache is not None else 0
    x = inputs_embeds if inputs_embeds is not None else inner.embed_tokens(input_ids)
    if position_ids is None:
        position_ids = torch.arange(past, past + n, device=x.device)[None].expand(batch, n)
    cos, sin = inner.rotary_emb(x, position_ids)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        attention_mask = torch.zeros(attention_mask.shape, dtype=x.dtype, device=x.device).masked_fill(~attention_mask,
                                                                                      torch.finfo(x.dtype).min)
    hidden = [x] if output_hidden_states else None
    for i, layer in enumerate(inner.layers):
        x = x + attention(linear, i, layer.self_attn, layer.input_layernorm(x), cos, sin, cache, attention_mask)
        x = x + mlp(linear, layer.mlp, layer.post_attention_layernorm(x))
        if hidden is not None:
            hidden.append(x)
    x = inner.norm(x)
    if hidden is not None:
        hidden[-1] = x
    logits = project(linear, model.lm_head, x[:, -logits_to_keep:] if logits_to_keep else x)
    return LeanOutput(logits, tuple(hidden) if hidden is not None else None)
