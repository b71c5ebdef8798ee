"""Conditional variational autoencoder for text-to-image generation, and the image autoencoder
that latent diffusion works in.

A VAE (Kingma & Welling 2014; Rezende et al. 2014) learns two networks at once:

* an encoder q_phi(z | x, t) that maps an image x (and its caption t) to a Gaussian over a
  latent code z, N(mu, diag(sigma^2)) -- it outputs mu and log sigma^2;
* a decoder p_theta(x | z, t) that maps a code (and the caption) back to an image: a
  Gaussian N(x_hat, s^2 I) around its output x_hat.

Training maximises the evidence lower bound (ELBO) on log p(x | t), i.e. minimises

    -ELBO = E_{z ~ q(z|x,t)}[ -log p(x | z, t) ]  +  beta * KL( q(z | x, t) || N(0, I) )
          = ||x - x_hat||^2 / (2 s^2)             +  beta * 1/2 sum_j (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1)

(``losses.elbo_loss``; beta = 1 is the bound itself, beta != 1 the beta-VAE of Higgins et al.
2017). The expectation is estimated with one sample drawn by the *reparameterisation trick*:
z = mu + sigma * eps with eps ~ N(0, I), so the sample is a differentiable function of mu and
sigma and the gradient flows through it into the encoder (``reparameterize``). A *conditional*
VAE (Sohn et al. 2015) gives the caption to both networks, so the code only has to hold what
the caption does not say (where exactly the object stands, shades, table size). To generate,
draw z from the prior N(0, I) and decode it with the caption.

The same encoder and decoder without a caption (``conditional=False``) and with a spatial
latent (e.g. 4 x 8 x 8 for a 3 x 32 x 32 image) form the image autoencoder of latent diffusion
(Rombach et al. 2022, "KL-regularised" with a small beta): ``Autoencoder`` and
``train_autoencoder``; ``diffusion.py`` uses them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checks, runtime
from .condition import CaptionEncoder, TextCondition
from .data import PairPool
from .loop import EMA, Loop, TrainConfig, TrainingDiverged
from .losses import elbo_loss
from .text2image import NoiseStreams, TextToImage
from .vision import n_halvings
from .world import World


# ======================================================================================
@dataclass
class VAEConfig:
    text_encoder: str = "minilm"   # caption features: "minilm" (pretrained, frozen), "clip", "bert" (see condition.py)
    conditional: bool = True       # read the caption (a conditional VAE); False: a plain image autoencoder
    image_size: int = 32
    latent_channels: int = 32      # z has latent_channels x latent_size x latent_size numbers
    latent_size: int = 1           # 1: one vector per image; 4, 8, ...: a spatial code (latent diffusion)
    channels: int = 32             # width at full resolution; doubles per halving, at most 4x
    cond_dim: int = 128            # the caption feature is projected to this many numbers (FiLM input)
    beta: float = 1.0              # weight of the KL term (1: the ELBO itself)
    sigma: float = 0.5             # std of the decoder's Gaussian p(x | z, t) in [-1, 1] pixel units. It sets
                                   # what a nat of code is worth: with 0.1 the code also carried the relation
                                   # (prior samples put the object anywhere); 0.5 leaves that to the caption
    kl_warmup: float = 0.0         # share of the run over which beta ramps up from 0 (0: no ramp)
    lr: float = 2e-3               # AdamW peak; 5 % warm-up, then cosine decay to 5 % (``lr_factor``)
    weight_decay: float = 0.0
    ema_decay: float = 0.99        # EMA of the weights used for sampling; 0 switches it off
    text_norm: str = "discriminant"  # caption features: "discriminant" (scene directions, as the GAN), "zscore"
                                     # (each standardised over the training captions) or "raw" (condition.CaptionEncoder)
    text_dims: int = 24            # directions kept by the discriminant projection
    complete_captions: bool = False  # generate(): first complete what a caption leaves out, per image, with the
                                     # data's frequencies (text2image.complete_captions)

    def __post_init__(self):
        checks.choice(self.text_encoder, "text_encoder", ("minilm", "clip", "bert"))
        n_halvings(self.image_size)
        self.latent_channels = checks.count(self.latent_channels, "latent_channels", maximum=4096)
        self.latent_size = checks.count(self.latent_size, "latent_size", maximum=self.image_size)
        ratio = self.image_size // self.latent_size
        if self.latent_size != 1 and (self.latent_size < 4 or self.image_size % self.latent_size or ratio & (ratio - 1)):
            raise ValueError(f"latent_size must be 1 (a vector) or image_size / 2^k >= 4 (e.g. 4, 8, 16 for "
                             f"{self.image_size}x{self.image_size} images), got {self.latent_size}")
        self.channels = checks.count(self.channels, "channels", maximum=1024)
        self.cond_dim = checks.count(self.cond_dim, "cond_dim", maximum=4096)
        checks.number(self.beta, "beta", low=0.0)
        checks.number(self.sigma, "sigma", low=0.0, low_open=True)
        checks.fraction(self.kl_warmup, "kl_warmup", open_high=True)
        checks.number(self.lr, "lr", 0.0, 1.0, low_open=True)
        checks.number(self.weight_decay, "weight_decay", low=0.0)
        checks.number(self.ema_decay, "ema_decay", 0.0, 1.0, high_open=True)
        checks.choice(self.text_norm, "text_norm", ("zscore", "discriminant", "raw"))
        self.text_dims = checks.count(self.text_dims, "text_dims", maximum=384)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)

    @property
    def widths(self) -> list[int]:
        """Width at each resolution from full size down to the bottom of the encoder."""
        k = int(round(math.log2(self.image_size / max(self.latent_size, 4))))
        return [self.channels * min(2 ** i, 4) for i in range(k + 1)]


def _groups(c: int) -> int:
    return 8 if c % 8 == 0 else 1


class Block(nn.Module):
    """conv3x3 -> group norm -> FiLM from the caption (scale, shift per channel) -> SiLU."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int | None, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.norm = nn.GroupNorm(_groups(c_out), c_out)
        self.film = nn.Linear(cond_dim, 2 * c_out) if cond_dim else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = self.norm(self.conv(x))
        if self.film is not None:
            scale, shift = self.film(cond).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)   # (B, C, 1, 1)
            h = h * (1 + scale) + shift
        return F.silu(h)


