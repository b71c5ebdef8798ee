"""Three families on one world: the book's GAN, conditional VAE and text-conditioned diffusion
model, trained on the same pool with the same caption features, measured with the same judges
and metrics on the same captions. Writes bench/results/families.json.

Each family is trained ONCE, from scratch, with the cpu profile's recipe and budget (the GAN
exactly as ``mm.zoo.gan`` trains it, so the table's GAN is the book's). During that run the
weights used for sampling are copied at fixed wall-clock marks (``--marks``, minutes; default
1, 2, 5), and every copy is measured afterwards: the curves of consistency against training
time are snapshots of one run each, not retrained models (so a point at minute 1 is what a run
of the profile's length holds after one minute, learning rate and EMA mid-schedule).

Parts (``--parts``, default table,curves,guidance,steps,editing):

* ``table``    -- the three final models: consistency on every seen and held-out combination
  read by both judges (the range over judges), size coverage with and without caption
  completion, Frechet distance in judge features, diversity, sharpness against real renders,
  training seconds (wall and process CPU), network evaluations and ms per image;
* ``curves``   -- consistency (both judges) of every snapshot;
* ``guidance`` -- diffusion consistency and diversity against the guidance weight w;
* ``steps``    -- ... against the number of sampler steps (DDIM and DDPM);
* ``editing``  -- SDEdit's start time t0 swept on 120 tuning edits, the best t0 measured on 200
  fresh edits (colour, object, relation) by both judges, against the GAN's caption swap and
  diffusion's fixed-noise caption swap;
* ``long``     -- (``--long``) the diffusion model trained for ``--long-minutes`` (default 30),
  measured every ``--long-every`` minutes (one run), and pixel-space diffusion under the
  latent model's training time.

Targets (cpu profile, this CPU): diffusion trained <= 5 min with joint consistency >= 0.80
seen and >= 0.70 held-out (lower of the two judges); VAE <= 2 min; editing at the best t0:
success >= 0.90 and preservation >= 0.90.

    python bench/families_bench.py --threads 1             # about 25 min on an idle core
    python bench/families_bench.py --threads 1 --long      # + the 30-minute curve and pixel space
    python bench/families_bench.py --parts table,editing   # a subset (the models are trained anyway)

The machine is shared: every timing is recorded beside the process's CPU seconds and the load
average (``os.getloadavg``) before and after.
"""
import argparse
import copy
import os
import statistics
import time

import torch

import mmtutor as mm
from common import write
from mmtutor import diffusion as D
from mmtutor import editing as E
from mmtutor import vae as V

PARTS = ("table", "curves", "guidance", "steps", "editing", "long")
FAMILIES = ("gan", "vae", "diffusion")


def r3(x):
    return round(float(x), 3)


def load() -> float:
    return round(os.getloadavg()[0], 2)


# ======================================================================================
# training: one run per family, snapshots of the sampling weights at wall-clock marks
def sampling_state(model, family: str) -> dict:
    """The weights ``generate`` uses (EMA copies), plus what they need (caption statistics,
    the autoencoder)."""
    if family == "gan":
        return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("D.")}
    return {k: v.clone() for k, v in model.state_dict().items()}


def train_family(family: str, world, prof, pool, marks_s: list[float], seed: int = 0):
    """Train the profile's model of ``family`` once; return (model, training record, snapshots)."""
    torch.manual_seed(seed)
    if family == "gan":
        model = mm.ConditionalGAN(mm.zoo.gan_config(world, prof), world, device="cpu")
        steps, batch = prof.gan_steps, prof.batch_size
        extra = {"snapshot_captions": mm.zoo.SNAPSHOT_CAPTIONS, "snapshots": mm.zoo.SNAPSHOTS}
    elif family == "vae":
        model = V.ConditionalVAE(mm.zoo.vae_config(world, prof), world, device="cpu")
        steps, batch, extra = prof.vae_steps, prof.vae_batch, {}
    else:
        model = D.DiffusionModel(mm.zoo.diffusion_config(world, prof), world, device="cpu")
        steps, batch, extra = prof.diffusion_steps, prof.diffusion_batch, {}
    todo, snaps = list(marks_s), []
    t0, c0 = time.perf_counter(), time.process_time()

    def keep(m, step):
        # seconds since fit() began: caption features and (diffusion) the autoencoder included
        if todo and time.perf_counter() - t0 >= todo[0]:
            snaps.append({"mark_seconds": todo.pop(0), "seconds": time.perf_counter() - t0,
                          "cpu_seconds": time.process_time() - c0, "steps": step + 1,
                          "state": sampling_state(m, family)})

    load_before = load()
    hist = model.fit(pool, mm.TrainConfig(steps=steps, batch_size=batch, seed=seed, bf16=prof.bf16,
                                          progress=False, log_every=50), callback=keep, **extra)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    loops = hist["total_seconds"] + hist.get("autoencoder_seconds", 0.0)
    record = {"steps": hist["steps"], "batch_size": batch, "train_seconds": r3(loops),
              "fit_wall_seconds": r3(wall), "fit_cpu_seconds": r3(cpu),
              "load_average_before_after": [load_before, load()]}
    if "autoencoder" in hist:
        record.update(autoencoder_seconds=r3(hist["autoencoder_seconds"]),
                      autoencoder_steps=hist["autoencoder"]["steps"])
    snaps.append({"mark_seconds": None, "seconds": wall, "cpu_seconds": cpu, "steps": hist["steps"],
                  "state": sampling_state(model, family)})
    print(family, record, "snapshots at", [round(s["seconds"]) for s in snaps], flush=True)
    return model, record, snaps


