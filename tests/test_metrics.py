"""Measurement: attribute accuracy, Frechet distance, spread and diversity, the caption
consistency pipeline (with stand-in generators), R-precision, and the judge's checkpoints."""

import pytest
import torch

import mmtutor as mm
from mmtutor.metrics import (attribute_accuracy, caption_attrs_tensor, caption_consistency, diversity,
                             evaluation_captions, frechet_distance, mean_pairwise_distance, real_images_for)

ATTRS = ["color", "object", "relation", "size"]


def test_attribute_accuracy_hand_made():
    pred = torch.tensor([[0, 1, 2, 0],
                         [1, 1, 0, 1],
                         [2, 0, 3, 1],
                         [0, 0, 0, 0]])
    target = torch.tensor([[0, 1, 2, -1],       # every named attribute right
                           [1, 0, -1, 1],       # object wrong
                           [-1, -1, -1, -1],    # names nothing: nothing to get wrong
                           [1, 0, 0, -1]])      # colour wrong
    out = attribute_accuracy(pred, target, ATTRS)
    assert out == pytest.approx({"color": 2 / 3, "object": 2 / 3, "relation": 1.0, "size": 1.0, "joint": 0.5})


def test_attribute_accuracy_skips_unnamed_attributes():
    pred = torch.tensor([[0, 1, 2, 0], [1, 1, 1, 1]])
    target = torch.tensor([[0, 1, 2, -1], [0, 1, 2, -1]])
    out = attribute_accuracy(pred, target, ATTRS)
    assert "size" not in out
    assert out == pytest.approx({"color": 0.5, "object": 1.0, "relation": 0.5, "joint": 0.5})


