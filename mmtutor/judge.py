"""Judges: attribute classifiers that read colour, object, relation and size back out of an image.

A judge is the book's measuring instrument. Because the world's ground truth is exact, a
classifier trained on real renders can grade any image against the caption it was made
for. An instrument must be calibrated, and one instrument is not enough:

* every judge's accuracy on fresh real renders (seen and held-out combinations) is reported
  beside every number it produces (``judge_accuracy``);
* the held-out combinations stay held out even from the judges, so their accuracy there
  shows that they read attributes, not memorised scenes;
* two designs that fail differently: ``"cnn"`` -- the book's CNN trunk (``vision.
  ImageEncoder``: 3x3 convolutions, a flattened 4x4 map, so it knows *where* things are) --
  and ``"resnet"`` -- residual blocks with group norm, coordinate channels and global
  average pooling, trained with *augmentation* (pixel noise, blur and blotchy low-frequency
  texture, none of which changes an attribute). A generator's texture artefacts fool the two
  differently; the book reports consistency as the range over both.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint, checks, runtime
from .loop import Loop, TrainConfig
from .vision import ImageEncoder, n_halvings
from .world import World

ARCHS = ("cnn", "resnet")
# Channels at full resolution. The residual trunk has 24 (it had 32): after 300 steps it reads
# real held-out renders about as well (joint 0.994-0.996; 32 wide, 400 steps: 0.998) in about
# half the training time (51 s instead of 98 s in a book build on a 2-core CPU).
WIDTH = {"cnn": 32, "resnet": 24}


class _Residual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.GroupNorm(8, c_out), nn.SiLU(),
                                  nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.GroupNorm(8, c_out))
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.GroupNorm(8, c_out)))

    def forward(self, x):
        return F.silu(self.body(x) + self.skip(x))


class ResidualTrunk(nn.Module):
    """(N, 3, S, S) -> (N, feat): x, y coordinate channels appended (CoordConv, Liu et al. 2018,
    so pooled features still know where things are), a stem, residual stages halving the
    resolution down to 4x4 (He et al. 2016), global average pooling, a linear layer."""

    def __init__(self, image_size: int, feat: int, width: int):
        super().__init__()
        layers = [nn.Conv2d(5, width, 3, padding=1, bias=False), nn.GroupNorm(8, width), nn.SiLU()]
        c = width
        for i in range(n_halvings(image_size)):
            c_out = min(width * 2 ** (i + 1), 4 * width)
            layers.append(_Residual(c, c_out, 2))
            c = c_out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, feat)
        s = torch.linspace(-1, 1, image_size)
        self.register_buffer("coords", torch.stack(torch.meshgrid(s, s, indexing="ij")).unsqueeze(0), persistent=False)

    def forward(self, x):
        x = torch.cat([x, self.coords.expand(len(x), -1, -1, -1).to(x.dtype)], 1)   # (N, 5, S, S)
        return self.head(self.body(x).mean((2, 3)))                               # (N, c) -> (N, feat)


class Judge(nn.Module):
    """(N, 3, S, S) -> {attribute: (N, n_values) logits}. A trunk and one linear head per attribute."""

    def __init__(self, world: World, arch: str = "cnn", width: int | None = None, feat: int = 128):
        super().__init__()
        self.arch = checks.choice(arch, "judge architecture", ARCHS)
        width = WIDTH[arch] if width is None else width
        self.attributes = {k: list(v) for k, v in world.attributes.items()}
        self.image_size = world.image_size
        self.world_config = world.config()
        self.width, self.feat = checks.count(width, "width"), checks.count(feat, "feat")
        trunk = (ImageEncoder(world.image_size, dim=feat, width=width) if arch == "cnn"
                 else ResidualTrunk(world.image_size, feat, width))
        self.trunk = nn.Sequential(trunk, nn.ReLU())
        self.heads = nn.ModuleDict({k: nn.Linear(feat, len(v)) for k, v in self.attributes.items()})
        self.history: dict = {}
        self.accuracy: dict = {}          # accuracy on fresh real renders, filled by zoo / judge_accuracy
        runtime.channels_last(self, amx_contiguous=(arch == "resnet"))   # see runtime.channels_last

    @property
    def name(self) -> str:
        return f"{self.arch} judge"

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)                                                 # (N, feat)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {k: head(f) for k, head in self.heads.items()}

    def _batches(self, x: torch.Tensor, batch_size: int | None, who: str):
        # batch_size None: runtime.inference_batch (128 images on a CPU, 512 on an accelerator)
        x = checks.images(x, self.image_size, who)
        self.eval()
        dev = self.device
        batch_size = runtime.inference_batch(dev) if batch_size is None else checks.count(batch_size, "batch_size")
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size].to(dev)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """(N, 3, S, S) -> (N, 4) predicted attribute indices, in eval mode."""
        out = []
        for chunk in self._batches(x, batch_size, f"{type(self).__name__}.predict"):
            logits = self(chunk)
            out.append(torch.stack([logits[k].argmax(1) for k in self.attributes], 1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        """(N, 3, S, S) -> {attribute: (N, n_values) softmax probabilities}."""
        out: dict[str, list] = {k: [] for k in self.attributes}
        for chunk in self._batches(x, batch_size, f"{type(self).__name__}.probabilities"):
            for k, v in self(chunk).items():
                out[k].append(v.float().softmax(1).cpu())
        return {k: torch.cat(v) for k, v in out.items()}

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Judge features (N, feat), for Frechet distance and diversity."""
        return torch.cat([self.features(c).float().cpu() for c in self._batches(x, batch_size, "Judge.embed")])

    def save(self, path, history: dict | None = None) -> None:
        config = {"arch": self.arch, "width": self.width, "feat": self.feat, "world": self.world_config}
        checkpoint.save(path, "judge", config, {"judge": self.state_dict()},
                        history=history if history is not None else self.history, accuracy=self.accuracy)

    @classmethod
    def load(cls, path, map_location=None) -> "Judge":
        ckpt = checkpoint.load(path, kind="judge", map_location=map_location)
        c = dict(ckpt["config"])
        try:
            judge = cls(World(**c.pop("world")), **c)
        except (TypeError, ValueError, KeyError) as e:
            raise checkpoint.CheckpointError(f"{path}: its config does not describe a judge: {e}") from None
        checkpoint.load_state(judge, ckpt["state"].get("judge"), str(path))
        judge.history = ckpt.get("history", {})
        judge.accuracy = ckpt.get("accuracy", {})
        return judge.to(map_location or "cpu").eval()


