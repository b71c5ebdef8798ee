"""GAN benchmark: the book's recipe against Reed et al.'s 2016 recipe and two ablations, each
trained from scratch under the same budget, then measured alike.

Recipes (mmtutor.gan): "book"; "reed2016" (D concatenates the text with its image features,
batch norm, BCE, raw MiniLM features, no SN/EMA/TTUR/diversity term); "ablation" (the book's
recipe without its modern parts: BCE, batch norm, no EMA/TTUR/diversity term, but its projection
discriminator and caption features); "zscore" (the book's recipe on z-scored MiniLM features
instead of the discriminant projection, without the attribute readout). The headline pair (book,
reed2016) runs with three seeds; the ablations with one. "plainbank" is the book's recipe trained
on a caption bank without neutral words (``caption_noise=0``, see ``mm.data.PairPool``) and
"noreadout" the book's recipe without the attribute readout (``text_readout="none"``, see
``mm.condition``), "sentence" with the readout on the discriminant directions (MiniLM's sentence
vector) instead of its token vectors (``text_readout="sentence"``, the book's readout before
the attribute classifier came), "directions" with the discriminant directions beside the token
readout (``text_dims=32``, the book's recipe before it read the readout alone), and "noaux"
without D's attribute classifier (``aux_weight=0``), each with every seed of the headline pair:
they measure what the neutral words, each readout and the classifier buy on phrasings outside
the grammar and cost elsewhere.

Budget: ``--budget`` wall seconds per run (default 180), MiniLM loading, caption encoding and
pool rendering included and reported separately, every run trained from scratch; ``--steps``
instead gives every run the same number of steps (for a machine shared with other work, where
wall time is not comparable), and then the models come from ``mm.zoo`` -- trained once and
cached, so the book recipe's models are the chapters' own (seed 0) and the data-size bench's.
Measured per run: joint caption consistency on every seen and every held-out combination by
both judges (a range), on captions phrased outside the grammar (the free phrasings, and the
fresh ones never used to choose anything: ``grammar.FRESH_TEMPLATES``, and a third set written
after those had been examined: ``grammar.THIRD_TEMPLATES``), size coverage with and without
caption completion, Frechet distance in judge features, diversity, throughput, sampling latency.
Writes bench/results/gan.json on a CPU without AMX (float32), gan_amx.json on one with AMX
(bfloat16), so the two kinds of CPU keep their own results.

``--jobs N`` (with ``--steps`` only: a wall-clock budget needs the machine to itself) runs N
recipes-and-seeds side by side, each in its own process with one torch thread, as ``make book``
trains its models (the sampling latencies are then measured beside another run, too).

    python bench/gan_bench.py [--budget 180 | --steps 1400 [--jobs 2]] [--seeds 0 1 2] [--recipes book,sentence,noaux]
"""
import argparse
import dataclasses
import os
import statistics
import time

import torch

import mmtutor as mm
from common import side_by_side, write


SIZE_COVERAGE_N = 32      # images per size-less caption for size coverage (recorded in the protocol)


def latency(gan, n: int, repeats: int = 20) -> float:
    caps = ["a red apple on the table"]
    gan.generate(caps, n_per_caption=n, seed=0)                     # warm-up
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        gan.generate(caps, n_per_caption=n, seed=r)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def r4(x):
    return round(float(x), 4)


def train_for(recipe: str, config, world, prof, budget: float, seed: int):
    """One run trained from scratch under a wall-clock budget that includes loading MiniLM,
    encoding the caption bank and rendering the pool (each reported separately)."""
    torch.manual_seed(seed)
    mm.text._MINILM.clear()                        # each run pays for loading MiniLM and encoding its captions
    mm.zoo._pool.cache_clear()                     # ... and for rendering its training pool
    t_start = time.perf_counter()
    pool = mm.zoo.pool(world, prof, seed=seed)
    data_seconds = time.perf_counter() - t_start
    t = time.perf_counter()
    gan = mm.ConditionalGAN(config, world, device="cpu")           # loads MiniLM
    gan.text.features(pool.captions)                               # encodes the caption bank (cached by MiniLM)
    text_seconds = time.perf_counter() - t
    left = budget - (time.perf_counter() - t_start) - 0.5   # the last step must end inside the budget
    train = mm.TrainConfig(steps=10**6, batch_size=prof.batch_size, seed=seed, bf16=prof.bf16,
                           max_seconds=left, progress=False)
    hist = gan.fit(pool, train)
    total = time.perf_counter() - t_start
    out = {"recipe": recipe, "seed": seed, "steps": hist["steps"], "from_cache": False,
           "seconds": {"data_render": round(data_seconds, 1), "text_encoder_preparation": round(text_seconds, 1),
                       "training": round(hist["total_seconds"], 1), "total_wall": round(total, 1)},
           "train_images_per_second": round(hist["images_per_second"], 1), "load_average": os.getloadavg()[0]}
    return out, gan, hist


