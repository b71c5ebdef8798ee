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

import torch
import torch.nn as nn

from .condition import TextCondition


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

__all__ = ["ConcatFusion", "CrossAttentionFusion", "FUSIONS"]
