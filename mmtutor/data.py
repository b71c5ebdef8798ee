"""Paired training data: a pool of rendered images and a bank of captions per scene.

Step 1 of the article's algorithm, "multimodal data preparation". A ``PairPool`` renders
``n_images`` scenes of one split of the world once (uint8, cheap to keep), and writes a
bank of captions for every attribute combination of that split (several templates and
synonyms, some leaving the size out). A training batch pairs each image with a random
caption of *its* combination, so images and captions vary independently and a frozen text
encoder only has to encode the bank once.

The held-out split never enters a pool built for training (``split="train"``): that is
what makes compositional generalisation measurable.
"""

from __future__ import annotations

import random

import torch

from . import checks, grammar
from .world import World


class PairPool:
    """Rendered images + caption bank for one split.

    Attributes: ``images`` (N, 3, H, W) uint8; ``attrs`` (N, 4) long; ``captions`` (M,) list
    of str; ``caption_attrs`` (M, 4) long with -1 where the caption leaves an attribute out.

    The bank's wording: a share ``augment`` of its captions is written with the extra
    templates (``grammar.AUGMENT_TEMPLATES``) instead of the grammar's own, and a share
    ``noise`` (independently) has some filler words dropped and 1-3 ``grammar.NEUTRAL_WORDS``
    scattered in. Neither adds a word of the free phrasings the book tests on (a test checks).
    """

    def __init__(self, world: World, split: str = "train", n_images: int = 8192,
                 captions_per_combo: int = 12, omit_size: float = 0.2, seed: int = 0, augment: float = 0.0,
                 noise: float = 0.0):
        checks.choice(split, "split", world.splits)
        n_images = checks.image_count(n_images, world.image_size, "n_images")
        captions_per_combo = checks.count(captions_per_combo, "captions_per_combo", maximum=1000)
        omit_size = checks.fraction(omit_size, "omit_size")
        self.augment = checks.fraction(augment, "augment")
        self.noise = checks.fraction(noise, "noise")
        self.world, self.split = world, split
        images, _, attrs = world.sample(n_images, split=split, seed=seed)
        self.images = ((images + 1) * 127.5).round().to(torch.uint8)       # (N, 3, H, W) uint8
        self.attrs = attrs                                                 # (N, 4)
        rng = random.Random(seed)
        captions, caption_attrs = [], []
        combos = world.splits[split]
        for combo in combos:
            for _ in range(captions_per_combo):
                a = world.attrs_of(combo)
                row = list(combo)
                if rng.random() < omit_size:
                    a.pop("size")
                    row[3] = -1
                s = rng.randrange(2**31)
                extra = bool(self.augment) and rng.random() < self.augment   # an extra phrasing (AUGMENT_TEMPLATES)
                noisy = bool(self.noise) and rng.random() < self.noise      # neutral words scattered in
                captions.append(grammar.describe(a, seed=s, templates=grammar.AUGMENT_TEMPLATES if extra else None,
                                                 noise=noisy))
                caption_attrs.append(row)
        self.captions = captions
        self.caption_attrs = torch.tensor(caption_attrs)
        # combination index of every image, and the caption ids of every combination
        combo_id = {c: i for i, c in enumerate(combos)}
        self.image_combo = torch.tensor([combo_id[tuple(a)] for a in attrs.tolist()])
        self.combo_captions = torch.arange(len(captions)).view(len(combos), captions_per_combo)  # caption ids
        # images sorted by combination (for drawing a second image that a caption describes)
        self._by_combo = torch.argsort(self.image_combo, stable=True)
        counts = torch.bincount(self.image_combo, minlength=len(combos))
        self._combo_count, self._combo_start = counts, torch.cumsum(counts, 0) - counts
        # every caption's combinations: its own, and -- when it leaves the size out -- the other size's
        # (if that one is in the split and the pool has images of it); (M, 2), repeated when there is one
        size = list(world.attributes).index("size")
        own = torch.arange(len(combos)).repeat_interleave(captions_per_combo)
        other = own.clone()
        for m in (self.caption_attrs[:, size] < 0).nonzero().flatten().tolist():
            c = list(combos[int(own[m])])
            c[size] = 1 - c[size]
            j = combo_id.get(tuple(c))
            if j is not None and counts[j] > 0:
                other[m] = j
        self._caption_combos = torch.stack([own, other], 1)

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (f"PairPool(split={self.split!r}, {len(self)} images, {len(self.captions)} captions "
                f"for {len(self.combo_captions)} combinations)")

    def attribute_shares(self) -> dict[str, list[float]]:
        """How often each value of each attribute occurs among the pool's images (for coverage)."""
        return {k: torch.bincount(self.attrs[:, j], minlength=len(v)).div(len(self)).tolist()
                for j, (k, v) in enumerate(self.world.attributes.items())}

    def pair_distance(self, n_pairs: int = 2048, seed: int = 0, free: tuple[str, ...] = ()) -> float:
        """Mean absolute pixel difference (in [-1, 1] units) between two real images that one
        caption describes: images of the same attribute combination, or -- with ``free``, e.g.
        ("size",) -- images that agree on every attribute except those (what a caption that
        leaves the size out allows). How much real scenes of one caption vary."""
        gen = torch.Generator().manual_seed(seed)
        keep = [j for j, k in enumerate(self.world.attributes) if k not in free]
        key = torch.zeros(len(self), dtype=torch.long)
        for j in keep:                                                # one id per combination of the kept attributes
            key = key * 16 + self.attrs[:, j]
        a_idx, b_idx = [], []
        for _ in range(4):                                            # random partners with the same key
            perm = torch.randperm(len(self), generator=gen)
            order = perm[torch.argsort(key[perm], stable=True)]
            k = key[order]
            same = (k[1:] == k[:-1]).nonzero().squeeze(1)
            a_idx.append(order[same])
            b_idx.append(order[same + 1])
        a_idx, b_idx = torch.cat(a_idx), torch.cat(b_idx)
        if not len(a_idx):
            raise ValueError("the pool has no two images that one caption describes; render more images")
        pick = torch.randint(len(a_idx), (min(n_pairs, len(a_idx)),), generator=gen)
        a, b = self.images[a_idx[pick]].float(), self.images[b_idx[pick]].float()
        return float((a - b).abs().mean() / 127.5)

    def batch(self, batch_size: int, generator: torch.Generator | None = None):
        """A random batch: images (B, 3, H, W) float in [-1, 1], caption ids (B,), attrs (B, 4)."""
        idx = torch.randint(len(self), (batch_size,), generator=generator)
        which = torch.randint(self.combo_captions.shape[1], (batch_size,), generator=generator)
        cap = self.combo_captions[self.image_combo[idx], which]
        return to_float(self.images[idx]), cap, self.attrs[idx]

    def paired_batch(self, batch_size: int, generator: torch.Generator | None = None):
        """A batch of *pairs*: positions 2k and 2k+1 are two images that one caption describes
        (the same combination, or either size when the caption leaves the size out), with that
        caption. Returns images (B, 3, H, W) in [-1, 1], caption ids (B,), attrs (B, 4)."""
        if batch_size % 2:
            raise ValueError(f"a paired batch needs an even batch size, got {batch_size}")
        half = batch_size // 2
        anchor = torch.randint(len(self), (half,), generator=generator)
        which = torch.randint(self.combo_captions.shape[1], (half,), generator=generator)
        cap = self.combo_captions[self.image_combo[anchor], which]
        combo = self._caption_combos[cap, torch.randint(2, (half,), generator=generator)]
        count = self._combo_count[combo]
        pick = (torch.rand(half, generator=generator) * count).long().clamp(max=count - 1)
        partner = self._by_combo[self._combo_start[combo] + pick]
        idx = torch.stack([anchor, partner], 1).flatten()                   # a0, p0, a1, p1, ...
        cap = cap.repeat_interleave(2)
        return to_float(self.images[idx]), cap, self.attrs[idx]

    def mismatched(self, attrs: torch.Tensor, generator: torch.Generator | None = None,
                   rounds: int = 64) -> torch.Tensor:
        """For each scene (B, 4), the id of a caption from the bank that does *not* describe it
        (it names at least one attribute differently): GAN-INT-CLS's "real image, wrong text"
        pairs. Random captions are drawn and the rare ones that happen to fit are redrawn."""
        ids = torch.randint(len(self.captions), (len(attrs),), generator=generator)
        for _ in range(rounds):
            fits = caption_matches(self.caption_attrs[ids], attrs).diagonal()
            if not fits.any():
                return ids
            ids[fits] = torch.randint(len(self.captions), (int(fits.sum()),), generator=generator)
        raise RuntimeError("could not find mismatched captions: the pool's captions all describe its scenes")


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images_u8.float() / 127.5 - 1.0


def caption_matches(caption_attrs: torch.Tensor, scene_attrs: torch.Tensor) -> torch.Tensor:
    """(B, 4) caption attributes (-1 = unspecified) vs (B', 4) scene attributes -> (B, B') bool:
    does scene j satisfy every attribute caption i names?"""
    c = caption_attrs.unsqueeze(1)            # (B, 1, 4)
    s = scene_attrs.unsqueeze(0)              # (1, B', 4)
    return ((c == s) | (c < 0)).all(-1)


def captions_compatible(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, 4) vs (B', 4) caption attributes (-1 = unspecified) -> (B, B') bool: do the two
    captions agree on every attribute both name (could they describe the same scene)?"""
    x, y = a.unsqueeze(1), b.unsqueeze(0)
    return ((x == y) | (x < 0) | (y < 0)).all(-1)


__all__ = ["PairPool", "to_float", "caption_matches", "captions_compatible"]
