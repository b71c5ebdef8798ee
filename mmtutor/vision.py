"""Image encoder: a small convolutional network that maps an image to a D-dimensional feature.

Step 2 of the article extracts visual features "with a pretrained vision model (such as a
CNN)". Our images are 32x32 renders of a simple world, so a four-layer CNN trained here
is enough (LeCun et al. 1998; the layout follows the DCGAN discriminator, Radford et al. 2016):
strided 3x3 convolutions halve the resolution down to 4x4, and the 4x4 map is flattened
rather than averaged, because *where* things are ("under the table") is part of the meaning.

The same trunk serves the dual encoder (``align.py``) and the judge (``metrics.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def check_images(x, image_size: int | None = None, who: str = "model") -> torch.Tensor:
    """A float tensor of shape (N, 3, H, W) with H = W = image_size, else a clear error."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who} expects images as a torch.Tensor of shape (N, 3, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{who} expects floating-point images in [-1, 1], got dtype {x.dtype}; "
                        "convert uint8 images with x.float() / 127.5 - 1")
    if x.ndim != 4:
        hint = " (add a batch dimension: x.unsqueeze(0))" if x.ndim == 3 else ""
        raise ValueError(f"{who} expects images of shape (N, 3, H, W), got {tuple(x.shape)}{hint}")
    if x.shape[1] != 3:
        raise ValueError(f"{who} expects 3 colour channels (RGB), got {x.shape[1]} in shape {tuple(x.shape)}")
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        raise ValueError(f"{who} expects {image_size}x{image_size} images, got "
                         f"{x.shape[-2]}x{x.shape[-1]}")
    return x


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
        check_images(x, self.image_size, "ImageEncoder")
        return self.head(self.features(x))


__all__ = ["ImageEncoder", "check_images", "n_halvings"]
