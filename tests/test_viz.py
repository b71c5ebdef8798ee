"""Pictures: grids have the documented size and range; saved grids are PNGs."""

import torch
from PIL import Image

from mmtutor import viz


def test_image_grid_shape_and_range():
    images = torch.linspace(-1, 1, 4 * 3 * 8 * 8).view(4, 3, 8, 8)
    grid = viz.image_grid(images, nrow=2, padding=1)
    assert grid.shape == (3, 2 * 9 + 1, 2 * 9 + 1)
    assert grid.min() >= 0 and grid.max() <= 1
    # [-1, 1] -> [0, 1]: the first pixel of the first image is -1 -> 0
    assert grid[0, 1, 1] == 0.0
    big = viz.image_grid(images, nrow=4, padding=0, scale=3)
    assert big.shape == (3, 24, 96)


def test_save_grid(tmp_path):
    viz.save_grid(torch.zeros(3, 3, 8, 8), tmp_path / "g.png", nrow=3, scale=2)
    with Image.open(tmp_path / "g.png") as im:
        assert im.size == (3 * 18 + 2, 18 + 2)
