"""What a text-to-image model is told about its captions: the caption encoder and its output.

Every generative family of the book (``gan``, ``vae``, ``diffusion``) and the captioner's
round trip read captions the same way, through a ``CaptionEncoder``:

1. a frozen text encoder turns each caption into a sentence vector (and, for attention
   fusion, one vector per word): the pretrained MiniLM (``"minilm"``, the default), or the
   text tower of the contrastive dual encoder (``"clip"``: its aligned embedding; ``"bert"``:
   its small BERT's pooled output);
2. each sentence feature is z-scored with the mean and standard deviation over the training
   captions (``standardize=True``). MiniLM vectors of captions that differ in one word
   ("left" / "right") are nearly parallel; z-scoring removes what all captions share and
   makes the differences as large as the rest (measured: GAN consistency 0.83 -> 0.98 at
   equal steps).

The statistics are buffers, so they travel in every checkpoint. The pretrained MiniLM
itself is *not* part of the module tree (it is shared, frozen, and rebuilt from its package),
so checkpoints stay small; an aligned text tower (``"clip"``/``"bert"``) is a frozen copy
and is stored.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from . import checks
from .text import load_minilm, pad_sequences

ENCODERS = ("minilm", "clip", "bert")


@dataclass
class TextCondition:
    """A batch of caption features."""

    pooled: torch.Tensor                # (B, D)    one vector per caption
    tokens: torch.Tensor | None = None  # (B, L, D_w) one vector per word (attention fusion only)
    mask: torch.Tensor | None = None    # (B, L)    1 for real words, 0 for padding

    def __len__(self) -> int:
        return len(self.pooled)

    def __getitem__(self, idx) -> "TextCondition":
        return TextCondition(self.pooled[idx],
                             None if self.tokens is None else self.tokens[idx],
                             None if self.mask is None else self.mask[idx])

    def to(self, device) -> "TextCondition":
        return TextCondition(self.pooled.to(device),
                             None if self.tokens is None else self.tokens.to(device),
                             None if self.mask is None else self.mask.to(device))

    def mix(self, other: "TextCondition", beta: float | torch.Tensor) -> "TextCondition":
        """beta * self + (1 - beta) * other (GAN-INT); word features are padded to a common
        length and the masks joined. ``beta`` may be a number or a (B,) tensor."""
        b = beta.view(-1, 1) if isinstance(beta, torch.Tensor) else beta
        pooled = b * self.pooled + (1 - b) * other.pooled
        if self.tokens is None or other.tokens is None:
            return TextCondition(pooled)
        L = max(self.tokens.shape[1], other.tokens.shape[1])
        a, o = _pad(self.tokens, L), _pad(other.tokens, L)
        bw = b.view(-1, 1, 1) if isinstance(b, torch.Tensor) else b
        return TextCondition(pooled, bw * a + (1 - bw) * o, torch.maximum(_pad(self.mask, L), _pad(other.mask, L)))

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


class CaptionEncoder(nn.Module):
    """captions -> TextCondition: frozen features, standardised with training-caption statistics.

    >>> enc = CaptionEncoder("minilm")
    >>> enc.fit(pool.captions)                 # mean and std over the training captions
    >>> cond = enc(["a red apple on the table"])   # TextCondition, pooled (1, 384)
    """

    def __init__(self, kind: str = "minilm", aligner=None, words: bool = False, standardize: bool = True):
        super().__init__()
        checks.choice(kind, "text encoder", ENCODERS)
        if kind in ("clip", "bert") and aligner is None:
            raise ValueError(f"text_encoder={kind!r} needs the trained dual encoder (aligner=DualEncoder from "
                             "mmtutor.align); use text_encoder='minilm' to go without")
        self.kind, self.words, self.standardize = kind, bool(words), bool(standardize)
        # a frozen *copy*: the caller's dual encoder is never changed (nor frozen) by a generator
        self.aligner = None
        if aligner is not None and kind != "minilm":
            self.aligner = copy.deepcopy(aligner).eval().requires_grad_(False)
        enc = self.encoder
        self.dim = self.aligner.config.embed_dim if kind == "clip" else enc.dim
        self.word_dim = enc.dim
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("std", torch.ones(self.dim))
        self.register_buffer("fitted", torch.tensor(False))

    # ---------------------------------------------------------------- the encoder
    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def encoder(self):
        """The frozen text encoder behind the features."""
        if self.kind == "minilm":
            return load_minilm(device=self.mean.device if hasattr(self, "mean") else None)
        return self.aligner.text_encoder

    @property
    def open_vocabulary(self) -> bool:
        return self.encoder.open_vocabulary

    def train(self, mode: bool = True):   # frozen: the encoder never trains (no dropout)
        return super().train(False)

    def spec(self) -> dict:
        """What it takes to rebuild this encoder's skeleton (the weights come from ``state_dict``)."""
        out = {"kind": self.kind, "words": self.words, "standardize": self.standardize}
        if self.aligner is not None:
            out["aligner"] = self.aligner.spec()
        return out

    @classmethod
    def from_spec(cls, spec: dict) -> "CaptionEncoder":
        aligner = None
        if "aligner" in spec:
            from .align import DualEncoder
            aligner = DualEncoder.from_spec(spec["aligner"])
        return cls(spec["kind"], aligner=aligner, words=spec["words"], standardize=spec["standardize"])

    # ---------------------------------------------------------------- features
    @torch.no_grad()
    def features(self, captions: list[str], batch_size: int = 512) -> TextCondition:
        """Raw (not standardised) caption features, on this module's device."""
        captions = checks.captions(captions, "caption encoder")
        enc = self.encoder
        pooled, words = [], []
        for i in range(0, len(captions), batch_size):
            chunk = captions[i:i + batch_size]
            if self.kind == "clip":
                pooled.append(self.aligner.embed_text(chunk).float())
            else:
                pooled.append(enc.encode(chunk).float())
            if self.words:
                w, m = enc.encode_tokens(chunk)
                words += [w[j, :int(m[j].sum())].float() for j in range(len(chunk))]
        pooled = torch.cat(pooled).to(self.device)
        if not self.words:
            return TextCondition(pooled)
        tokens, mask = pad_sequences(words)
        return TextCondition(pooled, tokens.to(self.device), mask.to(self.device))

    @torch.no_grad()
    def fit(self, captions: list[str]) -> "CaptionEncoder":
        """Fit the standardisation to the training captions (once; later calls keep the first fit)."""
        if self.standardize and not bool(self.fitted):
            pooled = self.features(captions).pooled
            self.mean.copy_(pooled.mean(0))
            self.std.copy_(pooled.std(0).clamp(min=1e-6) if len(pooled) > 1 else torch.ones_like(self.std))
            self.fitted.fill_(True)
        return self

    def forward(self, captions: list[str]) -> TextCondition:
        """Standardised caption features: (features - mean) / std (before ``fit``, mean 0 and
        std 1: an untrained model reads the raw features)."""
        text = self.features(captions)
        if self.standardize:
            text = TextCondition((text.pooled - self.mean) / self.std, text.tokens, text.mask)
        return text


__all__ = ["TextCondition", "CaptionEncoder", "ENCODERS"]
