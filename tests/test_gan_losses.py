"""GAN losses and configuration: the article's formulas on hand-made logits, exactly."""

import pytest
import torch

from mmtutor.gan import GANConfig
from mmtutor.losses import attribute_loss, diversity_loss, discriminator_loss, generator_loss, unstated_loss

REAL = torch.tensor([2.0, -1.0, 0.5, 3.0], dtype=torch.float64)
FAKE = torch.tensor([-0.3, 1.2, -4.0], dtype=torch.float64)
MISMATCH = torch.tensor([0.7, -2.0], dtype=torch.float64)


def D(logit):
    return torch.sigmoid(logit)


def test_discriminator_bce_is_the_articles_formula():
    expected = -torch.log(D(REAL)).mean() - torch.log(1 - D(FAKE)).mean()
    torch.testing.assert_close(discriminator_loss(REAL, FAKE, kind="bce"), expected)


@pytest.mark.parametrize("w", [0.5, 0.3, 0.0, 1.0])
def test_discriminator_bce_with_mismatch(w):
    real_term = -torch.log(D(REAL)).mean()
    fake_term = -torch.log(1 - D(FAKE)).mean()
    mis_term = -torch.log(1 - D(MISMATCH)).mean()
    expected = real_term + (1 - w) * fake_term + w * mis_term
    torch.testing.assert_close(discriminator_loss(REAL, FAKE, MISMATCH, kind="bce", mismatch_weight=w), expected)


def test_discriminator_default_is_bce_with_half_weight():
    torch.testing.assert_close(discriminator_loss(REAL, FAKE, MISMATCH),
                               discriminator_loss(REAL, FAKE, MISMATCH, kind="bce", mismatch_weight=0.5))


def test_discriminator_empty_mismatch_is_ignored():
    empty = torch.empty(0, dtype=torch.float64)
    for kind in ("bce", "hinge"):
        torch.testing.assert_close(discriminator_loss(REAL, FAKE, empty, kind=kind),
                                   discriminator_loss(REAL, FAKE, kind=kind))


def test_discriminator_hinge():
    expected = torch.clamp(1 - REAL, min=0).mean() + torch.clamp(1 + FAKE, min=0).mean()
    torch.testing.assert_close(discriminator_loss(REAL, FAKE, kind="hinge"), expected)
    # hand-computed: real [0, 2, 0.5, 0] -> 0.625; fake [0.7, 2.2, 0] -> 0.9667
    assert discriminator_loss(REAL, FAKE, kind="hinge").item() == pytest.approx(0.625 + 2.9 / 3)
    w = 0.25
    expected = (torch.clamp(1 - REAL, min=0).mean() + (1 - w) * torch.clamp(1 + FAKE, min=0).mean()
                + w * torch.clamp(1 + MISMATCH, min=0).mean())
    torch.testing.assert_close(discriminator_loss(REAL, FAKE, MISMATCH, kind="hinge", mismatch_weight=w), expected)


def test_discriminator_unknown_kind():
    with pytest.raises(ValueError, match="unknown discriminator loss 'wgan'; choose one of: bce, hinge"):
        discriminator_loss(REAL, FAKE, kind="wgan")


def test_generator_losses():
    torch.testing.assert_close(generator_loss(FAKE, "saturating"), torch.log(1 - D(FAKE)).mean())
    torch.testing.assert_close(generator_loss(FAKE, "nonsaturating"), -torch.log(D(FAKE)).mean())
    torch.testing.assert_close(generator_loss(FAKE), -torch.log(D(FAKE)).mean())
    torch.testing.assert_close(generator_loss(FAKE, "hinge"), -FAKE.mean())


def test_saturating_loss_vanishes_when_d_rejects_fakes():
    fake = torch.tensor([-8.0], requires_grad=True)        # D is sure the fake is fake
    generator_loss(fake, "saturating").backward()
    sat = fake.grad.abs().item()
    fake.grad = None
    generator_loss(fake, "nonsaturating").backward()
    assert sat < 1e-3 < fake.grad.abs().item()


def test_generator_unknown_kind():
    with pytest.raises(ValueError, match="unknown generator loss 'bce'; choose one of: saturating, "
                                         "nonsaturating, hinge"):
        generator_loss(FAKE, "bce")


