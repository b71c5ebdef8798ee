"""Text-conditioned diffusion: learn to remove noise, then make images by removing it from pure noise.

The forward process (Sohl-Dickstein et al. 2015; Ho et al. 2020, DDPM) adds Gaussian noise in
T small steps, x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps_t, so that in closed form

    q(x_t | x_0) = N( sqrt(abar_t) x_0, (1 - abar_t) I ),   abar_t = prod_{s<=t} (1 - beta_s),

i.e. x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with one eps ~ N(0, I) (``NoiseSchedule.q_sample``).
abar_t follows the cosine schedule of Nichol & Dhariwal 2021 (``cosine``): the signal fades
slowly at both ends. A network (``unet.UNet``) sees x_t, t and the caption and is trained to
predict what was added -- Ho et al.'s simplified objective

    L = E_{x_0, t, eps} [ w(t) || target - net(x_t, t, text) ||^2 ],

with target eps (``prediction="eps"``, Ho et al.), x_0, or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
(Salimans & Ho 2022), and w(t) the min-SNR-gamma weight (Hang et al. 2023; ``losses``).
All three targets carry the same information: given x_t, any one gives the other two
(``NoiseSchedule.split``).

Sampling walks back from x_T ~ N(0, I): DDPM's ancestral step draws x_s ~ q(x_s | x_t, x_0 = the
model's estimate), DDIM's (Song et al. 2021) moves deterministically (eta = 0) along the same
estimate; both may skip steps, so ``steps`` network evaluations (or twice that with guidance)
make an image.

Classifier-free guidance (Ho & Salimans 2022): the caption is dropped (replaced by a learned
null caption) for ``cond_drop`` of the training examples, so one network predicts both
eps_c = net(x_t, t, caption) and eps_u = net(x_t, t, nothing). At sampling time

    eps = (1 + w) eps_c - w eps_u          (Ho & Salimans' w >= 0; w = 0: plain conditional)
        = eps_u + s (eps_c - eps_u)       (the "guidance scale" s = 1 + w of Stable Diffusion)

-- one formula, w shifted by one (``guided``, ``guided_scale``). ``generate`` takes Ho &
Salimans' ``w`` or, by that name, ``guidance_scale``; never an unnamed number.

Latent diffusion (Rombach et al. 2022): with ``space="latent"`` the process runs on the codes of
an image autoencoder (``vae.Autoencoder``, 4 x 8 x 8 numbers instead of 3 x 32 x 32), trained
first; each network evaluation is then much cheaper, and the decoder turns the final code into
pixels.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from . import checks, runtime
from .condition import CaptionEncoder, TextCondition
from .data import PairPool
from .loop import EMA, Loop, TrainConfig, TrainingDiverged
from .losses import diffusion_loss, min_snr_weight
from .text2image import NoiseStreams, TextToImage
from .unet import UNet
from .vae import Autoencoder, VAEConfig, lr_factor, train_autoencoder
from .world import World

PREDICTIONS = ("eps", "v", "x0")
SAMPLERS = ("ddim", "ddpm")


# ======================================================================================
# the noise schedule and the two samplers' updates (pure functions of tensors)
def cosine_alpha_bar(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """abar_t for t = 0..T (abar_0 = 1): f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) * pi/2),
    with each beta_t = 1 - abar_t / abar_{t-1} capped at ``max_beta`` (Nichol & Dhariwal 2021)."""
    t = torch.arange(timesteps + 1, dtype=torch.float64)
    f = torch.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    betas = (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def linear_alpha_bar(timesteps: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> torch.Tensor:
    """abar_t for DDPM's linear schedule (Ho et al. 2020), rescaled for T other than 1000."""
    scale = 1000 / timesteps
    betas = torch.linspace(scale * beta_1, scale * beta_T, timesteps, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


class NoiseSchedule(nn.Module):
    """abar_t, t = 0..T, and the forward process q(x_t | x_0) with its conversions."""

    def __init__(self, timesteps: int = 1000, kind: str = "cosine"):
        super().__init__()
        self.T = checks.count(timesteps, "timesteps", minimum=2, maximum=100_000)
        self.kind = checks.choice(kind, "noise schedule", ("cosine", "linear"))
        abar = cosine_alpha_bar(self.T) if kind == "cosine" else linear_alpha_bar(self.T)
        self.register_buffer("abar", abar.float(), persistent=False)          # (T + 1,)

    def _at(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """abar_t for (B,) time steps, shaped to broadcast against ``like`` (B, ...)."""
        return self.abar.to(like.device)[t.long().to(like.device)].view(-1, *[1] * (like.ndim - 1))

    def betas(self) -> torch.Tensor:
        """beta_t for t = 1..T, from abar (T,)."""
        return 1 - self.abar[1:] / self.abar[:-1]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps: a sample of q(x_t | x_0) in one step."""
        a = self._at(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio abar_t / (1 - abar_t) of (B,) time steps."""
        a = self.abar.to(t.device)[t.long()]
        return a / (1 - a).clamp(min=1e-12)

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
        """What the network learns to output: eps, x_0, or v = sqrt(abar) eps - sqrt(1 - abar) x_0."""
        if prediction == "eps":
            return eps
        if prediction == "x0":
            return x0
        a = self._at(t, x0)
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    def split(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction: str):
        """The network's output -> (eps, x_0) estimates, given x_t = sqrt(a) x_0 + sqrt(1 - a) eps."""
        a = self._at(t, x_t)
        sa, s1 = a.sqrt(), (1 - a).sqrt()
        if prediction == "eps":
            return pred, (x_t - s1 * pred) / sa
        if prediction == "x0":
            return (x_t - sa * pred) / s1.clamp(min=1e-6), pred
        return s1 * x_t + sa * pred, sa * x_t - s1 * pred                      # from v

    def timesteps(self, steps: int, start: int | None = None) -> list[int]:
        """``steps`` + 1 evenly spaced time steps from ``start`` (default T) down to 0."""
        start = self.T if start is None else start
        return [int(round(start * (1 - i / steps))) for i in range(steps + 1)]


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor, abar_s: torch.Tensor,
              eta: float = 0.0, z: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) from time t to an earlier time s, given the model's x_0 and
    eps estimates: x_s = sqrt(abar_s) x_0 + sqrt(1 - abar_s - sigma^2) eps + sigma z, with
    sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s). eta = 0: deterministic;
    eta = 1: the DDPM ancestral step."""
    sigma = eta * ((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)).clamp(min=0).sqrt()
    x = abar_s.sqrt() * x0 + (1 - abar_s - sigma ** 2).clamp(min=0).sqrt() * eps
    if eta > 0:
        if z is None:
            raise ValueError("ddim_step with eta > 0 needs the fresh noise z")
        x = x + sigma * z
    return x


def ddpm_step(x_t: torch.Tensor, x0: torch.Tensor, abar_t: torch.Tensor, abar_s: torch.Tensor,
              z: torch.Tensor | None) -> torch.Tensor:
    """DDPM's ancestral step (Ho et al. 2020, eqs. 6-7) from t to s < t: a sample of the Gaussian
    posterior q(x_s | x_t, x_0) with x_0 the model's estimate,

        mean = sqrt(abar_s) beta / (1 - abar_t) x_0 + sqrt(alpha) (1 - abar_s) / (1 - abar_t) x_t,
        var  = (1 - abar_s) / (1 - abar_t) beta,      alpha = abar_t / abar_s, beta = 1 - alpha

    (with s = t - 1 the original one-step chain; larger jumps respace it). ``z`` ~ N(0, I)
    (ignored when s = 0, where the variance is 0)."""
    alpha = abar_t / abar_s
    beta = 1 - alpha
    mean = abar_s.sqrt() * beta / (1 - abar_t) * x0 + alpha.sqrt() * (1 - abar_s) / (1 - abar_t) * x_t
    var = (1 - abar_s) / (1 - abar_t) * beta
    if z is None:
        return mean
    return mean + var.clamp(min=0).sqrt() * z


def guided(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance as Ho & Salimans 2022 write it: (1 + w) eps_c - w eps_u, w >= 0.
    w = 0 is the plain conditional prediction."""
    return (1 + w) * cond - w * uncond


