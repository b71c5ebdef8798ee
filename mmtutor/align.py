"""Contrastive cross-modal alignment: a CLIP-style dual encoder (Radford et al. 2021).

Step 3 of the article: map text features and image features into one shared semantic
space, pulling matching (caption, image) pairs together and pushing the others apart.

* two towers -- a text encoder (``text.py``) and a CNN (``vision.py``) -- each followed by a
  projection into an ``embed_dim``-dimensional space, L2-normalised;
* similarity logits ``s * <t_i, v_j>`` where ``s = exp(logit_scale)`` is a learnable
  *inverse* temperature, initialised at 1/0.07 and capped at 100 as in CLIP;
* the symmetric cross-entropy loss ``losses.clip_loss`` (InfoNCE in both directions, as
  open_clip's ``ClipLoss``), with one change: in our world many captions describe the *same*
  attributes, so a caption and an image of identical attributes are not treated as a
  negative pair -- the target spreads over every image that matches the caption.

``retrieval_metrics`` measures Recall@K in both directions, both for the exact pair
(image i for caption i) and for any image whose attributes match ("semantic").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint, checks, runtime
from .data import PairPool, caption_matches
from .loop import Loop, TrainConfig
from .losses import clip_loss
from .text import SmallBert, TextEncoder, build_text_encoder, load_minilm
from .vision import ImageEncoder
from .world import World

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


@dataclass
class AlignConfig:
    text_encoder: str = "bert"   # "bert": small BERT trained here; "minilm": frozen MiniLM + trained projection
    embed_dim: int = 64          # dimension of the shared space
    image_size: int = 32
    image_width: int = 32        # CNN width (see vision.ImageEncoder)
    text_dim: int = 64           # small BERT hidden size (MiniLM is 384, fixed)
    text_layers: int = 2

    def __post_init__(self):
        checks.choice(self.text_encoder, "text encoder", ("bert", "minilm"))
        for name in ("embed_dim", "image_width", "text_dim", "text_layers"):
            setattr(self, name, checks.count(getattr(self, name), name, maximum=4096))


class DualEncoder(nn.Module):
    """Text tower + image tower -> L2-normalised embeddings in a shared space.

    A frozen pretrained text tower (MiniLM) is shared and rebuilt from its package rather than
    stored: it is not part of this module's state."""

    def __init__(self, config: AlignConfig, world: World, text_encoder: TextEncoder | None = None):
        super().__init__()
        self.config = config
        self.world_config = world.config()
        if text_encoder is None and config.text_encoder == "bert":
            text_encoder = SmallBert(world.vocabulary, dim=config.text_dim, layers=config.text_layers)
        self.text_tower = text_encoder if config.text_encoder == "bert" else None     # trained: a submodule
        d = text_encoder.dim if text_encoder is not None else load_minilm().dim
        self.text_proj = nn.Sequential(nn.Linear(d, 2 * config.embed_dim), nn.GELU(),
                                       nn.Linear(2 * config.embed_dim, config.embed_dim))
        self.image_encoder = runtime.channels_last(ImageEncoder(config.image_size, dim=2 * config.embed_dim,
                                                                width=config.image_width))
        self.image_proj = nn.Linear(2 * config.embed_dim, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.history: dict = {}

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def text_encoder(self) -> TextEncoder:
        return self.text_tower if self.text_tower is not None else load_minilm(device=self.device)

    def scale(self) -> torch.Tensor:
        """s = exp(logit_scale), the inverse temperature (capped at 100)."""
        return self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()

    def text_features_to_embedding(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(feats), dim=-1)                  # (N, d) -> (N, E)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        images = checks.images(images, self.config.image_size, "DualEncoder", check_values=not self.training)
        return F.normalize(self.image_proj(self.image_encoder(images)), dim=-1)   # (N, E)

    def embed_text(self, captions: list[str]) -> torch.Tensor:
        return self.text_features_to_embedding(self.text_encoder.encode(checks.captions(captions, "DualEncoder")))

    def forward(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """logits (N_text, N_image) = s * <t_i, v_j>."""
        return self.scale() * self.embed_text(captions) @ self.embed_images(images).t()

    @torch.no_grad()
    def encode(self, images: torch.Tensor | None = None, captions: list[str] | None = None,
               batch_size: int = 512):
        """Embeddings in eval mode, batched; returns what was asked for (text, image or both),
        on the CPU whatever device the model runs on, so they mix freely with images and labels."""
        if images is None and captions is None:
            raise ValueError("DualEncoder.encode needs images, captions or both")
        was = self.training
        self.eval()
        out = []
        if captions is not None:
            captions = checks.captions(captions, "DualEncoder.encode")
            out.append(torch.cat([self.embed_text(captions[i:i + batch_size]).float().cpu()
                                  for i in range(0, len(captions), batch_size)]))
        if images is not None:
            images = checks.images(images, self.config.image_size, "DualEncoder.encode")
            out.append(torch.cat([self.embed_images(images[i:i + batch_size].to(self.device)).float().cpu()
                                  for i in range(0, len(images), batch_size)]))
        self.train(was)
        return out[0] if len(out) == 1 else tuple(out)

    # ---------------------------------------------------------------- checkpoints
    def spec(self) -> dict:
        """Config, world and text-tower spec: what it takes to rebuild this model's skeleton."""
        return {"config": asdict(self.config), "world": self.world_config, "text_spec": self.text_encoder.spec}

    @classmethod
    def from_spec(cls, spec: dict, source: str = "checkpoint") -> "DualEncoder":
        config = checkpoint.dataclass_from_dict(AlignConfig, spec["config"], source)
        tower = build_text_encoder(spec["text_spec"]) if config.text_encoder == "bert" else None
        return cls(config, World(**spec["world"]), tower)

    def save(self, path, history: dict | None = None) -> None:
        """state_dict + spec (a frozen MiniLM is not stored: it comes from its package)."""
        spec = self.spec()
        checkpoint.save(path, "align", spec.pop("config"), {"model": self.state_dict()}, **spec,
                        history=history if history is not None else self.history)

    @classmethod
    def load(cls, path, map_location=None) -> "DualEncoder":
        ckpt = checkpoint.load(path, kind="align", map_location=map_location, require=("config", "state", "world",
                                                                                          "text_spec"))
        model = cls.from_spec({"config": ckpt["config"], "world": ckpt["world"], "text_spec": ckpt["text_spec"]},
                              str(path))
        checkpoint.load_state(model, ckpt["state"].get("model"), str(path))
        model.history = ckpt.get("history", {})
        return model.to(map_location or "cpu").eval()


# ------------------------------------------------------------------------ training
def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on weight matrices and kernels only -- not on
    biases, norm gains, embeddings' scales or the logit scale (open_clip's rule: decay
    parameters with ndim >= 2)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def train_alignment(model: DualEncoder, pool: PairPool, train: TrainConfig | None = None, lr: float = 2e-3,
                    **train_kw) -> dict:
    """Train the dual encoder on a pool; returns a history {step, loss, scale, seconds}.

    ``train`` (or its fields as keywords: steps, batch_size, seed, ...) sets the loop."""
    train = train or TrainConfig(**{"steps": 600, "batch_size": 128, **train_kw})
    lr = checks.number(lr, "lr", 0, 1, low_open=True)
    dev = model.device
    gen = torch.Generator().manual_seed(train.seed)
    torch.manual_seed(train.seed)
    enc = model.text_encoder
    if enc.trainable:  # tokenise the whole caption bank once
        bank = {k: v.to(dev) for k, v in enc.tokenize(pool.captions).items()}
    else:              # frozen: encode the bank once, train only the projection
        bank_feats = enc.encode(pool.captions).to(dev)
    opt = torch.optim.AdamW(decay_groups(model, 0.01), lr=lr)
    warmup = max(1, train.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, train.steps) / train.steps)))
    bf16 = train.bf16
    model.train()
    loop = Loop("alignment", train, {"model": model}, hint=f"Lower the learning rate (lr={lr}).",
                save=model.save)
    for step in loop:
        images, cap, attrs = pool.batch(train.batch_size, gen)
        images = images.to(dev)
        with runtime.autocast(dev, bf16):
            if enc.trainable:
                feats = enc(bank["input_ids"][cap], bank["attention_mask"][cap])[1]
            else:
                feats = bank_feats[cap]
            t = model.text_features_to_embedding(feats)                    # (B, E)
            v = model.embed_images(images)                                 # (B, E)
            logits = (model.scale() * t @ v.t()).float()                   # (B, B)
        positives = caption_matches(pool.caption_attrs[cap], attrs).to(dev)
        loss = clip_loss(logits, positives)
        loop.check(loss=loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loop.log(step, loss=loss, scale=model.scale())
    model.eval()
    model.history = loop.finish()
    return model.history


# ------------------------------------------------------------------------ retrieval
@torch.no_grad()
def retrieval_metrics(text_emb: torch.Tensor, image_emb: torch.Tensor, text_attrs: torch.Tensor,
                      image_attrs: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@K for paired embeddings (caption i describes image i).

    exact: the paired item is among the top K. semantic: some item among the top K has the
    attributes the query names (text_attrs may hold -1 for attributes a caption leaves out).
    Keys: t2i_R@K, i2t_R@K, t2i_semantic_R@K, i2t_semantic_R@K.
    """
    n = len(text_emb)
    if n == 0:
        raise ValueError("retrieval needs at least one (caption, image) pair")
    if len(image_emb) != n:
        raise ValueError(f"paired retrieval needs as many images as captions, got {len(image_emb)} and {n}")
    sim = text_emb.float() @ image_emb.float().t()                         # (N_text, N_image)
    match = caption_matches(text_attrs.cpu(), image_attrs.cpu()).to(sim.device)   # (N, N)
    out = {}
    for direction, s, m in (("t2i", sim, match), ("i2t", sim.t(), match.t())):
        order = s.argsort(dim=1, descending=True)
        rank_of_pair = (order == torch.arange(n, device=s.device).unsqueeze(1)).float().argmax(1)
        hit = torch.gather(m, 1, order)                                    # hit[i, r]: r-th result matches
        for k in ks:
            out[f"{direction}_R@{k}"] = (rank_of_pair < k).float().mean().item()
            out[f"{direction}_semantic_R@{k}"] = hit[:, :k].any(1).float().mean().item()
    return out


def evaluate_retrieval(model: DualEncoder, world: World, n: int = 1000, split: str = "heldout",
                       seed: int = 1234) -> dict[str, float]:
    """Retrieval on ``n`` fresh (image, caption) pairs of a split (full captions)."""
    images, captions, attrs = world.sample(n, split=split, seed=seed)
    t, v = model.encode(images=images, captions=captions)
    return retrieval_metrics(t, v, attrs, attrs)


__all__ = ["AlignConfig", "DualEncoder", "train_alignment", "retrieval_metrics", "evaluate_retrieval",
           "decay_groups", "LOGIT_SCALE_INIT", "LOGIT_SCALE_MAX"]
