"""Measuring generated images: caption consistency, coverage, Frechet distance, diversity,
R-precision. Nothing here knows which family (GAN, VAE, diffusion) made the images: a model
is anything with ``generate(captions, n_per_caption, seed)``.

* **Caption consistency**: generate images for captions, let a judge (``judge.py``) read them,
  and count how often each attribute the caption names is there -- per attribute and jointly
  (all named attributes right), separately for seen and held-out combinations. With several
  judges the book reports the range over judges, never just the best-looking number.
* **Coverage** of what a caption leaves out: "a red apple on the table" names no size, so a
  faithful model draws small and large apples about as often as real scenes show them. Joint
  consistency cannot see a model that always draws small ones; coverage can. For every
  caption and every attribute it leaves out, the total-variation distance between the
  distribution the judge reads and the real one (0 = same, 1 = disjoint).
* **Frechet distance** between Gaussians fitted to judge features of real and generated
  images -- FID (Heusel et al. 2017) with the judge in place of Inception.
* **Diversity**: mean pairwise distance between judge features of images made for the same
  caption, relative to the same number for real images of that caption. It sees a model
  that ignores its noise (ratio far below 1: mode collapse). It does *not* see *which* way
  images vary: a model may vary position and shade as much as real scenes do and still
  never vary an attribute the caption leaves open -- that is what coverage measures -- and a
  ratio above 1 means more spread than real scenes, which artefacts (texture, blotches) also
  produce.
* **R-precision** (Xu et al. 2018, AttnGAN): rank the true caption among 100 (99 mismatched)
  by the aligned encoders' similarity to the generated image; the share ranked first.
"""

from __future__ import annotations

import math

import torch

from . import checks, grammar
from .data import caption_matches
from .judge import Judge, all_named_right, attribute_accuracy, judge_accuracy, train_judge  # noqa: F401 (re-exported)
from .world import World


# ------------------------------------------------------------------------ captions
def caption_attrs_tensor(world: World, captions: list[str], strict: bool = True) -> torch.Tensor:
    """Captions -> (N, 4) attribute indices they name, -1 where a caption says nothing.
    ``strict=False`` skips words outside the grammar (captions a reader typed)."""
    captions = checks.captions(captions, "caption_attrs_tensor")
    return torch.tensor([world.index_of(world.parse(c, strict=strict)) for c in captions])


def evaluation_captions(world: World, split: str, per_combo: int = 1, seed: int = 0,
                        phrasing: str = "template") -> list[str]:
    """One (or ``per_combo``) fresh full caption per attribute combination of a split.
    ``phrasing="free"`` writes them outside the training grammar (grammar.FREE_TEMPLATES, the
    set the training bank's extra patterns were written against); ``"fresh"`` with
    grammar.FRESH_TEMPLATES, never used to choose anything; ``"third"`` with grammar.THIRD_TEMPLATES,
    written after the fresh ones had been examined pattern by pattern."""
    checks.choice(split, "split", world.splits)
    checks.choice(phrasing, "phrasing", ("template",) + tuple(grammar.PHRASINGS))
    per_combo = checks.count(per_combo, "per_combo")
    rng = torch.Generator().manual_seed(checks.seed(seed))
    if phrasing == "template":
        write = world.caption
    else:
        def write(attrs, seed):
            return world.free_caption(attrs, seed=seed, phrasing=phrasing)
    return [write(world.attrs_of(combo), seed=int(torch.randint(2**31, (1,), generator=rng)))
            for combo in world.splits[split] for _ in range(per_combo)]


def sizeless_captions(world: World, split: str = "train", seed: int = 0) -> list[str]:
    """One caption per (colour, object, relation) of a split that leaves the size out
    ("a red apple on the table"), for measuring size coverage."""
    rng = torch.Generator().manual_seed(checks.seed(seed))
    seen = []
    for c in world.splits[split]:
        a = world.attrs_of(c)
        a.pop("size")
        if a not in seen:
            seen.append(a)
    return [world.caption(a, seed=int(torch.randint(2**31, (1,), generator=rng))) for a in seen]


