"""Runtime: device choice, profiles (sizes and step budgets), seeding, checkpoints.

A *profile* fixes how big the models are and how long they train, so the same chapter runs
in minutes on a laptop CPU (``cpu``), trains longer on a GPU (``gpu``), and finishes in
seconds inside the unit tests (``smoke``). ``MMTUTOR_PROFILE`` overrides the default, which
is chosen from the device.

Checkpoints are a ``state_dict`` plus a plain config dict, loaded with
``torch.load(weights_only=True)`` -- never a pickled object -- so loading a file cannot run code.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, fields
from pathlib import Path

import torch

PROFILE_ENV = "MMTUTOR_PROFILE"


def device(prefer: str | None = None) -> torch.device:
    """The best available device: cuda > mps > cpu (``prefer`` forces one, e.g. "cpu")."""
    if prefer is not None:
        if prefer not in ("cpu", "cuda", "mps"):
            raise ValueError(f"unknown device {prefer!r}; choose one of: cpu, cuda, mps")
        if prefer == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but no CUDA GPU is available")
        if prefer == "mps" and not torch.backends.mps.is_available():
            raise ValueError("device 'mps' requested but Apple MPS is not available")
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class Profile:
    """Sizes and step budgets. The ``cpu`` profile must give *good* results, not a token run."""

    name: str
    image_size: int = 32          # pixels per side of the world's renders
    pool_size: int = 8192         # rendered training images (the caption bank comes on top)
    batch_size: int = 64          # GAN batch size
    gan_steps: int = 2200         # generator updates (about 2 minutes on two CPU cores)
    align_steps: int = 300        # contrastive-alignment updates
    align_batch: int = 128
    judge_steps: int = 400        # updates of the attribute classifier used as judge
    g_channels: int = 32          # generator width at full resolution
    d_channels: int = 32          # discriminator width after its first layer
    eval_per_caption: int = 8     # generated images per caption when measuring consistency
    bf16: bool = True             # bfloat16 autocast where the hardware has it (AMX CPUs, recent GPUs)


PROFILES = {
    # unit tests only: seconds, results barely better than chance
    "smoke": Profile("smoke", pool_size=512, batch_size=16, gan_steps=30, align_steps=30, align_batch=32,
                     judge_steps=40, g_channels=16, d_channels=16, eval_per_caption=2),
    # a reader's laptop and CI: about two minutes per model on two cores
    "cpu": Profile("cpu"),
    # a GPU: 64x64 images, wider models, bigger batches. These small networks leave a GPU
    # launch-bound (measured on an H100/H200: ~53 ms per GAN step, ~32 ms per judge step,
    # ~37 ms per alignment step), so step counts are sized for a whole book in under 10 minutes.
    "gpu": Profile("gpu", image_size=64, pool_size=16384, batch_size=128, gan_steps=2500, align_steps=600,
                   align_batch=256, judge_steps=800, g_channels=64, d_channels=64, eval_per_caption=16),
}


def profile(name: str | None = None, dev: torch.device | None = None) -> Profile:
    """The profile named ``name``, else ``$MMTUTOR_PROFILE``, else ``gpu``/``cpu`` by device."""
    name = name or os.environ.get(PROFILE_ENV) or None
    if name is None:
        dev = dev or device()
        name = "cpu" if dev.type == "cpu" else "gpu"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}"
                         f" (set it with {PROFILE_ENV}=...)")
    return PROFILES[name]


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, torch (CPU and CUDA) and return a torch.Generator seeded the same way."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is optional for the library itself
        pass
    return torch.Generator().manual_seed(seed)


def bf16_supported(dev: torch.device) -> bool:
    """bfloat16 autocast helps on CPUs with AMX and on recent GPUs; elsewhere it is slower."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        return _cpu_has_amx()
    return False


def _cpu_has_amx() -> bool:
    """Intel AMX (amx_bf16) makes bfloat16 matmuls ~4x faster than fp32; without it bf16 is slower."""
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_bf16" in f.read()
    except OSError:  # not Linux: stay in fp32
        return False


def autocast(dev: torch.device, enabled: bool):
    """bfloat16 autocast where it is supported and asked for; a no-op context otherwise."""
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16,
                          enabled=bool(enabled) and bf16_supported(dev))


def describe(dev: torch.device, prof: Profile, seed: int) -> str:
    """One line for a chapter's set-up cell."""
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    return (f"device: {name} | profile: {prof.name} | seed: {seed} | torch {torch.__version__}"
            f" | threads: {torch.get_num_threads()}")


# ------------------------------------------------------------------------ checkpoints
class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupted, truncated, or of another config."""


def save_checkpoint(path: str | os.PathLike, config: dict, state: dict[str, dict], **extra) -> Path:
    """Write ``{"config": config, "state": {name: state_dict}, **extra}`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": "mmtutor/1", "config": config, "state": state, **extra}, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a half-written checkpoint behind
    return path


def load_checkpoint(path: str | os.PathLike, map_location=None, expect_config: dict | None = None,
                    kind: str | None = None) -> dict:
    """Load with ``weights_only=True``. Raises CheckpointError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file: zip, pickle, EOF, index, key errors
        reason = str(e).split("\n")[0][:200]   # first line only: torch's advice to use weights_only=False is unsafe
        raise CheckpointError(f"{path} is not a readable mmtutor checkpoint (truncated, corrupted, or not a "
                              f"checkpoint at all): {type(e).__name__}: {reason}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "mmtutor/1":
        raise CheckpointError(f"{path} is not an mmtutor checkpoint (no 'format': 'mmtutor/1' entry)")
    if kind is not None and ckpt.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {ckpt.get('kind')!r} checkpoint, expected {kind!r}")
    if expect_config is not None:
        check_config(ckpt["config"], expect_config, source=str(path))
    return ckpt


def check_config(found: dict, expected: dict, source: str = "checkpoint") -> None:
    """Raise CheckpointError naming the first field where two configs differ."""
    for key in sorted(set(found) | set(expected)):
        if key not in found:
            raise CheckpointError(f"{source} has no config field {key!r} (expected {expected[key]!r})")
        if key not in expected:
            raise CheckpointError(f"{source} has an unexpected config field {key!r}={found[key]!r}")
        if _plain(found[key]) != _plain(expected[key]):
            raise CheckpointError(f"{source} was saved with {key}={found[key]!r}, "
                                  f"but this model has {key}={expected[key]!r}")


def _plain(x):
    return list(map(_plain, x)) if isinstance(x, (list, tuple)) else x


def dataclass_from_dict(cls, data: dict):
    """Rebuild a config dataclass; unknown fields are an error, not silently dropped."""
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise CheckpointError(f"config has unknown fields for {cls.__name__}: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


__all__ = ["device", "Profile", "PROFILES", "profile", "seed_everything", "autocast", "describe",
           "save_checkpoint", "load_checkpoint", "check_config", "CheckpointError",
           "dataclass_from_dict", "bf16_supported"]
