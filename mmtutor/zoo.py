"""Trained models shared between chapters: trained once per configuration, then loaded.

Several chapters need the same judge, dual encoder or GAN. The first chapter that asks for
one trains it (with a progress bar and a history to plot) and stores it in the cache
folder; later chapters -- and later runs -- load it in a second. The cache key is a hash of
everything that determines the model (world, profile, config, seed, library version), so a
change to any of them trains a new model instead of loading a stale one.

The folder is ``$MMTUTOR_CACHE`` if set, else ``~/.cache/mmtutor``. Delete it to retrain.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from functools import lru_cache
from dataclasses import asdict
from pathlib import Path

import torch

from . import __version__, runtime
from .align import AlignConfig, DualEncoder, train_alignment
from .data import PairPool
from .gan import ConditionalGAN, GANConfig
from .metrics import Judge, train_judge
from .world import World

CACHE_ENV = "MMTUTOR_CACHE"

# Every GAN the zoo trains keeps snapshots of these captions (fixed noise) as it learns.
SNAPSHOT_CAPTIONS = ["a red apple on the table", "a small blue star under the table",
                     "a large yellow cone left of the table", "a little green bottle right of the table",
                     "a big white donut on the table", "a small purple box under the table"]


def cache_dir() -> Path:
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mmtutor")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _path(kind: str, payload: dict) -> Path:
    blob = json.dumps({"kind": kind, "version": __version__, **payload}, sort_keys=True, default=str)
    return cache_dir() / f"{kind}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}.pt"


def _info(path: Path, cached: bool, history: dict, seconds: float) -> dict:
    return {"path": str(path), "cached": cached, "history": history, "train_seconds": seconds}


def judge(world: World, prof: runtime.Profile, seed: int = 0, device=None, progress: bool = True):
    """The attribute classifier used to measure every generated image. Returns (judge, info)."""
    dev = torch.device(device) if device is not None else runtime.device()
    path = _path("judge", {"world": world.config(), "steps": prof.judge_steps, "seed": seed, "split": "train"})
    if path.exists():
        j = Judge.load(path, map_location=dev)
        return j, _info(path, True, j.history, j.history.get("seconds", 0.0))
    j, hist = train_judge(world, steps=prof.judge_steps, seed=seed, device=dev, bf16=prof.bf16, progress=progress)
    j.save(path, history=hist)
    return j, _info(path, False, hist, hist["seconds"])


def pool(world: World, prof: runtime.Profile, n_images: int | None = None, seed: int = 0) -> PairPool:
    """The training pairs every model of a profile learns from. Rendered once per process and
    shared (a pool is read-only and fully determined by world, size and seed)."""
    return _pool(json.dumps(world.config(), sort_keys=True), n_images or prof.pool_size, seed)


@lru_cache(maxsize=4)
def _pool(world_config: str, n_images: int, seed: int) -> PairPool:
    return PairPool(World(**json.loads(world_config)), "train", n_images=n_images, seed=seed)


def aligner(world: World, prof: runtime.Profile, config: AlignConfig | None = None, seed: int = 0,
            device=None, progress: bool = True):
    """The contrastive dual encoder (small BERT + CNN by default). Returns (model, info)."""
    dev = torch.device(device) if device is not None else runtime.device()
    config = config or AlignConfig(image_size=world.image_size)
    path = _path("align", {"world": world.config(), "config": asdict(config), "steps": prof.align_steps,
                           "batch": prof.align_batch, "pool": prof.pool_size, "seed": seed})
    if path.exists():
        m = DualEncoder.load(path, map_location=dev)
        return m, _info(path, True, m.history, m.history.get("total_seconds", 0.0))
    torch.manual_seed(seed)
    m = DualEncoder(config, world).to(dev)
    hist = train_alignment(m, pool(world, prof, seed=seed), steps=prof.align_steps, batch_size=prof.align_batch,
                           seed=seed, bf16=prof.bf16, progress=progress)
    m.save(path, history=hist)
    return m, _info(path, False, hist, hist["total_seconds"])


def gan_config(world: World, prof: runtime.Profile, **overrides) -> GANConfig:
    """The profile's GAN configuration (sizes from the profile), with overrides."""
    base = dict(image_size=world.image_size, g_channels=prof.g_channels, d_channels=prof.d_channels)
    base.update(overrides)
    return GANConfig(**base)


def gan(world: World, prof: runtime.Profile, config: GANConfig | None = None, seed: int = 0, device=None,
        steps: int | None = None, n_images: int | None = None, progress: bool = True):
    """A conditional GAN trained with the profile's budget. ``text_encoder`` "clip"/"bert"
    configs use (and train, if needed) the profile's dual encoder. Returns (gan, info)."""
    dev = torch.device(device) if device is not None else runtime.device()
    config = config or gan_config(world, prof)
    steps = steps or prof.gan_steps
    n_images = n_images or prof.pool_size
    path = _path("gan", {"world": world.config(), "config": asdict(config), "steps": steps, "pool": n_images,
                         "batch": prof.batch_size, "seed": seed, "snapshots": SNAPSHOT_CAPTIONS})
    if path.exists():
        g = ConditionalGAN.load(path, device=dev)
        return g, _info(path, True, g.history, g.history.get("total_seconds", 0.0))
    al = aligner(world, prof, seed=seed, device=dev, progress=progress)[0] if config.text_encoder != "minilm" else None
    g = ConditionalGAN(config, world, aligner=al, device=dev)
    t0 = time.perf_counter()
    hist = g.fit(pool(world, prof, n_images=n_images, seed=seed), steps=steps, batch_size=prof.batch_size,
                 seed=seed, bf16=prof.bf16, snapshot_every=-(-steps // 6),
                 snapshot_captions=SNAPSHOT_CAPTIONS, progress=progress)
    hist["wall_seconds"] = time.perf_counter() - t0
    g.history = hist
    g.save(path, history=hist)
    return g, _info(path, False, hist, hist["total_seconds"])


__all__ = ["SNAPSHOT_CAPTIONS", "cache_dir", "judge", "aligner", "gan", "gan_config", "pool", "CACHE_ENV"]