# ------------------------------------------------------------------------ consistency
def caption_consistency(generator, judge: Judge, world: World, captions: list[str],
                        n_per_caption: int = 8, seed: int = 0, images: torch.Tensor | None = None,
                        strict: bool = False) -> dict:
    """Judge-measured consistency of generated images with their captions.

    ``generator`` is any text-to-image model (``generate(captions, n_per_caption, seed)``);
    pass ``images`` (caption-major) to score images made elsewhere. Returns per-attribute and
    joint accuracy, ``coverage`` (see ``coverage``), the images and the judge's readings."""
    captions = checks.captions(captions, "caption_consistency")
    n_per_caption = checks.count(n_per_caption, "n_per_caption")
    target = caption_attrs_tensor(world, captions, strict=strict).repeat_interleave(n_per_caption, 0)
    if images is None:
        images = generator.generate(captions, n_per_caption=n_per_caption, seed=seed)
    elif len(images) != len(target):
        raise ValueError(f"expected {len(captions)} x {n_per_caption} = {len(target)} images, got {len(images)}")
    pred = judge.predict(images)
    out = attribute_accuracy(pred, target, world.attributes)
    cov = coverage(pred, target, world, n_per_caption)
    if cov["pairs"]:
        out["coverage_tv"] = cov["tv"]
    out["images"] = images
    out["predicted"] = pred
    out["target"] = target
    return out


def consistency_by_judge(generator, judges: dict[str, Judge] | list[Judge], world: World, captions: list[str],
                         n_per_caption: int = 8, seed: int = 0, images: torch.Tensor | None = None,
                         strict: bool = False) -> dict:
    """The same images read by several judges: {judge name: scores}, plus "range" (min, max of
    the joint consistency over judges) and "agreement" (share of images on which all judges
    read the same four attributes)."""
    judges = _named(judges)
    if images is None:
        images = generator.generate(checks.captions(captions, "consistency_by_judge"),
                                    n_per_caption=n_per_caption, seed=seed)
    out, preds = {}, []
    for name, j in judges.items():
        r = caption_consistency(None, j, world, captions, n_per_caption, seed, images=images, strict=strict)
        preds.append(r["predicted"])
        out[name] = {k: v for k, v in r.items() if k not in ("images", "predicted", "target")}
    joints = [v["joint"] for v in out.values()]
    out["range"] = (min(joints), max(joints))
    out["agreement"] = agreement(preds)
    return out


def agreement(predictions: list[torch.Tensor]) -> float:
    """Share of images on which every judge reads all four attributes the same."""
    if len(predictions) < 2:
        return 1.0
    same = torch.stack([(p == predictions[0]).all(1) for p in predictions[1:]]).all(0)
    return same.float().mean().item()


def _named(judges) -> dict[str, Judge]:
    if isinstance(judges, Judge):
        return {judges.name: judges}
    if isinstance(judges, dict):
        return judges
    return {j.name: j for j in judges}


def consistency_report(model, judges, world: World, n_per_caption: int = 8, seed: int = 0,
                       phrasing: str = "template") -> dict:
    """Consistency on every seen and every held-out combination (one fresh caption each), read
    by each judge, plus size coverage on captions that leave the size out.

    Returns {"seen": {judge: scores, "range": (lo, hi), "agreement": a}, "heldout": {...},
    "size_coverage": {...}}."""
    out = {}
    for split, name in (("train", "seen"), ("heldout", "heldout")):
        caps = evaluation_captions(world, split, seed=seed, phrasing=phrasing)
        out[name] = consistency_by_judge(model, judges, world, caps, n_per_caption=n_per_caption, seed=seed)
    out["size_coverage"] = size_coverage(model, next(iter(_named(judges).values())), world,
                                         n_per_caption=max(n_per_caption, 16), seed=seed)
    return out


# ------------------------------------------------------------------------ coverage
def reference_shares(world: World, target_row: torch.Tensor, attribute: int, split: str = "all") -> torch.Tensor:
    """The real distribution of one attribute among the world's scenes that satisfy the named
    attributes of ``target_row`` (every combination is rendered equally often)."""
    combos = torch.tensor(world.splits[split])
    ok = caption_matches(target_row.view(1, -1), combos).squeeze(0)
    n_values = len(list(world.attributes.values())[attribute])
    return torch.bincount(combos[ok, attribute], minlength=n_values).float() / max(int(ok.sum()), 1)


def coverage(pred: torch.Tensor, target: torch.Tensor, world: World, n_per_caption: int) -> dict:
    """For each caption (a group of ``n_per_caption`` caption-major images) and each attribute it
    leaves out, the total-variation distance between the values the judge reads and the real
    distribution: TV = 1/2 sum_v |p_read(v) - p_real(v)|. Returns the mean ("tv"), the number of
    (caption, attribute) pairs, and the per-pair list (caption index, attribute, TV, shares)."""
    names = list(world.attributes)
    groups = pred.view(-1, n_per_caption, pred.shape[1])
    targets = target.view(-1, n_per_caption, target.shape[1])[:, 0]
    rows = []
    for i, (p, t) in enumerate(zip(groups, targets)):
        for j in (t < 0).nonzero().flatten().tolist():
            real = reference_shares(world, t, j)
            read = torch.bincount(p[:, j], minlength=len(real)).float() / len(p)
            rows.append({"caption": i, "attribute": names[j], "tv": 0.5 * (read - real).abs().sum().item(),
                         "read": read.tolist(), "real": real.tolist()})
    tv = sum(r["tv"] for r in rows) / len(rows) if rows else float("nan")
    return {"tv": tv, "pairs": len(rows), "rows": rows}


