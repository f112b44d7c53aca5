"""A KV cache that grows in place: each layer's keys and values are views of a buffer with room to spare.

transformers' `DynamicLayer` appends by `torch.cat`, a copy of the whole cache at every step: after 640
tokens the embedded model copies ~29 MB a step (30 layers x keys and values), a few percent of a
decode step on a CPU, growing with the context. Here a step writes only its own rows; the buffer is
re-made (1.5x bigger, and only then copied) when it is full.

Everything else keeps working because `keys` / `values` stay what DynamicLayer's are, tensors of shape
(batch, heads, seq, head_dim): cropping slices them (still a prefix of the buffer), tree verification
writes accepted rows in place (strategies/speculative/tree.py keep_path), and anything that replaces
them with a new tensor (beam reordering, lanes' gathers) is noticed at the next update, which copies
them into a fresh buffer.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

SPARE = 256          # rows of room a new buffer has beyond what it holds (and at least half as many again)


class GrowingLayer(DynamicLayer):
    """DynamicLayer whose update writes into a buffer instead of concatenating.

    The compiled step (compiled_step.py) writes its row into the buffers itself and only records how many
    rows they hold (`rows`): keys and values are then made, as the buffers' prefix, when first read. Made
    after every step, those 60 views cost ~0.2 ms a step (1 % of it), in caches the step's weights had just
    flushed; a plain decode loop reads none of them."""

    buffers: tuple[torch.Tensor, torch.Tensor] | None = None      # (keys, values), (batch, heads, capacity, dim)
    rows: int | None = None          # set by the compiled step: keys / values are the buffers' first `rows` rows

    @property
    def keys(self) -> torch.Tensor | None:
        if self.rows is not None:
            self._views()
        return self._keys

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        if self.rows is not None:
            self._views()            # values too: they must not be left to a later, stale `rows`
        self._keys = value

    @property
    def values(self) -> torch.Tensor | None:
        if self.rows is not None:
            self._views()
        return self._values

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        if self.rows is not None:
            self._views()
        self._values = value

    def _views(self) -> None:
        rows, self.rows = self.rows, None
        self._keys, self._values = self.buffers[0][:, :, :rows], self.buffers[1][:, :, :rows]

    def get_seq_length(self) -> int:
        return self.rows if self.rows is not None else super().get_seq_length()

    def _holds(self, key_states: torch.Tensor, needed: int) -> bool:
        """Whether keys / values are still a prefix of the buffers, with room for `needed` rows."""
        if self.buffers is None:
            return False
        buffer = self.buffers[0]
        return (buffer.shape[2] >= needed and self.keys.data_ptr() == buffer.data_ptr()
                and self.values.data_ptr() == self.buffers[1].data_ptr()
                and self.keys.stride() == buffer.stride() and self.keys.shape[:2] == key_states.shape[:2]
                and buffer.dtype == key_states.dtype and buffer.device == key_states.device)

    def _regrow(self, keys_like: torch.Tensor, values_like: torch.Tensor, needed: int) -> None:
        """New buffers for `needed` rows and room to spare, shaped like the given states, holding the rows
        kept so far; keys and values become their prefix."""
        length = self.get_seq_length()
        kept = self.keys, self.values        # read (made, after a compiled step) before the buffers change
        capacity = max(needed + SPARE, needed * 3 // 2)
        self.buffers = tuple(torch.empty(*like.shape[:2], capacity, like.shape[-1], dtype=like.dtype, device=like.device)
                             for like in (keys_like, values_like))
        if length:
            self.buffers[0][:, :, :length] = kept[0]
            self.buffers[1][:, :, :length] = kept[1]
        self.keys, self.values = self.buffers[0][:, :, :length], self.buffers[1][:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """key_states, value_states (batch, heads, new, head_dim): appended; returns the whole keys and values."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        needed = length + key_states.shape[-2]
        if not self._holds(key_states, needed):
            self._regrow(key_states, value_states, needed)
        keys, values = self.buffers
        keys[:, :, length:needed] = key_states
        values[:, :, length:needed] = value_states
        self.keys, self.values = keys[:, :, :needed], values[:, :, :needed]
        return self.keys, self.values

    def reserve(self, needed: int) -> None:
        """Room for `needed` rows, keys and values still the buffers' prefix (the compiled step,
        compiled_step.py, writes its rows straight into the buffers). While `rows` is set nothing has
        replaced them since that step (setting keys or values clears it), so only the room is checked."""
        if self.rows is not None and self.buffers[0].shape[2] >= needed:
            return
        if not self._holds(self.keys, needed):
            self._regrow(self.keys, self.values, needed)

    def reset(self) -> None:
        self.rows = None
        self.buffers = None
        super().reset()


class GrowingCache(DynamicCache):
    """DynamicCache(config=...) whose full-attention layers grow in place (sliding-window layers, which
    drop old rows, are left as transformers makes them)."""

    def __init__(self, config):
        super().__init__(config=config)
        self.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in self.layers]
        if not self.layers:
            self.layer_class_to_replicate = GrowingLayer
