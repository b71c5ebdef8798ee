"""Measuring generated images: a judge, caption consistency, Frechet distance, diversity,
R-precision.

* The **judge** is an attribute classifier (one head per attribute) trained only on rendered
  *real* images of the training combinations. Because the world's ground truth is exact, it
  reads colour, object, relation and size back out of any image; its accuracy on fresh real
  renders of seen and of held-out combinations is reported so we know how far to trust it.
* **Caption consistency**: generate images for captions, let the judge read them, and count
  how often each attribute the caption names is there -- per attribute and jointly (all
  named attributes right), separately for seen and held-out combinations.
* **Frechet distance** between Gaussians fitted to judge features of real and generated
  images -- FID (Heusel et al. 2017) with the judge in place of Inception.
* **Diversity**: mean pairwise distance between judge features of images made for the same
  caption, relative to the same number for real images of that caption. A ratio far below 1
  means the generator makes the same image whatever the noise: mode collapse.
* **R-precision** (Xu et al. 2018, AttnGAN): rank 1 true caption among 100 (99 mismatched)
  by the aligned encoders' similarity to the generated image; the share ranked first.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import runtime
from .data import caption_matches
from .vision import ImageEncoder, check_images
from .world import World


class Judge(nn.Module):
    """(N, 3, S, S) -> {attribute: (N, n_values) logits}. A CNN trunk and one linear head each."""

    def __init__(self, world: World, width: int = 32, feat: int = 128):
        super().__init__()
        self.attributes = {k: list(v) for k, v in world.attributes.items()}
        self.image_size = world.image_size
        self.world_config = world.config()
        self.width, self.feat = width, feat
        self.trunk = nn.Sequential(ImageEncoder(world.image_size, dim=feat, width=width), nn.ReLU())
        self.heads = nn.ModuleDict({k: nn.Linear(feat, len(v)) for k, v in self.attributes.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.image_size, "Judge")
        return self.trunk(x)                                                 # (N, feat)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {k: head(f) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """(N, 3, S, S) -> (N, 4) predicted attribute indices, in eval mode."""
        self.eval()
        dev = next(self.parameters()).device
        out = []
        for i in range(0, len(x), batch_size):
            logits = self(x[i:i + batch_size].to(dev))
            out.append(torch.stack([logits[k].argmax(1) for k in self.attributes], 1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Judge features (N, feat), for Frechet distance and diversity."""
        self.eval()
        dev = next(self.parameters()).device
        return torch.cat([self.features(x[i:i + batch_size].to(dev)).float().cpu()
                          for i in range(0, len(x), batch_size)])

    def save(self, path, history: dict | None = None) -> None:
        runtime.save_checkpoint(path, {"width": self.width, "feat": self.feat, "world": self.world_config},
                                {"judge": self.state_dict()}, kind="judge", history=history or {})

    @classmethod
    def load(cls, path, map_location=None) -> "Judge":
        ckpt = runtime.load_checkpoint(path, map_location=map_location, kind="judge")
        c = ckpt["config"]
        judge = cls(World(**c["world"]), width=c["width"], feat=c["feat"])
        judge.load_state_dict(ckpt["state"]["judge"])
        judge.history = ckpt.get("history", {})
        return judge.eval()