def tv_by_chance(n: int, p: float = 0.5) -> float:
    """The total-variation distance that a generator drawing a two-valued attribute with exactly
    the real share ``p`` still reads, on average, from ``n`` images of one caption -- by chance
    alone: E|X/n - p| with X ~ Binomial(n, p) (for two values TV = |p_read - p_real|). The floor
    a size-coverage distance is read against (0.098 for 16 images, 0.070 for 32)."""
    n = checks.count(n, "n (images per caption)")
    checks.number(p, "p", 0.0, 1.0)
    return sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k) * abs(k / n - p) for k in range(n + 1))


def size_coverage(model, judge: Judge, world: World, n_per_caption: int = 32, seed: int = 0,
                  split: str = "train", complete: bool | None = None) -> dict:
    """How often each size appears for captions that leave the size out (one per colour, object
    and relation of the split). Real renders show each size half the time. ``complete`` goes to
    ``model.generate`` (None: the model's own setting, e.g. the book's GAN completes captions
    first; False: the model alone). Returns the mean TV distance, the share of large objects per
    object type, and the worst caption."""
    caps = sizeless_captions(world, split, seed=seed)
    images = model.generate(caps, n_per_caption=n_per_caption, seed=seed,
                            **({} if complete is None else {"complete": complete}))
    pred = judge.predict(images)
    target = caption_attrs_tensor(world, caps).repeat_interleave(n_per_caption, 0)
    cov = coverage(pred, target, world, n_per_caption)
    size = list(world.attributes).index("size")
    large = (pred[:, size] == world.attributes["size"].index("large")).float().view(len(caps), n_per_caption).mean(1)
    obj = target.view(len(caps), n_per_caption, -1)[:, 0, list(world.attributes).index("object")]
    per_object = {o: large[obj == k].mean().item() for k, o in enumerate(world.attributes["object"]) if (obj == k).any()}
    worst = int(large.sub(0.5).abs().argmax())
    return {"tv": cov["tv"], "large_share": large.mean().item(), "large_share_by_object": per_object,
            "large_share_range": (large.min().item(), large.max().item()),
            "worst_caption": caps[worst], "worst_large_share": large[worst].item(),
            "captions": len(caps), "n_per_caption": n_per_caption}


