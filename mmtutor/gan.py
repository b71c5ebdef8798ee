"""Conditional GAN for text-to-image generation.

Step 4 of the article and its section 4: a generator G(z, t) that turns noise z and text
features t into an image, and a discriminator D(x, t) that judges "is this image real, and
does it match the text?", trained against each other on the minimax objective

    min_G max_D  E_{x,t ~ p_data}[log D(x, t)] + E_{t ~ p_data, z ~ p_z}[log(1 - D(G(z, t), t))].

What follows the papers:

* matching-aware discriminator and text interpolation, GAN-INT-CLS (Reed et al. 2016,
  "Generative Adversarial Text to Image Synthesis"): D sees three kinds of pairs --
  (real image, matching text) -> real, (fake image, its text) -> fake, and
  (real image, mismatched text) -> fake -- and G also trains on interpolated text
  embeddings beta*t1 + (1 - beta)*t2, which fills the gaps between captions;
* DCGAN layouts (Radford et al. 2016): transposed convolutions with batch norm in G,
  strided convolutions in D;
* projection discriminator (Miyato & Koyama 2018): D(x, t) = psi(phi(x)) + <phi(x), W t>;
* spectral normalisation of D (Miyato et al. 2018), the hinge loss (Lim & Ye 2017;
  SAGAN, Zhang et al. 2019), two time-scale learning rates (TTUR, Heusel et al. 2017) and an
  exponential moving average of G's weights (Karras et al. 2018; Yazici et al. 2019).

``GANConfig.classic()`` switches all of the last group off: the article's BCE loss, batch
norm instead of spectral norm, no EMA, equal learning rates -- the recipe of 2016.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from . import runtime
from .data import PairPool, caption_matches
from .fusion import FUSIONS, TextCondition
from .text import check_captions, load_minilm, pad_sequences
from .vision import check_images, n_halvings
from .world import World


# ======================================================================================
# Losses: small pure functions of the discriminator's logits (before the sigmoid).
# D(x, t) = sigmoid(logit). softplus(-a) = -log(sigmoid(a)), softplus(a) = -log(1 - sigmoid(a)).

def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, mismatch: torch.Tensor | None = None,
                       kind: str = "bce", mismatch_weight: float = 0.5) -> torch.Tensor:
    """The discriminator's loss, to be *minimised*.

    kind="bce" is the article's L_D = -E[log D(x, t)] - E[log(1 - D(G(z, t), t))].
    kind="hinge" is E[max(0, 1 - real)] + E[max(0, 1 + fake)].
    With ``mismatch`` logits (real images, wrong captions) the "fake" part becomes
    (1 - w) * fake term + w * mismatch term, w = mismatch_weight (GAN-INT-CLS: w = 1/2).
    """
    if kind == "bce":
        real_term, fake_term = F.softplus(-real).mean(), F.softplus(fake).mean()
        mis_term = F.softplus(mismatch).mean() if mismatch is not None and mismatch.numel() else None
    elif kind == "hinge":
        real_term, fake_term = F.relu(1 - real).mean(), F.relu(1 + fake).mean()
        mis_term = F.relu(1 + mismatch).mean() if mismatch is not None and mismatch.numel() else None
    else:
        raise ValueError(f"unknown loss {kind!r}; choose one of: bce, hinge")
    if mis_term is None:
        return real_term + fake_term
    return real_term + (1 - mismatch_weight) * fake_term + mismatch_weight * mis_term


def diversity_loss(a: torch.Tensor, b: torch.Tensor, za: torch.Tensor, zb: torch.Tensor,
                   target: float) -> torch.Tensor:
    """Mode-seeking regulariser (MSGAN, Mao et al. 2019; clamped as in DSGAN, Yang et al. 2019).

    a = G(za, t) and b = G(zb, t) are made for the same captions with different noise.
    ratio = mean|a - b| / mean|za - zb| measures how much the images move per unit of noise;
    a generator that ignores z has ratio 0 (mode collapse). The loss max(0, target - ratio)
    / target pushes the ratio up to ``target`` -- the same ratio measured on pairs of real
    images of one caption -- and no further, so diversity is not bought with garbage."""
    ratio = (a - b).abs().mean() / (za - zb).abs().mean()
    return F.relu(target - ratio) / target


def generator_loss(fake: torch.Tensor, kind: str = "nonsaturating") -> torch.Tensor:
    """The generator's loss, to be *minimised*.

    "saturating":    the article's L_G = E[log(1 - D(G(z, t), t))]. Its gradient vanishes
                     when D confidently rejects the fakes -- i.e. early in training.
    "nonsaturating": -E[log D(G(z, t), t)], Goodfellow et al.'s fix: same fixed point,
                     strong gradients when G is bad.
    "hinge":         -E[D logit].
    """
    if kind == "saturating":
        return -F.softplus(fake).mean()          # log(1 - sigmoid(a)) = -softplus(a)
    if kind == "nonsaturating":
        return F.softplus(-fake).mean()          # -log(sigmoid(a)) = softplus(-a)
    if kind == "hinge":
        return -fake.mean()
    raise ValueError(f"unknown generator loss {kind!r}; choose one of: saturating, nonsaturating, hinge")


# ======================================================================================
@dataclass
class GANConfig:
    text_encoder: str = "minilm"   # caption features: "minilm" (pretrained, frozen), "clip" (aligned text tower), "bert" (small BERT)
    fusion: str = "concat"         # how G reads the text: "concat" or "attention" (see fusion.py)
    image_size: int = 32
    z_dim: int = 64                # noise dimension
    cond_dim: int = 32             # text features are compressed to this many numbers (GAN-INT-CLS uses 128)
    g_channels: int = 32           # G width at full resolution (doubles towards 4x4)
    d_channels: int = 32           # D width after its first layer (doubles towards 4x4)
    loss: str = "hinge"            # "hinge", "bce" (article's L_D, non-saturating G), "bce-saturating" (article's L_G too)
    norm: str = "spectral"         # discriminator normalisation: "spectral" or "batch"
    ema_decay: float = 0.999       # EMA of G's weights; 0 switches it off
    lr_g: float = 1e-3             # TTUR: D learns faster than G
    lr_d: float = 2e-3
    betas: tuple = (0.0, 0.9)
    mismatch_weight: float = 0.5   # weight of (real image, wrong text) among D's fakes; 0 = plain conditional GAN
    interp_fraction: float = 0.25  # share of G's batch conditioned on interpolated captions (GAN-INT)
    standardize_text: bool = True  # z-score each text feature over the training captions (fit once, stored)
    diversity_weight: float = 1.0  # mode-seeking term (MSGAN/DSGAN): one caption, two z, images must differ; 0 = off

    def __post_init__(self):
        choices = {"text_encoder": ("clip", "bert", "minilm"), "fusion": tuple(FUSIONS),
                   "loss": ("hinge", "bce", "bce-saturating"), "norm": ("spectral", "batch")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of: {', '.join(allowed)}")
        n_halvings(self.image_size)
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        self.betas = tuple(self.betas)

    @classmethod
    def classic(cls, **kw) -> "GANConfig":
        """The 2016 recipe: BCE loss, batch norm in D, no EMA, one learning rate for both."""
        base = dict(loss="bce", norm="batch", ema_decay=0.0, lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999),
                    diversity_weight=0.0)
        base.update(kw)
        return cls(**base)

    @property
    def d_loss_kind(self) -> str:
        return "hinge" if self.loss == "hinge" else "bce"

    @property
    def g_loss_kind(self) -> str:
        return {"hinge": "hinge", "bce": "nonsaturating", "bce-saturating": "saturating"}[self.loss]


# ======================================================================================
class Generator(nn.Module):
    """G(z, t): (B, z_dim) noise + caption features -> (B, 3, S, S) image in [-1, 1].

    The sentence vector is compressed (Linear + LeakyReLU, as in GAN-INT-CLS) to ``cond``,
    concatenated with z and mapped to a 4x4 feature map; k = log2(S/4) transposed-conv blocks
    double the resolution, each reading the text again through a fusion module; a final 3x3
    convolution at full resolution turns features into RGB (it learns object shapes about
    twice as fast as the plain DCGAN output layer -- measured, see bench/).
    """

    def __init__(self, cfg: GANConfig, text_dim: int, word_dim: int | None = None):
        super().__init__()
        self.cfg = cfg
        k = n_halvings(cfg.image_size)
        widths = [cfg.g_channels * 2 ** max(k - 1 - i, 0) for i in range(k + 1)]   # e.g. 128, 64, 32, 32
        self.text_proj = nn.Sequential(nn.Linear(text_dim, cfg.cond_dim), nn.LeakyReLU(0.2))
        self.fc = nn.Sequential(nn.Linear(cfg.z_dim + cfg.cond_dim, widths[0] * 16, bias=False),
                                nn.BatchNorm1d(widths[0] * 16), nn.ReLU(inplace=True))
        self.fusions = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for i in range(k):
            fuse = (FUSIONS["concat"](widths[i], cfg.cond_dim) if cfg.fusion == "concat"
                    else FUSIONS["attention"](widths[i], word_dim or text_dim))
            self.fusions.append(fuse)
            self.blocks.append(nn.Sequential(
                nn.ConvTranspose2d(fuse.out_channels, widths[i + 1], 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(widths[i + 1]), nn.ReLU(inplace=True)))
        self.to_rgb = nn.Sequential(nn.Conv2d(widths[k], 3, 3, padding=1), nn.Tanh())
        self.width0 = widths[0]

    def forward(self, z: torch.Tensor, text: TextCondition) -> torch.Tensor:
        cond = self.text_proj(text.pooled)                                  # (B, D_t) -> (B, cond)
        h = self.fc(torch.cat([z, cond], dim=1))                            # (B, z + cond) -> (B, 16 C0)
        h = h.view(len(z), self.width0, 4, 4)                               # -> (B, C0, 4, 4)
        for fuse, block in zip(self.fusions, self.blocks):
            h = block(fuse(h, cond, text))                                  # (B, C, s, s) -> (B, C', 2s, 2s)
        return self.to_rgb(h)                                               # (B, C_k, S, S) -> (B, 3, S, S)


class Discriminator(nn.Module):
    """D(x, t): (B, 3, S, S) image + caption features -> (B,) logits ("real and matching").

    phi(x): strided 4x4 convolutions down to 4x4, flattened, Linear to ``feat`` numbers.
    Logit = psi(phi(x)) + <phi(x), W t> (projection discriminator): the first term asks
    "is it a real image?", the second "does it match the text?".
    """

    def __init__(self, cfg: GANConfig, text_dim: int, feat: int = 256):
        super().__init__()
        self.cfg = cfg
        sn = spectral_norm if cfg.norm == "spectral" else (lambda m: m)
        k = n_halvings(cfg.image_size)
        layers, c = [], 3
        for i in range(k):
            c_out = cfg.d_channels * 2 ** i
            layers.append(sn(nn.Conv2d(c, c_out, 4, stride=2, padding=1)))
            if cfg.norm == "batch" and i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c = c_out
        self.trunk = nn.Sequential(*layers)                                  # (B, 3, S, S) -> (B, c, 4, 4)
        self.to_feat = nn.Sequential(nn.Flatten(), sn(nn.Linear(c * 16, feat)), nn.LeakyReLU(0.2))
        self.psi = sn(nn.Linear(feat, 1))
        self.embed = sn(nn.Linear(text_dim, feat, bias=False))              # W
        self.image_size = cfg.image_size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_feat(self.trunk(x))                                   # (B, 3, S, S) -> (B, feat)

    def head(self, phi: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.psi(phi).squeeze(1) + (phi * self.embed(t.to(phi.dtype))).sum(1)   # (B,)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_images(x, self.image_size, "Discriminator")
        return self.head(self.features(x), t)


class TrainingDiverged(FloatingPointError):
    """Raised when a loss becomes NaN or infinite; the model keeps its last good weights."""


# ======================================================================================
class ConditionalGAN:
    """Generator, discriminator, EMA generator and the caption features that drive them.

    >>> gan = ConditionalGAN(GANConfig(text_encoder="minilm"), World())
    >>> history = gan.fit(PairPool(World()), steps=2000)
    >>> images = gan.generate(["a red apple on the table"], n_per_caption=8, seed=0)
    """

    def __init__(self, config: GANConfig, world: World, aligner=None, device=None):
        if config.image_size != world.image_size:
            raise ValueError(f"GANConfig.image_size={config.image_size} but the world renders "
                             f"{world.image_size}x{world.image_size} images")
        if config.text_encoder in ("clip", "bert") and aligner is None:
            raise ValueError(f"text_encoder={config.text_encoder!r} needs the trained dual encoder "
                             "(aligner=DualEncoder from mmtutor.align); use text_encoder='minilm' to go without")
        self.config, self.world = config, world
        self.device = torch.device(device) if device is not None else runtime.device()
        self.aligner = aligner.to(self.device).eval() if aligner is not None else None
        if self.aligner is not None:
            self.aligner.requires_grad_(False)   # frozen: the GAN never changes the aligned encoders
        self.minilm = load_minilm(device=self.device) if config.text_encoder == "minilm" else None
        self._cache: dict[str, tuple] = {}
        self.text_stats: tuple[torch.Tensor, torch.Tensor] | None = None   # (mean, std) of training captions
        probe = self.text_features(["a red apple on the table"])
        text_dim = probe.pooled.shape[1]
        word_dim = probe.tokens.shape[2] if probe.tokens is not None else None
        # channels-last memory layout: ~12 % faster convolutions on CPU (oneDNN) and on GPUs
        self.G = Generator(config, text_dim, word_dim).to(self.device, memory_format=torch.channels_last)
        self.D = Discriminator(config, text_dim).to(self.device, memory_format=torch.channels_last)
        self.G_ema = (AveragedModel(self.G, avg_fn=_ema_with_warmup(config.ema_decay), use_buffers=True)
                      if config.ema_decay > 0 else None)
        self.steps_done = 0

    # ---------------------------------------------------------------- text features
    @torch.no_grad()
    def text_features(self, captions: list[str]) -> TextCondition:
        """Frozen caption features (cached per caption): sentence vector, and word vectors when
        the generator fuses by attention."""
        captions = check_captions(captions)
        todo = list(dict.fromkeys(c for c in captions if c not in self._cache))
        want_words = self.config.fusion == "attention"
        enc = self.text_encoder.eval()
        for i in range(0, len(todo), 512):
            chunk = todo[i:i + 512]
            pooled = self.aligner.embed_text(chunk) if self.config.text_encoder == "clip" else enc.encode(chunk)
            words, mask = enc.encode_tokens(chunk) if want_words else (None, None)
            for j, c in enumerate(chunk):
                n = int(mask[j].sum()) if want_words else 0
                self._cache[c] = (pooled[j].float().cpu(), words[j, :n].float().cpu() if want_words else None)
        pooled = torch.stack([self._cache[c][0] for c in captions])
        if not want_words:
            return TextCondition(pooled).to(self.device)
        words, mask = pad_sequences([self._cache[c][1] for c in captions])
        return TextCondition(pooled, words, mask).to(self.device)

    def condition(self, captions: list[str]) -> TextCondition:
        """What G and D read: the caption features, each sentence feature z-scored with the
        statistics of the training captions (``standardize_text``). Pretrained MiniLM vectors of
        captions that differ in one word ("left" / "right") are nearly parallel; z-scoring
        removes what all captions share and makes the differences as large as the rest."""
        text = self.text_features(captions)
        if self.text_stats is not None:
            mean, std = (s.to(text.pooled.device) for s in self.text_stats)
            text = TextCondition((text.pooled - mean) / std, text.tokens, text.mask)
        return text

    # ---------------------------------------------------------------- training
    def fit(self, pool: PairPool, steps: int = 2000, batch_size: int = 64, seed: int = 0,
            bf16: bool = True, max_seconds: float | None = None, log_every: int = 25,
            snapshot_every: int = 0, snapshot_captions: list[str] | None = None,
            checkpoint: str | None = None, checkpoint_every: int = 250, progress: bool = True,
            callback=None) -> dict:
        """Alternating optimisation (article 4.2): a D step, then a G step, ``steps`` times.

        Returns a history: step, d_loss, g_loss, the mean D probability on (real, text),
        (fake, text) and (real, wrong text), wall seconds, and optional image snapshots of
        ``snapshot_captions`` with fixed noise every ``snapshot_every`` steps.
        ``max_seconds`` stops early (the benchmark's wall-clock budget). A NaN/inf loss
        raises TrainingDiverged after restoring the last good weights (and, with
        ``checkpoint``, leaving the last good checkpoint file in place).
        """
        if pool.world.image_size != self.config.image_size:
            raise ValueError("the pool's world renders a different image size than this GAN")
        if steps <= 0 or batch_size < 2:
            raise ValueError("steps must be positive and batch_size at least 2")
        cfg, dev = self.config, self.device
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        t_prep = time.perf_counter()
        raw = self.text_features(pool.captions)                             # caption features, once
        if cfg.standardize_text and self.text_stats is None:
            self.text_stats = (raw.pooled.mean(0).cpu(), raw.pooled.std(0).clamp(min=1e-6).cpu())
        bank = self.condition(pool.captions)
        prep_seconds = time.perf_counter() - t_prep
        opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
        opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
        snap_z = torch.randn(len(snapshot_captions or []), cfg.z_dim, generator=gen).to(dev)
        hist = {"step": [], "d_loss": [], "g_loss": [], "p_real": [], "p_fake": [], "p_mismatch": [],
                "seconds": [], "snapshots": [], "snapshot_steps": [], "text_prep_seconds": prep_seconds}
        last_good = self._state()
        last_good_step = self.steps_done
        saved_step = None                      # step of the checkpoint file written by this run, if any
        if checkpoint and self._finite():      # the starting point is the first "last good" checkpoint
            self.save(checkpoint)
            saved_step = self.steps_done
        n_int = int(round(cfg.interp_fraction * batch_size))
        half = (batch_size - n_int) // 2
        # how far apart two real images of one caption are, per unit of noise distance E|z1 - z2| = 2/sqrt(pi)
        div_target = pool.pair_distance() / (2 / math.sqrt(math.pi)) if cfg.diversity_weight > 0 else 0.0
        self.G.train()
        self.D.train()
        t0 = time.perf_counter()
        bar = tqdm(range(steps), desc="GAN", disable=not progress, leave=False)
        for i in bar:
            real, cap, attrs = pool.batch(batch_size, gen)
            real = real.to(dev, memory_format=torch.channels_last)
            text = bank[cap.to(bank.pooled.device)]
            # ---- discriminator step: maximise log D(x,t) + log(1 - D(G(z,t),t)) (+ mismatched pairs)
            z = torch.randn(batch_size, cfg.z_dim, generator=gen).to(dev)
            shift = int(torch.randint(1, batch_size, (1,), generator=gen))
            wrong = torch.roll(torch.arange(batch_size), shift)                 # another caption in the batch
            differs = ~caption_matches(pool.caption_attrs[cap[wrong]], attrs).diagonal()
            with runtime.autocast(dev, bf16):
                with torch.no_grad():
                    fake = self.G(z, text)
                phi_real = self.D.features(real)
                phi_fake = self.D.features(fake.detach())
                d_real = self.D.head(phi_real, text.pooled).float()
                d_fake = self.D.head(phi_fake, text.pooled).float()
                d_mis = self.D.head(phi_real[differs.to(dev)], text.pooled[wrong][differs.to(dev)]).float()
            d_loss = discriminator_loss(d_real, d_fake, d_mis if cfg.mismatch_weight > 0 else None,
                                        cfg.d_loss_kind, cfg.mismatch_weight)
            if not torch.isfinite(d_loss):
                self._diverged(f"discriminator loss became {d_loss.item()}", i, last_good, last_good_step, saved_step, checkpoint)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            # ---- generator step: fool D, on real captions and on interpolated ones (GAN-INT)
            z = torch.randn(batch_size, cfg.z_dim, generator=gen).to(dev)
            order = torch.arange(batch_size)
            if cfg.diversity_weight > 0:          # second half of the real-caption part repeats the first half's captions
                order[n_int + half:n_int + 2 * half] = order[n_int:n_int + half]
            g_text = text[order]
            if n_int:
                perm = torch.randperm(batch_size, generator=gen)[:n_int]
                g_text = TextCondition.cat(g_text[:n_int].mix(text[perm], 0.5), g_text[n_int:])
            with runtime.autocast(dev, bf16):
                g_fake = self.G(z, g_text)
                g_loss = generator_loss(self.D(g_fake, g_text.pooled).float(), cfg.g_loss_kind)
                if cfg.diversity_weight > 0:      # one caption, two noises: the images must differ
                    a, b = g_fake[n_int:n_int + half].float(), g_fake[n_int + half:n_int + 2 * half].float()
                    za, zb = z[n_int:n_int + half], z[n_int + half:n_int + 2 * half]
                    g_loss = g_loss + cfg.diversity_weight * diversity_loss(a, b, za, zb, div_target)
            if not torch.isfinite(g_loss):
                self._diverged(f"generator loss became {g_loss.item()}", i, last_good, last_good_step, saved_step, checkpoint)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            if self.G_ema is not None:
                self.G_ema.update_parameters(self.G)
            self.steps_done += 1
            if callback is not None:
                callback(self, i)
            # ---- bookkeeping
            if i % log_every == 0 or i == steps - 1:
                hist["step"].append(self.steps_done)
                hist["d_loss"].append(d_loss.item())
                hist["g_loss"].append(g_loss.item())
                hist["p_real"].append(torch.sigmoid(d_real).mean().item())
                hist["p_fake"].append(torch.sigmoid(d_fake).mean().item())
                hist["p_mismatch"].append(torch.sigmoid(d_mis).mean().item() if d_mis.numel() else float("nan"))
                hist["seconds"].append(time.perf_counter() - t0)
                bar.set_postfix(d=f"{d_loss.item():.2f}", g=f"{g_loss.item():.2f}")
            if snapshot_every and snapshot_captions and (i % snapshot_every == 0 or i == steps - 1):
                hist["snapshots"].append(self._generate_z(snapshot_captions, snap_z).cpu())
                hist["snapshot_steps"].append(self.steps_done)
                self.G.train()
            if (i + 1) % checkpoint_every == 0:
                if not self._finite():              # a NaN weight with a still-finite loss: never keep it
                    self._diverged("weights became NaN/inf", i, last_good, last_good_step, saved_step, checkpoint)
                last_good, last_good_step = self._state(), self.steps_done
                if checkpoint:
                    self.save(checkpoint)
                    saved_step = self.steps_done
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                break
        self.G.eval()
        self.D.eval()
        hist["total_seconds"] = time.perf_counter() - t0
        hist["steps"] = i + 1
        hist["images_per_second"] = hist["steps"] * batch_size / hist["total_seconds"]
        if not self._finite():
            self._diverged("weights became NaN/inf", i, last_good, last_good_step, saved_step, checkpoint)
        if checkpoint:
            self.save(checkpoint)
        return hist

    def _state(self) -> dict:
        return copy.deepcopy({"G": self.G.state_dict(), "D": self.D.state_dict(),
                              "G_ema": self.G_ema.state_dict() if self.G_ema is not None else None})

    def _load_state(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.G_ema is not None and state["G_ema"] is not None:
            self.G_ema.load_state_dict(state["G_ema"])

    def _finite(self) -> bool:
        return all(torch.isfinite(p).all() for m in (self.G, self.D) for p in m.parameters())

    def _diverged(self, what, step, last_good, last_good_step, saved_step, checkpoint):
        self._load_state(last_good)
        self.steps_done = last_good_step
        if checkpoint and saved_step is not None:
            where = f"; the last good checkpoint (step {saved_step}) is kept at {checkpoint}"
        elif checkpoint:
            where = f"; no checkpoint was written to {checkpoint} before it diverged"
        else:
            where = ""
        raise TrainingDiverged(
            f"training diverged: the {what} at step {step}. The model was restored to its last good "
            f"weights (step {last_good_step}){where}. Try lower learning rates (lr_g={self.config.lr_g}, "
            f"lr_d={self.config.lr_d}) or the hinge loss with spectral norm.")

    # ---------------------------------------------------------------- sampling
    @property
    def sampler(self) -> nn.Module:
        """The generator used for sampling: the EMA copy when there is one."""
        return self.G_ema.module if self.G_ema is not None else self.G

    @torch.no_grad()
    def _generate_z(self, captions: list[str], z: torch.Tensor) -> torch.Tensor:
        g = self.sampler
        g.eval()
        out = g(z.to(self.device), self.condition(captions))
        if not torch.isfinite(out).all():
            raise TrainingDiverged("the generator produced NaN/inf pixels; its weights are broken "
                                   "(reload a good checkpoint)")
        return out.float()

    def _check(self, captions: list[str]) -> list[str]:
        """Every caption must name an object; with a closed-vocabulary text encoder (the small
        BERT) every word must be known, while MiniLM reads any English (unknown words pass)."""
        captions = check_captions(captions)
        for c in captions:
            self.world.parse(c, strict=not self.text_encoder.open_vocabulary)
        return captions

    @property
    def text_encoder(self):
        """The encoder behind the caption features (MiniLM, or the dual encoder's text tower)."""
        return self.minilm if self.config.text_encoder == "minilm" else self.aligner.text_encoder

    def generate(self, captions: list[str], n_per_caption: int = 1, seed: int = 0,
                 z: torch.Tensor | None = None) -> torch.Tensor:
        """Images for captions: (len(captions) * n_per_caption, 3, S, S) in [-1, 1], grouped by
        caption (all samples of caption 0 first), float32 on the CPU whatever device G runs on
        (images are for looking at and measuring). ``seed`` fixes the noise."""
        captions = self._check(captions)
        if not isinstance(n_per_caption, int) or n_per_caption <= 0:
            raise ValueError(f"n_per_caption must be a positive integer, got {n_per_caption!r}")
        reps = [c for c in captions for _ in range(n_per_caption)]
        if z is None:
            z = torch.randn(len(reps), self.config.z_dim, generator=torch.Generator().manual_seed(seed))
        elif z.shape != (len(reps), self.config.z_dim):
            raise ValueError(f"z must have shape ({len(reps)}, {self.config.z_dim}), got {tuple(z.shape)}")
        return torch.cat([self._generate_z(reps[i:i + 512], z[i:i + 512]).cpu() for i in range(0, len(reps), 512)])

    @torch.no_grad()
    def interpolate(self, caption_a: str, caption_b: str, steps: int = 8, n: int = 1, seed: int = 0) -> torch.Tensor:
        """Walk from caption_a to caption_b in text-feature space with the noise held fixed:
        (n * steps, 3, S, S), row r = noise r, columns from a to b."""
        self._check([caption_a, caption_b])
        if steps < 2 or n <= 0:
            raise ValueError("interpolation needs steps >= 2 and n >= 1")
        a, b = self.condition([caption_a]), self.condition([caption_b])
        z = torch.randn(n, self.config.z_dim, generator=torch.Generator().manual_seed(seed)).to(self.device)
        g = self.sampler
        g.eval()
        rows = []
        for r in range(n):
            conds = [b.mix(a, float(beta)) for beta in torch.linspace(0, 1, steps)]
            text = TextCondition.cat(*conds)
            rows.append(g(z[r:r + 1].expand(steps, -1), text).float())
        return torch.cat(rows).cpu()

    @torch.no_grad()
    def discriminate(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """D's probability that each (image, caption) pair is real and matching: (N,)."""
        captions = self._check(captions)
        check_images(images, self.config.image_size, "ConditionalGAN.discriminate")
        if len(images) != len(captions):
            raise ValueError(f"got {len(images)} images but {len(captions)} captions; pass one caption per image")
        self.D.eval()
        return torch.sigmoid(self.D(images.to(self.device), self.condition(captions).pooled)).cpu()

    # ---------------------------------------------------------------- checkpoints
    def _load_text_stats(self, state: dict) -> None:
        st = state.get("text_stats")
        self.text_stats = (st["mean"].cpu(), st["std"].cpu()) if st is not None else None

    def checkpoint_config(self) -> dict:
        return {**asdict(self.config), "world": self.world.config()}

    def save(self, path, history: dict | None = None) -> None:
        """``state_dict``s + config; the aligned text tower travels with it when it is used."""
        state = {"G": self.G.state_dict(), "D": self.D.state_dict()}
        if self.G_ema is not None:
            state["G_ema"] = self.G_ema.state_dict()
        if self.text_stats is not None:
            state["text_stats"] = {"mean": self.text_stats[0], "std": self.text_stats[1]}
        extra = {"steps_done": self.steps_done, "history": history or {}}
        if self.aligner is not None:
            extra["aligner"] = {"config": asdict(self.aligner.config), "text_spec": self.aligner.text_encoder.spec,
                                "state": {k: v for k, v in self.aligner.state_dict().items()
                                          if self.aligner.text_encoder.trainable or not k.startswith("text_encoder.")}}
        runtime.save_checkpoint(path, self.checkpoint_config(), state, kind="gan", **extra)

    def load_weights(self, path) -> None:
        """Load a checkpoint into this (identically configured) GAN; a different config is an error."""
        ckpt = runtime.load_checkpoint(path, map_location=self.device, expect_config=self.checkpoint_config(),
                                       kind="gan")
        self.G.load_state_dict(ckpt["state"]["G"])
        self.D.load_state_dict(ckpt["state"]["D"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(ckpt["state"]["G_ema"])
        self._load_text_stats(ckpt["state"])
        self.steps_done = ckpt.get("steps_done", 0)

    @classmethod
    def load(cls, path, device=None) -> "ConditionalGAN":
        """Rebuild a GAN (and its text tower) from a checkpoint file."""
        from .align import AlignConfig, DualEncoder
        from .text import build_text_encoder
        dev = torch.device(device) if device is not None else runtime.device()
        ckpt = runtime.load_checkpoint(path, map_location=dev, kind="gan")
        conf = dict(ckpt["config"])
        world = World(**conf.pop("world"))
        config = runtime.dataclass_from_dict(GANConfig, conf)
        aligner = None
        if "aligner" in ckpt:
            a = ckpt["aligner"]
            aligner = DualEncoder(runtime.dataclass_from_dict(AlignConfig, a["config"]), world,
                                  build_text_encoder(a["text_spec"]))
            aligner.load_state_dict(a["state"], strict=aligner.text_encoder.trainable)
        gan = cls(config, world, aligner=aligner, device=dev)
        gan.G.load_state_dict(ckpt["state"]["G"])
        gan.D.load_state_dict(ckpt["state"]["D"])
        if gan.G_ema is not None:
            gan.G_ema.load_state_dict(ckpt["state"]["G_ema"])
        gan._load_text_stats(ckpt["state"])
        gan.steps_done = ckpt.get("steps_done", 0)
        gan.history = ckpt.get("history", {})
        gan.G.eval()
        gan.D.eval()
        return gan


def _ema_with_warmup(decay: float):
    """EMA update for AveragedModel: avg <- d * avg + (1 - d) * current with
    d = min(decay, (1 + n) / (10 + n)), so a short run is not dominated by the initial weights."""
    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return d * averaged + (1.0 - d) * current
    return avg_fn


__all__ = ["GANConfig", "Generator", "Discriminator", "ConditionalGAN", "discriminator_loss",
           "generator_loss", "TrainingDiverged"]