# ======================================================================================
# measuring
def quick_consistency(model, judges, world, n_per_caption: int = 4, seed: int = 0, every: int = 2, **options):
    """Consistency on every ``every``-th seen combination and every held-out one, both judges."""
    seen = mm.metrics.evaluation_captions(world, "train", seed=seed)[::every]
    held = mm.metrics.evaluation_captions(world, "heldout", seed=seed)
    out = {}
    for name, caps in (("seen", seen), ("heldout", held)):
        images = model.generate(caps, n_per_caption=n_per_caption, seed=seed, **options)
        r = mm.metrics.consistency_by_judge(None, judges, world, caps, n_per_caption, images=images)
        out[name] = {j: {k: r3(v) for k, v in s.items() if isinstance(v, float)} for j, s in r.items()
                     if isinstance(s, dict)}
        out[name]["range"] = [r3(v) for v in r["range"]]
    return out


def spread(model, judge, world, captions, n: int = 8, seed: int = 2, **options) -> dict:
    fake = model.generate(captions, n_per_caption=n, seed=seed, **options)
    real = mm.metrics.real_images_for(world, captions, n, seed=seed)
    div = mm.metrics.diversity(judge, fake, real, n_per_caption=n)
    return {"diversity": r3(div["ratio"]), "collapsed": div["collapsed"],
            "fd": r3(mm.metrics.frechet_distance(judge.embed(real), judge.embed(fake)))}


def ms_per_image(model, n: int, repeats: int = 3, **options) -> float:
    """Median wall time to generate ``n`` images of one caption, per image, in ms."""
    caps = ["a red apple on the table"]
    model.generate(caps, n_per_caption=min(n, 4), seed=0, **options)            # warm-up
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        model.generate(caps, n_per_caption=n, seed=r, **options)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times) / n


def nfe(model, family: str, **options) -> int:
    """Network evaluations per generated image (latent diffusion's decoder pass not counted)."""
    return model.evaluations_per_image(**options) if family == "diffusion" else 1