# ------------------------------------------------------------------------ distributions
def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to the
    rows of a and b (N, F). The trace of the matrix square root is computed from the
    eigenvalues of S_a^(1/2) S_b S_a^(1/2), which are real and non-negative."""
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            raise ValueError(f"frechet_distance expects (N, F) feature matrices; {name} is "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"frechet_distance: features {name} contain NaN or inf values (were the images finite?)")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: feature sizes differ ({a.shape[1]} vs {b.shape[1]})")
    a, b = a.double(), b.double()
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("Frechet distance needs at least 2 samples on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = torch.cov(a.t()).reshape(a.shape[1], a.shape[1]), torch.cov(b.t()).reshape(b.shape[1], b.shape[1])
    ea, va = torch.linalg.eigh(sa)
    sqrt_a = va @ torch.diag(ea.clamp(min=0).sqrt()) @ va.t()
    m = sqrt_a @ sb @ sqrt_a
    tr_sqrt = torch.linalg.eigvalsh((m + m.t()) / 2).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + sa.trace() + sb.trace() - 2 * tr_sqrt)


def frechet_report(model, judge: Judge, world: World, captions: list[str], n_per_caption: int = 8,
                   seed: int = 0, images: torch.Tensor | None = None) -> dict:
    """Frechet distance in judge features between generated images and real renders of the same
    captions, next to its floor: the distance between two independent sets of real renders."""
    captions = checks.captions(captions, "frechet_report")
    fake = images if images is not None else model.generate(captions, n_per_caption=n_per_caption, seed=seed)
    real = real_images_for(world, captions, n_per_caption, seed=seed)
    real2 = real_images_for(world, captions, n_per_caption, seed=seed + 1)
    real_f = judge.embed(real)
    return {"fd": frechet_distance(real_f, judge.embed(fake)),
            "fd_real_vs_real": frechet_distance(real_f, judge.embed(real2)),
            "images": len(fake)}


def mean_pairwise_distance(feats: torch.Tensor, groups: torch.Tensor) -> float:
    """Average over groups of the mean pairwise L2 distance between rows of the same group."""
    vals = []
    for g in groups.unique():
        f = feats[groups == g]
        if len(f) > 1:
            d = torch.cdist(f, f)
            vals.append(d.sum() / (len(f) * (len(f) - 1)))
    if not vals:
        raise ValueError("mean_pairwise_distance needs at least one group with two or more rows")
    return float(torch.stack(vals).mean())


def diversity(judge: Judge, fake: torch.Tensor, real: torch.Tensor, n_per_caption: int,
              collapse_below: float = 0.5) -> dict:
    """Within-caption spread of generated vs real images (both caption-major, n_per_caption
    each). ratio = fake spread / real spread; ``collapsed`` when ratio < collapse_below.
    (What it cannot see: see the module docstring, and use ``coverage`` beside it.)"""
    n_per_caption = checks.count(n_per_caption, "n_per_caption", minimum=2)
    for name, x in (("fake", fake), ("real", real)):
        if len(x) % n_per_caption:
            raise ValueError(f"diversity: {len(x)} {name} images do not split into groups of {n_per_caption}")
    groups_f = torch.arange(len(fake)) // n_per_caption
    groups_r = torch.arange(len(real)) // n_per_caption
    df = mean_pairwise_distance(judge.embed(fake), groups_f)
    dr = mean_pairwise_distance(judge.embed(real), groups_r)
    ratio = df / max(dr, 1e-8)
    return {"fake_spread": df, "real_spread": dr, "ratio": ratio, "collapsed": ratio < collapse_below}


def real_images_for(world: World, captions: list[str], n_per_caption: int, seed: int = 0,
                    strict: bool = False) -> torch.Tensor:
    """Real renders matching each caption (unnamed attributes drawn at random), caption-major."""
    captions = checks.captions(captions, "real_images_for")
    n_per_caption = checks.count(n_per_caption, "n_per_caption")
    checks.image_count(len(captions) * n_per_caption, world.image_size)
    gen = torch.Generator().manual_seed(checks.seed(seed))
    rows = []
    for c in captions:
        a = world.parse(c, strict=strict)
        for _ in range(n_per_caption):
            rows.append([world.attributes[k].index(a[k]) if k in a else
                         int(torch.randint(len(v), (1,), generator=gen)) for k, v in world.attributes.items()])
    return world.render_index(torch.tensor(rows), gen)


@torch.no_grad()
def r_precision(aligner, images: torch.Tensor, captions: list[str], world: World, n_mismatch: int = 99,
                seed: int = 0) -> float:
    """For each (generated image, its caption), rank the true caption among itself and
    ``n_mismatch`` captions whose attributes differ, by aligned similarity. Share ranked first."""
    captions = checks.captions(captions, "r_precision")
    if len(images) != len(captions):
        raise ValueError(f"r_precision needs one caption per image, got {len(images)} images and {len(captions)} captions")
    gen = torch.Generator().manual_seed(seed)
    pool_caps = evaluation_captions(world, "all", per_combo=2, seed=seed)
    pool_attrs = caption_attrs_tensor(world, pool_caps)
    true_attrs = caption_attrs_tensor(world, captions)
    text_pool = aligner.encode(captions=pool_caps)
    text_true = aligner.encode(captions=list(captions))
    img = aligner.encode(images=images)
    hits = 0
    for i in range(len(images)):
        # mismatched: the caption names at least one attribute differently
        ok = ~caption_matches(true_attrs[i:i + 1], pool_attrs).squeeze(0) & \
             ~caption_matches(pool_attrs, true_attrs[i:i + 1]).squeeze(1)
        cand = ok.nonzero().squeeze(1)
        pick = cand[torch.randperm(len(cand), generator=gen)[:n_mismatch]]
        sims = torch.cat([text_true[i:i + 1], text_pool[pick]]) @ img[i]
        hits += int(sims.argmax() == 0)
    return hits / len(images)


__all__ = ["caption_consistency", "consistency_by_judge", "consistency_report", "agreement", "coverage",
           "size_coverage", "reference_shares", "evaluation_captions", "sizeless_captions", "caption_attrs_tensor",
           "frechet_distance", "frechet_report", "diversity", "mean_pairwise_distance", "real_images_for",
           "r_precision", "Judge", "train_judge", "judge_accuracy", "attribute_accuracy", "all_named_right"]
