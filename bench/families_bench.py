"""Three families on one world: the book's GAN, conditional VAE and text-conditioned diffusion
model, trained on the same pool with the same caption features, measured with the same judges
and metrics on the same captions. Writes bench/results/families.json.

Parts (``--parts``, default all):

* ``table``    -- the profile's three models (the GAN from the model cache, as the book uses it;
  the VAE and the diffusion model trained here, so their time is measured): consistency on
  every seen and held-out combination read by both judges, size coverage, Frechet distance in
  judge features, diversity, training seconds, network evaluations and ms per image;
* ``budgets``  -- each family trained from scratch under equal wall-clock budgets
  (``--budgets``, minutes; default 1, 2, 5), consistency after each;
* ``curve``    -- the diffusion model trained for ``--curve-minutes`` (default 30), its EMA
  weights measured every ``--curve-every`` minutes (one run, so the learning rate there is
  that of the long run);
* ``pixel``    -- pixel-space diffusion beside latent diffusion under the profile's budget;
* ``guidance`` -- diffusion consistency and diversity against the guidance weight w;
* ``steps``    -- ... against the number of sampler steps (DDIM and DDPM);
* ``editing``  -- SDEdit's start time t0 swept on 120 tuning edits, the best t0 measured on 200
  fresh edits (colour, object, relation), against the GAN's caption swap and diffusion's
  fixed-noise caption swap.

Targets (cpu profile, this CPU): diffusion trained <= 5 min with joint consistency >= 0.80
seen and >= 0.70 held-out; VAE <= 2 min; editing at the best t0: success >= 0.90 and
preservation >= 0.90.

    python bench/families_bench.py                         # everything (about 1.5 h on 2 cores)
    python bench/families_bench.py --parts table,editing   # a subset
    python bench/families_bench.py --threads 1             # as measured on a shared machine
"""
import argparse
import copy
import statistics
import time

import torch

import mmtutor as mm
from common import write
from mmtutor import diffusion as D
from mmtutor import editing as E
from mmtutor import vae as V

PARTS = ("table", "budgets", "curve", "pixel", "guidance", "steps", "editing")


def r3(x):
    return round(float(x), 3)


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
    return {"ratio": r3(div["ratio"]), "collapsed": div["collapsed"],
            "fd": r3(mm.metrics.frechet_distance(judge.embed(real), judge.embed(fake)))}