class Encoder(nn.Module):
    """q(z | x, t): (B, 3, S, S) image [+ caption features] -> mu, logvar, each (B, C, L, L)."""

    def __init__(self, cfg: VAEConfig, cond_dim: int | None):
        super().__init__()
        w = cfg.widths
        self.stem = Block(3, w[0], cond_dim)
        self.down = nn.ModuleList(Block(w[i], w[i + 1], cond_dim, stride=2) for i in range(len(w) - 1))
        self.mix = nn.ModuleList(Block(w[i + 1], w[i + 1], cond_dim) for i in range(len(w) - 1))
        c = cfg.latent_channels
        if cfg.latent_size == 1:                                      # flatten the 4x4 map (+ caption), a linear
            self.head = nn.Linear(w[-1] * 16 + (cond_dim or 0), 2 * c)
        else:
            self.head = nn.Conv2d(w[-1], 2 * c, 3, padding=1)
        self.vector = cfg.latent_size == 1

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(x, cond)                                         # (B, C0, S, S)
        for down, mix in zip(self.down, self.mix):
            h = mix(down(h, cond), cond)                               # (B, C, s, s) -> (B, C', s/2, s/2)
        if self.vector:
            flat = h.flatten(1) if cond is None else torch.cat([h.flatten(1), cond], dim=1)
            out = self.head(flat).view(len(x), -1, 1, 1)               # (B, 16 C' [+ cond]) -> (B, 2C, 1, 1)
        else:
            out = self.head(h)                                         # (B, 2C, L, L)
        mu, logvar = out.chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)