# variants of the book's recipe: their config overrides ("plainbank" changes the caption bank instead)
BOOK_VARIANTS = {"zscore": {"text_norm": "zscore", "text_readout": "none"}, "noreadout": {"text_readout": "none"},
                 "sentence": {"text_readout": "sentence"}, "directions": {"text_dims": 32},
                 "noaux": {"aux_weight": 0.0}, "plainbank": {}}


def run(recipe: str, world, prof, judges, budget: float | None, steps: int | None, seed: int) -> dict:
    if recipe == "plainbank":
        prof = dataclasses.replace(prof, caption_noise=0.0)
    config = mm.zoo.gan_config(world, prof, recipe="book" if recipe in BOOK_VARIANTS else recipe,
                               **BOOK_VARIANTS.get(recipe, {}))
    if steps is not None:
        # equal steps: the models come from the zoo (trained once and cached, like the chapters'; the
        # book recipe's seeds 0 and 1 are the chapters' and the data-size bench's 8192-image models)
        gan, info = mm.zoo.gan(world, prof, config=config, seed=seed, steps=steps, progress=False)
        hist = info["history"]
        out = {"recipe": recipe, "seed": seed, "steps": hist["steps"], "from_cache": info["cached"],
               "seconds": {"training": round(hist["total_seconds"], 1)},
               "train_images_per_second": round(hist["images_per_second"], 1)}
    else:
        out, gan, hist = train_for(recipe, config, world, prof, budget, seed)
    rep = mm.metrics.consistency_report(gan, judges, world, n_per_caption=prof.eval_per_caption, seed=seed)
    for split in ("seen", "heldout"):
        out[f"{split}_joint"] = {name: r4(rep[split][name]["joint"]) for name in judges}
        out[f"{split}_joint_range"] = [r4(x) for x in rep[split]["range"]]
        out[f"{split}_judge_agreement"] = r4(rep[split]["agreement"])
    for phrasing in mm.grammar.PHRASINGS:                          # free, fresh, third
        caps = mm.metrics.evaluation_captions(world, "all", seed=seed, phrasing=phrasing)
        fr = mm.metrics.consistency_by_judge(gan, judges, world, caps, n_per_caption=4, seed=seed)
        out[f"{phrasing}_phrasing_joint_range"] = [r4(x) for x in fr["range"]]
    judge = judges["cnn judge"]
    for complete in (False, True):
        sc = mm.metrics.size_coverage(gan, judge, world, n_per_caption=SIZE_COVERAGE_N, seed=seed, complete=complete)
        out[f"size_coverage_{'completed' if complete else 'alone'}"] = {
            "tv": r4(sc["tv"]), "large_share_by_object": {k: r4(v) for k, v in sc["large_share_by_object"].items()}}
    caps = (mm.metrics.evaluation_captions(world, "train", seed=3)[:64]
            + mm.metrics.evaluation_captions(world, "heldout", seed=3)[:16])
    fake = gan.generate(caps, n_per_caption=8, seed=2)
    real = mm.metrics.real_images_for(world, caps, 8, seed=2)
    fd = mm.metrics.frechet_report(gan, judge, world, caps, n_per_caption=8, seed=2, images=fake)
    div = mm.metrics.diversity(judge, fake, real, n_per_caption=8)
    out.update({"frechet_distance": round(fd["fd"], 2), "frechet_real_vs_real": round(fd["fd_real_vs_real"], 2),
                "diversity_ratio": r4(div["ratio"]),
                "sampling_latency_ms": {"1_image": round(1000 * latency(gan, 1), 2),
                                        "64_images": round(1000 * latency(gan, 64), 2)}})
    print(recipe, seed, {k: out[k] for k in ("steps", "seen_joint_range", "heldout_joint_range",
                                             "free_phrasing_joint_range", "fresh_phrasing_joint_range",
                                             "third_phrasing_joint_range", "frechet_distance")}, flush=True)
    return out


def _job(args: tuple) -> dict:
    """One (recipe, seed) in a process of its own, one torch thread (``--jobs``)."""
    recipe, steps, seed = args
    torch.set_num_threads(1)
    prof = mm.runtime.profile("cpu")
    world = mm.World(image_size=prof.image_size)
    judges = mm.zoo.judges(world, prof, device="cpu", progress=False)
    return run(recipe, world, prof, judges, None, steps, seed)