# ------------------------------------------------------------------------ Frechet distance
def _whitened(n, d, seed):
    """n samples whose sample mean is exactly 0 and sample covariance exactly I."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(torch.cov(x.t()))
    return x @ torch.linalg.inv(chol).t()


def test_frechet_distance_of_a_set_with_itself_is_zero():
    a = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    assert abs(frechet_distance(a, a)) < 1e-6


def test_frechet_distance_identity_covariances_is_mean_distance():
    x = _whitened(300, 5, 1)
    mu1 = torch.tensor([1.0, 0.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    mu2 = torch.tensor([0.0, 1.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    assert frechet_distance(mu1 + x, mu2 + _whitened(300, 5, 2)) == pytest.approx(float((mu1 - mu2).pow(2).sum()))


def test_frechet_distance_diagonal_covariances_closed_form():
    # N(mu1, diag(s1^2)) vs N(mu2, diag(s2^2)): ||mu1 - mu2||^2 + sum (s1 - s2)^2
    s1 = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    s2 = torch.tensor([2.0, 2.0, 1.5, 1.0], dtype=torch.float64)
    mu1 = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    mu2 = torch.tensor([1.0, 1.0, 0.0, 3.0], dtype=torch.float64)
    a = mu1 + _whitened(400, 4, 3) * s1
    b = mu2 + _whitened(500, 4, 4) * s2
    expected = float((mu1 - mu2).pow(2).sum() + (s1 - s2).pow(2).sum())      # 5 + 6 = 11
    assert expected == 11.0
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))


# ------------------------------------------------------------------------ spread and diversity
def test_mean_pairwise_distance_hand_made():
    feats = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0],    # group 0: distances 3, 4, 5 -> 4
                          [1.0, 1.0], [1.0, 2.0],                # group 1: distance 1
                          [9.0, 9.0]])                           # group 2: a single image, ignored
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    assert mean_pairwise_distance(feats, groups) == pytest.approx((4.0 + 1.0) / 2)


def test_diversity_flags_collapse(judge, world):
    captions = ["a red apple on the table", "a small blue box under the table", "a green star"]
    real = real_images_for(world, captions, n_per_caption=4, seed=0)
    assert real.shape == (12, 3, 32, 32)
    collapsed = real[::4].repeat_interleave(4, 0)           # one image per caption, whatever the noise
    out = diversity(judge, collapsed, real, n_per_caption=4)
    assert out["fake_spread"] == pytest.approx(0.0, abs=1e-6)
    assert out["real_spread"] > 0
    assert out["ratio"] < 0.5 and out["collapsed"] is True
    other = real_images_for(world, captions, n_per_caption=4, seed=1)   # fresh real renders
    out = diversity(judge, other, real, n_per_caption=4)
    assert out["ratio"] > 0.5 and out["collapsed"] is False


# ------------------------------------------------------------------------ captions and consistency
def test_caption_attrs_tensor(world):
    got = caption_attrs_tensor(world, ["a red apple", "a big cube under the table"])
    assert got.tolist() == [[0, 0, -1, -1], [-1, 1, 1, 1]]


def test_evaluation_captions(world):
    caps = evaluation_captions(world, "heldout", seed=0)
    assert len(caps) == len(world.heldout)
    assert {tuple(r) for r in caption_attrs_tensor(world, caps).tolist()} == world.heldout
    assert caps == evaluation_captions(world, "heldout", seed=0)


def test_real_images_for_match_captions(judge, world):
    captions = ["a red apple on the table", "a small white cone"]
    images = real_images_for(world, captions, n_per_caption=8, seed=0)
    pred = judge.predict(images)
    target = caption_attrs_tensor(world, captions).repeat_interleave(8, 0)
    assert attribute_accuracy(pred, target, world.attributes)["joint"] >= 0.9


class _Renderer:
    """A stand-in generator: real renders of the caption (perfect) or of one fixed scene."""

    def __init__(self, world, ignore_caption=False):
        self.world, self.ignore = world, ignore_caption

    def generate(self, captions, n_per_caption=1, seed=0):
        if self.ignore:
            captions = ["a large white bottle right of the table"] * len(captions)
        return real_images_for(self.world, captions, n_per_caption, seed=seed)


class _OneSize:
    """A stand-in generator that draws every caption without a size as large -- unless asked to
    complete captions first, when it gives every other image a small object."""

    def __init__(self, world):
        self.world, self.calls = world, []

    def generate(self, captions, n_per_caption=1, seed=0, **options):
        self.calls.append(options)
        out = []
        for k, c in enumerate(c for c in captions for _ in range(n_per_caption)):
            attrs = self.world.parse(c)
            if "size" not in attrs:
                attrs["size"] = "small" if options.get("complete") and k % 2 else "large"
            out.append(real_images_for(self.world, [self.world.caption(attrs, template=0)], 1, seed=seed + k))
        return torch.cat(out)


def test_tv_by_chance_is_the_floor_of_a_perfectly_even_generator():
    assert mm.metrics.tv_by_chance(16) == pytest.approx(0.0982, abs=1e-4)
    assert mm.metrics.tv_by_chance(32) == pytest.approx(0.0700, abs=1e-4)
    assert mm.metrics.tv_by_chance(1) == pytest.approx(0.5)            # one image is always all one size
    g = torch.Generator().manual_seed(0)                                # against simulated 50/50 draws
    draws = torch.rand(20000, 16, generator=g) < 0.5
    assert (draws.float().mean(1) - 0.5).abs().mean().item() == pytest.approx(mm.metrics.tv_by_chance(16), abs=0.003)
    with pytest.raises(ValueError, match="images per caption"):
        mm.metrics.tv_by_chance(0)
    with pytest.raises(ValueError, match="p"):
        mm.metrics.tv_by_chance(16, p=1.5)


def test_size_coverage_sees_one_size_and_passes_complete(judge, world):
    model = _OneSize(world)
    alone = mm.metrics.size_coverage(model, judge, world, n_per_caption=4, seed=0, complete=False)
    assert alone["large_share"] > 0.95 and alone["tv"] > 0.45       # always large: TV 0.5 from 50/50
    done = mm.metrics.size_coverage(model, judge, world, n_per_caption=4, seed=0, complete=True)
    assert 0.4 < done["large_share"] < 0.6 and done["tv"] < 0.1
    mm.metrics.size_coverage(model, judge, world, n_per_caption=4, seed=0)
    assert model.calls == [{"complete": False}, {"complete": True}, {}]   # None: the model's own setting


def test_caption_consistency_pipeline(judge, world):
    caps = evaluation_captions(world, "train", seed=0)[::4]
    good = caption_consistency(_Renderer(world), judge, world, caps, n_per_caption=2)
    assert good["images"].shape == (2 * len(caps), 3, 32, 32)
    assert good["predicted"].shape == (2 * len(caps), 4)
    assert good["color"] > 0.95 and good["relation"] > 0.95 and good["joint"] > 0.8
    bad = caption_consistency(_Renderer(world, ignore_caption=True), judge, world, caps, n_per_caption=2)
    # a generator that ignores the caption is right about as often as chance (1/8 colours, 1/4 relations)
    assert bad["color"] < 0.3 and bad["relation"] < 0.45 and bad["joint"] < 0.05


def test_r_precision(aligner, world):
    images, captions, _ = world.sample(40, split="train", seed=3)
    r = mm.metrics.r_precision(aligner, images, captions, world, n_mismatch=20)
    assert r > 0.3      # chance: 1/21; measured with the session aligner (seeds 3-5): 0.75-0.88
    with pytest.raises(ValueError, match="one caption per image"):
        mm.metrics.r_precision(aligner, images, captions[:3], world)


# ------------------------------------------------------------------------ the judge
def test_judge_save_load(judge, world, tmp_path):
    judge.save(tmp_path / "judge.pt", history={"seconds": 1.0})
    loaded = mm.metrics.Judge.load(tmp_path / "judge.pt")
    images, _, _ = world.sample(16, seed=11)
    assert torch.equal(loaded.predict(images), judge.predict(images))
    torch.testing.assert_close(loaded.embed(images), judge.embed(images))
    assert loaded.history == {"seconds": 1.0}


def test_judge_outputs(judge, world):
    images, _, _ = world.sample(5, seed=12)
    judge.eval()
    with torch.no_grad():
        logits = judge(images)
    assert {k: tuple(v.shape) for k, v in logits.items()} == {"color": (5, 8), "object": (5, 6),
                                                              "relation": (5, 4), "size": (5, 2)}
    assert judge.embed(images).shape == (5, 128)
    assert judge.predict(images).shape == (5, 4)


def test_judge_batch_size_sets_speed_not_results(judge, world):
    images, _, _ = world.sample(7, seed=13)
    assert torch.equal(judge.predict(images, batch_size=3), judge.predict(images))
    torch.testing.assert_close(judge.embed(images, batch_size=2), judge.embed(images), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        judge.predict(images, batch_size=0)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        judge.probabilities(images, batch_size=2.5)
