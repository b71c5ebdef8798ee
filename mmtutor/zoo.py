"""Trained models shared between chapters: trained once per configuration, then loaded.

Several chapters need the same judge, dual encoder or generator. The first chapter that asks
for one trains it (with a progress bar and a history to plot) and stores it in the cache
folder; later chapters -- and later runs -- load it in a second.

The cache key is a hash of everything that determines the model: the world, the profile's
sizes and budgets, the config and the seed, *the source code of every mmtutor module the
model's definition and training import* (found by reading their import statements), and the
torch version. Edit ``gan.py`` and every cached GAN is retrained on its next use; edit
``viz.py`` and nothing is. So a model trained by other code is never loaded by mistake.

The folder is ``$MMTUTOR_CACHE`` if set, else ``~/.cache/mmtutor``. Delete it to retrain.
"""

from __future__ import annotations

import ast
import hashlib
import json
import time
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import torch

from . import runtime
from .align import AlignConfig, DualEncoder, train_alignment
from .data import PairPool
from .gan import ConditionalGAN, GANConfig
from .judge import Judge, judge_accuracy, train_judge
from .loop import TrainConfig
from .world import World

CACHE_ENV = runtime.CACHE_ENV
PACKAGE = Path(__file__).resolve().parent
cache_dir = runtime.cache_dir            # the folder (``$MMTUTOR_CACHE`` or ~/.cache/mmtutor)

# Every GAN the zoo trains keeps snapshots of these captions (fixed noise) as it learns.
SNAPSHOT_CAPTIONS = ["a red apple on the table", "a small blue star under the table",
                     "a large yellow cone left of the table", "a little green bottle right of the table",
                     "a big white donut on the table", "a small purple box under the table"]
SNAPSHOTS = 6


