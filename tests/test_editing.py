"""Editing: the edit sets, object masks, the two editing methods' plumbing and checks, and the
scores on hand-made cases."""

import pytest
import torch

import mmtutor as mm
from mmtutor import diffusion as dm
from mmtutor import editing as ed

TINY = dict(space="pixel", channels=(16, 32), blocks=1, attention_levels=(1,), emb_dim=32)


def test_make_edits_change_exactly_one_attribute(world):
    edits = ed.make_edits(world, 30, seed=0)
    assert [e.kind for e in edits[:3]] == ["color", "object", "relation"]
    names = list(world.attributes)
    for e in edits:
        diff = [k for k, a, b in zip(names, e.source, e.target) if a != b]
        assert diff == [e.kind]
        assert world.parse(e.source_caption) == world.attrs_of(e.source)
        assert world.parse(e.target_caption) == world.attrs_of(e.target)
    assert ed.make_edits(world, 30, seed=0) == edits and ed.make_edits(world, 30, seed=1) != edits
    with pytest.raises(ValueError, match="unknown edit kind 'size'"):
        ed.make_edits(world, 3, kinds=("size",))


def test_render_masks_are_exact_and_the_colour_mask_covers_them(world):
    edits = ed.make_edits(world, 96, seed=2)
    images, masks = ed.real_sources(world, edits, seed=3, masks=True)
    assert torch.equal(images, ed.real_sources(world, edits, seed=3))       # the same renders
    assert masks.shape == (96, 1, 32, 32) and masks.dtype == torch.bool
    area = masks.flatten(1).float().mean(1)
    assert (area > 0.02).all() and (area < 0.3).all()                       # an object, not the scene
    est = ed.object_mask(images, [e.source[0] for e in edits])
    recall = (est & masks).flatten(1).sum(1).float() / masks.flatten(1).sum(1)
    assert recall.mean() > 0.95 and recall.min() > 0.7
    with pytest.raises(ValueError, match="one colour per image"):
        ed.object_mask(images, ["red"])
    with pytest.raises(ValueError, match="unknown color 'crimson'"):
        ed.object_mask(images[:1], ["crimson"])


class QueueJudge:
    """Returns prepared readings, one batch per call."""

    def __init__(self, *readings):
        self.readings = list(readings)

    def predict(self, images):
        return self.readings.pop(0)


def test_edit_scores_by_hand(world):
    edits = [ed.Edit("color", (0, 0, 0, 0), (4, 0, 0, 0), "", ""),
             ed.Edit("object", (0, 0, 0, 0), (0, 2, 0, 0), "", ""),
             ed.Edit("relation", (0, 0, 0, 0), (0, 0, 3, 0), "", "")]
    before = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    after = torch.tensor([[4, 0, 0, 0],      # success, kept
                          [0, 2, 1, 0],      # success, relation lost
                          [0, 0, 0, 0]])     # no change: failure, kept
    images = torch.zeros(3, 3, 32, 32)
    out = ed.edit_scores(QueueJudge(before, after), world, images, images, edits)
    assert out["success"] == pytest.approx(2 / 3) and out["preservation"] == pytest.approx(2 / 3)
    assert out["both"] == pytest.approx(1 / 3) and out["pixel_change_outside"] == 0.0
    assert out["by_kind"]["object"] == {"n": 1, "success": 1.0, "preservation": 0.0, "both": 0.0,
                                        "pixel_change_outside": 0.0}
    assert "pixel_change_outside" not in out["by_kind"]["relation"]
    with pytest.raises(ValueError, match="as many sources, edited images and edits"):
        ed.edit_scores(QueueJudge(before, after), world, images[:2], images, edits)


def test_perfect_edits_of_real_scenes_score_one(world, judge):
    """Rendering the target scene with the source's layout is a perfect edit: the session judge
    reads it as such, and colour edits change almost no pixel outside the object."""
    edits = ed.make_edits(world, 60, seed=4, kinds=("color", "object"))
    src = ed.real_sources(world, edits, seed=5)
    perfect = world.render_index(torch.tensor([e.target for e in edits]), torch.Generator().manual_seed(5))
    out = ed.edit_scores(judge, world, src, perfect, edits)
    assert out["success"] > 0.9 and out["preservation"] > 0.9
    assert out["by_kind"]["color"]["pixel_change_outside"] < 0.01
    noise = ed.edit_scores(judge, world, src, torch.rand_like(src) * 2 - 1, edits)
    assert noise["both"] < 0.3 and noise["pixel_change_outside"] > 0.3


@pytest.fixture(scope="module")
def model(world):
    torch.manual_seed(0)
    return dm.DiffusionModel(dm.DiffusionConfig(**TINY), world, device="cpu")


def test_sdedit_plumbing_and_checks(model, world):
    edits = ed.make_edits(world, 3, seed=6)
    src = ed.real_sources(world, edits, seed=7)
    caps = [e.target_caption for e in edits]
    assert torch.equal(ed.sdedit(model, src, caps, t0=0), src)                    # t0 = 0: nothing happens
    out = ed.sdedit(model, src, caps, t0=400, seed=1, steps=3)
    assert out.shape == src.shape and out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, ed.sdedit(model, src, caps, t0=400, seed=1, steps=3))
    torch.testing.assert_close(ed.sdedit(model, src[:1], caps[:1], t0=400, seed=1, steps=3), out[:1],
                               atol=1e-5, rtol=0)                                # each image its own stream
    with pytest.raises(ValueError, match=r"t0 .* must be in \[0, 1000\], got 1200"):
        ed.sdedit(model, src, caps, t0=1200)
    with pytest.raises(ValueError, match=r"t0 .* must be in \[0, 1000\], got -5"):
        ed.sdedit(model, src, caps, t0=-5)
    with pytest.raises(ValueError, match="one caption per image"):
        ed.sdedit(model, src, caps[:2], t0=100)
    with pytest.raises(ValueError, match="guidance weight w must be at least 0"):
        ed.sdedit(model, src, caps, t0=100, w=-1)
    with pytest.raises(ValueError, match="expects pixel values in"):
        ed.sdedit(model, src * 3, caps, t0=100)


def test_caption_swap_keeps_the_noise(trained_gan):
    # trained (its caption encoder fitted): the book's GAN reads the attribute readout alone, which an
    # unfitted encoder reads as even probabilities for every caption, so an untrained one draws the
    # same image for both captions
    gan = trained_gan
    src, dst = ed.caption_swap(gan, ["a red apple on the table"] * 2, ["a blue apple on the table"] * 2, seed=3)
    torch.testing.assert_close(src, gan.generate(["a red apple on the table"], n_per_caption=2, seed=3,
                                                 complete=False), atol=1e-5, rtol=0)
    assert dst.shape == src.shape and not torch.equal(src, dst)
    with pytest.raises(ValueError, match="one target caption per source caption"):
        ed.caption_swap(gan, ["a red apple on the table"], ["a blue apple", "a box"])
