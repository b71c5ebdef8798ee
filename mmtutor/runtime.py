"""Runtime: device choice, profiles (sizes and step budgets), seeding, precision, the machine.

A *profile* fixes how big the models are and how long they train, so the same chapter runs
in minutes on a laptop CPU (``cpu``), trains longer on a GPU (``gpu``), and finishes in
seconds inside the unit tests (``smoke``). ``MMTUTOR_PROFILE`` overrides the default, which
is chosen from the device.

Every timing the book reports names the machine it was measured on: ``machine()`` gives the
CPU model, whether it has AMX (bfloat16 matrix units; with them the ``cpu`` profile trains in
bfloat16), the precision in use, and the torch version.
"""

from __future__ import annotations

import os
import random
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from . import checks

PROFILE_ENV = "MMTUTOR_PROFILE"
CACHE_ENV = "MMTUTOR_CACHE"


def cache_dir() -> Path:
    """Where trained models (``zoo``) and encoded caption banks (``text.MiniLM``) are kept:
    ``$MMTUTOR_CACHE`` if set, else ``~/.cache/mmtutor``. Delete it to start afresh."""
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mmtutor")
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    captions_per_combo: int = 24  # the caption bank: captions per attribute combination
    caption_augment: float = 0.5  # share of the caption bank written with grammar.AUGMENT_TEMPLATES
    caption_noise: float = 0.3    # share of the caption bank with grammar.NEUTRAL_WORDS scattered in (book GAN,
                                  # 3 seeds, gan.json at ebb5a38: free phrasings 0.902-0.921 joint instead of
                                  # 0.813-0.842 without them, fresh ones 0.830-0.835 instead of 0.743-0.747,
                                  # seen and held-out alike; gan_bench, recipe plainbank)
    batch_size: int = 64          # GAN batch size
    gan_steps: int = 1400         # generator updates
    align_steps: int = 200        # contrastive-alignment updates (semantic R@1 1.000 on held-out pairs; 150: 0.97)
    align_batch: int = 128
    judge_steps: int = 250        # updates of the CNN judge (held-out joint 0.996 on real renders; 400 steps: 0.999)
    judge2_steps: int = 300       # updates of the second (residual, augmented) judge
    vae_steps: int = 1000         # conditional VAE updates
    diffusion_steps: int = 1500   # diffusion model (denoiser) updates
    vae_batch: int = 64           # conditional VAE batch size
    vae_channels: int = 16        # VAE width at full resolution (doubles per halving, at most 4x)
    diffusion_batch: int = 64     # diffusion batch size
    diffusion_space: str = "latent"   # "latent" (on autoencoder codes, Rombach et al.) or "pixel"
    diffusion_channels: tuple = (32, 64)   # U-Net width per resolution
    diffusion_ae_steps: int = 1000  # updates of latent diffusion's autoencoder (before the denoiser's)
    caption_steps: int = 800      # captioner updates (held-out joint on 2000 real renders, seeds 0/1/2: 0.999 /
                                  # 0.998 / 0.999; with 600 steps 0.936 / 0.996 / 0.988 -- seed 0 fell short)
    caption_batch: int = 64       # captioner batch size
    caption_lr: float = 3e-3      # captioner peak learning rate (AdamW, warm-up then cosine)
    caption_width: int = 16       # captioner CNN width at full resolution
    caption_dim: int = 96         # captioner decoder width
    g_channels: int = 32          # generator width at full resolution
    d_channels: int = 32          # discriminator width after its first layer
    eval_per_caption: int = 8     # generated images per caption when measuring consistency
    bf16: bool = True             # bfloat16 autocast where the hardware has it (AMX CPUs, recent GPUs)


