"""The denoising network of the diffusion model: a small U-Net that reads the time and the text.

eps_theta(x_t, t, text): (B, C, H, W) noisy image (or latent), (B,) time steps and caption
features -> (B, C, H, W), the model's guess of the noise (or of v, or of x_0; see
``diffusion.py``). The layout is the U-Net of Ronneberger et al. 2015 as used for diffusion by
Ho et al. 2020 and, with text, by Rombach et al. 2022 (Stable Diffusion) and Saharia et al.
2022 (Imagen):

* residual blocks (He et al. 2016) with group norm (Wu & He 2018) and SiLU, two per
  resolution; the resolution halves on the way down and doubles on the way up, and every
  block on the way up also reads the matching block of the way down (the skip connections);
* the time step enters through a sinusoidal embedding (Vaswani et al. 2017) and an MLP;
* the caption enters the same way: its pooled, standardised sentence feature is projected and
  *added* to the time embedding, and every residual block turns that sum into a per-channel
  scale and shift of its features -- FiLM (Perez et al. 2018; Dhariwal & Nichol 2021's
  "adaptive group norm"). A learned "null caption" vector stands in for the text when it is
  dropped (classifier-free guidance, Ho & Salimans 2022);
* FiLM is the same at every position, so it can say *what* but not *where*. "Left of the
  table" and "right of the table" are mirror images, and a U-Net conditioned by FiLM alone
  drew either for both (measured: left/right at chance after 1500 steps, every other
  attribute right). Two things let the caption say where: a linear map from the caption
  embedding to a feature map at the lowest resolution, added there (``text_map``; the
  GAN's generator starts from such a map too), and two coordinate channels (x, y) at the
  input (CoordConv, Liu et al. 2018), so that positions know where they are;
* optionally, self-attention over positions at low resolution (``attention_levels``), and
  cross-attention from positions to the caption's word features at the same levels
  (``cross_attention=True``: ``fusion.CrossAttentionFusion``, the way Stable Diffusion reads
  its prompt).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checks
from .condition import TextCondition
from .fusion import CrossAttentionFusion


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) time steps (any real numbers) -> (B, dim): the Transformer's
    position encoding, cos and sin of t at geometrically spaced frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float().view(-1, 1) * freqs.view(1, -1)                          # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)                # (B, 2 half)
    return F.pad(emb, (0, dim % 2))


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """x -> x + conv(SiLU(FiLM(GN(conv(SiLU(GN(x)))), emb))): (B, C_in, H, W), (B, E) -> (B, C_out, H, W).

    FiLM: the embedding (time + text) gives a scale s and a shift b per channel, and the
    normalised features become h * (1 + s) + b -- the text can turn channels up, down or off."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0, kernel: int = 3):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel, padding=kernel // 2)
        nn.init.zeros_(self.conv2.weight)                 # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))                                 # (B, C_out, H, W)
        scale, shift = self.film(F.silu(emb)).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)   # (B, C_out, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Every position attends to every other: (B, C, H, W) -> (B, C, H, W), residual."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.norm(x).flatten(2).transpose(1, 2)                           # (B, H*W, C)
        out, _ = self.attn(q, q, q, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """eps_theta(x_t, t, text) for images or latents of ``size`` x ``size`` with ``in_channels``.

    ``channels`` gives the width at each resolution (len(channels) levels: size, size/2, ...);
    ``attention_levels`` the levels (0 = full resolution) with self-attention, and with
    cross-attention to the words when ``cross_attention``. ``self_condition`` adds
    ``in_channels`` inputs for the model's own previous estimate of x_0 (Chen et al. 2023).
    """

    def __init__(self, in_channels: int, size: int, text_dim: int, channels: tuple = (64, 128),
                 blocks: int = 2, attention_levels: tuple = (), cross_attention: bool = False,
                 word_dim: int | None = None, emb_dim: int = 256, dropout: float = 0.0,
                 self_condition: bool = False, heads: int = 4, coords: bool = True, text_map: bool = True):
        super().__init__()
        channels = tuple(checks.count(c, "channels", maximum=4096) for c in channels)
        if not channels:
            raise ValueError("channels must name at least one width")
        if size % 2 ** (len(channels) - 1):
            raise ValueError(f"a {size}x{size} input cannot be halved {len(channels) - 1} times "
                             f"({len(channels)} levels of channels); use fewer levels")
        for a in attention_levels:
            if not 0 <= a < len(channels):
                raise ValueError(f"attention level {a} does not exist; levels are 0..{len(channels) - 1}")
        if cross_attention and word_dim is None:
            raise ValueError("cross_attention needs the word features' size (word_dim)")
        self.in_channels, self.size, self.self_condition = in_channels, size, self_condition
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.text_proj = nn.Sequential(nn.Linear(text_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.null_text = nn.Parameter(torch.zeros(emb_dim))       # the "no caption" embedding (CFG)
        self.null_word = nn.Parameter(torch.zeros(1, 1, word_dim)) if cross_attention else None
        k = 1 if size == 1 else 3          # a 1x1 "image" (a vector code): the U-Net is a residual MLP
        self.coords = coords and size > 1
        extra = 2 if self.coords else 0    # x, y coordinate channels: where a position is (CoordConv)
        self.stem = nn.Conv2d(in_channels * (2 if self_condition else 1) + extra, channels[0], k, padding=k // 2)
        if self.coords:
            s = torch.linspace(-1, 1, size)
            self.register_buffer("grid", torch.stack(torch.meshgrid(s, s, indexing="ij")).unsqueeze(0),
                                 persistent=False)

        def mixer(level: int, c: int) -> nn.ModuleDict:
            m = nn.ModuleDict()
            if level in attention_levels:
                m["self"] = SelfAttention(c, heads)
                if cross_attention:
                    m["cross"] = CrossAttentionFusion(c, word_dim, heads)
            return m

        self.down, self.down_mix, self.downsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        skips, c = [channels[0]], channels[0]
        for level, width in enumerate(channels):
            for _ in range(blocks):
                self.down.append(ResBlock(c, width, emb_dim, dropout, k))
                self.down_mix.append(mixer(level, width))
                c = width
                skips.append(c)
            if level < len(channels) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        # the caption as a *map* at the lowest resolution: a linear layer from the caption
        # embedding to a (C, s, s) pattern added to the features, so the text can say *where*
        bottom = size // 2 ** (len(channels) - 1)
        self.text_map = nn.Linear(emb_dim, c * bottom * bottom) if text_map else None
        if self.text_map is not None:
            nn.init.zeros_(self.text_map.weight)
            nn.init.zeros_(self.text_map.bias)
        self.mid1 = ResBlock(c, c, emb_dim, dropout, k)
        self.mid_mix = mixer(len(channels) - 1, c) if attention_levels else nn.ModuleDict()
        self.mid2 = ResBlock(c, c, emb_dim, dropout, k)
        self.up, self.up_mix, self.upsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(channels))):
            width = channels[level]
            for _ in range(blocks + 1):
                self.up.append(ResBlock(c + skips.pop(), width, emb_dim, dropout, k))
                self.up_mix.append(mixer(level, width))
                c = width
            if level > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.out_norm = nn.GroupNorm(_groups(c), c)
        self.out = nn.Conv2d(c, in_channels, k, padding=k // 2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.blocks, self.levels = blocks, len(channels)

    def embed(self, t: torch.Tensor, text: TextCondition,
              keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(time + caption embedding, caption embedding), each (B, E); rows with keep=False get
        the null caption."""
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim))              # (B,) -> (B, E)
        txt = self.text_proj(text.pooled.to(emb.dtype))                       # (B, D_t) -> (B, E)
        if keep is not None:
            txt = torch.where(keep.view(-1, 1), txt, self.null_text.to(txt.dtype))
        return emb + txt, txt

    def _words(self, text: TextCondition, keep: torch.Tensor | None) -> TextCondition | None:
        if self.null_word is None:
            return None
        if text.tokens is None:
            raise ValueError("this U-Net uses cross-attention and needs word features (TextCondition.tokens)")
        tokens, mask = text.tokens, text.mask if text.mask is not None else torch.ones(text.tokens.shape[:2])
        if keep is not None:                  # dropped captions: one learned null word, the rest masked
            drop = ~keep.view(-1, 1)
            first = torch.zeros_like(mask, dtype=torch.bool)
            first[:, 0] = True
            tokens = torch.where((drop & first).unsqueeze(-1), self.null_word.to(tokens.dtype), tokens)
            mask = torch.where(drop, first.to(mask.dtype), mask)
        return TextCondition(text.pooled, tokens, mask)

    @staticmethod
    def _mix(mix: nn.ModuleDict, h: torch.Tensor, words: TextCondition | None) -> torch.Tensor:
        if "self" in mix:
            h = mix["self"](h)
        if "cross" in mix:
            h = mix["cross"](h, None, words)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: TextCondition, keep: torch.Tensor | None = None,
                x0_estimate: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W), t (B,) time steps, text: B captions; ``keep`` (B,) bool, False where
        the caption is dropped; ``x0_estimate`` (B, C, H, W) for self-conditioning (zeros if None)."""
        emb, txt = self.embed(t, text, keep)
        words = self._words(text, keep)
        if self.self_condition:
            x = torch.cat([x, x0_estimate if x0_estimate is not None else torch.zeros_like(x)], dim=1)
        if self.coords:
            x = torch.cat([x, self.grid.expand(len(x), -1, -1, -1).to(x.dtype)], dim=1)
        h = self.stem(x)                                                      # (B, C0, H, W)
        skips = [h]
        i = 0
        for level in range(self.levels):
            for _ in range(self.blocks):
                h = self._mix(self.down_mix[i], self.down[i](h, emb), words)
                skips.append(h)
                i += 1
            if level < self.levels - 1:
                h = self.downsample[level](h)                                 # (B, C, s, s) -> (B, C, s/2, s/2)
                skips.append(h)
        if self.text_map is not None:
            h = h + self.text_map(txt).view(h.shape)               # (B, E) -> (B, C, s, s)
        h = self.mid2(self._mix(self.mid_mix, self.mid1(h, emb), words), emb)
        i = 0
        for k, level in enumerate(reversed(range(self.levels))):
            for _ in range(self.blocks + 1):
                h = self._mix(self.up_mix[i], self.up[i](torch.cat([h, skips.pop()], dim=1), emb), words)
                i += 1
            if level > 0:
                h = self.upsample[k](F.interpolate(h, scale_factor=2, mode="nearest"))   # (B, C, s, s) -> 2s
        return self.out(F.silu(self.out_norm(h)))                             # (B, C_in, H, W)


__all__ = ["UNet", "ResBlock", "SelfAttention", "timestep_embedding"]