def train_judge(world: World, steps: int = 600, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                device=None, bf16: bool = True, progress: bool = True,
                data: tuple[torch.Tensor, torch.Tensor] | None = None, split: str = "train") -> tuple[Judge, dict]:
    """Train a judge on fresh renders of the training combinations.

    The held-out combinations stay held out even from the judge: its accuracy on them
    (reported by ``judge_accuracy(..., split="heldout")``) shows that it reads attributes, not
    memorised scenes, which is what lets it grade a generator's held-out images. With
    ``data=(images, attrs)`` the same classifier learns from a fixed set instead -- e.g.
    generated images labelled by their captions (classification accuracy score).
    ``split="all"`` trains on every combination. Returns (judge, history)."""
    dev = torch.device(device) if device is not None else runtime.device()
    if data is not None:
        images, labels = data
        check_images(images, world.image_size, "train_judge(data=...)")
        if len(images) != len(labels) or labels.shape[1:] != (len(world.attributes),) or (labels < 0).any():
            raise ValueError("data must be (images (N, 3, S, S), attrs (N, 4)) with every attribute specified")
    torch.manual_seed(seed)
    judge = Judge(world).to(dev)
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    if split not in world.splits:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(world.splits)}")
    combos = torch.tensor(world.splits[split])
    hist = {"step": [], "loss": []}
    t0 = time.perf_counter()
    judge.train()
    for step in tqdm(range(steps), desc="judge", disable=not progress, leave=False):
        if data is None:
            attrs = combos[torch.randint(len(combos), (batch_size,), generator=gen)]
            x = world.render_index(attrs, gen, device=dev)           # rendered where the judge trains
        else:
            idx = torch.randint(len(images), (batch_size,), generator=gen)
            x, attrs = images[idx].to(dev), labels[idx]
        with runtime.autocast(dev, bf16):
            logits = judge(x)
        loss = sum(F.cross_entropy(logits[k].float(), attrs[:, j].to(dev)) for j, k in enumerate(judge.attributes))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0 or step == steps - 1:
            hist["step"].append(step)
            hist["loss"].append(loss.item())
    judge.eval()
    hist["seconds"] = time.perf_counter() - t0
    return judge, hist


def attribute_accuracy(pred: torch.Tensor, target: torch.Tensor, attributes) -> dict[str, float]:
    """(N, 4) predicted vs (N, 4) target indices (-1 = not specified, not scored) ->
    accuracy per attribute and 'joint' (every specified attribute right)."""
    names = list(attributes)
    specified = target >= 0
    right = (pred == target) | ~specified
    out = {}
    for j, k in enumerate(names):
        if specified[:, j].any():
            out[k] = (pred[specified[:, j], j] == target[specified[:, j], j]).float().mean().item()
    out["joint"] = right.all(1).float().mean().item()
    return out


def judge_accuracy(judge: Judge, world: World, n: int = 2000, split: str = "heldout", seed: int = 99) -> dict:
    """The judge's accuracy on ``n`` fresh real renders of a split."""
    images, _, attrs = world.sample(n, split=split, seed=seed)
    return attribute_accuracy(judge.predict(images), attrs, world.attributes)


def caption_attrs_tensor(world: World, captions: list[str]) -> torch.Tensor:
    """Captions -> (N, 4) attribute indices they name, -1 where a caption says nothing."""
    rows = []
    for c in captions:
        a = world.parse(c)
        rows.append([world.attributes[k].index(a[k]) if k in a else -1 for k in world.attributes])
    return torch.tensor(rows)


def caption_consistency(generator, judge: Judge, world: World, captions: list[str],
                        n_per_caption: int = 8, seed: int = 0, images: torch.Tensor | None = None) -> dict:
    """Judge-measured consistency of generated images with their captions.

    ``generator`` is anything with ``generate(captions, n_per_caption, seed)`` (a ConditionalGAN).
    Returns per-attribute and joint accuracy, and the images (caption-major)."""
    if images is None:
        images = generator.generate(captions, n_per_caption=n_per_caption, seed=seed)
    target = caption_attrs_tensor(world, captions).repeat_interleave(n_per_caption, 0)
    pred = judge.predict(images)
    out = attribute_accuracy(pred, target, world.attributes)
    out["images"] = images
    out["predicted"] = pred
    return out


def evaluation_captions(world: World, split: str, per_combo: int = 1, seed: int = 0) -> list[str]:
    """One (or ``per_combo``) fresh full caption per attribute combination of a split."""
    rng = torch.Generator().manual_seed(seed)
    caps = []
    for combo in world.splits[split]:
        for _ in range(per_combo):
            caps.append(world.caption(world.attrs_of(combo), seed=int(torch.randint(2**31, (1,), generator=rng))))
    return caps


