"""Cheap draft models that share the target's tokenizer: a model cut after its first N layers.

There is no second SmolLM2 on an offline machine, so the default draft is the embedded model
itself truncated to its first N decoder layers, followed by the model's own final norm and LM
head (a "logit lens" exit). The view shares every weight tensor with the full model: no copy,
no extra memory. Address it as "<model id>@layers=N", e.g. "embedded@layers=8".

The same view is what DEL's self-speculation drafts with (strategies/early_exit.py): the first
N layers of the target compute exactly the keys and values the full model caches for those
layers, so a truncated view can even run on the target's own cache.
"""

from __future__ import annotations

import copy
import re

import torch

TRUNCATED = re.compile(r"^(?P<base>.+)@layers=(?P<layers>\d+)$")


def parse_truncated(model_id: str) -> tuple[str, int] | None:
    """'embedded@layers=8' -> ('embedded', 8); None for an ordinary model id."""
    match = TRUNCATED.match(model_id.strip())
    return (match["base"], int(match["layers"])) if match else None


def truncated_view(model: torch.nn.Module, layers: int) -> torch.nn.Module:
    """A causal LM that runs only `model`'s first `layers` decoder layers, then its norm and head.

    Shallow copies of the outer and inner modules with their own module tables and config: the
    original model is untouched and every parameter is shared. Each kept layer keeps its
    layer_idx, so it reads and writes the same cache slot as in the full model.
    """
    total = model.config.num_hidden_layers
    if not 1 <= layers <= total:
        raise ValueError(f"layers must be between 1 and {total}, got {layers}")
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types[:layers])

    inner = copy.copy(model.model)
    inner._modules = dict(model.model._modules)
    inner.layers = torch.nn.ModuleList(list(model.model.layers[:layers]))
    inner.config = config

    view = copy.copy(model)
    view._modules = dict(model._modules)
    view.model = inner
    view.config = config
    return view
