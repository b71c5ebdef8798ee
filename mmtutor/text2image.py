"""The shape every text-to-image model of the book shares (GAN, VAE, diffusion).

``TextToImage`` is what metrics, chapters, the command line and ``zoo`` rely on, so none of
them needs to know which family it holds:

* ``generate(captions, n_per_caption=1, seed=0)`` -> (N * n, 3, S, S) float32 images in
  [-1, 1] on the CPU, grouped by caption (all samples of caption 0 first). Each image's noise
  comes from its own stream seeded by (seed, image index), so an image does not depend on the
  other captions generated with it, nor on the device or the chunk size;
* ``save(path)`` / ``load(path)`` / ``load_weights(path)``: ``state_dict`` + config +
  the caption encoder's spec, read with ``weights_only=True``;
* ``history``: the training curves, for plots; ``steps_done``.

A family implements ``_generate(text, noise, **options)`` (and its own ``fit``).
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn as nn

from . import checkpoint, checks, runtime
from .condition import CaptionEncoder, TextCondition
from .world import World

GENERATE_CHUNK: int | None = None   # images per forward pass; None: runtime.inference_batch(device)
FAMILIES: dict[str, type] = {}   # checkpoint kind -> class, filled as the family modules are imported


class NoiseStreams:
    """Independent random streams, one per generated image: image i of a call with ``seed``
    draws from a CPU generator seeded by (seed, i). Draws are moved to ``device``."""

    def __init__(self, seed: int, start: int, n: int, device: torch.device | str = "cpu", stream: int = 0):
        base = seed * 1_000_003 + stream * 7_919_000_003
        self.gens = [torch.Generator().manual_seed((base + start + i) % (2**63 - 1)) for i in range(n)]
        self.device = device

    def __len__(self) -> int:
        return len(self.gens)

    def randn(self, *shape: int) -> torch.Tensor:
        """(n, *shape) standard normal draws, one row per stream."""
        return torch.stack([torch.randn(shape, generator=g) for g in self.gens]).to(self.device)

    def choice(self, weights: list[torch.Tensor]) -> list[int]:
        """One index per stream, drawn from that stream's (unnormalised) weights."""
        return [int(torch.multinomial(w, 1, generator=g)) for w, g in zip(weights, self.gens)]


def complete_captions(world: World, captions: list[str], noise: NoiseStreams) -> list[str]:
    """Caption completion: for every attribute a caption leaves out, draw a value with the
    frequency it has among the world's scenes that fit the caption, and write the completed
    caption ("a red apple on the table" -> "a large red apple on the table"). Systems such as
    DALL-E 3 rewrite underspecified prompts into detailed ones before generating (Betker et al.
    2023); here the rewrite is a draw from the data's own distribution. One draw per image,
    from that image's own random stream."""
    names = list(world.attributes)
    out = []
    rows = [world.parse(c, strict=False) for c in captions]
    weights = []
    for attrs in rows:
        missing = [k for k in names if k not in attrs]
        if not missing:
            weights.append(None)
            continue
        combos = torch.tensor(world.splits["all"])
        ok = torch.ones(len(combos), dtype=torch.bool)
        for j, k in enumerate(names):
            if k in attrs:
                ok &= combos[:, j] == world.attributes[k].index(attrs[k])
        weights.append(ok.float())
    picks = noise.choice([w if w is not None else torch.ones(1) for w in weights])
    combos = world.splits["all"]
    for c, attrs, w, pick in zip(captions, rows, weights, picks):
        if w is None:
            out.append(c)
        else:
            out.append(world.caption(world.attrs_of(combos[pick]), seed=pick, template=0))
    return out