class Decoder(nn.Module):
    """p(x | z, t): (B, C, L, L) code [+ caption features] -> (B, 3, S, S) mean image in [-1, 1]."""

    def __init__(self, cfg: VAEConfig, cond_dim: int | None):
        super().__init__()
        w = list(reversed(cfg.widths))                                 # bottom -> full resolution
        c = cfg.latent_channels
        self.vector = cfg.latent_size == 1
        if self.vector:
            self.fc = nn.Linear(c + (cond_dim or 0), w[0] * 16)
        else:
            self.fc = nn.Conv2d(c, w[0], 3, padding=1)
        self.first = Block(w[0], w[0], cond_dim)
        self.up = nn.ModuleList(Block(w[i], w[i + 1], cond_dim) for i in range(len(w) - 1))
        self.mix = nn.ModuleList(Block(w[i + 1], w[i + 1], cond_dim) for i in range(len(w) - 1))
        self.to_rgb = nn.Conv2d(w[-1], 3, 3, padding=1)
        self.w0 = w[0]

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.vector:
            flat = z.flatten(1) if cond is None else torch.cat([z.flatten(1), cond], dim=1)
            h = F.silu(self.fc(flat)).view(len(z), self.w0, 4, 4)      # (B, C + cond) -> (B, C0, 4, 4)
        else:
            h = F.silu(self.fc(z))                                     # (B, C, L, L) -> (B, C0, L, L)
        h = self.first(h, cond)
        for up, mix in zip(self.up, self.mix):
            h = F.interpolate(h, scale_factor=2, mode="nearest")       # (B, C, s, s) -> (B, C, 2s, 2s)
            h = mix(up(h, cond), cond)
        return torch.tanh(self.to_rgb(h))                              # (B, 3, S, S)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The reparameterisation trick: z = mu + sigma * eps, sigma = exp(logvar / 2), eps ~ N(0, I)
    drawn outside. z is a sample of N(mu, sigma^2) *and* a differentiable function of mu and
    logvar, so the reconstruction term's gradient reaches the encoder."""
    return mu + torch.exp(0.5 * logvar) * eps


class VAENet(nn.Module):
    """Encoder + decoder (+ the caption projection they share when conditional)."""

    def __init__(self, cfg: VAEConfig, text_dim: int | None):
        super().__init__()
        cond = cfg.cond_dim if cfg.conditional else None
        self.cond_proj = (nn.Sequential(nn.Linear(text_dim, cfg.cond_dim), nn.SiLU(), nn.Linear(cfg.cond_dim, cfg.cond_dim))
                          if cfg.conditional else None)
        self.encoder = Encoder(cfg, cond)
        self.decoder = Decoder(cfg, cond)

    def cond(self, text: TextCondition | None) -> torch.Tensor | None:
        if self.cond_proj is None:
            return None
        if text is None:
            raise ValueError("a conditional VAE needs the caption features")
        return self.cond_proj(text.pooled)                             # (B, D_t) -> (B, cond_dim)

    def forward(self, x: torch.Tensor, text: TextCondition | None, eps: torch.Tensor):
        """One pass of the ELBO: returns x_hat, mu, logvar."""
        c = self.cond(text)
        mu, logvar = self.encoder(x, c)
        z = reparameterize(mu, logvar, eps)
        return self.decoder(z, c), mu, logvar