def high_frequency(images: torch.Tensor) -> float:
    """Mean absolute Laplacian (a sharpness measure): blurry images have less high-frequency energy."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    return float(torch.nn.functional.conv2d(images, k, groups=3).abs().mean())


def clean(x):
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items() if k not in ("images", "predicted", "target", "rows")}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return r3(x) if isinstance(x, float) else x


def fd_captions(world):
    return mm.metrics.evaluation_captions(world, "train", seed=3)[::4] + \
        mm.metrics.evaluation_captions(world, "heldout", seed=3)


def part_table(models, records, world, prof, judges, cnn, seed):
    caps = fd_captions(world)
    real = mm.metrics.real_images_for(world, caps, 8, seed=2)
    real2 = mm.metrics.real_images_for(world, caps, 8, seed=3)
    out = {"fd_real_vs_real": r3(mm.metrics.frechet_distance(cnn.embed(real), cnn.embed(real2))),
           "fd_captions": len(caps)}
    for family, m in models.items():
        t, c, l0 = time.perf_counter(), time.process_time(), load()
        rep = {}
        for split, name in (("train", "seen"), ("heldout", "heldout")):
            ec = mm.metrics.evaluation_captions(world, split, seed=seed)
            rep[name] = mm.metrics.consistency_by_judge(m, judges, world, ec, n_per_caption=prof.eval_per_caption,
                                                        seed=seed)
        cov = {"plain": mm.metrics.size_coverage(m, cnn, world, n_per_caption=16, seed=seed, complete=False),
               "completed": mm.metrics.size_coverage(m, cnn, world, n_per_caption=16, seed=seed, complete=True)}
        s = spread(m, cnn, world, caps)
        row = {"training": records[family],
               "consistency": {n: clean({j: r for j, r in rep[n].items() if isinstance(r, dict)})
                               for n in ("seen", "heldout")},
               "range": {n: clean(rep[n]["range"]) for n in ("seen", "heldout")},
               "judge_agreement": {n: r3(rep[n]["agreement"]) for n in ("seen", "heldout")},
               "size_coverage": {k: clean({kk: v[kk] for kk in ("tv", "large_share", "large_share_by_object",
                                                                 "large_share_range", "worst_caption")})
                                 for k, v in cov.items()},
               **s,
               "sharpness_vs_real": r3(high_frequency(m.generate(caps, 4, seed=9))
                                       / high_frequency(mm.metrics.real_images_for(world, caps, 4, seed=9))),
               "network_evaluations_per_image": nfe(m, family),
               "ms_per_image_batch_64": r3(ms_per_image(m, 64)), "ms_per_image_alone": r3(ms_per_image(m, 1)),
               "evaluation_seconds": r3(time.perf_counter() - t), "evaluation_cpu_seconds": r3(time.process_time() - c),
               "load_average_before_after": [l0, load()]}
        if family == "diffusion":
            imgs, _, attrs = world.sample(1000, split="heldout", seed=5)
            with torch.no_grad():
                rec = m.from_space(m.to_space(imgs))
            row["autoencoder_reconstruction_heldout"] = clean(
                mm.metrics.attribute_accuracy(cnn.predict(rec), attrs, world.attributes))
            row["autoencoder_reconstruction_mse"] = r3((rec - imgs).pow(2).mean())
        if family == "vae":
            imgs = mm.metrics.real_images_for(world, caps, 4, seed=9)
            rec = m.reconstruct(imgs, [c for c in caps for _ in range(4)])
            row["reconstruction_sharpness_vs_real"] = r3(high_frequency(rec) / high_frequency(imgs))
        out[family] = row
        print(family, {k: row[k] for k in ("range", "fd", "diversity", "sharpness_vs_real")},
              "size TV", row["size_coverage"]["plain"]["tv"], "->", row["size_coverage"]["completed"]["tv"], flush=True)
    return out


def part_curves(models, snapshots, world, judges, seed):
    out = {}
    for family, m in models.items():
        final = copy.deepcopy(m.state_dict())
        pts = []
        for s in snapshots[family]:
            m.load_state_dict(s["state"], strict=False)
            c = quick_consistency(m, judges, world, seed=seed)
            pts.append({"mark_seconds": s["mark_seconds"], "seconds": r3(s["seconds"]),
                        "cpu_seconds": r3(s["cpu_seconds"]), "steps": s["steps"], **c})
            print("curve", family, round(s["seconds"]), s["steps"], c["seen"]["range"], c["heldout"]["range"], flush=True)
        m.load_state_dict(final)
        out[family] = pts
    return out


def part_guidance(model, world, judges, cnn, seed, ws=(0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0)):
    caps = fd_captions(world)
    out = []
    for w in ws:
        c = quick_consistency(model, judges, world, seed=seed, w=w)
        s = spread(model, cnn, world, caps, w=w)
        out.append({"w": w, "guidance_scale": 1 + w, **c, **s})
        print("w", w, c["seen"]["range"], c["heldout"]["range"], s, flush=True)
    return out


def part_steps(model, world, judges, cnn, seed):
    caps = fd_captions(world)[::2]
    out = []
    for sampler, steps_list in (("ddim", (2, 5, 10, 20, 50, 100)), ("ddpm", (10, 20, 50, 100, 250))):
        for steps in steps_list:
            c = quick_consistency(model, judges, world, seed=seed, every=4, steps=steps, sampler=sampler)
            s = spread(model, cnn, world, caps, steps=steps, sampler=sampler)
            out.append({"sampler": sampler, "steps": steps, "network_evaluations": nfe(model, "diffusion", steps=steps),
                        "ms_per_image": r3(ms_per_image(model, 64, repeats=1, steps=steps, sampler=sampler)), **c, **s})
            print(sampler, steps, c["seen"]["range"], s, flush=True)
    return out


def part_editing(diff, gan, world, judges, cnn, seed, t0s=(100, 200, 300, 400, 500, 600, 700, 800)):
    tune = E.make_edits(world, 120, seed=100)
    tune_src = E.real_sources(world, tune, seed=101)
    sweep = []
    for t0 in t0s:
        edited = E.sdedit(diff, tune_src, [e.target_caption for e in tune], t0=t0, seed=seed)
        s = E.edit_scores(cnn, world, tune_src, edited, tune)
        sweep.append({"t0": t0, **clean({k: v for k, v in s.items() if k != "by_kind"})})
        print("t0", t0, sweep[-1], flush=True)
    best = max(sweep, key=lambda r: (r["both"], -r["t0"]))["t0"]
    test = E.make_edits(world, 200, seed=200)
    src = E.real_sources(world, test, seed=201)
    t = time.perf_counter()
    edited = E.sdedit(diff, src, [e.target_caption for e in test], t0=best, seed=seed)
    sd_seconds = time.perf_counter() - t
    gsrc, gdst = E.caption_swap(gan, [e.source_caption for e in test], [e.target_caption for e in test], seed=seed)
    dsrc = diff.generate([e.source_caption for e in test], seed=seed)
    ddst = diff.generate([e.target_caption for e in test], seed=seed)      # the same x_T for image i
    out = {"t0_sweep_tuning_edits": sweep, "best_t0": best, "test_edits": len(test),
           "test_edits_with_heldout_target": sum(tuple(e.target) in world.heldout for e in test),
           "sdedit_seconds_for_200": r3(sd_seconds)}
    for name, (a, b) in (("sdedit", (src, edited)), ("gan_caption_swap", (gsrc, gdst)),
                         ("diffusion_fixed_noise_swap", (dsrc, ddst))):
        out[name] = {j: clean(E.edit_scores(judge, world, a, b, test)) for j, judge in judges.items()}
    print("editing t0", best, {k: {j: {m: out[k][j][m] for m in ("success", "preservation")} for j in out[k]}
                               for k in ("sdedit", "gan_caption_swap")}, flush=True)
    return out


def part_long(world, prof, pool, judges, minutes, every, seed, pixel_seconds):
    torch.manual_seed(seed)
    m = D.DiffusionModel(mm.zoo.diffusion_config(world, prof), world, device="cpu")
    marks = [every * 60 * (i + 1) for i in range(int(minutes // every))]
    snaps, t0 = [], time.perf_counter()

    def keep(model, step):
        if marks and time.perf_counter() - t0 >= marks[0]:
            snaps.append((marks.pop(0), model.steps_done, sampling_state(model, "diffusion")))

    l0 = load()
    h = m.fit(pool, mm.TrainConfig(steps=10**7, batch_size=prof.diffusion_batch, seed=seed, bf16=prof.bf16,
                                   max_seconds=60 * minutes, progress=False, log_every=100), callback=keep)
    snaps.append((time.perf_counter() - t0, m.steps_done, sampling_state(m, "diffusion")))
    pts = []
    for seconds, steps, state in snaps:
        m.load_state_dict(state)
        c = quick_consistency(m, judges, world, seed=seed)
        pts.append({"seconds": r3(seconds), "steps": steps, **c})
        print("long", round(seconds), steps, c["seen"]["range"], c["heldout"]["range"], flush=True)
    out = {"minutes": minutes, "points": pts, "load_average_before_after": [l0, load()],
           "autoencoder_seconds": r3(h.get("autoencoder_seconds", 0.0))}
    torch.manual_seed(seed)
    px = D.DiffusionModel(mm.zoo.diffusion_config(world, prof, space="pixel", channels=(32, 64, 64),
                                                  attention_levels=()), world, device="cpu")
    h = px.fit(pool, mm.TrainConfig(steps=10**7, batch_size=prof.diffusion_batch, seed=seed, bf16=prof.bf16,
                                    max_seconds=pixel_seconds, progress=False, log_every=100))
    out["pixel_diffusion_same_time"] = {"train_seconds": r3(h["total_seconds"]), "steps": h["steps"],
                                        "ms_per_step": r3(1000 * h["total_seconds"] / h["steps"]),
                                        "ms_per_image": r3(ms_per_image(px, 64)),
                                        **quick_consistency(px, judges, world, seed=seed)}
    print("pixel", out["pixel_diffusion_same_time"]["seen"]["range"], flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="table,curves,guidance,steps,editing",
                    help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--long", action="store_true", help="also the long diffusion curve and pixel-space diffusion")
    ap.add_argument("--marks", default="1,2,5", help="snapshot marks in minutes of each run (default 1,2,5)")
    ap.add_argument("--long-minutes", type=float, default=30.0, help="length of the long diffusion run (min)")
    ap.add_argument("--long-every", type=float, default=5.0, help="measure the long run every this many minutes")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="families", help="results name (bench/results/NAME.json)")
    args = ap.parse_args()
    parts = [p for p in args.parts.split(",") if p] + (["long"] if args.long else [])
    for p in parts:
        mm.checks.choice(p, "part", PARTS)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start, c_start, l_start = time.perf_counter(), time.process_time(), load()
    prof = mm.runtime.profile("cpu")
    world = mm.World(image_size=prof.image_size)
    a = torch.randn(1024, 1024)
    t = time.perf_counter()
    for _ in range(20):
        a @ a
    gflops = 2 * 1024 ** 3 * 20 / (time.perf_counter() - t) / 1e9
    judges = mm.zoo.judges(world, prof, device="cpu", progress=False)
    cnn = judges["cnn judge"]
    pool = mm.zoo.pool(world, prof, seed=args.seed)
    result = {"profile": prof.name, "seed": args.seed, "matmul_gflops_at_start": round(gflops, 1),
              "load_average_at_start": l_start,
              "judges_accuracy_real": {n: j.accuracy for n, j in judges.items()},
              "configs": {"vae": vars(mm.zoo.vae_config(world, prof)),
                          "diffusion": vars(mm.zoo.diffusion_config(world, prof)),
                          "gan": vars(mm.zoo.gan_config(world, prof))},
              "profile_budgets": {k: getattr(prof, k) for k in ("gan_steps", "batch_size", "vae_steps", "vae_batch",
                                                                  "diffusion_steps", "diffusion_batch",
                                                                  "diffusion_ae_steps")}}
    marks = [60 * float(m) for m in args.marks.split(",")]
    models, records, snapshots = {}, {}, {}
    for family in FAMILIES:
        models[family], records[family], snapshots[family] = train_family(family, world, prof, pool, marks, args.seed)
    result["training"] = records
    if "table" in parts:
        result["table"] = part_table(models, records, world, prof, judges, cnn, args.seed)
    if "curves" in parts:
        result["curves"] = part_curves(models, snapshots, world, judges, args.seed)
    diff = models["diffusion"]
    if "guidance" in parts:
        result["guidance"] = part_guidance(diff, world, judges, cnn, args.seed)
    if "steps" in parts:
        result["sampler_steps"] = part_steps(diff, world, judges, cnn, args.seed)
    if "editing" in parts:
        result["editing"] = part_editing(diff, models["gan"], world, judges, cnn, args.seed)
    if "long" in parts:
        result["diffusion_long"] = part_long(world, prof, pool, judges, args.long_minutes, args.long_every,
                                             args.seed, records["diffusion"]["train_seconds"])
    d, v = records["diffusion"], records["vae"]
    met = {"diffusion_train_<=_300_s": d["train_seconds"] <= 300, "vae_train_<=_120_s": v["train_seconds"] <= 120}
    if "table" in parts:
        rd = result["table"]["diffusion"]["range"]
        met.update({"diffusion_seen_joint_>=_0.80_both_judges": rd["seen"][0] >= 0.80,
                    "diffusion_heldout_joint_>=_0.70_both_judges": rd["heldout"][0] >= 0.70})
    if "editing" in parts:
        sd = result["editing"]["sdedit"]
        met.update({"edit_success_>=_0.90_both_judges": min(s["success"] for s in sd.values()) >= 0.90,
                    "edit_preservation_>=_0.90_both_judges": min(s["preservation"] for s in sd.values()) >= 0.90})
    result["targets_met"] = met
    result["bench_seconds"] = {"wall": r3(time.perf_counter() - t_start), "cpu": r3(time.process_time() - c_start),
                               "load_average_at_end": load()}
    write(args.out, result, bf16=prof.bf16)


if __name__ == "__main__":
    main()