# ------------------------------------------------------------------------ training
def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Corruptions that change no attribute: per-image pixel noise (sigma up to 0.12), a 3x3
    blur for a third of the images, and blotchy low-frequency texture (8x8 noise upsampled,
    sigma up to 0.12) -- the kind of artefact a generator leaves. Random numbers come from
    ``gen`` on the CPU, so a seed gives the same corruptions on every device."""
    n, _, s, _ = x.shape
    dev = x.device
    sig = (0.12 * torch.rand(n, 1, 1, 1, generator=gen)).to(dev)
    x = x + sig * torch.randn(x.shape, generator=gen).to(dev)
    blur = (torch.rand(n, generator=gen) < 1 / 3).to(dev).view(n, 1, 1, 1)
    x = torch.where(blur, F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), x)
    tex = F.interpolate(torch.randn(n, 3, 8, 8, generator=gen), size=s, mode="bilinear", align_corners=False)
    x = x + (0.12 * torch.rand(n, 1, 1, 1, generator=gen) * tex).to(dev)
    return x.clamp(-1, 1)


def train_judge(world: World, steps: int = 600, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                device=None, bf16: bool = True, progress: bool = True,
                data: tuple[torch.Tensor, torch.Tensor] | None = None, split: str = "train",
                arch: str = "cnn", augmentation: bool | None = None) -> tuple[Judge, dict]:
    """Train a judge on fresh renders of the training combinations.

    The held-out combinations stay held out even from the judge: its accuracy on them
    (``judge_accuracy(..., split="heldout")``) shows that it reads attributes, not memorised
    scenes, which is what lets it grade a generator's held-out images. With
    ``data=(images, attrs)`` the same classifier learns from a fixed set instead -- e.g.
    generated images labelled by their captions (classification accuracy score).
    ``split="all"`` trains on every combination. ``augmentation`` (default: on for the
    ``resnet`` judge) corrupts training images with ``augment``. Returns (judge, history)."""
    train = TrainConfig(steps=steps, batch_size=batch_size, seed=seed, bf16=bf16, progress=progress, log_every=20)
    lr = checks.number(lr, "lr", 0, 1, low_open=True)
    checks.choice(split, "split", world.splits)
    augmentation = (arch == "resnet") if augmentation is None else bool(augmentation)
    dev = torch.device(device) if device is not None else runtime.device()
    if data is not None:
        images, labels = data
        images = checks.images(images, world.image_size, "train_judge(data=...)")
        labels = torch.as_tensor(labels)
        if len(images) != len(labels) or labels.shape[1:] != (len(world.attributes),) or (labels < 0).any():
            raise ValueError("data must be (images (N, 3, S, S), attrs (N, 4)) with every attribute specified")
    torch.manual_seed(seed)
    judge = Judge(world, arch=arch).to(dev)
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=train.steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    combos = torch.tensor(world.splits[split])
    judge.train()
    loop = Loop(f"{arch} judge", train, {"judge": judge}, hint=f"Lower the learning rate (lr={lr}).")
    for step in loop:
        if data is None:
            attrs = combos[torch.randint(len(combos), (train.batch_size,), generator=gen)]
            x = world.render_index(attrs, gen, device=dev)           # rendered where the judge trains
        else:
            idx = torch.randint(len(images), (train.batch_size,), generator=gen)
            x, attrs = images[idx].to(dev), labels[idx]
        if augmentation:
            x = augment(x, gen)
        with runtime.autocast(dev, train.bf16):
            logits = judge(x)
        loss = sum(F.cross_entropy(logits[k].float(), attrs[:, j].to(dev)) for j, k in enumerate(judge.attributes))
        loop.check(loss=loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loop.log(step, loss=loss)
    judge.eval()
    judge.history = loop.finish()
    judge.history["seconds"] = judge.history["total_seconds"]
    return judge, judge.history


# ------------------------------------------------------------------------ calibration
def attribute_accuracy(pred: torch.Tensor, target: torch.Tensor, attributes) -> dict[str, float]:
    """(N, 4) predicted vs (N, 4) target indices (-1 = not specified, not scored) ->
    accuracy per attribute and 'joint' (every specified attribute right)."""
    if len(pred) == 0 or pred.shape != target.shape:
        raise ValueError(f"need equally shaped, non-empty (N, 4) predictions and targets, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    names = list(attributes)
    specified = target >= 0
    out = {}
    for j, k in enumerate(names):
        if specified[:, j].any():
            out[k] = (pred[specified[:, j], j] == target[specified[:, j], j]).float().mean().item()
    out["joint"] = all_named_right(pred, target).float().mean().item()
    return out


def all_named_right(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, 4), (N, 4) -> (N,) bool: is every attribute the target names (>= 0) predicted right?"""
    return ((pred == target) | (target < 0)).all(1)


def judge_accuracy(judge: Judge, world: World, n: int = 2000, split: str = "heldout", seed: int = 99) -> dict:
    """The judge's accuracy on ``n`` fresh real renders of a split."""
    images, _, attrs = world.sample(n, split=split, seed=seed)
    return attribute_accuracy(judge.predict(images), attrs, world.attributes)


__all__ = ["Judge", "ResidualTrunk", "train_judge", "augment", "judge_accuracy", "attribute_accuracy",
           "all_named_right", "ARCHS"]
