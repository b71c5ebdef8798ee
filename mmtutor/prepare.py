"""Train the models the book's chapters load, before the chapters run, in parallel processes.

The chapters get every trained model from the cache (``mmtutor.zoo``) and train it only when it
is missing. On a CPU these small networks use a second core poorly: with two threads a
training step of the latent-diffusion denoiser is only about 1.3 times faster than with one
(1.6-1.8 times for the GAN and the judges), while two one-thread processes side by side each
keep nearly one-thread speed (``bench/results/speed.json``, variants "threads1" and
"pair_threads1"; tests/test_readme.py checks that premise there). So ``make book`` first
runs ``python -m mmtutor prepare``: ``jobs`` processes of ``cores / jobs`` threads train the
models, longest first, each taking the next model when it is done; then the chapters load them.

Nothing here changes what is trained: the same zoo functions, profile, seeds and cache keys
as the chapters' own calls. A chapter run on its own (Colab, JupyterLab) trains what is
missing itself, as before. On a GPU one process trains everything (``jobs=1``).
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time

import torch

from . import runtime, zoo
from .text import load_minilm
from .world import World

# Every model a chapter asks the zoo for (seed 0, the profile's default configuration), the
# longest training first (seconds on a 2-core AMD EPYC, two threads: diffusion 194, GAN 166,
# VAE 122, residual judge 52, captioner 58, CNN judge 31, aligner 27).
BOOK_MODELS = ("diffusion", "gan", "vae", "captioner", "resnet-judge", "cnn-judge", "aligner")


def _train(name: str, profile_name: str, device: str, threads: int, seed: int) -> tuple[str, float, bool]:
    """Train (or find cached) one book model; returns (name, seconds, was it cached)."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    prof = runtime.profile(profile_name, dev)
    world = World(image_size=prof.image_size)
    t0 = time.perf_counter()
    kw = dict(seed=seed, device=dev, progress=False)
    if name.endswith("judge"):
        _, info = zoo.judge(world, prof, arch=name.split("-")[0], **kw)
    else:
        _, info = getattr(zoo, name)(world, prof, **kw)
    return name, time.perf_counter() - t0, bool(info["cached"])


def default_jobs(dev: torch.device) -> int:
    """Two processes on a CPU with at least two cores, one on a GPU (one device to share)."""
    return 1 if dev.type != "cpu" else max(1, min(2, os.cpu_count() or 1))


def prepare(profile_name: str | None = None, device: str | None = None, jobs: int | None = None, seed: int = 0,
            models: tuple[str, ...] = BOOK_MODELS, log=print) -> dict:
    """Train every model in ``models`` that the cache lacks, in ``jobs`` processes. Returns
    {"seconds", "jobs", "threads_per_job", "models": {name: {"seconds", "cached"}}}. ``device``:
    "cpu", "cuda" or "mps" (default: the best available), as ``runtime.device`` takes it."""
    dev = runtime.device(device)
    prof = runtime.profile(profile_name, dev)
    unknown = [m for m in models if m not in BOOK_MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(BOOK_MODELS)}")
    jobs = default_jobs(dev) if jobs is None else jobs
    cores = torch.get_num_threads()
    if not 1 <= jobs <= max(1, cores):
        raise ValueError(f"jobs must be between 1 and the {cores} torch threads this process may use, got {jobs}")
    threads = max(1, cores // jobs)
    log(f"training {len(models)} models for profile {prof.name} on {dev}: {jobs} process(es) x {threads} thread(s)")
    t0 = time.perf_counter()
    world = World(image_size=prof.image_size)
    captions = zoo.pool(world, prof, seed=seed).captions       # encoded once here, with all threads,
    load_minilm().encode_tokens(captions)                       # into the cache the workers read: the
                                                                # pooled vectors, and the token vectors that
                                                                # attention fusion and a token readout read
    log(f"  caption features of the training pool ({len(captions)} captions): {time.perf_counter() - t0:.0f} s")
    done = {}
    args = [(m, prof.name, str(dev), threads, seed) for m in models]
    # several jobs: spawned workers (fresh interpreters, no forked torch thread pools), handed one
    # model at a time in BOOK_MODELS order; one job: trained here, in this process
    workers = mp.get_context("spawn").Pool(jobs) if jobs > 1 else contextlib.nullcontext()
    with workers as pool:
        results = pool.imap_unordered(_star_train, args, chunksize=1) if jobs > 1 else map(_star_train, args)
        for name, seconds, cached in results:
            done[name] = {"seconds": round(seconds, 1), "cached": cached}
            log(f"  {name}: {'cached' if cached else f'trained in {seconds:.0f} s'}")
    if jobs == 1:
        torch.set_num_threads(cores)                            # _train set this process's threads
    total = time.perf_counter() - t0
    log(f"done in {total:.0f} s")
    return {"seconds": round(total, 1), "jobs": jobs, "threads_per_job": threads, "device": str(dev),
            "profile": prof.name, "models": {m: done[m] for m in models}}


def _star_train(a):
    return _train(*a)


__all__ = ["BOOK_MODELS", "prepare", "default_jobs"]
