"""A tiny causal language model (GPT-style) and next-token data, for curvature on transformers.

:class:`TinyCausalLM` maps token ids (B, T) to next-token logits (B, T, V): token and
position embeddings, ``layers`` pre-LayerNorm blocks (multi-head causal self-attention by
``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``, then a GELU MLP of 4×
the width, each with a residual connection), a final LayerNorm and a linear head. Dropout
(``dropout`` > 0) acts in training mode only, so the curvature operators, which evaluate in
eval mode, see a deterministic model; inside their products attention runs on the math
kernel (flash and memory-efficient attention have no double backward). It takes the ids
positionally or as ``input_ids=`` (a HuggingFace-style dict batch), and is what
``curvature_operator(..., loss="cross_entropy")`` reads as sequence logits.
:func:`next_token_labels` gives the matching targets, :func:`synthetic_tokens` a data split.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hspec.curvature.loss import IGNORE_INDEX
from hspec.errors import HspecError


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t attends to positions ≤ t."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise HspecError(f"heads: {heads} does not divide the width {width}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, h: Tensor) -> Tensor:
        batch, length, width = h.shape
        qkv = self.qkv(h).view(batch, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, width / heads)
        drop = self.dropout if self.training else 0.0
        a = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        return self.proj(a.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """h + attention(LayerNorm(h)), then h + MLP(LayerNorm(h))."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout)
        )

    def forward(self, h: Tensor) -> Tensor:
        h = h + self.attention(self.norm1(h))
        return h + self.mlp(self.norm2(h))


class TinyCausalLM(nn.Module):
    """Token ids (B, T), T ≤ ``context``, to next-token logits (B, T, ``vocab_size``)."""

    def __init__(
        self,
        vocab_size: int = 16,
        context: int = 8,
        width: int = 16,
        heads: int = 2,
        layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.context = context
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(context, width)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(Block(width, heads, dropout) for _ in range(layers)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        length = input_ids.shape[1]
        if length > self.context:
            raise HspecError(f"input_ids: {length} tokens, longer than the context {self.context}")
        positions = torch.arange(length, device=input_ids.device)
        h = self.dropout(self.token(input_ids) + self.position(positions))
        return self.head(self.norm(self.blocks(h)))


def next_token_labels(input_ids: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Targets (B, T) for next-token prediction: labels[:, t] = input_ids[:, t + 1], the last
    position ``ignore_index`` (not counted)."""
    last = torch.full_like(input_ids[:, :1], ignore_index)
    return torch.cat([input_ids[:, 1:], last], dim=1)


def synthetic_tokens(
    examples: int, context: int, vocab_size: int, seed: int = 0
) -> dict[str, Tensor]:
    """A split of token sequences with structure to learn: each sequence counts up from a
    random start modulo ``vocab_size`` with a random step of 1 or 2 (so the next token follows
    from the previous two). A dict ``{"input_ids": (N, T), "labels": (N, T)}``, HuggingFace
    style, the labels by :func:`next_token_labels`."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab_size, (examples, 1), generator=generator)
    step = torch.randint(1, 3, (examples, 1), generator=generator)
    ids = (start + step * torch.arange(context)) % vocab_size
    return {"input_ids": ids, "labels": next_token_labels(ids)}
