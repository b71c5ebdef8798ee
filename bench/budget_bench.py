"""What a smaller training budget would cost: for one of the book's models, train it with each
of several step counts and seeds, as ``make book`` trains it (``python -m mmtutor prepare``:
two one-thread processes side by side on a CPU), and measure what the book reports of it.
Writes bench/results/budget_<model>.json (``--name`` to change).

* a generator (``gan``, ``vae``, ``diffusion``): joint consistency on every seen and every
  held-out combination read by both judges (``metrics.consistency_report``, 8 images per
  caption, evaluation seed 0), size coverage, and consistency on the three sets of
  out-of-template phrasings (``grammar.PHRASINGS``, 4 images per caption, as
  ``bench/gan_bench.py`` scores them);
* a judge (``cnn-judge``, ``resnet-judge``): joint and per-attribute accuracy on 2000 fresh real
  renders of the seen and of the held-out combinations.

Models go through the zoo's cache like every other run (``$MMTUTOR_CACHE``), keyed on their
step count and seed; a cached one is measured again but not retrained, and its training seconds
are those stored with it. Issue 7 asks to cut work, not quality: this shows what each cut costs.

    python bench/budget_bench.py diffusion --steps 1000 1500 --seeds 0 1
    python bench/budget_bench.py resnet-judge --steps 200 300 --seeds 0 1
    python bench/budget_bench.py gan --steps 1000 1400 --seeds 0 1 --name budget_gan_noamx
"""
import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

GENERATORS = {"gan": "gan_steps", "vae": "vae_steps", "diffusion": "diffusion_steps"}
JUDGES = {"cnn-judge": "judge_steps", "resnet-judge": "judge2_steps"}


def one(model: str, steps: int, seed: int, threads: int) -> dict:
    """Train (or load) one model and measure it; runs in its own process."""
    import torch

    import mmtutor as mm
    torch.set_num_threads(threads)
    dev = torch.device("cpu")
    field = {**GENERATORS, **JUDGES}[model]
    prof = replace(mm.runtime.profile("cpu"), **{field: steps})
    world = mm.World(image_size=prof.image_size)
    t0 = time.perf_counter()
    if model in JUDGES:
        j, info = mm.zoo.judge(world, prof, seed=seed, device=dev, progress=False, arch=model.split("-")[0])
        return {"steps": steps, "seed": seed, "cached": info["cached"], "train_seconds": round(info["train_seconds"], 1),
                "wall_seconds": round(time.perf_counter() - t0, 1),
                "accuracy": {s: {k: round(v, 4) for k, v in a.items()} for s, a in j.accuracy.items()}}
    m, info = getattr(mm.zoo, model)(world, prof, seed=seed, device=dev, progress=False)
    judges = mm.zoo.judges(world, mm.runtime.profile("cpu"), device=dev, progress=False)   # the book's judges
    rep = mm.metrics.consistency_report(m, judges, world, n_per_caption=8, seed=0)
    out = {"steps": steps, "seed": seed, "cached": info["cached"], "train_seconds": round(info["train_seconds"], 1),
           "seen": [round(x, 4) for x in rep["seen"]["range"]],
           "heldout": [round(x, 4) for x in rep["heldout"]["range"]],
           "size_tv": round(rep["size_coverage"]["tv"], 4)}
    for phrasing in mm.grammar.PHRASINGS:              # free, fresh, third: as bench/gan_bench.py scores them
        caps = mm.metrics.evaluation_captions(world, "all", seed=0, phrasing=phrasing)
        fr = mm.metrics.consistency_by_judge(m, judges, world, caps, n_per_caption=4, seed=0)
        out[phrasing] = [round(x, 4) for x in fr["range"]]
    return out


def _star(a):
    return one(*a)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", choices=list(GENERATORS) + list(JUDGES))
    ap.add_argument("--steps", type=int, nargs="+", required=True, help="training steps to compare")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds")
    ap.add_argument("--jobs", type=int, default=2, help="processes side by side, one thread each")
    ap.add_argument("--name", default=None, help="results file bench/results/NAME.json (default budget_MODEL)")
    args = ap.parse_args()
    if any(s < 1 for s in args.steps):
        ap.error("--steps must be positive")
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    from common import side_by_side, write

    t0 = time.perf_counter()
    todo = [(args.model, s, seed, 1) for s in args.steps for seed in args.seeds]
    # the judges first, in this process: every generator's measurement reads them from the cache
    if args.model in GENERATORS:
        import mmtutor as mm
        mm.zoo.judges(mm.World(), mm.runtime.profile("cpu"), device="cpu", progress=False)
    runs = side_by_side(_star, todo, args.jobs)
    for r in runs:
        print(json.dumps(r), flush=True)
    summary = {}
    for s in args.steps:
        rs = [r for r in runs if r["steps"] == s]
        row = {"train_seconds_mean": round(statistics.mean(r["train_seconds"] for r in rs), 1)}
        if args.model in GENERATORS:
            for key in ("seen", "heldout", *(k for k in ("free", "fresh", "third") if k in rs[0])):
                lows = [r[key][0] for r in rs]             # the lower judge, as the book reports it
                row[f"{key}_lower_judge"] = {"mean": round(statistics.mean(lows), 4), "min": min(lows), "max": max(lows)}
        else:
            for split in ("train", "heldout"):
                vals = [r["accuracy"][split]["joint"] for r in rs]
                row[f"{split}_joint"] = {"mean": round(statistics.mean(vals), 4), "min": min(vals), "max": max(vals)}
        summary[str(s)] = row
    write(args.name or f"budget_{args.model.replace('-', '_')}",
          {"model": args.model, "profile": "cpu", "steps": args.steps, "seeds": args.seeds,
           "jobs": args.jobs, "threads_per_job": 1, "runs": runs, "summary": summary,
           "bench_seconds": round(time.perf_counter() - t0)})


if __name__ == "__main__":
    main()
