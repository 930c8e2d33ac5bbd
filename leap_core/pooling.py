"""Attention-mask-aware mean pooling, the embedding every loss and the exit rule work on."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states of real tokens.

    hidden: (batch, seq, dim); attention_mask: (batch, seq) with 1 for real tokens.
    Returns (batch, dim), unnormalised. A row with no real token pools to zeros.
    """
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts


def pooled_layers(hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor) -> torch.Tensor:
    """Normalised mean pools of every transformer layer.

    hidden_states: the model's `output_hidden_states` tuple (embeddings first, then layer 1..L).
    Returns (L, batch, dim): index l-1 holds layer l, the embedding output is dropped.
    """
    return torch.stack([F.normalize(mean_pool(h, attention_mask), dim=-1) for h in hidden_states[1:]])
