"""Training-set size: the book's GAN trained on 64, 512 and 8192 images, three seeds each.

Every run trains for the same number of steps -- the cpu profile's full budget, enough for the
largest pool (each of its images is seen about ten times) -- so that a difference between
sizes is a difference in data, not in training. Each run is scored on one fresh caption of
every seen and every held-out combination (8 images each, the CNN judge) and by the Frechet
distance in judge features on 64 seen captions. Writes bench/results/data_size.json with every
run and the mean and spread per size; chapter 3.3 plots it.

    python bench/data_size_bench.py [--sizes 64 512 8192] [--seeds 0 1 2] [--jobs 2]

``--jobs 2`` trains two runs at a time in one-thread processes (the scores do not depend on it;
the training seconds it records do).
"""
import argparse
import statistics
import time

import torch

import mmtutor as mm
from common import side_by_side, write


def _run(args: tuple) -> dict:
    """One (pool size, seed): train (or find cached) the book's GAN on that many images and score it."""
    n, seed, threads = args
    if threads:
        torch.set_num_threads(threads)
    prof = mm.runtime.profile("cpu")
    dev = torch.device("cpu")
    world = mm.World(image_size=prof.image_size)
    judge, _ = mm.zoo.judge(world, prof, device=dev, progress=False)
    seen = mm.metrics.evaluation_captions(world, "train", seed=0)
    held = mm.metrics.evaluation_captions(world, "heldout", seed=0)
    fd_caps = seen[:64]
    t = time.perf_counter()
    gan, info = mm.zoo.gan(world, prof, seed=seed, device=dev, n_images=n, progress=False)
    s = mm.metrics.caption_consistency(gan, judge, world, seen, n_per_caption=8, seed=seed)
    h = mm.metrics.caption_consistency(gan, judge, world, held, n_per_caption=8, seed=seed)
    fd = mm.metrics.frechet_report(gan, judge, world, fd_caps, n_per_caption=8, seed=seed)
    run = {"images": n, "seed": seed, "steps": info["history"]["steps"],
           "epochs": round(info["history"]["steps"] * prof.batch_size / n, 1),
           "seen_joint": round(s["joint"], 4), "heldout_joint": round(h["joint"], 4),
           "fd": round(fd["fd"], 2), "fd_real_vs_real": round(fd["fd_real_vs_real"], 2),
           "train_seconds": round(info["train_seconds"], 1), "cached": info["cached"],
           "wall_seconds": round(time.perf_counter() - t, 1)}
    print(run, flush=True)
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 8192])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs side by side, one torch thread each (default 1: one process, all threads)")
    args = ap.parse_args()
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    prof = mm.runtime.profile("cpu")
    world = mm.World(image_size=prof.image_size)
    judge, _ = mm.zoo.judge(world, prof, device=torch.device("cpu"), progress=False)   # trained once, here
    tasks = [(n, seed, 1 if args.jobs > 1 else 0) for n in args.sizes for seed in args.seeds]
    runs = side_by_side(_run, tasks, args.jobs) if args.jobs > 1 else [_run(t) for t in tasks]
    summary = {}
    for n in args.sizes:
        rs = [r for r in runs if r["images"] == n]
        summary[str(n)] = {k: {"mean": round(statistics.mean(r[k] for r in rs), 4),
                               "min": min(r[k] for r in rs), "max": max(r[k] for r in rs)}
                           for k in ("seen_joint", "heldout_joint", "fd")}
    write("data_size", {"profile": prof.name, "steps": prof.gan_steps, "batch_size": prof.batch_size,
                        "jobs": args.jobs, "threads_per_job": 1 if args.jobs > 1 else torch.get_num_threads(),
                        "judge": "cnn", "judge_accuracy_real": judge.accuracy, "runs": runs, "summary": summary},
          bf16=prof.bf16)


if __name__ == "__main__":
    main()