def summary(runs: list[dict]) -> dict:
    keys = {"seen_low": lambda r: r["seen_joint_range"][0], "seen_high": lambda r: r["seen_joint_range"][1],
            "heldout_low": lambda r: r["heldout_joint_range"][0], "heldout_high": lambda r: r["heldout_joint_range"][1],
            "free_low": lambda r: r["free_phrasing_joint_range"][0],
            "fresh_low": lambda r: r["fresh_phrasing_joint_range"][0],
            "third_low": lambda r: r["third_phrasing_joint_range"][0], "fd": lambda r: r["frechet_distance"],
            "diversity": lambda r: r["diversity_ratio"], "steps": lambda r: r["steps"],
            "size_tv_alone": lambda r: r["size_coverage_alone"]["tv"],
            "size_tv_completed": lambda r: r["size_coverage_completed"]["tv"]}
    return {k: {"mean": r4(statistics.mean(f(r) for r in runs)), "min": r4(min(f(r) for r in runs)),
                "max": r4(max(f(r) for r in runs)), "n": len(runs)} for k, f in keys.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=180.0, help="wall seconds per run (default 180)")
    ap.add_argument("--steps", type=int, default=None, help="same number of steps for every run instead")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the headline pair")
    ap.add_argument("--recipes", default="book,reed2016,plainbank,noreadout,sentence,noaux,directions,ablation,zscore",
                    help="comma-separated subset of book,reed2016,plainbank,noreadout,sentence,noaux,directions,"
                         "ablation,zscore (the last two run with one seed)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs side by side, one torch thread each (with --steps only; default 1)")
    args = ap.parse_args()
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.jobs > 1 and args.steps is None:
        ap.error("--jobs above 1 needs --steps: runs side by side share the CPU, so a wall-clock budget "
                 "would give each fewer steps than it gets alone")
    prof = mm.runtime.profile("cpu")
    world = mm.World(image_size=prof.image_size)
    judges = mm.zoo.judges(world, prof, device="cpu", progress=False)
    chosen = [r for r in args.recipes.split(",") if r]
    for r in chosen:
        mm.checks.choice(r, "recipe", ("book", "reed2016", "plainbank", "noreadout", "sentence", "noaux", "directions",
                                       "ablation", "zscore"))
    if "book" not in chosen:
        raise SystemExit("--recipes must include book (the targets are the book recipe's)")
    todo = [(recipe, seed) for recipe, seeds in (("book", args.seeds), ("plainbank", args.seeds),
                                                ("noreadout", args.seeds), ("sentence", args.seeds),
                                                ("noaux", args.seeds), ("directions", args.seeds),
                                                ("reed2016", args.seeds),
                                                ("ablation", args.seeds[:1]), ("zscore", args.seeds[:1]))
            if recipe in chosen for seed in seeds]
    if args.jobs > 1:
        runs = side_by_side(_job, [(r, args.steps, s) for r, s in todo], args.jobs)
    else:
        runs = [run(recipe, world, prof, judges, args.budget, args.steps, seed) for recipe, seed in todo]
    recipes = {r: summary([x for x in runs if x["recipe"] == r]) for r in chosen}
    book = recipes["book"]
    targets = {"seen_joint_>=_0.95_every_seed_both_judges": book["seen_low"]["min"] >= 0.95,
               "heldout_joint_>=_0.90_every_seed_both_judges": book["heldout_low"]["min"] >= 0.90,
               "free_phrasings_>=_0.95_every_seed_both_judges": book["free_low"]["min"] >= 0.95,
               "fresh_phrasings_>=_0.95_every_seed_both_judges": book["fresh_low"]["min"] >= 0.95,
               "third_phrasings_>=_0.95_every_seed_both_judges": book["third_low"]["min"] >= 0.95,
               "size_each_object_35-65%_completed": all(
                   0.35 <= v <= 0.65 for r in runs if r["recipe"] == "book"
                   for v in r["size_coverage_completed"]["large_share_by_object"].values())}
    name = "gan_amx" if mm.runtime.machine(bf16=prof.bf16)["amx"] else "gan"   # each kind of CPU its own file
    write(name, {"protocol": {"budget_seconds": None if args.steps else args.budget, "steps": args.steps,
                               "jobs": args.jobs, "threads_per_job": 1 if args.jobs > 1 else torch.get_num_threads(),
                               "profile": prof.name, "batch_size": prof.batch_size,
                               "size_coverage_per_caption": SIZE_COVERAGE_N,
                               "caption_bank": {"augment": prof.caption_augment, "noise": prof.caption_noise,
                                                "plainbank_noise": 0.0}},
                  "judges_accuracy_real": {n: j.accuracy for n, j in judges.items()},
                  "summary": recipes, "targets_met": targets, "runs": runs}, bf16=prof.bf16)


if __name__ == "__main__":
    main()