def lr_factor(progress: float, warmup: float = 0.05, floor: float = 0.05) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1] of a run: linear warm-up over the first
    ``warmup``, then cosine decay to ``floor``."""
    if progress < warmup:
        return (progress + 1e-3) / warmup
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


def _elbo_steps(net: VAENet, cfg: VAEConfig, pool: PairPool, train: TrainConfig, name: str, bank, ema,
                dev, callback=None, who=None) -> dict:
    """The shared training loop of the conditional VAE and the autoencoder."""
    gen = torch.Generator().manual_seed(train.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    loop = Loop(name, train, {"net": net, **({"ema": ema.model} if ema is not None else {})},
                hint=f"Lower the learning rate (lr={cfg.lr}).")
    net.train()
    t0 = time.perf_counter()
    for step in loop:
        progress = step / train.steps                  # of the steps, or of the time budget if that ends first
        if train.max_seconds is not None:
            progress = max(progress, (time.perf_counter() - t0) / train.max_seconds)
        lr = cfg.lr * lr_factor(progress)
        for g in opt.param_groups:
            g["lr"] = lr
        x, cap, _ = pool.batch(train.batch_size, gen)
        eps = torch.randn((len(x),) + cfg.latent_shape, generator=gen)
        x, eps = x.to(dev), eps.to(dev)
        text = bank[cap.to(bank.pooled.device)] if bank is not None else None
        beta = cfg.beta * (min(1.0, step / (cfg.kl_warmup * train.steps)) if cfg.kl_warmup > 0 else 1.0)
        with runtime.autocast(dev, train.bf16):
            x_hat, mu, logvar = net(x, text, eps)
        loss, recon, kl = elbo_loss(x, x_hat.float(), mu.float(), logvar.float(), beta=beta, sigma=cfg.sigma)
        loop.check(loss=loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update(net)
        if who is not None:
            who.steps_done += 1
        if callback is not None:
            callback(who, step)
        if loop.due(step):
            mse = (x - x_hat.detach().float()).pow(2).mean()
            loop.log(step, loss=loss, recon=recon, kl=kl, mse=mse, lr=lr)
    net.eval()
    return loop.finish()


# ======================================================================================
class ConditionalVAE(TextToImage):
    """Text-to-image by a conditional VAE: sample z ~ N(0, I), decode it with the caption
    (used like every family: see ``TextToImage``)."""

    kind = "vae"
    config_class = VAEConfig

    def __init__(self, config: VAEConfig, world: World, aligner=None, device=None, text: CaptionEncoder | None = None):
        if not config.conditional:
            raise ValueError("ConditionalVAE needs conditional=True (an unconditional one is the Autoencoder)")
        if text is None:
            text = CaptionEncoder(config.text_encoder, aligner=aligner, norm=config.text_norm, dims=config.text_dims)
        super().__init__(config, world, text)
        self.net = runtime.channels_last(VAENet(config, text.dim), device, amx_contiguous=True)
        self.ema = EMA(self.net, config.ema_decay) if config.ema_decay > 0 else None
        self.net_ema = self.ema.model if self.ema is not None else None     # registered: saved with the model
        self.to(torch.device(device) if device is not None else runtime.device())
        self.net.eval()

    @property
    def sampler(self) -> VAENet:
        """The network used for sampling and encoding: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.net

    # ---------------------------------------------------------------- training
    def fit(self, pool: PairPool, train: TrainConfig | None = None, callback=None, **train_kw) -> dict:
        """Minimise -ELBO on (image, caption) pairs of ``pool`` for ``train.steps`` steps (or
        ``train.max_seconds``). ``callback(model, step)`` runs after every step. Returns the
        history (loss, its reconstruction and KL parts, pixel MSE, seconds)."""
        train = train or TrainConfig(**train_kw)
        if pool.world.image_size != self.config.image_size:
            raise ValueError(f"the pool's world renders {pool.world.image_size}x{pool.world.image_size} images, "
                             f"this VAE makes {self.config.image_size}x{self.config.image_size}")
        torch.manual_seed(train.seed)
        self.text.fit(pool.captions, pool.caption_attrs)
        bank = self.condition(pool.captions)
        start = self.steps_done
        try:
            hist = _elbo_steps(self.net, self.config, pool, train, "VAE", bank, self.ema, self.device, callback, self)
        except TrainingDiverged:
            self.net.eval()
            self.steps_done = start
            raise
        self.history = hist
        return hist

    # ---------------------------------------------------------------- sampling
    def _generate(self, text: TextCondition, noise: NoiseStreams, temperature: float = 1.0) -> torch.Tensor:
        """z ~ N(0, temperature^2 I) from each image's own stream, decoded with its caption."""
        temperature = checks.number(temperature, "temperature", low=0.0)
        z = noise.randn(*self.config.latent_shape) * temperature           # (B, C, L, L)
        net = self.sampler
        net.eval()
        return net.decoder(z, net.cond(text.to(self.device))).float()

    @torch.no_grad()
    def encode(self, images: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x, t): (N, 3, S, S) images and their captions -> mu, logvar (N, C, L, L), on the CPU."""
        images = checks.images(images, self.config.image_size, "ConditionalVAE.encode")
        captions = self.check_captions(captions, "ConditionalVAE.encode")
        if len(images) != len(captions):
            raise ValueError(f"got {len(images)} images but {len(captions)} captions; pass one caption per image")
        net = self.sampler
        net.eval()
        out = [net.encoder(images[i:i + 512].to(self.device), net.cond(self.condition(captions[i:i + 512])))
               for i in range(0, len(images), 512)]
        return torch.cat([m for m, _ in out]).cpu(), torch.cat([v for _, v in out]).cpu()

    @torch.no_grad()
    def decode(self, z: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """p(x | z, t)'s mean: codes (N, C, L, L) and captions -> (N, 3, S, S) images, on the CPU."""
        captions = self.check_captions(captions, "ConditionalVAE.decode")
        shape = (len(captions),) + self.config.latent_shape
        if not isinstance(z, torch.Tensor) or tuple(z.shape) != shape:
            raise ValueError(f"z must be a tensor of shape {shape}, got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        net = self.sampler
        net.eval()
        return torch.cat([net.decoder(z[i:i + 512].float().to(self.device),
                                      net.cond(self.condition(captions[i:i + 512]))).float().cpu()
                          for i in range(0, len(captions), 512)])

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Decode the posterior mean of each image: how much of the image the code keeps."""
        mu, _ = self.encode(images, captions)
        return self.decode(mu, captions)


# ======================================================================================
class Autoencoder(nn.Module):
    """The image autoencoder of latent diffusion: an unconditional VAE with a spatial code,
    trained with a small beta so that the code keeps nearly every detail (Rombach et al. 2022).

    ``scale`` (a buffer, set by ``fit_scale``) divides the codes so that they have unit
    variance over the training images (Stable Diffusion's 0.18215 for its autoencoder)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        if cfg.conditional:
            raise ValueError("an Autoencoder reads no caption: use VAEConfig(conditional=False, ...)")
        self.config = cfg
        self.net = runtime.channels_last(VAENet(cfg, None), amx_contiguous=True)
        self.register_buffer("scale", torch.tensor(1.0))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.config.latent_shape

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) -> scaled mu and logvar of the code, (B, C, L, L) each."""
        mu, logvar = self.net.encoder(x)
        return mu / self.scale, logvar - 2 * torch.log(self.scale)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled code (B, C, L, L) -> (B, 3, S, S) image in [-1, 1]."""
        return self.net.decoder(z * self.scale)

    @torch.no_grad()
    def fit_scale(self, images_u8: torch.Tensor, batch_size: int = 512) -> float:
        """Set ``scale`` to the standard deviation of the posterior means over these images."""
        self.scale.fill_(1.0)
        dev = self.scale.device
        mus = torch.cat([self.net.encoder(images_u8[i:i + batch_size].to(dev).float() / 127.5 - 1)[0].float()
                         for i in range(0, len(images_u8), batch_size)])
        self.scale.fill_(float(mus.std().clamp(min=1e-4)))
        return float(self.scale)


def train_autoencoder(ae: Autoencoder, pool: PairPool, train: TrainConfig) -> dict:
    """Minimise the (beta-weighted) negative ELBO of the autoencoder on the pool's images."""
    dev = ae.scale.device
    torch.manual_seed(train.seed)
    hist = _elbo_steps(ae.net, ae.config, pool, train, "autoencoder", None, None, dev)
    ae.fit_scale(pool.images)
    return hist


__all__ = ["VAEConfig", "ConditionalVAE", "VAENet", "Encoder", "Decoder", "Block", "reparameterize", "lr_factor",
           "Autoencoder", "train_autoencoder"]
