"""Per-call key/value cache of the GPT: one object per generation, never stored on the model.

Buffers are allocated once at their final capacity so a step writes in place instead of
concatenating (which would make decoding quadratic in memory traffic).
"""

from __future__ import annotations

from typing import Optional

import torch


class KVCache:
    """Keys and values of every layer: `keys[i]`, `values[i]` are [B, H, capacity, hd]; the
    first `length` positions are filled.

    `key_valid` ([B, capacity] bool) marks real keys when rows are left-padded to a common
    length; None means every key is real. Positions written later are always real.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], length: int = 0,
                 key_valid: Optional[torch.Tensor] = None):
        self.keys = keys
        self.values = values
        self.length = length
        self.key_valid = key_valid

    @classmethod
    def empty(cls, layers: int, batch: int, heads: int, head_dim: int, capacity: int, *,
              dtype: torch.dtype, device: torch.device) -> "KVCache":
        shape = (batch, heads, capacity, head_dim)
        return cls([torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)],
                   [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)])

    @property
    def batch(self) -> int:
        return self.keys[0].size(0)

    @property
    def capacity(self) -> int:
        return self.keys[0].size(2)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v ([B, H, T, hd]) after the filled part; return all keys and values so far
        ([B, H, length + T, hd]). `length` moves on only in `advance`, once every layer wrote."""
        end = self.length + k.size(2)
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} positions > capacity {self.capacity}")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, steps: int) -> None:
        self.length += steps

    def valid_keys(self, end: int) -> Optional[torch.Tensor]:
        """[B, end] bool of real keys, or None when nothing is padded."""
        if self.key_valid is None:
            return None
        valid = torch.ones(self.batch, end, dtype=torch.bool, device=self.key_valid.device)
        known = min(end, self.key_valid.size(1))
        valid[:, :known] = self.key_valid[:, :known]
        return valid

    def copy(self, capacity: Optional[int] = None) -> "KVCache":
        """An independent cache holding the same filled positions, with room for `capacity`."""
        capacity = max(capacity or self.capacity, self.length)
        out = KVCache.empty(len(self.keys), self.batch, self.keys[0].size(1), self.keys[0].size(3), capacity,
                            dtype=self.keys[0].dtype, device=self.keys[0].device)
        for src, dst in zip(self.keys + self.values, out.keys + out.values):
            dst[:, :, :self.length] = src[:, :, :self.length]
        out.length = self.length
        out.key_valid = None if self.key_valid is None else self.key_valid[:, :self.length].clone()
        return out

    def select(self, index: torch.Tensor) -> None:
        """Reorder (or repeat) the batch rows in place: row i becomes old row index[i]."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        if self.key_valid is not None:
            self.key_valid = self.key_valid.index_select(0, index)