def test_diversity_loss_hand_made():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.full((2, 3, 4, 4), 0.5)
    za, zb = torch.zeros(2, 8), torch.ones(2, 8)          # ratio = 0.5 / 1
    assert diversity_loss(a, b, za, zb, target=1.0).item() == pytest.approx(0.5)
    assert diversity_loss(a, b, za, zb, target=0.25).item() == 0.0     # ratio above target: no push
    assert diversity_loss(a, a.clone(), za, zb, target=0.3).item() == pytest.approx(1.0)   # collapse


def test_diversity_loss_pushes_images_apart():
    a = torch.zeros(1, 3, 2, 2, requires_grad=True)
    b = torch.full((1, 3, 2, 2), 0.1)
    diversity_loss(a, b, torch.zeros(1, 4), torch.ones(1, 4), target=1.0).backward()
    assert (a.grad > 0).all()          # gradient descent lowers a: away from b


# ------------------------------------------------------------------------ config
@pytest.mark.parametrize("field, value, allowed", [
    ("text_encoder", "gpt", "minilm, clip, bert"),
    ("fusion", "sum", "concat, attention"),
    ("loss", "wgan", "hinge, bce, bce-saturating"),
    ("norm", "layer", "spectral, batch"),
])
def test_config_rejects_unknown_choices(field, value, allowed):
    with pytest.raises(ValueError, match=f"unknown {field} '{value}'; choose one of: {allowed}"):
        GANConfig(**{field: value})


@pytest.mark.parametrize("size", [30, 4, 48])
def test_config_rejects_bad_image_size(size):
    with pytest.raises(ValueError, match=f"4 times a power of two.*got {size}"):
        GANConfig(image_size=size)


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_config_rejects_bad_ema_decay(decay):
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        GANConfig(ema_decay=decay)


def test_ablation_config():
    c = GANConfig.ablation()
    assert c.loss == "bce" and c.norm == "batch" and c.ema_decay == 0 and c.diversity_weight == 0
    assert c.lr_g == c.lr_d
    assert c.d_loss_kind == "bce" and c.g_loss_kind == "nonsaturating"
    assert c.d_condition == "projection" and c.text_norm == "discriminant"   # an ablation keeps these
    assert GANConfig.ablation(z_dim=16, loss="bce-saturating").z_dim == 16
    assert GANConfig.ablation(loss="bce-saturating").g_loss_kind == "saturating"


def test_reed2016_config():
    c = GANConfig.reed2016()
    assert c.d_condition == "concat" and c.text_norm == "raw"
    assert (c.loss, c.norm, c.ema_decay, c.diversity_weight) == ("bce", "batch", 0, 0)
    assert c.lr_g == c.lr_d and c.mismatch_weight == 0.5 and c.interp_fraction > 0


def test_default_config_loss_kinds():
    c = GANConfig()
    assert (c.loss, c.d_loss_kind, c.g_loss_kind) == ("hinge", "hinge", "hinge")
    assert c.betas == (0.0, 0.9) and isinstance(GANConfig(betas=[0.5, 0.9]).betas, tuple)


def test_attribute_loss_is_the_mean_cross_entropy_over_attributes():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5, 0.1], [0.0, 1.0, 3.0, -0.5, 0.4]], dtype=torch.float64)
    targets = torch.tensor([[0, 1], [2, -1]])                  # row 2 leaves the second attribute out
    logp = torch.log_softmax
    first = -(logp(logits[0, :3], 0)[0] + logp(logits[1, :3], 0)[2]) / 2
    second = -logp(logits[0, 3:], 0)[1]                        # only the row that names it
    torch.testing.assert_close(attribute_loss(logits, targets, (3, 2)), (first + second) / 2)


def test_attribute_loss_leaves_out_attributes_no_row_names():
    logits = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    only_first = torch.tensor([[0, -1], [1, -1], [2, -1]])
    torch.testing.assert_close(attribute_loss(logits, only_first, (3, 2)),
                               torch.nn.functional.cross_entropy(logits[:, :3], only_first[:, 0]))
    nothing = attribute_loss(logits, torch.full((3, 2), -1), (3, 2))
    assert nothing.item() == 0.0
    nothing.backward()                                         # still part of the graph: no special case
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_attribute_loss_names_a_shape_mismatch():
    with pytest.raises(ValueError, match=r"2 attributes with 5 values in all, got logits \(2, 4\)"):
        attribute_loss(torch.zeros(2, 4), torch.zeros(2, 2, dtype=torch.long), (3, 2))


HALF = [torch.tensor([1 / 3, 1 / 3, 1 / 3], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)]