class TextToImage(nn.Module):
    """Base class: a captioned-world generator with the common sampling and checkpoint code.

    Every family (``ConditionalGAN``, ``ConditionalVAE``, ``DiffusionModel``) is used alike:

    >>> model = ConditionalGAN(GANConfig(), World())            # or ConditionalVAE, DiffusionModel
    >>> history = model.fit(PairPool(World()), TrainConfig(steps=2000))
    >>> images = model.generate(["a red apple on the table"], n_per_caption=8, seed=0)
    >>> model.save("gan.pt"); same = load_model("gan.pt")       # state_dict + config
    """

    kind: str = "text2image"        # the checkpoint's "kind"
    config_class: type = None       # the family's config dataclass
    config_before: dict = {}        # fields added after checkpoints were written: the value a checkpoint
                                    # that lacks one was trained with (load() fills it in)

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        FAMILIES[cls.kind] = cls

    def __init__(self, config, world: World, text: CaptionEncoder):
        super().__init__()
        if getattr(config, "image_size", world.image_size) != world.image_size:
            raise ValueError(f"{type(config).__name__}.image_size={config.image_size} but the world renders "
                             f"{world.image_size}x{world.image_size} images")
        self.config, self.world, self.text = config, world, text
        self.history: dict = {}
        self.steps_done = 0
        self.ema = None                  # a family that samples from averaged weights sets its loop.EMA here

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        if self.ema is not None:                         # the EMA's own step counter travels too
            state["ema_updates"] = torch.tensor(self.ema.n)
        return state

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        state = dict(state)
        n = state.pop("ema_updates", None)
        out = super().load_state_dict(state, strict=strict, assign=assign)
        if self.ema is not None and n is not None:
            self.ema.n = int(n)
        return out

    @property
    def device(self) -> torch.device:
        return self.text.device

    # ---------------------------------------------------------------- captions
    def check_captions(self, captions, who: str | None = None) -> list[str]:
        """A list of captions that each name an object. With a closed-vocabulary text encoder
        (the small BERT) every word must be known; MiniLM reads any English (unknown words pass)."""
        who = who or f"{type(self).__name__}"
        captions = checks.captions(captions, who)
        strict = not self.text.open_vocabulary
        for c in captions:
            self.world.parse(c, strict=strict)
        return captions

    def condition(self, captions: list[str]) -> TextCondition:
        """What the networks read: standardised caption features (``condition.CaptionEncoder``)."""
        return self.text(captions)

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, captions: list[str], n_per_caption: int = 1, seed: int = 0, complete: bool | None = None,
                 **options) -> torch.Tensor:
        """Images for captions: (len(captions) * n_per_caption, 3, S, S) in [-1, 1], grouped by
        caption, float32 on the CPU whatever device the model runs on. ``seed`` fixes the noise;
        ``complete`` (default: the model config's ``complete_captions``, else off) first
        completes what each caption leaves out, per image (``complete_captions``); ``options``
        go to the family's sampler (e.g. diffusion's guidance and steps)."""
        captions = self.check_captions(captions, f"{type(self).__name__}.generate")
        n = checks.count(n_per_caption, "n_per_caption")
        seed = checks.seed(seed)
        total = checks.image_count(len(captions) * n, self.world.image_size, "number of images (captions x n_per_caption)")
        reps = [c for c in captions for _ in range(n)]
        if complete is None:
            complete = bool(getattr(self.config, "complete_captions", False))
        if complete:
            self.text.features(captions)   # what was typed must be readable (e.g. MiniLM's 512 tokens), rewritten or not
            reps = complete_captions(self.world, reps, NoiseStreams(seed, 0, total, stream=1))
        was = self.training
        self.eval()
        out = torch.empty(total, 3, self.world.image_size, self.world.image_size)
        try:
            step = GENERATE_CHUNK or runtime.inference_batch(self.device)
            for i in range(0, total, step):
                chunk = reps[i:i + step]
                images = self._generate(self.condition(chunk), NoiseStreams(seed, i, len(chunk), self.device), **options)
                self._check_output(images)
                out[i:i + len(chunk)] = images.float().cpu()
        finally:
            self.train(was)
        return out

    def _generate(self, text: TextCondition, noise: NoiseStreams, **options) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _check_output(images: torch.Tensor) -> None:
        if not bool(torch.isfinite(images).all()):
            from .loop import TrainingDiverged
            raise TrainingDiverged("the model produced NaN/inf pixels; its weights are broken (reload a good checkpoint)")

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_config(self) -> dict:
        return {"model": asdict(self.config), "world": self.world.config(), "text": self.text.spec()}

    def save(self, path, history: dict | None = None) -> None:
        """``state_dict`` + config; the caption encoder's statistics (and an aligned text tower,
        when one is used) travel with it, the pretrained MiniLM does not (it comes from its package)."""
        checkpoint.save(path, self.kind, self.checkpoint_config(), {"model": self.state_dict()},
                        history=history if history is not None else self.history, steps_done=self.steps_done)

    def load_weights(self, path) -> None:
        """Load a checkpoint into this (identically configured) model; a different config is an
        error that names the field."""
        ckpt = checkpoint.load(path, kind=self.kind, map_location=self.device, expect_config=self.checkpoint_config())
        checkpoint.load_state(self, ckpt["state"].get("model"), str(path))
        self.steps_done = int(ckpt.get("steps_done", 0))
        self.history = ckpt.get("history", {})

    @classmethod
    def load(cls, path, device=None):
        """Rebuild a model (and its caption encoder) from a checkpoint file."""
        from . import runtime
        dev = torch.device(device) if device is not None else runtime.device()
        ckpt = checkpoint.load(path, kind=cls.kind, map_location="cpu")
        conf = ckpt["config"]
        missing = [k for k in ("model", "world", "text") if k not in conf]
        if missing:
            raise checkpoint.CheckpointError(f"{path}: its config lacks {missing} (not a {cls.kind} checkpoint of "
                                             "this version of mmtutor)")
        config = checkpoint.dataclass_from_dict(cls.config_class, {**cls.config_before, **conf["model"]}, str(path))
        try:
            world = World(**conf["world"])
            text = CaptionEncoder.from_spec(conf["text"])
        except (TypeError, ValueError, KeyError) as e:
            raise checkpoint.CheckpointError(f"{path}: its world or text-encoder config is not valid: {e}") from None
        model = cls(config, world, text=text, device="cpu")
        checkpoint.load_state(model, ckpt["state"].get("model"), str(path))
        model.steps_done = int(ckpt.get("steps_done", 0))
        model.history = ckpt.get("history", {})
        return model.to(dev).eval()


def load_model(path, device=None) -> TextToImage:
    """Load a checkpoint of any family whose module has been imported (the checkpoint's
    ``kind`` picks the class)."""
    ckpt = checkpoint.load(path, map_location="cpu", require=())
    kind = ckpt.get("kind")
    if kind not in FAMILIES:
        raise checkpoint.CheckpointError(f"{path} holds a {kind!r} checkpoint, not a text-to-image model; "
                                         f"expected one of: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[kind].load(path, device=device)


__all__ = ["TextToImage", "NoiseStreams", "GENERATE_CHUNK", "FAMILIES", "load_model", "complete_captions"]