def guided_scale(cond: torch.Tensor, uncond: torch.Tensor, s: float) -> torch.Tensor:
    """Classifier-free guidance with a "guidance scale" (Rombach et al. 2022; diffusers):
    eps_u + s (eps_c - eps_u). s = 1 is the plain conditional prediction; s = 1 + w gives
    exactly ``guided(cond, uncond, w)``."""
    return uncond + s * (cond - uncond)


# ======================================================================================
@dataclass
class DiffusionConfig:
    text_encoder: str = "minilm"   # caption features: "minilm" (pretrained, frozen), "clip", "bert" (see condition.py)
    image_size: int = 32
    space: str = "latent"          # "pixel": denoise images; "latent": denoise autoencoder codes (Rombach et al.)
    # ---- the autoencoder (space="latent"); trained first, inside fit
    latent_channels: int = 4       # code: latent_channels x latent_size x latent_size
    latent_size: int = 8
    ae_channels: int = 16          # autoencoder width at full resolution
    ae_beta: float = 1e-4          # KL weight: small, so the code keeps detail (a "KL-regularised" autoencoder)
    ae_steps: int = 1000           # autoencoder updates
    ae_batch: int = 32
    ae_lr: float = 4e-3
    # ---- the denoiser (unet.UNet)
    channels: tuple = (32, 64)     # width per resolution, e.g. 8x8 and 4x4 for an 8x8 latent
    blocks: int = 1                # residual blocks per resolution (on the way up: one more)
    attention_levels: tuple = (1,)  # resolutions (0 = full) with self-attention (and cross-attention)
    cross_attention: bool = False  # also attend from positions to the caption's words (CrossAttentionFusion)
    emb_dim: int = 256             # time + text embedding size
    self_condition: bool = False   # feed the previous x_0 estimate back in (Chen et al. 2023)
    coords: bool = True            # x, y coordinate channels at the input (CoordConv): "left" needs "where"
    text_map: bool = True          # the caption also as a spatial map at the lowest resolution (see unet.py)
    # ---- the process and the loss
    timesteps: int = 1000          # T
    schedule: str = "cosine"       # "cosine" (Nichol & Dhariwal 2021) or "linear" (Ho et al. 2020)
    prediction: str = "v"          # network target: "eps" (Ho et al.), "v" (Salimans & Ho 2022) or "x0"
    min_snr_gamma: float = 5.0     # min-SNR-gamma loss weight (Hang et al. 2023); 0 switches it off
    cond_drop: float = 0.1         # share of training captions replaced by the null caption (CFG)
    # ---- the optimiser
    lr: float = 2e-3               # AdamW peak learning rate
    warmup: float = 0.03           # share of the run with a linear warm-up; then cosine decay to 10 %
    weight_decay: float = 0.0
    grad_clip: float = 1.0         # gradient norm clipping; 0 = off
    ema_decay: float = 0.999       # EMA of the weights used for sampling (half-life ~690 steps, ramped)
    ema_rampup: float = 0.1
    # ---- sampling defaults (generate's keywords override them)
    sampler: str = "ddim"          # "ddim" or "ddpm"
    sample_steps: int = 10         # sampler steps per image (network evaluations: twice that with guidance);
                                   # chapter 4's sweep: 10 DDIM steps score as well as 20-50 in this world
    guidance: float = 2.0          # Ho & Salimans' w: eps = (1 + w) eps_c - w eps_u
    eta: float = 0.0               # DDIM's eta (0: deterministic)
    text_norm: str = "discriminant"  # caption features: "discriminant" (scene directions, as the GAN), "zscore"
                                     # (each standardised over the training captions) or "raw" (condition.CaptionEncoder)
    text_dims: int = 24            # directions kept by the discriminant projection
    complete_captions: bool = False  # generate(): first complete what a caption leaves out, per image, with the
                                     # data's frequencies (text2image.complete_captions)

    def __post_init__(self):
        checks.choice(self.text_encoder, "text_encoder", ("minilm", "clip", "bert"))
        checks.choice(self.space, "space", ("pixel", "latent"))
        self.channels, self.attention_levels = tuple(self.channels), tuple(self.attention_levels)
        for c in self.channels:
            checks.count(c, "channels", maximum=4096)
        self.blocks = checks.count(self.blocks, "blocks", maximum=16)
        self.emb_dim = checks.count(self.emb_dim, "emb_dim", maximum=4096)
        self.timesteps = checks.count(self.timesteps, "timesteps", minimum=2, maximum=100_000)
        checks.choice(self.schedule, "schedule", ("cosine", "linear"))
        checks.choice(self.prediction, "prediction", PREDICTIONS)
        checks.number(self.min_snr_gamma, "min_snr_gamma", low=0.0)
        checks.fraction(self.cond_drop, "cond_drop", open_high=True)
        checks.number(self.lr, "lr", 0.0, 1.0, low_open=True)
        checks.fraction(self.warmup, "warmup", open_high=True)
        checks.number(self.weight_decay, "weight_decay", low=0.0)
        checks.number(self.grad_clip, "grad_clip", low=0.0)
        checks.number(self.ema_decay, "ema_decay", 0.0, 1.0, high_open=True)
        checks.number(self.ema_rampup, "ema_rampup", 0.0, 1.0, low_open=True)
        checks.choice(self.sampler, "sampler", SAMPLERS)
        self.sample_steps = checks.count(self.sample_steps, "sample_steps", maximum=self.timesteps)
        checks.number(self.guidance, "guidance (w)", low=0.0)
        checks.number(self.eta, "eta", low=0.0, high=1.0)
        self.ae_steps = checks.count(self.ae_steps, "ae_steps")
        self.ae_batch = checks.count(self.ae_batch, "ae_batch", minimum=2)
        checks.number(self.ae_lr, "ae_lr", 0.0, 1.0, low_open=True)
        checks.choice(self.text_norm, "text_norm", ("zscore", "discriminant", "raw"))
        self.text_dims = checks.count(self.text_dims, "text_dims", maximum=384)
        if self.space == "latent":
            self.autoencoder_config()                      # validates the latent shape
        size = self.data_shape[1]
        if not self.channels or size % 2 ** (len(self.channels) - 1):
            raise ValueError(f"channels={self.channels} asks for {len(self.channels)} U-Net levels, but a "
                             f"{size}x{size} input cannot be halved {len(self.channels) - 1} times")
        for a in self.attention_levels:
            if not 0 <= a < len(self.channels):
                raise ValueError(f"attention level {a} does not exist; levels are 0..{len(self.channels) - 1}")

    def autoencoder_config(self) -> VAEConfig:
        return VAEConfig(conditional=False, image_size=self.image_size, latent_channels=self.latent_channels,
                         latent_size=self.latent_size, channels=self.ae_channels, beta=self.ae_beta,
                         lr=self.ae_lr, ema_decay=0.0)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """The shape the process runs on: (3, S, S) for pixels, the code's shape for latents."""
        if self.space == "pixel":
            return (3, self.image_size, self.image_size)
        return (self.latent_channels, self.latent_size, self.latent_size)