def test_unstated_loss_is_kl_to_the_data_shares_plus_each_images_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5, 0.1], [0.0, 1.0, 3.0, -0.5, 0.4],
                           [1.0, 1.0, 1.0, 2.0, -2.0]], dtype=torch.float64)
    unstated = torch.tensor([[False, True], [False, True], [False, False]])   # rows 1-2 leave the size out
    p = torch.softmax(logits[:2, 3:], 1)
    m, q = p.mean(0), HALF[1]
    expected = (q * (q / m).log()).sum() - (p * p.log()).sum(1).mean()
    torch.testing.assert_close(unstated_loss(logits, unstated, (3, 2), HALF), expected)


def test_unstated_loss_is_zero_for_sure_images_that_split_like_the_data():
    # two images, one read surely small, one surely large: the batch shows each size half the time
    sure = torch.tensor([[0.0, 0.0, 0.0, 30.0, -30.0], [0.0, 0.0, 0.0, -30.0, 30.0]], dtype=torch.float64)
    unstated = torch.tensor([[False, True], [False, True]])
    assert unstated_loss(sure, unstated, (3, 2), HALF).item() < 1e-9
    # the same size twice (a collapsed generator) pays KL(1/2, 1/2 || 1, 0), about 0.5 * 60
    same = sure.clone()
    same[1, 3:] = sure[0, 3:]
    assert unstated_loss(same, unstated, (3, 2), HALF).item() > 10.0
    # two undecided images split the batch evenly too, but pay their entropy, log 2
    undecided = torch.zeros(2, 5, dtype=torch.float64)
    torch.testing.assert_close(unstated_loss(undecided, unstated, (3, 2), HALF),
                               torch.tensor(2.0, dtype=torch.float64).log())


def test_unstated_loss_with_nothing_left_out_is_zero_and_in_the_graph():
    logits = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    nothing = unstated_loss(logits, torch.zeros(3, 2, dtype=torch.bool), (3, 2), HALF)
    assert nothing.item() == 0.0
    nothing.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_unstated_loss_names_a_shape_mismatch():
    with pytest.raises(ValueError, match=r"2 attributes with 5 values in all, got logits \(2, 4\) and unstated"):
        unstated_loss(torch.zeros(2, 4), torch.zeros(2, 2, dtype=torch.bool), (3, 2), HALF)
    with pytest.raises(ValueError, match=r"shares must hold one tensor per attribute with \[3, 2\] values"):
        unstated_loss(torch.zeros(2, 5), torch.zeros(2, 2, dtype=torch.bool), (3, 2), HALF[:1])
    with pytest.raises(ValueError, match=r"groups must hold one id per row \(2\), got \(3,\)"):
        unstated_loss(torch.zeros(2, 5), torch.ones(2, 2, dtype=torch.bool), (3, 2), HALF, groups=torch.zeros(3))


def test_unstated_loss_spreads_within_each_caption_not_across_the_batch():
    # four sure images: caption 0 drawn large twice, caption 1 small twice -- an even batch
    big, small = [0.0, 0.0, 0.0, -30.0, 30.0], [0.0, 0.0, 0.0, 30.0, -30.0]
    unstated = torch.tensor([[False, True]] * 4)
    apart = torch.tensor([big, big, small, small], dtype=torch.float64)
    assert unstated_loss(apart, unstated, (3, 2), HALF).item() < 1e-9            # one group: looks even
    groups = torch.tensor([0, 0, 1, 1])
    assert unstated_loss(apart, unstated, (3, 2), HALF, groups=groups).item() > 10.0   # per caption: not
    mixed = torch.tensor([big, small, small, big], dtype=torch.float64)          # each caption both sizes
    assert unstated_loss(mixed, unstated, (3, 2), HALF, groups=groups).item() < 1e-9
    # by hand, one group of two undecided-ish images and one of a single image
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.3, -0.2], [0.0, 0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 0.0, -1.0, 2.0]],
                          dtype=torch.float64)
    p = torch.softmax(logits[:, 3:], 1)
    q = HALF[1]
    kl = lambda m: (q * (q / m).log()).sum()                                     # noqa: E731
    expected = (kl(p[:2].mean(0)) + kl(p[2])) / 2 - (p * p.log()).sum(1).mean()
    torch.testing.assert_close(unstated_loss(logits, torch.tensor([[False, True]] * 3), (3, 2), HALF,
                                             groups=torch.tensor([5, 5, 9])), expected)