def fresh(family: str, world, prof, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    if family == "gan":
        return mm.ConditionalGAN(mm.zoo.gan_config(world, prof, **overrides), world, device="cpu")
    if family == "vae":
        return V.ConditionalVAE(mm.zoo.vae_config(world, prof, **overrides), world, device="cpu")
    return D.DiffusionModel(mm.zoo.diffusion_config(world, prof, **overrides), world, device="cpu")


def batch_of(family: str, prof) -> int:
    return {"gan": prof.batch_size, "vae": prof.vae_batch, "diffusion": prof.diffusion_batch}[family]


def train_for(model, family, pool, prof, seconds: float | None = None, steps: int | None = None, seed: int = 0,
              callback=None) -> dict:
    """Train; return the history with ``train_seconds`` (every training loop, the autoencoder's
    included) and ``fit_wall_seconds`` (fit() as a whole, caption features included)."""
    train = mm.TrainConfig(steps=steps or 10**7, batch_size=batch_of(family, prof), seed=seed, bf16=prof.bf16,
                           max_seconds=seconds, progress=False, log_every=50)
    t = time.perf_counter()
    hist = model.fit(pool, train, callback=callback) if callback else model.fit(pool, train)
    hist["fit_wall_seconds"] = time.perf_counter() - t
    hist["train_seconds"] = hist["total_seconds"] + hist.get("autoencoder_seconds", 0.0)
    return hist


def nfe(model, family: str, **options) -> int:
    """Network evaluations per generated image (the decoder of latent diffusion not counted)."""
    if family == "diffusion":
        return model.evaluations_per_image(**options)
    return 1


# ======================================================================================
def part_table(world, prof, judges, cnn, pool, seed):
    gan, info = mm.zoo.gan(world, prof, device="cpu", progress=False)
    models = {"gan": (gan, {"train_seconds": r3(info["train_seconds"]), "steps": gan.steps_done,
                            "from_cache": info["cached"]})}
    for family in ("vae", "diffusion"):
        steps = prof.vae_steps if family == "vae" else prof.diffusion_steps
        m = fresh(family, world, prof, seed)
        h = train_for(m, family, pool, prof, steps=steps, seed=seed)
        models[family] = (m, {"train_seconds": r3(h["train_seconds"]), "fit_wall_seconds": r3(h["fit_wall_seconds"]),
                              "steps": h["steps"], **({"autoencoder_seconds": r3(h["autoencoder_seconds"]),
                                                       "autoencoder_steps": h["autoencoder"]["steps"]}
                                                      if "autoencoder" in h else {})})
        print(family, models[family][1], flush=True)
    caps = mm.metrics.evaluation_captions(world, "train", seed=3)[:64] + \
        mm.metrics.evaluation_captions(world, "heldout", seed=3)[:16]
    out = {}
    for family, (m, train) in models.items():
        t = time.perf_counter()
        rep = mm.metrics.consistency_report(m, judges, world, n_per_caption=prof.eval_per_caption, seed=seed)
        eval_seconds = time.perf_counter() - t
        row = {"training": train,
               "consistency": {s: {j: {k: r3(v) for k, v in r.items() if isinstance(v, float)} for j, r in
                                   rep[s].items() if isinstance(r, dict)} for s in ("seen", "heldout")},
               "range": {s: [r3(v) for v in rep[s]["range"]] for s in ("seen", "heldout")},
               "size_coverage_tv": r3(rep["size_coverage"]["tv"]),
               "large_share": r3(rep["size_coverage"]["large_share"]),
               **{k: v for k, v in spread(m, cnn, world, caps).items()},
               "network_evaluations_per_image": nfe(m, family),
               "ms_per_image_batch_64": r3(ms_per_image(m, 64)), "ms_per_image_alone": r3(ms_per_image(m, 1)),
               "consistency_report_seconds": r3(eval_seconds)}
        if hasattr(m, "autoencoder") and m.autoencoder is not None:
            imgs, _, attrs = world.sample(1000, split="heldout", seed=5)
            with torch.no_grad():
                rec = m.from_space(m.to_space(imgs))
            row["autoencoder_reconstruction_heldout"] = {
                k: r3(v) for k, v in mm.metrics.attribute_accuracy(cnn.predict(rec), attrs, world.attributes).items()}
            row["autoencoder_reconstruction_mse"] = r3((rec - imgs).pow(2).mean())
        out[family] = row
        print(family, {k: row[k] for k in ("range", "size_coverage_tv", "fd", "ratio")}, flush=True)
    sharp = {}
    real = mm.metrics.real_images_for(world, caps, 4, seed=9)
    for family, (m, _) in models.items():
        sharp[family] = r3(high_frequency(m.generate(caps, 4, seed=9)) / high_frequency(real))
    out["sharpness_vs_real"] = sharp
    return out, models


def high_frequency(images: torch.Tensor) -> float:
    """Mean absolute Laplacian (a sharpness measure): blurry images have less high-frequency energy."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    return float(torch.nn.functional.conv2d(images, k, groups=3).abs().mean())


def part_budgets(world, prof, judges, pool, budgets, seed):
    out = {}
    for family in ("gan", "vae", "diffusion"):
        out[family] = []
        for minutes in budgets:
            m = fresh(family, world, prof, seed)
            h = train_for(m, family, pool, prof, seconds=60 * minutes, seed=seed)
            c = quick_consistency(m, judges, world, seed=seed)
            out[family].append({"minutes": minutes, "steps": h["steps"], "train_seconds": r3(h["train_seconds"]),
                                "fit_wall_seconds": r3(h["fit_wall_seconds"]), **c})
            print(family, minutes, "min:", h["steps"], "steps", c["seen"]["range"], c["heldout"]["range"], flush=True)
    return out


def part_curve(world, prof, judges, pool, minutes, every, seed, space=None):
    m = fresh("diffusion", world, prof, seed, **({"space": space} if space else {}))
    marks = [every * 60 * (i + 1) for i in range(int(minutes // every))]
    snaps, t0 = [], [None]

    def keep(model, step):
        if t0[0] is None:
            t0[0] = time.perf_counter() - model.history.get("autoencoder_seconds", 0.0)
        if marks and time.perf_counter() - t0[0] >= marks[0]:
            snaps.append((marks.pop(0), model.steps_done, copy.deepcopy(model.state_dict())))

    h = train_for(m, "diffusion", pool, prof, seconds=60 * minutes, seed=seed, callback=keep)
    snaps.append((h["train_seconds"], m.steps_done, copy.deepcopy(m.state_dict())))
    out = []
    for seconds, steps, state in snaps:
        m.load_state_dict(state)
        c = quick_consistency(m, judges, world, seed=seed)
        out.append({"train_seconds": r3(seconds), "steps": steps, **c})
        print("curve", round(seconds), steps, c["seen"]["range"], c["heldout"]["range"], flush=True)
    return {"minutes": minutes, "space": m.config.space, "points": out}


def part_guidance(model, world, judges, cnn, seed, ws=(0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0)):
    caps = mm.metrics.evaluation_captions(world, "train", seed=3)[:48] + \
        mm.metrics.evaluation_captions(world, "heldout", seed=3)[:16]
    out = []
    for w in ws:
        c = quick_consistency(model, judges, world, seed=seed, w=w)
        s = spread(model, cnn, world, caps, w=w)
        out.append({"w": w, "guidance_scale": 1 + w, **c, "diversity": s["ratio"], "fd": s["fd"]})
        print("w", w, c["seen"]["range"], c["heldout"]["range"], s, flush=True)
    return out


def part_steps(model, world, judges, cnn, seed):
    caps = mm.metrics.evaluation_captions(world, "train", seed=3)[:48]
    out = []
    for sampler, steps_list in (("ddim", (2, 5, 10, 25, 50, 100)), ("ddpm", (10, 25, 50, 100, 250))):
        for steps in steps_list:
            c = quick_consistency(model, judges, world, seed=seed, every=4, steps=steps, sampler=sampler)
            s = spread(model, cnn, world, caps, steps=steps, sampler=sampler)
            out.append({"sampler": sampler, "steps": steps, "network_evaluations": nfe(model, "diffusion", steps=steps),
                        "ms_per_image": r3(ms_per_image(model, 64, steps=steps, sampler=sampler)), **c,
                        "diversity": s["ratio"], "fd": s["fd"]})
            print(sampler, steps, c["seen"]["range"], s, flush=True)
    return out


def part_editing(diff, gan, world, cnn, seed, t0s=(100, 200, 300, 400, 500, 600, 700, 800)):
    tune = E.make_edits(world, 120, seed=100)
    tune_src = E.real_sources(world, tune, seed=101)
    sweep = []
    for t0 in t0s:
        edited = E.sdedit(diff, tune_src, [e.target_caption for e in tune], t0=t0, seed=seed)
        s = E.edit_scores(cnn, world, tune_src, edited, tune)
        sweep.append({"t0": t0, **{k: (r3(v) if isinstance(v, float) else v) for k, v in s.items() if k != "by_kind"}})
        print("t0", t0, sweep[-1], flush=True)
    best = max(sweep, key=lambda r: (r["both"], -r["t0"]))["t0"]
    test = E.make_edits(world, 200, seed=200)
    src = E.real_sources(world, test, seed=201)
    t = time.perf_counter()
    edited = E.sdedit(diff, src, [e.target_caption for e in test], t0=best, seed=seed)
    sd_seconds = time.perf_counter() - t
    sd = E.edit_scores(cnn, world, src, edited, test)
    gsrc, gdst = E.caption_swap(gan, [e.source_caption for e in test], [e.target_caption for e in test], seed=seed)
    gs = E.edit_scores(cnn, world, gsrc, gdst, test)
    dsrc = diff.generate([e.source_caption for e in test], seed=seed)
    ddst = diff.generate([e.target_caption for e in test], seed=seed)      # the same x_T for image i
    ds = E.edit_scores(cnn, world, dsrc, ddst, test)
    held = torch.tensor([tuple(e.target) in world.heldout for e in test])

    def clean(s):
        return {k: (r3(v) if isinstance(v, float) else ({kk: {a: (r3(b) if isinstance(b, float) else b)
                                                              for a, b in vv.items()} for kk, vv in v.items()}
                                                         if isinstance(v, dict) else v)) for k, v in s.items()}
    out = {"t0_sweep_tuning_edits": sweep, "best_t0": best, "test_edits": len(test),
           "test_edits_with_heldout_target": int(held.sum()),
           "sdedit": {**clean(sd), "seconds": r3(sd_seconds)},
           "gan_caption_swap": clean(gs), "diffusion_fixed_noise_swap": clean(ds)}
    if held.any():
        sel = [e for e, h in zip(test, held) if h]
        idx = held.nonzero().squeeze(1)
        out["sdedit_heldout_targets"] = clean(E.edit_scores(cnn, world, src[idx], edited[idx], sel))
    print("editing", {k: out[k] for k in ("best_t0", "sdedit", "gan_caption_swap")}, flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--budgets", default="1,2,5", help="equal wall-clock budgets in minutes (default 1,2,5)")
    ap.add_argument("--curve-minutes", type=float, default=30.0, help="length of the diffusion curve run (min)")
    ap.add_argument("--curve-every", type=float, default=5.0, help="measure the curve every this many minutes")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="families", help="results name (bench/results/NAME.json)")
    args = ap.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    for p in parts:
        mm.checks.choice(p, "part", PARTS)
    if args.threads:
        torch.set_num_threads(args.threads)
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
              "judges_accuracy_real": {n: j.accuracy for n, j in judges.items()},
              "configs": {"vae": vars(mm.zoo.vae_config(world, prof)),
                          "diffusion": vars(mm.zoo.diffusion_config(world, prof)),
                          "gan": vars(mm.zoo.gan_config(world, prof))},
              "profile_budgets": {k: getattr(prof, k) for k in ("gan_steps", "batch_size", "vae_steps", "vae_batch",
                                                                  "diffusion_steps", "diffusion_batch",
                                                                  "diffusion_ae_steps")}}
    models = None
    if "table" in parts or any(p in parts for p in ("guidance", "steps", "editing")):
        result["table"], models = part_table(world, prof, judges, cnn, pool, args.seed)
    if "budgets" in parts:
        result["budgets"] = part_budgets(world, prof, judges, pool, [float(b) for b in args.budgets.split(",")],
                                         args.seed)
    if "curve" in parts:
        result["diffusion_curve"] = part_curve(world, prof, judges, pool, args.curve_minutes, args.curve_every,
                                               args.seed)
    if "pixel" in parts:
        seconds = result.get("table", {}).get("diffusion", {}).get("training", {}).get("train_seconds", 300.0)
        m = fresh("diffusion", world, prof, args.seed, space="pixel", channels=(32, 64, 64), attention_levels=())
        h = train_for(m, "diffusion", pool, prof, seconds=seconds, seed=args.seed)
        result["pixel_diffusion"] = {"train_seconds": r3(h["train_seconds"]), "steps": h["steps"],
                                     "ms_per_step": r3(1000 * h["total_seconds"] / h["steps"]),
                                     "ms_per_image": r3(ms_per_image(m, 64)),
                                     **quick_consistency(m, judges, world, seed=args.seed)}
        print("pixel", result["pixel_diffusion"], flush=True)
    if models is not None:
        diff = models["diffusion"][0]
        if "guidance" in parts:
            result["guidance"] = part_guidance(diff, world, judges, cnn, args.seed)
        if "steps" in parts:
            result["sampler_steps"] = part_steps(diff, world, judges, cnn, args.seed)
        if "editing" in parts:
            result["editing"] = part_editing(diff, models["gan"][0], world, cnn, args.seed)
    if "table" in parts:
        tb = result["table"]
        d, v = tb["diffusion"], tb["vae"]
        result["targets_met"] = {
            "diffusion_train_<=_300_s": d["training"]["train_seconds"] <= 300,
            "diffusion_seen_joint_>=_0.80_both_judges": d["range"]["seen"][0] >= 0.80,
            "diffusion_heldout_joint_>=_0.70_both_judges": d["range"]["heldout"][0] >= 0.70,
            "vae_train_<=_120_s": v["training"]["train_seconds"] <= 120}
        if "editing" in result:
            sd = result["editing"]["sdedit"]
            result["targets_met"].update({"edit_success_>=_0.90": sd["success"] >= 0.90,
                                          "edit_preservation_>=_0.90": sd["preservation"] >= 0.90})
    write(args.out, result, bf16=prof.bf16)


if __name__ == "__main__":
    main()
