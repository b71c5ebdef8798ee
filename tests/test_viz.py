"""Pictures: grids have the documented size and range; saved grids are PNGs."""

import numpy as np
import pytest
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


@pytest.mark.parametrize("n, nrow, padding", [(1, 8, 2), (3, 8, 2), (5, 2, 1), (8, 4, 0), (13, 4, 2)])
def test_tile_matches_torchvision_make_grid(n, nrow, padding):
    make_grid = pytest.importorskip("torchvision.utils").make_grid
    x = torch.rand(n, 3, 6, 5)
    assert torch.equal(viz.tile(x, nrow=nrow, padding=padding), make_grid(x, nrow=nrow, padding=padding, pad_value=1.0))


def test_tile_refuses_what_is_not_a_batch():
    with pytest.raises(ValueError, match="expects a batch of images"):
        viz.tile(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="no images"):
        viz.tile(torch.zeros(0, 3, 8, 8))


def test_importing_the_library_does_not_import_torchvision():
    # torchvision pulls in torch._dynamo: seconds of every kernel's start (viz.py)
    import subprocess
    import sys
    code = "import sys, mmtutor; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_save_grid_writes_the_grid_pixels(tmp_path):
    images = torch.linspace(-1, 1, 2 * 3 * 4 * 4).view(2, 3, 4, 4)
    viz.save_grid(images, tmp_path / "p.png", nrow=2, scale=1)
    with Image.open(tmp_path / "p.png") as im:
        saved = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    expected = viz.image_grid(images, nrow=2, padding=2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    assert torch.equal(saved, expected)


def test_save_grid(tmp_path):
    viz.save_grid(torch.zeros(3, 3, 8, 8), tmp_path / "g.png", nrow=3, scale=2)
    with Image.open(tmp_path / "g.png") as im:
        assert im.size == (3 * 18 + 2, 18 + 2)


def test_bench_results_are_found_from_a_subfolder_and_absent_elsewhere(tmp_path, monkeypatch):
    import json
    (tmp_path / "repo" / "bench" / "results").mkdir(parents=True)
    (tmp_path / "repo" / "bench" / "results" / "x.json").write_text(json.dumps({"machine": {"cpu": "c"}}))
    (tmp_path / "repo" / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "repo" / "notebooks")
    assert viz.bench_results("x") == {"machine": {"cpu": "c"}}
    assert viz.bench_results("missing") is None
    monkeypatch.chdir(tmp_path)
    assert viz.bench_results("x") is None
