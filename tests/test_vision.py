"""The image encoder and the image checks every model runs on its input."""

import pytest
import torch

from mmtutor.checks import images as check_images
from mmtutor.vision import ImageEncoder, n_halvings


@pytest.mark.parametrize("size", [16, 32, 64])
def test_image_encoder_shape(size):
    enc = ImageEncoder(size, dim=20, width=8)
    assert enc(torch.randn(5, 3, size, size)).shape == (5, 20)


def test_n_halvings():
    assert [n_halvings(s) for s in (8, 16, 32, 64)] == [1, 2, 3, 4]
    for bad in (4, 30, 48):
        with pytest.raises(ValueError, match=rf"4 times a power of two .* got {bad}"):
            n_halvings(bad)


def test_check_images_accepts_good_input():
    x = torch.zeros(2, 3, 32, 32)
    assert check_images(x, 32) is x


@pytest.mark.parametrize("x, error, message", [
    (torch.zeros(2, 1, 32, 32), ValueError, "3 colour channels .* got 1"),
    (torch.zeros(2, 4, 32, 32), ValueError, "3 colour channels .* got 4"),
    (torch.zeros(2, 3, 16, 16), ValueError, "expects 32x32 images, got 16x16"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), TypeError, "floating-point .* torch.uint8"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.long), TypeError, "floating-point"),
    (torch.zeros(3, 32, 32), ValueError, r"\(N, 3, H, W\), got shape \(3, 32, 32\).*unsqueeze\(0\)"),
    ([[0.0]], TypeError, "torch.Tensor .* got list"),
])
def test_check_images_errors(x, error, message):
    with pytest.raises(error, match=message):
        check_images(x, 32, "Model")
    with pytest.raises(error, match=message):
        ImageEncoder(32, dim=8, width=4)(x)
