"""Contrastive cross-modal alignment: a CLIP-style dual encoder (Radford et al. 2021).

Step 3 of the article: map text features and image features into one shared semantic
space, pulling matching (caption, image) pairs together and pushing the others apart.

* two towers -- a text encoder (``text.py``) and a CNN (``vision.py``) -- each followed by a
  projection into a ``embed_dim``-dimensional space, L2-normalised;
* similarity logits ``s * <t_i, v_j>`` with a learnable temperature, ``log s`` initialised
  at ln(1/0.07) and clamped at ln(100) as in CLIP;
* the symmetric cross-entropy loss (text->image and image->text), as in open_clip's
  ``ClipLoss``, with one change: in our world many captions describe the *same* attributes,
  so a caption and an image of identical attributes are not treated as a negative pair --
  the target distribution spreads over every image that matches the caption
  (``positives``). With ``positives=None`` this is exactly CLIP's loss.

``retrieval_metrics`` measures Recall@K in both directions, both for the exact pair
(image i for caption i) and for any image whose attributes match ("semantic").
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import runtime
from .data import PairPool, caption_matches
from .text import SmallBert, TextEncoder, build_text_encoder, check_captions, load_minilm
from .vision import ImageEncoder, check_images
from .world import World

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


# ------------------------------------------------------------------------ the loss
def clip_loss(logits: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric contrastive loss.

    logits: (N, N), logits[i, j] = scale * <text_i, image_j>.
    positives: optional (N, N) bool, positives[i, j] = caption i describes image j; the
    diagonal must be True. None means only the diagonal (plain CLIP: labels = arange(N)).
    Returns the mean of the text->image and image->text cross-entropies.
    """
    n = logits.shape[0]
    if logits.ndim != 2 or logits.shape[1] != n:
        raise ValueError(f"logits must be square (N, N), got {tuple(logits.shape)}")
    if positives is None:
        labels = torch.arange(n, device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    if positives.shape != logits.shape or not positives.diagonal().all():
        raise ValueError("positives must be an (N, N) bool matrix with a True diagonal")
    p = positives.to(logits.dtype)
    t2i = -(p / p.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    i2t = -(p / p.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return (t2i + i2t) / 2


# ------------------------------------------------------------------------ the model
@dataclass
class AlignConfig:
    text_encoder: str = "bert"   # "bert": small BERT trained here; "minilm": frozen MiniLM + trained projection
    embed_dim: int = 64          # dimension of the shared space
    image_size: int = 32
    image_width: int = 32        # CNN width (see vision.ImageEncoder)
    text_dim: int = 64           # small BERT hidden size (MiniLM is 384, fixed)
    text_layers: int = 2


class DualEncoder(nn.Module):
    """Text tower + image tower -> L2-normalised embeddings in a shared space."""

    def __init__(self, config: AlignConfig, world: World, text_encoder: TextEncoder | None = None):
        super().__init__()
        if config.text_encoder not in ("bert", "minilm"):
            raise ValueError(f"unknown text encoder {config.text_encoder!r}; choose one of: bert, minilm")
        self.config = config
        self.world_config = world.config()
        if text_encoder is None:
            text_encoder = (SmallBert(world.vocabulary, dim=config.text_dim, layers=config.text_layers)
                            if config.text_encoder == "bert" else load_minilm())
        self.text_encoder = text_encoder
        d = text_encoder.dim
        self.text_proj = nn.Sequential(nn.Linear(d, 2 * config.embed_dim), nn.GELU(),
                                       nn.Linear(2 * config.embed_dim, config.embed_dim))
        self.image_encoder = ImageEncoder(config.image_size, dim=2 * config.embed_dim, width=config.image_width)
        self.image_proj = nn.Linear(2 * config.embed_dim, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()

    def text_features_to_embedding(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(feats), dim=-1)                  # (N, d) -> (N, E)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.config.image_size, "DualEncoder.embed_images")
        return F.normalize(self.image_proj(self.image_encoder(images)), dim=-1)   # (N, E)

    def embed_text(self, captions: list[str]) -> torch.Tensor:
        return self.text_features_to_embedding(self.text_encoder.encode(check_captions(captions)))

    def forward(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """logits (N_text, N_image) = scale * <t_i, v_j>."""
        return self.scale() * self.embed_text(captions) @ self.embed_images(images).t()

    @torch.no_grad()
    def encode(self, images: torch.Tensor | None = None, captions: list[str] | None = None,
               batch_size: int = 512):
        """Embeddings in eval mode, batched; returns what was asked for (text, image or both),
        on the CPU whatever device the model runs on, so they mix freely with images and labels."""
        was = self.training
        self.eval()
        out = []
        if captions is not None:
            captions = check_captions(captions)
            out.append(torch.cat([self.embed_text(captions[i:i + batch_size]).float().cpu()
                                  for i in range(0, len(captions), batch_size)]))
        if images is not None:
            out.append(torch.cat([self.embed_images(images[i:i + batch_size].to(self.device)).float().cpu()
                                  for i in range(0, len(images), batch_size)]))
        self.train(was)
        return out[0] if len(out) == 1 else tuple(out)

    # ---------------------------------------------------------------- checkpoints
    def save(self, path, history: dict | None = None) -> None:
        """state_dict + config. A frozen pretrained text encoder (MiniLM) is not stored: it is
        rebuilt from its package on load."""
        state = {k: v for k, v in self.state_dict().items()
                 if self.text_encoder.trainable or not k.startswith("text_encoder.")}
        runtime.save_checkpoint(path, asdict(self.config), {"model": state}, kind="align",
                                world=self.world_config, text_spec=self.text_encoder.spec, history=history or {})

    @classmethod
    def load(cls, path, map_location=None) -> "DualEncoder":
        ckpt = runtime.load_checkpoint(path, map_location=map_location, kind="align")
        config = runtime.dataclass_from_dict(AlignConfig, ckpt["config"])
        model = cls(config, World(**ckpt["world"]), build_text_encoder(ckpt["text_spec"]))
        missing, unexpected = model.load_state_dict(ckpt["state"]["model"], strict=False)
        missing = [k for k in missing if model.text_encoder.trainable or not k.startswith("text_encoder.")]
        if missing or unexpected:
            raise runtime.CheckpointError(f"{path} does not fit this DualEncoder: missing {missing[:3]}, "
                                          f"unexpected {unexpected[:3]}")
        model.history = ckpt.get("history", {})
        return model.to(map_location or "cpu").eval()


# ------------------------------------------------------------------------ training
def train_alignment(model: DualEncoder, pool: PairPool, steps: int = 600, batch_size: int = 128,
                    lr: float = 2e-3, seed: int = 0, bf16: bool = True, max_seconds: float | None = None,
                    log_every: int = 20, progress: bool = True) -> dict:
    """Train the dual encoder on a pool; returns a history {step, loss, scale, seconds}."""
    if steps <= 0 or batch_size < 2:
        raise ValueError("steps must be positive and batch_size at least 2")
    dev = model.device
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    enc = model.text_encoder
    if enc.trainable:  # tokenise the whole caption bank once
        bank = {k: v.to(dev) for k, v in enc.tokenize(pool.captions).items()}
    else:              # frozen: encode the bank once, train only the projection
        bank_feats = enc.encode(pool.captions).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    hist = {"step": [], "loss": [], "scale": [], "seconds": []}
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="alignment", disable=not progress, leave=False)
    for step in bar:
        images, cap, attrs = pool.batch(batch_size, gen)
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
        if not torch.isfinite(loss):
            raise FloatingPointError(f"alignment loss became {loss.item()} at step {step}; "
                                     f"lower the learning rate (lr={lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            hist["step"].append(step)
            hist["loss"].append(loss.item())
            hist["scale"].append(model.scale().item())
            hist["seconds"].append(time.perf_counter() - t0)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            break
    model.eval()
    hist["total_seconds"] = time.perf_counter() - t0
    return hist


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


__all__ = ["AlignConfig", "DualEncoder", "clip_loss", "train_alignment", "retrieval_metrics",
           "evaluate_retrieval", "LOGIT_SCALE_INIT", "LOGIT_SCALE_MAX"]
