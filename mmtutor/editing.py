"""Editing an image by a caption, and measuring the edit.

Two ways to change "a red apple on the table" into "a green apple on the table":

* **SDEdit** (Meng et al. 2022) with the diffusion model: noise the image part of the way,
  to time t0 -- x_t0 = sqrt(abar_t0) x_0 + sqrt(1 - abar_t0) eps -- and run the reverse process
  from there under the *new* caption. Small t0 keeps the image and may ignore the caption;
  t0 = T throws the image away and draws a new one. It works on any image, real ones
  included (``sdedit``).
* **Caption swap** with the GAN: keep the noise z, change the caption, G(z, t_new). It edits
  only the GAN's own images (a real image would first have to be inverted to a z)
  (``caption_swap``). The diffusion model has the same trick: keep x_T, change the caption
  (``generate`` with the same seed and position gives the same x_T).

An edit is measured by the judge (``edit_scores``): **success** -- the attribute the
instruction changes now reads as the new value; **preservation** -- every other attribute
reads as it did in the source image; and the mean pixel change *outside the object* (the
object's pixels in the source and in the edit, found by its colour: ``object_mask``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import checks
from .render import PALETTE
from .text2image import NoiseStreams
from .world import World

EDIT_KINDS = ("color", "object", "relation")


@dataclass
class Edit:
    """One instruction: change ``kind`` of the scene ``source`` (attribute indices) to get ``target``."""

    kind: str
    source: tuple         # (color, object, relation, size) indices
    target: tuple
    source_caption: str
    target_caption: str


def make_edits(world: World, n: int, seed: int = 0, kinds=EDIT_KINDS, split: str = "all") -> list[Edit]:
    """``n`` edits, kinds in turn: a source scene from ``split`` with one attribute changed to
    another value (uniformly among the others). Captions name all four attributes."""
    n = checks.count(n, "n", maximum=100_000)
    kinds = tuple(kinds)
    for k in kinds:
        checks.choice(k, "edit kind", EDIT_KINDS)
    checks.choice(split, "split", world.splits)
    rng = random.Random(checks.seed(seed))
    names = list(world.attributes)
    edits = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        j = names.index(kind)
        src = rng.choice(world.splits[split])
        tgt = list(src)
        tgt[j] = rng.choice([v for v in range(len(world.attributes[kind])) if v != src[j]])
        tgt = tuple(tgt)
        edits.append(Edit(kind, tuple(src), tgt, world.caption(world.attrs_of(src), seed=rng.randrange(2**31)),
                          world.caption(world.attrs_of(tgt), seed=rng.randrange(2**31))))
    return edits


# ======================================================================================
@torch.no_grad()
def sdedit(model, images: torch.Tensor, captions: list[str], t0: float, seed: int = 0, steps: int | None = None,
           **options) -> torch.Tensor:
    """SDEdit: noise ``images`` to time ``t0`` (0 <= t0 <= T) and denoise them under ``captions``.

    ``steps``: network evaluations (per guidance branch) for the walk from t0 to 0; default
    the model's ``sample_steps`` scaled by t0 / T (at least 1). ``options``: guidance (``w`` or
    ``guidance_scale``), ``sampler``, ``eta``, as for ``generate``. Image i draws its noise from
    its own stream (seed, i). Returns edited images (N, 3, S, S) in [-1, 1] on the CPU."""
    images = checks.images(images, model.config.image_size, "sdedit")
    captions = model.check_captions(captions, "sdedit")
    if len(images) != len(captions):
        raise ValueError(f"sdedit got {len(images)} images but {len(captions)} captions; pass one caption per image")
    T = model.T
    t0 = checks.number(t0, f"t0 (the SDEdit start time, in steps of the {T}-step process)", 0, T)
    t0 = int(round(t0))
    seed = checks.seed(seed)
    o = model.sampling_options(steps=steps if steps is not None else max(1, math.ceil(model.config.sample_steps * t0 / T))
                               if t0 > 0 else 1, **options)
    if t0 == 0:
        return images.clone()
    was = model.training
    model.eval()
    out = torch.empty_like(images)
    try:
        for i in range(0, len(images), 512):
            part = images[i:i + 512]
            noise = NoiseStreams(seed, i, len(part), model.device)
            x_t = model.noise_to(part, t0, noise)
            x0 = model.denoise(x_t, model.condition(captions[i:i + 512]), noise, t0, o["w"], o["steps"],
                               o["sampler"], o["eta"])
            out[i:i + len(part)] = model.from_space(x0).float().cpu()
    finally:
        model.train(was)
    return out


@torch.no_grad()
def caption_swap(gan, source_captions: list[str], target_captions: list[str], seed: int = 0):
    """The GAN's edit: the same noise z under two captions. Returns (source images, edited images),
    image i from z_i = the noise ``generate(..., seed)`` gives image i. The captions are used as
    given (no caption completion: an edit names what it keeps and what it changes)."""
    source_captions = gan.check_captions(source_captions, "caption_swap")
    target_captions = gan.check_captions(target_captions, "caption_swap")
    if len(source_captions) != len(target_captions):
        raise ValueError(f"caption_swap needs one target caption per source caption, got {len(source_captions)} "
                         f"and {len(target_captions)}")
    z = gan.noise(len(source_captions), seed)
    return gan.generate_from(source_captions, z), gan.generate_from(target_captions, z)


# ======================================================================================
def object_mask(images: torch.Tensor, colors: list[str] | torch.Tensor, tolerance: float = 0.15,
                dilate: int = 1) -> torch.Tensor:
    """Where the object is, found by its colour: (N, 3, S, S) images and each image's object
    colour (names or PALETTE indices) -> (N, 1, S, S) bool. A pixel is the object's when it is
    within ``tolerance`` (RGB distance, [0, 1] units) of the colour at some brightness the
    renderer uses for objects (0.75 to 1.45 times the palette colour), then grown by
    ``dilate`` pixels to cover the anti-aliased rim. Works on generated images too (the renderer's
    exact masks exist only for real ones: ``render_masks``)."""
    images = checks.images(images, None, "object_mask", check_values=False)
    names = list(PALETTE)
    idx = torch.as_tensor([names.index(checks.choice(c, "color", names)) if isinstance(c, str) else int(c)
                           for c in colors])
    if len(idx) != len(images):
        raise ValueError(f"object_mask needs one colour per image, got {len(idx)} for {len(images)} images")
    rgb = torch.tensor(list(PALETTE.values()))[idx].view(-1, 3, 1, 1)        # (N, 3, 1, 1)
    p = (images.float().clamp(-1, 1) + 1) / 2                                  # (N, 3, S, S) in [0, 1]
    f = ((p * rgb).sum(1, keepdim=True) / (rgb * rgb).sum(1, keepdim=True)).clamp(0.75, 1.45)
    dist = (p - (f * rgb).clamp(0, 1)).pow(2).sum(1, keepdim=True).sqrt()      # (N, 1, S, S)
    mask = (dist < tolerance).float()
    if dilate > 0:
        mask = F.max_pool2d(mask, 2 * dilate + 1, stride=1, padding=dilate)
    return mask > 0


def edit_scores(judge, world: World, sources: torch.Tensor, edited: torch.Tensor, edits: list[Edit]) -> dict:
    """Judge-measured quality of ``edited`` images made from ``sources`` by ``edits``.

    success: the changed attribute reads as its target value. preservation: every *other*
    attribute reads as it does in the source image (the judge's reading of the source, so a
    generated source is held to what it shows, not to its caption). both: success and
    preservation at once. pixel_change_outside: mean |edited - source| ([-1, 1] units) over
    pixels outside the object of either image (``object_mask``), for colour and object edits
    (a relation edit moves the table by design). Also each per edit kind."""
    if len(sources) != len(edited) or len(edited) != len(edits):
        raise ValueError(f"edit_scores needs as many sources, edited images and edits, got {len(sources)}, "
                         f"{len(edited)} and {len(edits)}")
    names = list(world.attributes)
    before, after = judge.predict(sources), judge.predict(edited)                  # (N, 4) each
    changed = torch.tensor([names.index(e.kind) for e in edits])
    target = torch.tensor([e.target for e in edits])
    rows = torch.arange(len(edits))
    success = after[rows, changed] == target[rows, changed]
    others = torch.ones_like(after, dtype=torch.bool)
    others[rows, changed] = False
    kept = ((after == before) | ~others).all(1)
    ci = names.index("color")
    masks = object_mask(sources, [e.source[ci] for e in edits]) | object_mask(edited, [e.target[ci] for e in edits])
    outside = (~masks).float()                                                     # (N, 1, S, S)
    change = ((edited - sources).abs().mean(1, keepdim=True) * outside).flatten(1).sum(1) / outside.flatten(1).sum(
        1).clamp(min=1)
    pixel_kinds = torch.tensor([e.kind in ("color", "object") for e in edits])

    def summary(sel: torch.Tensor) -> dict:
        out = {"n": int(sel.sum()), "success": success[sel].float().mean().item(),
               "preservation": kept[sel].float().mean().item(),
               "both": (success & kept)[sel].float().mean().item()}
        px = sel & pixel_kinds
        if px.any():
            out["pixel_change_outside"] = change[px].mean().item()
        return out

    out = summary(torch.ones(len(edits), dtype=torch.bool))
    out["by_kind"] = {k: summary(torch.tensor([e.kind == k for e in edits])) for k in EDIT_KINDS
                      if any(e.kind == k for e in edits)}
    return out


def real_sources(world: World, edits: list[Edit], seed: int = 0, masks: bool = False):
    """Real renders of the edits' source scenes (N, 3, S, S); with ``masks``, also the renderer's
    exact object masks (N, 1, S, S) bool (``render_masks``)."""
    index = torch.tensor([e.source for e in edits])
    return render_masks(world, index, seed) if masks else world.render_index(index, _gen(seed))


def render_masks(world: World, index: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Render scenes (N, 4 attribute indices) and find their objects exactly: the same scenes
    (same seed, so the same random layout) rendered again with every object in another colour
    differ exactly where an object covers a pixel. Returns (images, masks (N, 1, S, S) bool)."""
    index = torch.as_tensor(index, dtype=torch.long)
    images = world.render_index(index, _gen(seed))
    rgb = torch.tensor(list(PALETTE.values()))
    far = torch.cdist(rgb, rgb).argmax(1)                     # for each colour, the palette colour farthest from it
    other = index.clone()
    other[:, 0] = far[index[:, 0]]
    recoloured = world.render_index(other, _gen(seed))
    return images, (images - recoloured).abs().amax(1, keepdim=True) > 0.02


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(checks.seed(seed))


__all__ = ["Edit", "EDIT_KINDS", "make_edits", "sdedit", "caption_swap", "object_mask", "edit_scores",
           "real_sources", "render_masks"]