# ======================================================================================
class DiffusionModel(TextToImage):
    """Text-to-image by diffusion: a U-Net denoiser, its EMA, a noise schedule, and (latent
    space) the autoencoder. Used like every family (see ``TextToImage``); ``generate`` also takes
    the guidance weight and the sampler: ``model.generate(captions, w=2.0, steps=25, sampler="ddim")``.
    """

    kind = "diffusion"
    config_class = DiffusionConfig

    def __init__(self, config: DiffusionConfig, world: World, aligner=None, device=None,
                 text: CaptionEncoder | None = None):
        if text is None:
            text = CaptionEncoder(config.text_encoder, aligner=aligner, words=config.cross_attention,
                                  norm=config.text_norm, dims=config.text_dims)
        super().__init__(config, world, text)
        c, size, _ = config.data_shape
        self.net = runtime.channels_last(UNet(c, size, text.dim, config.channels, config.blocks, config.attention_levels,
                                              config.cross_attention, text.word_dim if config.cross_attention else None,
                                              config.emb_dim, self_condition=config.self_condition,
                                              coords=config.coords, text_map=config.text_map))
        self.ema = EMA(self.net, config.ema_decay, config.ema_rampup) if config.ema_decay > 0 else None
        self.net_ema = self.ema.model if self.ema is not None else None     # registered: saved with the model
        self.schedule = NoiseSchedule(config.timesteps, config.schedule)
        self.autoencoder = Autoencoder(config.autoencoder_config()) if config.space == "latent" else None
        self.register_buffer("ae_trained", torch.tensor(False))
        self.to(torch.device(device) if device is not None else runtime.device())
        self.eval()

    @property
    def T(self) -> int:
        return self.schedule.T

    @property
    def denoiser(self) -> UNet:
        """The network used for sampling: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.net

    # ---------------------------------------------------------------- images <-> the process's space
    def to_space(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) -> what the process runs on: the images, or their (scaled) codes' means."""
        if self.autoencoder is None:
            return images
        return self.autoencoder.encode(images)[0]

    def from_space(self, x: torch.Tensor) -> torch.Tensor:
        """The process's x_0 -> images in [-1, 1]."""
        if self.autoencoder is None:
            return x.clamp(-1, 1)
        return self.autoencoder.decode(x).clamp(-1, 1)

    # ---------------------------------------------------------------- training
    def fit(self, pool: PairPool, train: TrainConfig | None = None, callback=None, **train_kw) -> dict:
        """Train on (image, caption) pairs of ``pool``: in latent space, first the autoencoder
        (``config.ae_steps``, its time counted in ``train.max_seconds``), then ``train.steps``
        denoiser updates. ``callback(model, step)`` runs after every denoiser step. Returns the
        history (loss, learning rate, seconds; ``autoencoder`` for the first stage)."""
        train = train or TrainConfig(**train_kw)
        cfg, dev = self.config, self.device
        if pool.world.image_size != cfg.image_size:
            raise ValueError(f"the pool's world renders {pool.world.image_size}x{pool.world.image_size} images, "
                             f"this model makes {cfg.image_size}x{cfg.image_size}")
        t_start = time.perf_counter()
        torch.manual_seed(train.seed)
        self.text.fit(pool.captions, pool.caption_attrs)
        bank = self.condition(pool.captions)                                 # caption features, once
        ae_hist = None
        if self.autoencoder is not None and not bool(self.ae_trained):
            ae_train = TrainConfig(steps=cfg.ae_steps, batch_size=cfg.ae_batch, seed=train.seed, bf16=train.bf16,
                                   progress=train.progress, log_every=train.log_every)
            ae_hist = train_autoencoder(self.autoencoder, pool, ae_train)
            self.autoencoder.requires_grad_(False).eval()
            self.ae_trained.fill_(True)
        data = self._encode_pool(pool)                                       # (N, C, L, L) x0 (or mu, logvar)
        left = None
        if train.max_seconds is not None:
            left = train.max_seconds - (time.perf_counter() - t_start)
            if left <= 0:
                raise ValueError(f"max_seconds={train.max_seconds} is spent before the denoiser trains "
                                 f"(the autoencoder took {time.perf_counter() - t_start:.0f} s)")
            train = TrainConfig(**{**vars(train), "max_seconds": left})
        start = self.steps_done
        try:
            hist = self._fit_loop(pool, train, bank, data, callback)
        except TrainingDiverged:
            self.eval()
            self.steps_done = start
            raise
        if ae_hist is not None:
            hist["autoencoder"] = ae_hist
            hist["autoencoder_seconds"] = ae_hist["total_seconds"]
        hist["wall_seconds"] = time.perf_counter() - t_start
        self.history = hist
        return hist

    @torch.no_grad()
    def _encode_pool(self, pool: PairPool):
        """The pool in the process's space, once: pixels (uint8, converted per batch) or the
        autoencoder's posterior (mu, logvar) of every image."""
        if self.autoencoder is None:
            return None
        mus, logvars = [], []
        for i in range(0, len(pool.images), 512):
            x = pool.images[i:i + 512].to(self.device).float() / 127.5 - 1
            mu, logvar = self.autoencoder.encode(x)
            mus.append(mu.float())
            logvars.append(logvar.float())
        return torch.cat(mus), torch.cat(logvars)

    def _fit_loop(self, pool: PairPool, train: TrainConfig, bank: TextCondition, data, callback) -> dict:
        cfg, dev = self.config, self.device
        gen = torch.Generator().manual_seed(train.seed + 1)
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
        modules = {"net": self.net, **({"ema": self.ema.model} if self.ema is not None else {})}
        loop = Loop("diffusion", train, modules, save=self.save,
                    hint=f"Lower the learning rate (lr={cfg.lr}) or keep gradient clipping on.")
        self.net.train()
        t0 = time.perf_counter()
        for step in loop:
            progress = step / train.steps
            if train.max_seconds is not None:
                progress = max(progress, (time.perf_counter() - t0) / train.max_seconds)
            lr = cfg.lr * lr_factor(progress, cfg.warmup, 0.1)
            for g in opt.param_groups:
                g["lr"] = lr
            idx = torch.randint(len(pool), (train.batch_size,), generator=gen)
            which = torch.randint(pool.combo_captions.shape[1], (train.batch_size,), generator=gen)
            cap = pool.combo_captions[pool.image_combo[idx], which]
            t = torch.randint(1, self.T + 1, (train.batch_size,), generator=gen)
            keep = torch.rand(train.batch_size, generator=gen) >= cfg.cond_drop
            eps = torch.randn((train.batch_size,) + cfg.data_shape, generator=gen)
            if data is None:
                x0 = pool.images[idx].float() / 127.5 - 1                    # (B, 3, S, S)
            else:                                                            # a fresh sample of each code
                mu, logvar = data[0][idx], data[1][idx]
                x0 = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
            self_cond = cfg.self_condition and bool(torch.rand((), generator=gen) < 0.5)
            x0, t, keep, eps = x0.to(dev), t.to(dev), keep.to(dev), eps.to(dev)
            text = bank[cap.to(bank.pooled.device)]
            loss = self._loss(x0, t, eps, text, keep, self_cond, train.bf16)
            loop.check(loss=loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
            opt.step()
            if self.ema is not None:
                self.ema.update(self.net)
            self.steps_done += 1
            if callback is not None:
                callback(self, step)
            if loop.due(step):
                loop.log(step, loss=loss, lr=lr)
        self.eval()
        return loop.finish()

    def _loss(self, x0, t, eps, text, keep, self_cond: bool, bf16: bool) -> torch.Tensor:
        """One Monte-Carlo estimate of the weighted denoising loss."""
        cfg, sched = self.config, self.schedule
        x_t = sched.q_sample(x0, t, eps)                                     # (B, C, H, W)
        x0_est = None
        if self_cond:
            with torch.no_grad(), runtime.autocast(self.device, bf16):
                first = self.net(x_t, t, text, keep).float()
            x0_est = sched.split(first, x_t, t, cfg.prediction)[1].detach()
        with runtime.autocast(self.device, bf16):
            pred = self.net(x_t, t, text, keep, x0_est).float()
        weight = min_snr_weight(sched.snr(t), cfg.min_snr_gamma or None, cfg.prediction)
        return diffusion_loss(pred, sched.target(x0, eps, t, cfg.prediction), weight)

    # ---------------------------------------------------------------- sampling
    def sampling_options(self, w: float | None = None, guidance_scale: float | None = None,
                         steps: int | None = None, sampler: str | None = None, eta: float | None = None) -> dict:
        """Checked sampling options, defaults from the config. Guidance is given either as Ho &
        Salimans' ``w`` (>= 0; 0 = none) or as ``guidance_scale`` s = 1 + w (>= 1), not both."""
        cfg = self.config
        if w is not None and guidance_scale is not None:
            raise ValueError(f"give the guidance either as w (Ho & Salimans, (1 + w) eps_c - w eps_u) or as "
                             f"guidance_scale (s = 1 + w, eps_u + s (eps_c - eps_u)), not both (got w={w}, "
                             f"guidance_scale={guidance_scale})")
        if guidance_scale is not None:
            s = checks.number(guidance_scale, "guidance_scale")
            if s < 1:
                raise ValueError(f"guidance_scale must be at least 1 (s = 1 + w; s = 1: no guidance), got {s:g}")
            w = s - 1.0
        w = cfg.guidance if w is None else checks.number(w, "w")
        if w < 0:
            raise ValueError(f"the guidance weight w must be at least 0 (Ho & Salimans: (1 + w) eps_c - w eps_u; "
                             f"w = 0 is no guidance; a guidance scale s corresponds to w = s - 1), got {w:g}")
        steps = cfg.sample_steps if steps is None else steps
        steps = checks.count(steps, "steps (sampler steps)", maximum=self.T)
        sampler = checks.choice(cfg.sampler if sampler is None else sampler, "sampler", SAMPLERS)
        eta = checks.number(cfg.eta if eta is None else eta, "eta", 0.0, 1.0)
        return {"w": w, "steps": steps, "sampler": sampler, "eta": eta}

    def evaluations_per_image(self, **options) -> int:
        """Network evaluations per generated image for these options (guidance doubles them)."""
        o = self.sampling_options(**options)
        return o["steps"] * (2 if o["w"] > 0 else 1)

    def _predict(self, x: torch.Tensor, t: int, text: TextCondition, w: float, x0_est) -> torch.Tensor:
        """The (guided) network output at time t for a batch x."""
        net = self.denoiser
        tt = torch.full((len(x),), t, device=x.device, dtype=torch.long)
        if w == 0:
            return net(x, tt, text, None, x0_est).float()
        both = TextCondition.cat(text, text)
        keep = torch.cat([torch.ones(len(x), dtype=torch.bool), torch.zeros(len(x), dtype=torch.bool)]).to(x.device)
        est = None if x0_est is None else torch.cat([x0_est, x0_est])
        cond, uncond = net(torch.cat([x, x]), torch.cat([tt, tt]), both, keep, est).float().chunk(2)
        return guided(cond, uncond, w)

    @torch.no_grad()
    def denoise(self, x_t: torch.Tensor, text: TextCondition, noise: NoiseStreams, t_start: int | None = None,
                w: float = 0.0, steps: int = 25, sampler: str = "ddim", eta: float = 0.0) -> torch.Tensor:
        """Run the reverse process from x_t at time ``t_start`` (default T) down to 0 in ``steps``
        steps; fresh noise (DDPM, or DDIM with eta > 0) comes from ``noise``. Returns x_0 in the
        process's space (B, C, H, W)."""
        cfg, sched = self.config, self.schedule
        x = x_t.float()
        text = text.to(x.device)
        x0_est = None
        ts = sched.timesteps(steps, t_start)
        for t, s in zip(ts[:-1], ts[1:]):
            if t == s:
                continue
            pred = self._predict(x, t, text, w, x0_est if cfg.self_condition else None)
            eps, x0 = sched.split(pred, x, torch.full((len(x),), t), cfg.prediction)
            if cfg.space == "pixel":                                     # images live in [-1, 1]
                x0 = x0.clamp(-1, 1)
                a = sched.abar[t]
                eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x0_est = x0
            a_t, a_s = sched.abar[t].to(x.device), sched.abar[s].to(x.device)
            stochastic = s > 0 and (sampler == "ddpm" or eta > 0)
            z = noise.randn(*x.shape[1:]) if stochastic else None
            x = ddpm_step(x, x0, a_t, a_s, z) if sampler == "ddpm" else ddim_step(x0, eps, a_t, a_s, eta, z)
        return x

    def _generate(self, text: TextCondition, noise: NoiseStreams, **options) -> torch.Tensor:
        o = self.sampling_options(**options)
        x_T = noise.randn(*self.config.data_shape)                            # (B, C, H, W) from each image's stream
        x0 = self.denoise(x_T, text, noise, None, o["w"], o["steps"], o["sampler"], o["eta"])
        return self.from_space(x0).float()

    @torch.no_grad()
    def noise_to(self, images: torch.Tensor, t0: int, noise: NoiseStreams) -> torch.Tensor:
        """Images (B, 3, S, S) -> x_{t0} ~ q(x_{t0} | x_0) in the process's space (SDEdit's first half)."""
        x0 = self.to_space(images.to(self.device))
        return self.schedule.q_sample(x0, torch.full((len(x0),), t0), noise.randn(*x0.shape[1:]))


__all__ = ["DiffusionConfig", "DiffusionModel", "NoiseSchedule", "cosine_alpha_bar", "linear_alpha_bar",
           "ddim_step", "ddpm_step", "guided", "guided_scale", "PREDICTIONS", "SAMPLERS"]