def consistency_report(gan, judge: Judge, world: World, n_per_caption: int = 8, seed: int = 0) -> dict:
    """Consistency on every seen and every held-out combination (one fresh caption each)."""
    out = {}
    for split, name in (("train", "seen"), ("heldout", "heldout")):
        caps = evaluation_captions(world, split, seed=seed)
        r = caption_consistency(gan, judge, world, caps, n_per_caption=n_per_caption, seed=seed)
        out[name] = {k: v for k, v in r.items() if k not in ("images", "predicted")}
    return out


# ------------------------------------------------------------------------ distributions
def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to the
    rows of a and b (N, F). The trace of the matrix square root is computed from the
    eigenvalues of S_a^(1/2) S_b S_a^(1/2), which are real and non-negative."""
    a, b = a.double(), b.double()
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("Frechet distance needs at least 2 samples on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = torch.cov(a.t()), torch.cov(b.t())
    ea, va = torch.linalg.eigh(sa)
    sqrt_a = va @ torch.diag(ea.clamp(min=0).sqrt()) @ va.t()
    m = sqrt_a @ sb @ sqrt_a
    tr_sqrt = torch.linalg.eigvalsh((m + m.t()) / 2).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + sa.trace() + sb.trace() - 2 * tr_sqrt)


def mean_pairwise_distance(feats: torch.Tensor, groups: torch.Tensor) -> float:
    """Average over groups of the mean pairwise L2 distance between rows of the same group."""
    vals = []
    for g in groups.unique():
        f = feats[groups == g]
        if len(f) > 1:
            d = torch.cdist(f, f)
            vals.append(d.sum() / (len(f) * (len(f) - 1)))
    return float(torch.stack(vals).mean())


def diversity(judge: Judge, fake: torch.Tensor, real: torch.Tensor, n_per_caption: int,
              collapse_below: float = 0.5) -> dict:
    """Within-caption spread of generated vs real images (both caption-major, n_per_caption
    each). ratio = fake spread / real spread; ``collapsed`` when ratio < collapse_below."""
    groups_f = torch.arange(len(fake)) // n_per_caption
    groups_r = torch.arange(len(real)) // n_per_caption
    df = mean_pairwise_distance(judge.embed(fake), groups_f)
    dr = mean_pairwise_distance(judge.embed(real), groups_r)
    ratio = df / max(dr, 1e-8)
    return {"fake_spread": df, "real_spread": dr, "ratio": ratio, "collapsed": ratio < collapse_below}


def real_images_for(world: World, captions: list[str], n_per_caption: int, seed: int = 0) -> torch.Tensor:
    """Real renders matching each caption (unnamed attributes drawn at random), caption-major."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for c in captions:
        a = world.parse(c)
        for _ in range(n_per_caption):
            rows.append([world.attributes[k].index(a[k]) if k in a else
                         int(torch.randint(len(v), (1,), generator=gen)) for k, v in world.attributes.items()])
    return world.render_index(torch.tensor(rows), gen)


@torch.no_grad()
def r_precision(aligner, images: torch.Tensor, captions: list[str], world: World, n_mismatch: int = 99,
                seed: int = 0) -> float:
    """For each (generated image, its caption), rank the true caption among itself and
    ``n_mismatch`` captions whose attributes differ, by aligned similarity. Share ranked first."""
    if len(images) != len(captions):
        raise ValueError("r_precision needs one caption per image")
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


__all__ = ["Judge", "train_judge", "judge_accuracy", "attribute_accuracy", "caption_consistency",
           "consistency_report", "evaluation_captions", "caption_attrs_tensor", "frechet_distance",
           "diversity", "mean_pairwise_distance", "real_images_for", "r_precision"]