# ------------------------------------------------------------------------ the cache key
def _imports(module: str, package: Path = PACKAGE) -> set[str]:
    """The mmtutor modules that ``module`` imports (relative imports only)."""
    tree = ast.parse((package / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(alias.name for alias in node.names)
    return {m for m in out if (package / f"{m}.py").exists()}


def dependencies(module: str, package: Path = PACKAGE) -> list[str]:
    """``module`` and every mmtutor module it imports, transitively (sorted)."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(_imports(m, package) - seen)
    return sorted(seen)


def source_fingerprint(module: str, package: Path = PACKAGE) -> str:
    """A hash of the source of ``module`` and of everything it imports, plus the torch version."""
    h = hashlib.sha1(f"torch {torch.__version__}".encode())
    for m in dependencies(module, package):
        h.update(m.encode() + b"\0" + (package / f"{m}.py").read_bytes())
    return h.hexdigest()[:16]


def cache_key(kind: str, module: str, payload: dict) -> str:
    blob = json.dumps({"kind": kind, "code": source_fingerprint(module), **payload}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


def _wording(prof: runtime.Profile) -> dict:
    """What a model's cache key needs of the caption bank's wording (shares of extra templates
    and of captions with neutral words): the same pool images, other captions, another model."""
    return {"augment": prof.caption_augment, "noise": prof.caption_noise}


def _path(kind: str, module: str, payload: dict) -> Path:
    return cache_dir() / f"{cache_key(kind, module, payload)}.pt"


def _info(path: Path, cached: bool, history: dict, seconds: float) -> dict:
    return {"path": str(path), "cached": cached, "history": history, "train_seconds": seconds,
            "torch_threads": history.get("torch_threads")}


def training_note(infos: dict[str, dict]) -> str:
    """A chapter's sentence (no final full stop) on its models' training time, from the infos
    this module returns ({name: info}): trained in this run (so part of the page's time) or loaded
    from the cache (trained before the page ran -- by ``python -m mmtutor prepare`` in
    ``make book``, or by an earlier run), each with its seconds and the torch threads they were
    measured with."""
    if not infos:
        raise ValueError("training_note needs at least one {name: info} entry; got none")

    def took(name: str, info: dict) -> str:
        t = info.get("torch_threads")
        threads = f" on {t} torch thread{'' if t == 1 else 's'}" if t else ""
        return f"{name} {info['train_seconds']:.0f} s{threads}"

    now = [took(n, i) for n, i in infos.items() if not i["cached"]]
    before = [took(n, i) for n, i in infos.items() if i["cached"]]
    parts = []
    if now:
        parts.append("Trained in this run: " + ", ".join(now))
    if before:
        parts.append(("Loaded" if not now else "loaded") + " from the model cache, trained before this page ran: "
                     + ", ".join(before))
    return "; ".join(parts)


# ------------------------------------------------------------------------ models
def judge(world: World, prof: runtime.Profile, seed: int = 0, device=None, progress: bool = True,
          arch: str = "cnn"):
    """An attribute classifier used to measure generated images (``arch``: "cnn" or "resnet").
    Its accuracy on 2000 fresh real renders of the seen and of the held-out combinations is
    measured once and kept in ``judge.accuracy``. Returns (judge, info)."""
    dev = torch.device(device) if device is not None else runtime.device()
    steps = prof.judge_steps if arch == "cnn" else prof.judge2_steps
    path = _path("judge", "judge", {"world": world.config(), "steps": steps, "seed": seed, "split": "train",
                                    "arch": arch, "bf16": prof.bf16})
    if path.exists():
        j = Judge.load(path, map_location=dev)
        return j, _info(path, True, j.history, j.history.get("seconds", 0.0))
    j, hist = train_judge(world, steps=steps, seed=seed, device=dev, bf16=prof.bf16, progress=progress, arch=arch)
    j.accuracy = {s: judge_accuracy(j, world, n=2000, split=s) for s in ("train", "heldout")}
    j.save(path, history=hist)
    return j, _info(path, False, hist, hist["seconds"])


def judges(world: World, prof: runtime.Profile, seed: int = 0, device=None, progress: bool = True) -> dict[str, Judge]:
    """Both judges, {"cnn judge": ..., "resnet judge": ...}: the book reports consistency from both."""
    out = {}
    for arch in ("cnn", "resnet"):
        j, _ = judge(world, prof, seed=seed, device=device, progress=progress, arch=arch)
        out[j.name] = j
    return out


def pool(world: World, prof: runtime.Profile, n_images: int | None = None, seed: int = 0,
         augment: float | None = None, noise: float | None = None) -> PairPool:
    """The training pairs every model of a profile learns from. Rendered once per process and
    shared (a pool is read-only and fully determined by world, size, seed and phrasing)."""
    augment = prof.caption_augment if augment is None else augment
    noise = prof.caption_noise if noise is None else noise
    return _pool(json.dumps(world.config(), sort_keys=True), n_images or prof.pool_size, seed, augment, noise,
                 prof.captions_per_combo)


@lru_cache(maxsize=4)
def _pool(world_config: str, n_images: int, seed: int, augment: float, noise: float,
          captions_per_combo: int) -> PairPool:
    return PairPool(World(**json.loads(world_config)), "train", n_images=n_images, seed=seed, augment=augment,
                    noise=noise, captions_per_combo=captions_per_combo)


def aligner(world: World, prof: runtime.Profile, config: AlignConfig | None = None, seed: int = 0,
            device=None, progress: bool = True):
    """The contrastive dual encoder (small BERT + CNN by default). Returns (model, info)."""
    dev = torch.device(device) if device is not None else runtime.device()
    config = config or AlignConfig(image_size=world.image_size)
    path = _path("align", "align", {"world": world.config(), "config": asdict(config), "steps": prof.align_steps,
                                    "batch": prof.align_batch, "pool": prof.pool_size, "seed": seed,
                                    **_wording(prof), "bf16": prof.bf16})
    if path.exists():
        m = DualEncoder.load(path, map_location=dev)
        return m, _info(path, True, m.history, m.history.get("total_seconds", 0.0))
    torch.manual_seed(seed)
    m = DualEncoder(config, world).to(dev)
    hist = train_alignment(m, pool(world, prof, seed=seed),
                           TrainConfig(steps=prof.align_steps, batch_size=prof.align_batch, seed=seed,
                                       bf16=prof.bf16, progress=progress, log_every=20))
    m.save(path, history=hist)
    return m, _info(path, False, hist, hist["total_seconds"])


def gan_config(world: World, prof: runtime.Profile, recipe: str = "book", **overrides) -> GANConfig:
    """The profile's GAN configuration (sizes from the profile) for a recipe, with overrides."""
    from .gan import RECIPES
    base = dict(image_size=world.image_size, g_channels=prof.g_channels, d_channels=prof.d_channels)
    base.update(overrides)
    return RECIPES[recipe](**base)


def gan(world: World, prof: runtime.Profile, config: GANConfig | None = None, seed: int = 0, device=None,
        steps: int | None = None, n_images: int | None = None, progress: bool = True):
    """A conditional GAN trained with the profile's budget. ``text_encoder`` "clip"/"bert"
    configs use (and train, if needed) the profile's dual encoder. Returns (gan, info)."""
    dev = torch.device(device) if device is not None else runtime.device()
    config = config or gan_config(world, prof)
    steps = steps or prof.gan_steps
    n_images = n_images or prof.pool_size
    path = _path("gan", "gan", {"world": world.config(), "config": asdict(config), "steps": steps, "pool": n_images,
                                "batch": prof.batch_size, "seed": seed, "snapshots": SNAPSHOT_CAPTIONS,
                                **_wording(prof), "bf16": prof.bf16})
    return _cached(path, ConditionalGAN, config, world, prof, seed, dev, progress,
                   lambda g: g.fit(pool(world, prof, n_images=n_images, seed=seed),
                                   TrainConfig(steps=steps, batch_size=prof.batch_size, seed=seed, bf16=prof.bf16,
                                               progress=progress),
                                   snapshot_captions=SNAPSHOT_CAPTIONS, snapshots=SNAPSHOTS))


def _cached(path: Path, cls, config, world: World, prof: runtime.Profile, seed: int, dev: torch.device,
            progress: bool, fit, seconds=lambda h: h.get("total_seconds", 0.0)):
    """The model cached at ``path``; else build ``cls(config, world)`` (with the profile's dual
    encoder when its text encoder needs one), train it by ``fit(model) -> history`` and cache
    it. Returns (model, info)."""
    if path.exists():
        m = cls.load(path, device=dev)
        return m, _info(path, True, m.history, seconds(m.history))
    al = aligner(world, prof, seed=seed, device=dev, progress=progress)[0] if config.text_encoder != "minilm" else None
    torch.manual_seed(seed)
    m = cls(config, world, aligner=al, device=dev)
    t0 = time.perf_counter()
    hist = fit(m)
    hist["wall_seconds"] = time.perf_counter() - t0
    m.save(path, history=hist)
    return m, _info(path, False, hist, seconds(hist))


__all__ = ["SNAPSHOT_CAPTIONS", "SNAPSHOTS", "cache_dir", "training_note", "judge", "judges", "aligner", "gan", "gan_config", "pool",
           "CACHE_ENV", "dependencies", "source_fingerprint", "cache_key"]


# ======================================================================================
# VAE and diffusion (the families chapter). Functions follow the pattern of ``gan`` above:
# key with _path(kind, module, payload), load if cached, else train, save, return (model, info).
from .diffusion import DiffusionConfig, DiffusionModel  # noqa: E402
from .vae import ConditionalVAE, VAEConfig  # noqa: E402


def vae_config(world: World, prof: runtime.Profile, **overrides) -> VAEConfig:
    """The profile's conditional-VAE configuration (sizes from the profile), with overrides."""
    base = dict(image_size=world.image_size, channels=prof.vae_channels)
    base.update(overrides)
    return VAEConfig(**base)


def vae(world: World, prof: runtime.Profile, config: VAEConfig | None = None, seed: int = 0, device=None,
        steps: int | None = None, n_images: int | None = None, progress: bool = True):
    """A conditional VAE trained on the profile's pool with its budget (``prof.vae_steps`` of
    ``prof.vae_batch``). Returns (vae, info)."""
    dev = torch.device(device) if device is not None else runtime.device()
    config = config or vae_config(world, prof)
    steps = steps or prof.vae_steps
    n_images = n_images or prof.pool_size
    path = _path("vae", "vae", {"world": world.config(), "config": asdict(config), "steps": steps, "pool": n_images,
                                "batch": prof.vae_batch, "seed": seed, **_wording(prof),
                                "bf16": prof.bf16})
    return _cached(path, ConditionalVAE, config, world, prof, seed, dev, progress,
                   lambda m: m.fit(pool(world, prof, n_images=n_images, seed=seed),
                                   TrainConfig(steps=steps, batch_size=prof.vae_batch, seed=seed, bf16=prof.bf16,
                                               progress=progress)))


def diffusion_config(world: World, prof: runtime.Profile, **overrides) -> DiffusionConfig:
    """The profile's diffusion configuration (sizes and the autoencoder's budget from the
    profile), with overrides."""
    base = dict(image_size=world.image_size, space=prof.diffusion_space, channels=prof.diffusion_channels,
                ae_steps=prof.diffusion_ae_steps, latent_size=world.image_size // 4)   # 32x32 -> 4x8x8 codes
    base.update(overrides)
    return DiffusionConfig(**base)


def diffusion(world: World, prof: runtime.Profile, config: DiffusionConfig | None = None, seed: int = 0,
              device=None, steps: int | None = None, n_images: int | None = None, progress: bool = True):
    """A text-conditioned diffusion model trained on the profile's pool with its budget
    (``prof.diffusion_steps`` denoiser updates of ``prof.diffusion_batch``, after the
    autoencoder in latent space). ``info["train_seconds"]`` counts both stages. Returns (model, info)."""
    dev = torch.device(device) if device is not None else runtime.device()
    config = config or diffusion_config(world, prof)
    steps = steps or prof.diffusion_steps
    n_images = n_images or prof.pool_size
    path = _path("diffusion", "diffusion", {"world": world.config(), "config": asdict(config), "steps": steps,
                                            "pool": n_images, "batch": prof.diffusion_batch, "seed": seed,
                                            **_wording(prof), "bf16": prof.bf16})
    return _cached(path, DiffusionModel, config, world, prof, seed, dev, progress,
                   lambda m: m.fit(pool(world, prof, n_images=n_images, seed=seed),
                                   TrainConfig(steps=steps, batch_size=prof.diffusion_batch, seed=seed, bf16=prof.bf16,
                                               progress=progress)),
                   seconds=_diffusion_seconds)


def _diffusion_seconds(hist: dict) -> float:
    """Training time of both stages: the autoencoder's and the denoiser's loops."""
    return hist.get("total_seconds", 0.0) + hist.get("autoencoder_seconds", 0.0)


__all__ += ["vae", "vae_config", "diffusion", "diffusion_config"]

# (end of the VAE and diffusion section)


# ======================================================================================
# The captioner (image -> text).
from .captioner import Captioner, CaptionerConfig, train_captioner  # noqa: E402


def captioner_config(world: World, prof: runtime.Profile, **overrides) -> CaptionerConfig:
    """The profile's captioner configuration (sizes from the profile), with overrides."""
    base = dict(image_size=world.image_size, width=prof.caption_width, dim=prof.caption_dim)
    base.update(overrides)
    return CaptionerConfig(**base)


def captioner(world: World, prof: runtime.Profile, config: CaptionerConfig | None = None, seed: int = 0,
              device=None, steps: int | None = None, progress: bool = True):
    """The image -> text captioner, trained on the profile's pool (full captions naming all four
    attributes, teacher forcing) with the profile's budget. Returns (captioner, info)."""
    dev = torch.device(device) if device is not None else runtime.device()
    config = config or captioner_config(world, prof)
    steps = steps or prof.caption_steps
    path = _path("captioner", "captioner", {"world": world.config(), "config": asdict(config), "steps": steps,
                                            "batch": prof.caption_batch, "lr": prof.caption_lr,
                                            "pool": prof.pool_size, "seed": seed, "bf16": prof.bf16})
    if path.exists():
        m = Captioner.load(path, map_location=dev)
        return m, _info(path, True, m.history, m.history.get("total_seconds", 0.0))
    torch.manual_seed(seed)
    m = Captioner(config, world).to(dev)
    hist = train_captioner(m, pool(world, prof, seed=seed), TrainConfig(
        steps=steps, batch_size=prof.caption_batch, seed=seed, bf16=prof.bf16, progress=progress, log_every=20),
        lr=prof.caption_lr)
    m.save(path, history=hist)
    return m, _info(path, False, hist, hist["total_seconds"])


__all__ += ["captioner", "captioner_config"]

# (end of the captioner section)