PROFILES = {
    # unit tests only: seconds, results barely better than chance
    "smoke": Profile("smoke", pool_size=512, captions_per_combo=12, batch_size=16, gan_steps=30, align_steps=30, align_batch=32,
                     judge_steps=40, judge2_steps=40, vae_steps=30, diffusion_steps=30, caption_steps=30,
                     vae_batch=16, diffusion_batch=16, diffusion_channels=(16, 32), diffusion_ae_steps=30,
                     caption_batch=16, caption_lr=3e-3, caption_width=16, caption_dim=64,
                     g_channels=16, d_channels=16, eval_per_caption=2),
    # a reader's laptop and CI
    "cpu": Profile("cpu"),
    # a GPU: 64x64 images, wider models, bigger batches. These small networks leave a GPU
    # launch-bound (measured on an H100/H200: ~53 ms per GAN step, ~32 ms per judge step,
    # ~37 ms per alignment step), so step counts are sized for a whole book in minutes.
    "gpu": Profile("gpu", image_size=64, pool_size=16384, batch_size=128, gan_steps=2500, align_steps=600,
                   align_batch=256, judge_steps=800, judge2_steps=800, g_channels=64, d_channels=64,
                   caption_steps=1000, caption_batch=128, caption_lr=2e-3, caption_width=32, caption_dim=128,
                   # VAE and diffusion sized by analogy with the cpu profile (not yet measured on a GPU)
                   vae_steps=2000, vae_batch=128, vae_channels=32, diffusion_steps=3000, diffusion_batch=128,
                   diffusion_channels=(64, 128), diffusion_ae_steps=1500,
                   eval_per_caption=16),
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
    seed = checks.seed(seed)
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


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:  # not Linux
        return ""


def _cpu_has_amx() -> bool:
    """Intel AMX (amx_bf16) makes bfloat16 matmuls ~4x faster than fp32. Without it bf16 is
    slower: measured on an AMD EPYC (Zen 4, AVX512_BF16, no AMX), a GAN step takes 116 ms in
    fp32 and 284 ms under bf16 autocast. So bf16 is used only where AMX is present."""
    return "amx_bf16" in _cpuinfo()


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo; ``platform.processor()`` elsewhere)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def precision(dev: torch.device, bf16: bool = True) -> str:
    """"bf16" where a profile asks for it and the hardware makes it pay, else "fp32"."""
    return "bf16" if bf16 and bf16_supported(dev) else "fp32"


def machine(dev: torch.device | None = None, bf16: bool = True) -> dict:
    """What a reported timing was measured on: CPU model, AMX yes/no, cores, threads, device,
    precision, torch and Python versions."""
    dev = dev or device()
    return {"cpu": cpu_model(), "amx": _cpu_has_amx(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type,
            "precision": precision(dev, bf16), "torch": torch.__version__,
            "python": platform.python_version()}


def matmul_rate(dev: torch.device | None = None, n: int = 1024, repeats: int = 8) -> float:
    """How fast this machine multiplies matrices *now*, in GFLOP/s: the best of ``repeats``
    float32 n x n products on ``dev`` with the current torch threads (about a tenth of a second
    on two CPU cores). Cloud machines of one kind differ, and one machine's speed drifts with
    the load of others on its host (on the 2-core AMD EPYC behind this book's numbers, 2048-wide
    products ran at 145-151 GFLOP/s one evening and 184-186 another), so a timing means little
    without the speed it was measured at."""
    import time
    dev = dev or device()
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    times = []
    for _ in range(repeats + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t)
    best = min(times[1:])                        # the first product warms up (allocations, kernels)
    return 2 * n ** 3 / best / 1e9


def inference_batch(dev: torch.device | str) -> int:
    """Images per forward pass where a trained network only draws or reads images (``generate``,
    the judges' ``predict``/``probabilities``/``embed``): 128 on a CPU, 512 on an accelerator.
    Results do not depend on it; it bounds memory and sets speed. On a 2-core AMD EPYC (no AMX,
    fp32, one thread, 2026-12-07), 128 instead of 512 drew 2048 GAN images in 1.40-1.55 s instead
    of 2.03-2.16 s, 2048 VAE images in 2.03-2.09 s instead of 3.24 s and 512 diffusion images
    (20 network evaluations each) in 7.9-8.4 s instead of 8.9-9.0 s, all identical, and the
    judges read 2048 renders in 6-39 % less time with the same predictions (two runs of each)."""
    return 128 if torch.device(dev).type == "cpu" else 512


def autocast(dev: torch.device, enabled: bool):
    """bfloat16 autocast where it is supported and asked for; a no-op context otherwise."""
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16,
                          enabled=bool(enabled) and bf16_supported(dev))


def describe(dev: torch.device, prof: Profile, seed: int) -> str:
    """One line for a chapter's set-up cell: device, profile, precision, seed, and the CPU."""
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    amx = "AMX" if _cpu_has_amx() else "no AMX"
    return (f"device: {name} | profile: {prof.name} | precision: {precision(dev, prof.bf16)} | seed: {seed}"
            f" | torch {torch.__version__} | CPU: {cpu_model()} ({amx}, {torch.get_num_threads()} thread"
            f"{'' if torch.get_num_threads() == 1 else 's'})")


