"""Multimodal fusion: bringing text features into the generator's image features.

The article's section 2, concept 3: "integrate the feature representations of several
modalities into a joint representation; common strategies are concatenation and attention
fusion". Both modules here take an image feature map ``h`` (B, C, H, W) and the caption's
features and return a fused map the next generator layer consumes:

* ``ConcatFusion`` copies the sentence vector to every spatial position and stacks it as
  extra channels: (B, C, H, W) + (B, D) -> (B, C + D, H, W). Every position gets the same
  text. This is how GAN-INT-CLS (Reed et al. 2016) conditions its discriminator.
* ``CrossAttentionFusion`` lets every spatial position *choose* which words to read:
  queries from the image positions, keys and values from the word features,
  h + Attention(h, words): (B, C, H, W) + (B, L, D_w) -> (B, C, H, W). This is the
  word-level attention of AttnGAN (Xu et al. 2018), written with the Transformer's
  multi-head attention (Vaswani et al. 2017). ``last_weights`` keeps the (B, H*W, L)
  attention map of the latest call, for plotting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class TextCondition:
    """What a generator is told about its captions."""

    pooled: torch.Tensor              # (B, D)    one vector per caption
    tokens: torch.Tensor | None = None  # (B, L, D_w) one vector per word (attention fusion only)
    mask: torch.Tensor | None = None    # (B, L)    1 for real words, 0 for padding

    def __getitem__(self, idx) -> "TextCondition":
        return TextCondition(self.pooled[idx],
                             None if self.tokens is None else self.tokens[idx],
                             None if self.mask is None else self.mask[idx])

    def to(self, device) -> "TextCondition":
        return TextCondition(self.pooled.to(device),
                             None if self.tokens is None else self.tokens.to(device),
                             None if self.mask is None else self.mask.to(device))

    def mix(self, other: "TextCondition", beta: float) -> "TextCondition":
        """beta * self + (1 - beta) * other (GAN-INT); word features are padded to a common
        length and the masks joined."""
        pooled = beta * self.pooled + (1 - beta) * other.pooled
        if self.tokens is None or other.tokens is None:
            return TextCondition(pooled)
        L = max(self.tokens.shape[1], other.tokens.shape[1])
        a, b = _pad(self.tokens, L), _pad(other.tokens, L)
        ma, mb = _pad(self.mask, L), _pad(other.mask, L)
        return TextCondition(pooled, beta * a + (1 - beta) * b, torch.maximum(ma, mb))

    @staticmethod
    def cat(*conds: "TextCondition") -> "TextCondition":
        """Stack several conditions into one batch (word features padded to a common length)."""
        pooled = torch.cat([c.pooled for c in conds])
        if conds[0].tokens is None:
            return TextCondition(pooled)
        L = max(c.tokens.shape[1] for c in conds)
        return TextCondition(pooled, torch.cat([_pad(c.tokens, L) for c in conds]),
                             torch.cat([_pad(c.mask, L) for c in conds]))


def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
    if x.shape[1] == length:
        return x
    pad = x.new_zeros((x.shape[0], length - x.shape[1]) + tuple(x.shape[2:]))
    return torch.cat([x, pad], dim=1)


class ConcatFusion(nn.Module):
    """(B, C, H, W), sentence vector (B, D) -> (B, C + D, H, W)."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.out_channels = channels + cond_dim

    def forward(self, h: torch.Tensor, cond: torch.Tensor, text: TextCondition | None = None) -> torch.Tensor:
        b, _, hh, ww = h.shape
        tiled = cond.view(b, -1, 1, 1).expand(b, cond.shape[1], hh, ww)    # (B, D) -> (B, D, H, W)
        return torch.cat([h, tiled.to(h.dtype)], dim=1)


class CrossAttentionFusion(nn.Module):
    """(B, C, H, W) image features attend over (B, L, D_w) word features -> (B, C, H, W)."""

    def __init__(self, channels: int, word_dim: int, heads: int = 4):
        super().__init__()
        self.out_channels = channels
        self.norm = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, kdim=word_dim, vdim=word_dim, batch_first=True)
        self.gate = nn.Parameter(torch.zeros(1))   # starts as identity; learns how much text to let in
        self.last_weights: torch.Tensor | None = None

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None = None,
                text: TextCondition | None = None) -> torch.Tensor:
        if text is None or text.tokens is None:
            raise ValueError("CrossAttentionFusion needs word features (TextCondition.tokens)")
        b, c, hh, ww = h.shape
        q = self.norm(h.flatten(2).transpose(1, 2))                         # (B, H*W, C)
        words = text.tokens.to(q.dtype)
        pad = text.mask == 0 if text.mask is not None else None             # (B, L) True = ignore
        out, weights = self.attn(q, words, words, key_padding_mask=pad, need_weights=True)
        self.last_weights = weights.detach()                                # (B, H*W, L), mean over heads
        out = out.transpose(1, 2).reshape(b, c, hh, ww)                     # (B, H*W, C) -> (B, C, H, W)
        return h + self.gate.to(out.dtype) * out


FUSIONS = {"concat": ConcatFusion, "attention": CrossAttentionFusion}

__all__ = ["TextCondition", "ConcatFusion", "CrossAttentionFusion", "FUSIONS"]
