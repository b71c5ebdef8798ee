"""Image encoder: a small convolutional network that maps an image to a D-dimensional feature.

Step 2 of the article extracts visual features "with a pretrained vision model (such as a
CNN)". Our images are 32x32 renders of a simple world, so a four-layer CNN trained here
is enough (LeCun et al. 1998; the layout follows the DCGAN discriminator, Radford et al. 2016):
strided 3x3 convolutions halve the resolution down to 4x4, and the 4x4 map is flattened
rather than averaged, because *where* things are ("under the table") is part of the meaning.

The same trunk serves the dual encoder (``align.py``), the judge (``judge.py``), the VAE's
encoder (``vae.py``) and the captioner (``captioner.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import checks


def n_halvings(image_size: int) -> int:
    """How many stride-2 stages take image_size down to 4x4 (image_size must be 4 * 2^k)."""
    k = int(round(math.log2(image_size / 4)))
    if image_size < 8 or 4 * 2 ** k != image_size:
        raise ValueError(f"image_size must be 4 times a power of two (8, 16, 32, 64, ...), got {image_size}")
    return k


class ImageEncoder(nn.Module):
    """(N, 3, S, S) in [-1, 1] -> (N, dim).

    conv3x3(3 -> w) at full resolution, then k = log2(S/4) stride-2 conv3x3 stages doubling
    the width up to 4*w, flatten the (4w, 4, 4) map, and a linear layer to ``dim``.
    """

    def __init__(self, image_size: int = 32, dim: int = 128, width: int = 32):
        super().__init__()
        self.image_size, self.dim = image_size, dim
        layers = [nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        c = width
        for i in range(n_halvings(image_size)):
            c_out = min(width * 2 ** (i + 1), 4 * width)
            layers += [nn.Conv2d(c, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c = c_out
        self.features = nn.Sequential(*layers)                    # (N, 3, S, S) -> (N, c, 4, 4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * 16, dim))  # (N, c*16) -> (N, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = checks.images(x, self.image_size, "ImageEncoder", check_values=not self.training)
        return self.head(self.features(x))


__all__ = ["ImageEncoder", "n_halvings"]