def channels_last(module: torch.nn.Module, dev: torch.device | str | None = None,
                  amx_contiguous: bool = False) -> torch.nn.Module:
    """``module`` with its convolution weights in channels_last (NHWC) order, returned for chaining.

    Convolutions then produce channels_last outputs from ordinary NCHW inputs, and oneDNN's
    NHWC kernels train the book's VAE, latent-diffusion U-Net and autoencoder, the residual
    judge and the captioner 5-19 % faster on a 2-core AMD EPYC (fp32), the CNN judge and the
    aligner 2-8 % (bench/results/speed.json, "memory_format"); the GAN is slower with its
    weights in it and keeps its own arrangement. Values are unchanged but for rounding.
    Checkpoints load into it as into any module (load_state_dict copies values).

    Under bfloat16 autocast on a CPU with AMX the order flips for some networks: there the
    conditional VAE, the autoencoder and the residual judge train 1.50x, 1.64x and 1.38x faster
    in the ordinary contiguous order, while the CNN judge, the aligner and the captioner train
    10-17 % faster in channels_last and the U-Net within 4 % either way (two one-thread
    processes, as ``prepare`` trains; bench/results/speed_amx.json, "pair_threads1" against
    "pair_threads1_layout"). ``amx_contiguous=True`` marks a network of the first kind: it is
    left contiguous when it will run on the CPU (``dev``, else ``device()``) of a machine with AMX."""
    dev = device() if dev is None else torch.device(dev)
    if amx_contiguous and dev.type == "cpu" and _cpu_has_amx():
        return module.to(memory_format=torch.contiguous_format)
    return module.to(memory_format=torch.channels_last)


def record_chapter(chapter: str, seconds: float, dev: torch.device, prof: Profile) -> None:
    """Add a chapter's run time to ``$MMTUTOR_TIMING_FILE`` (``make book`` sets it; the preface's
    table is built from it), with the machine's matrix-multiply speed measured as the chapter
    ends (``matmul_rate``). Does nothing when the variable is not set (Colab, JupyterLab)."""
    _record(dev, prof, lambda data: data.setdefault("chapters", {}).__setitem__(chapter, {
        "seconds": round(float(seconds), 1), "device": str(dev), "profile": prof.name,
        "precision": precision(dev, prof.bf16), "torch_threads": torch.get_num_threads(),
        "matmul_gflops": round(matmul_rate(dev), 1)}))


def record_models(info: dict, dev: torch.device, prof: Profile) -> None:
    """Add the time ``python -m mmtutor prepare`` took to train the book's models before the
    chapters (``info`` from ``mmtutor.prepare.prepare``) to ``$MMTUTOR_TIMING_FILE``, under
    "models"; the preface's table shows it as its first row. Does nothing without the variable."""
    _record(dev, prof, lambda data: data.__setitem__("models", {
        **info, "precision": precision(dev, prof.bf16), "matmul_gflops": round(matmul_rate(dev), 1)}))


def record_chapters_run(info: dict) -> None:
    """Add the wall time of executing the chapters several at a time (``tools/execute_chapters.py``:
    {"seconds", "jobs", "threads_per_job", "chapters"}) to ``$MMTUTOR_TIMING_FILE``, under
    "chapters_run": the preface's total is then models + this, not the sum of chapters that
    overlapped. Does nothing without the variable."""
    _record(None, None, lambda data: data.__setitem__("chapters_run", dict(info)))


def _record(dev: torch.device | None, prof: Profile | None, update) -> None:
    """Read-modify-write of the timing file under an exclusive lock: chapters executed side by
    side (tools/execute_chapters.py) record into it at the same time."""
    path = os.environ.get("MMTUTOR_TIMING_FILE")
    if not path:
        return
    import json
    import time
    from pathlib import Path
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p.with_name(p.name + ".lock"), "w") as lock:
        try:
            import fcntl
            fcntl.flock(lock, fcntl.LOCK_EX)               # released when the file closes
        except ImportError:                                 # Windows: one writer at a time is assumed
            pass
        data = json.loads(p.read_text()) if p.is_file() else {}
        if dev is not None:
            data["machine"] = machine(dev, prof.bf16)
        data["date"] = time.strftime("%Y-%m-%d")
        update(data)
        tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, p)


__all__ = ["record_chapter", "record_models", "record_chapters_run", "channels_last", "matmul_rate", "device", "Profile", "PROFILES", "profile", "seed_everything", "autocast", "describe", "machine",
           "cpu_model", "precision", "bf16_supported", "PROFILE_ENV"]


