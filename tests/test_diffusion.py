"""Diffusion: the loss functions against hand computations, the forward process, the samplers'
updates, classifier-free guidance, the model's sampling, checkpoints and input checks, and a
short training run."""

import math

import pytest
import torch

import mmtutor as mm
from conftest import train_tiny
from mmtutor import diffusion as dm
from mmtutor.checkpoint import CheckpointError
from mmtutor.losses import diffusion_loss, min_snr_weight
from mmtutor.text2image import NoiseStreams, load_model

APPLE = "a red apple on the table"
BOX = "a large blue box under the table"

TINY = dict(space="pixel", channels=(16, 32), blocks=1, attention_levels=(1,), emb_dim=32)
TINY_LATENT = dict(space="latent", latent_channels=4, latent_size=8, ae_channels=8, ae_steps=5, ae_batch=8,
                   channels=(16, 32), blocks=1, attention_levels=(1,), emb_dim=32)


# ------------------------------------------------------------------------ losses
def test_diffusion_loss_by_hand():
    pred = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])    # per-image MSE 1 and 4
    assert diffusion_loss(pred, target).item() == pytest.approx(2.5)
    assert diffusion_loss(pred, target, torch.tensor([1.0, 0.5])).item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="one shape"):
        diffusion_loss(pred, target[:, :, :1])


def test_min_snr_weight_by_hand():
    snr = torch.tensor([0.5, 5.0, 50.0])
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "eps"), torch.tensor([1.0, 1.0, 0.1]))
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "v"), torch.tensor([0.5 / 1.5, 5 / 6, 5 / 51]))
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "x0"), torch.tensor([0.5, 5.0, 5.0]))
    torch.testing.assert_close(min_snr_weight(snr, None, "v"), torch.ones(3))
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        min_snr_weight(snr, 5.0, "score")


@pytest.mark.parametrize("gamma", [None, 1.0, 5.0])
def test_min_snr_weight_is_one_weighting_in_three_units(gamma):
    """The weighted eps-, v- and x0-losses of one and the same x0 estimate are equal (up to the
    constant min-SNR rescaling): the weights convert the units, as the docstring derives."""
    sched = dm.NoiseSchedule(1000)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    t = torch.tensor([5, 50, 200, 500, 800, 990])
    x_t = sched.q_sample(x0, t, eps)
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=g)                 # some imperfect estimate
    snr = sched.snr(t)
    losses = []
    for p in dm.PREDICTIONS:
        # the network output that corresponds to x0_hat at x_t
        eps_hat = (x_t - sched._at(t, x_t).sqrt() * x0_hat) / (1 - sched._at(t, x_t)).sqrt()
        out = sched.target(x0_hat, eps_hat, t, p)
        w = min_snr_weight(snr, gamma, p)
        if gamma is None:                                                  # plain losses: rescale to x0 units
            w = w / {"eps": snr, "v": snr + 1, "x0": torch.ones_like(snr)}[p]
        losses.append(diffusion_loss(out, sched.target(x0, eps, t, p), w))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses[0], losses[2], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------ the forward process
def test_cosine_schedule_shape():
    abar = dm.cosine_alpha_bar(1000)
    assert abar.shape == (1001,) and abar[0] == 1
    assert (abar[1:] < abar[:-1]).all()                                    # strictly less signal each step
    assert 0 < abar[-1] < 1e-3                                            # nearly pure noise at T (beta capped)
    betas = 1 - abar[1:] / abar[:-1]
    assert betas.max() <= 0.999 + 1e-9


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_closed_form_matches_iterating_the_chain(kind):
    """x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps_t, iterated t times, has the mean and the
    spread of the closed form q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)."""
    sched = dm.NoiseSchedule(200, kind)
    betas = sched.betas()
    g = torch.Generator().manual_seed(1)
    x0 = torch.tensor([1.0, -0.5, 0.25, 0.0])
    x = x0.expand(20000, 4).clone()
    for t in range(1, 201):
        x = (1 - betas[t - 1]).sqrt() * x + betas[t - 1].sqrt() * torch.randn(x.shape, generator=g)
        if t in (10, 60, 150, 200):
            a = sched.abar[t]
            torch.testing.assert_close(x.mean(0), a.sqrt() * x0, atol=0.03, rtol=0)
            torch.testing.assert_close(x.std(0), (1 - a).sqrt().expand(4), atol=0.02, rtol=0)


def test_q_sample_and_split_round_trip():
    sched = dm.NoiseSchedule(1000)
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g)
    t = torch.tensor([1, 10, 400, 900, 1000])
    x_t = sched.q_sample(x0, t, eps)
    a = sched.abar[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps)
    for p in ("eps", "v"):
        e, x = sched.split(sched.target(x0, eps, t, p), x_t, t, p)
        torch.testing.assert_close(e, eps, atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(x[:4], x0[:4], atol=2e-3, rtol=1e-3)   # at t = T eps-pred cannot see x0


# ------------------------------------------------------------------------ the samplers' updates
def _noised(t, s_t=1000):
    sched = dm.NoiseSchedule(s_t)
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    return sched, x0, eps, sched.q_sample(x0, torch.full((4,), t), eps)


def test_ddim_with_the_true_noise_inverts_in_one_step():
    sched, x0, eps, x_t = _noised(700)
    a_t = sched.abar[700]
    # DDIM (eta = 0) to s = 0 with the true eps lands on x0 exactly, in one step
    torch.testing.assert_close(dm.ddim_step(x0, eps, a_t, sched.abar[0]), x0)
    # ... and to any s it lands on q_sample(x0, s, eps): it moves along the same noise
    for s in (1, 100, 350, 699):
        torch.testing.assert_close(dm.ddim_step(x0, eps, a_t, sched.abar[s]),
                                   sched.q_sample(x0, torch.full((4,), s), eps))


def test_ddim_eta_zero_is_deterministic_and_eta_one_is_ddpm():
    sched, x0, eps, x_t = _noised(600)
    a_t, a_s = sched.abar[600], sched.abar[300]
    first = dm.ddim_step(x0, eps, a_t, a_s, eta=0.0)
    assert torch.equal(first, dm.ddim_step(x0, eps, a_t, a_s, eta=0.0))
    with pytest.raises(ValueError, match="needs the fresh noise z"):
        dm.ddim_step(x0, eps, a_t, a_s, eta=0.5)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    # DDIM with eta = 1 is DDPM's ancestral step (same mean, same variance, same draw)
    torch.testing.assert_close(dm.ddim_step(x0, eps, a_t, a_s, eta=1.0, z=z), dm.ddpm_step(x_t, x0, a_t, a_s, z),
                               atol=1e-5, rtol=1e-5)
    # the DDPM posterior mean at s = t - 1 is Ho et al.'s eq. 7
    t = 600
    beta = 1 - sched.abar[t] / sched.abar[t - 1]
    mean = (sched.abar[t - 1].sqrt() * beta / (1 - a_t)) * x0 + ((1 - beta).sqrt() * (1 - sched.abar[t - 1]) / (1 - a_t)) * x_t
    torch.testing.assert_close(dm.ddpm_step(x_t, x0, a_t, sched.abar[t - 1], None), mean)


def test_the_two_guidance_formulas_agree():
    g = torch.Generator().manual_seed(5)
    c, u = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    for w in (0.0, 0.5, 1.0, 3.0, 7.5):
        torch.testing.assert_close(dm.guided(c, u, w), dm.guided_scale(c, u, 1 + w))
    torch.testing.assert_close(dm.guided(c, u, 0.0), c)                    # w = 0: the conditional prediction
    torch.testing.assert_close(dm.guided_scale(c, u, 1.0), c)              # s = 1: the same
    torch.testing.assert_close(dm.guided_scale(c, u, 0.0), u)              # s = 0: the unconditional one


# ------------------------------------------------------------------------ the model
class Oracle(torch.nn.Module):
    """A perfect denoiser for a data set of one image x0 (every caption): eps = (x_t - sqrt(a) x0) / sqrt(1 - a)."""

    def __init__(self, sched, x0, prediction):
        super().__init__()
        self.sched, self.x0, self.prediction, self.self_condition = sched, x0, prediction, False

    def forward(self, x, t, text, keep=None, x0_estimate=None):
        x0 = self.x0.expand_as(x)
        a = self.sched._at(t, x)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return self.sched.target(x0, eps, t, self.prediction)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samplers_recover_the_one_image_an_oracle_knows(world, prediction, sampler):
    model = dm.DiffusionModel(dm.DiffusionConfig(**TINY, prediction=prediction, ema_decay=0.0), world, device="cpu")
    x0 = world.render({"color": "red", "object": "apple", "relation": "on the table", "size": "large"}, seed=0)
    model.net = Oracle(model.schedule, x0.unsqueeze(0), prediction)
    out = model.generate([APPLE, BOX], n_per_caption=2, seed=0, steps=7, sampler=sampler, w=2.0)
    torch.testing.assert_close(out, x0.expand(4, -1, -1, -1), atol=2e-3, rtol=0)


@pytest.fixture(scope="module")
def trained(world, pool):
    """A tiny pixel-space model trained for 60 steps (a few seconds)."""
    return train_tiny(dm.DiffusionModel, dm.DiffusionConfig(**TINY, lr=3e-3), world, pool, steps=60)


def test_training_lowers_the_loss_and_keeps_a_history(trained):
    h = trained.history
    assert h["steps"] == 60 and trained.steps_done == 60 and len(h["loss"]) == len(h["step"]) == 7
    assert min(h["loss"][-3:]) < 0.7 * h["loss"][0]
    assert h["lr"][0] < h["lr"][2]                                          # warm-up


def test_generate_shape_determinism_and_independence(trained):
    out = trained.generate([APPLE, BOX], n_per_caption=2, seed=3, steps=4)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, trained.generate([APPLE, BOX], n_per_caption=2, seed=3, steps=4))
    assert not torch.equal(out[0], out[1])
    # an image depends on its own caption, seed and position only, for both samplers
    for sampler in ("ddim", "ddpm"):
        alone = trained.generate([APPLE], n_per_caption=2, seed=3, steps=4, sampler=sampler)
        torch.testing.assert_close(trained.generate([APPLE, BOX, BOX], n_per_caption=2, seed=3, steps=4,
                                                    sampler=sampler)[:2], alone, atol=1e-4, rtol=0)
    # the two ways of writing the guidance weight give the same images
    torch.testing.assert_close(trained.generate([APPLE], 2, seed=1, steps=3, w=2.0),
                               trained.generate([APPLE], 2, seed=1, steps=3, guidance_scale=3.0))
    assert trained.evaluations_per_image(steps=10, w=2.0) == 20 and trained.evaluations_per_image(steps=10, w=0) == 10


def test_bad_sampling_options_get_clear_errors(trained):
    with pytest.raises(ValueError, match="guidance weight w must be at least 0"):
        trained.generate([APPLE], w=-0.5)
    with pytest.raises(ValueError, match="guidance_scale must be at least 1"):
        trained.generate([APPLE], guidance_scale=0.5)
    with pytest.raises(ValueError, match="either as w .* or as guidance_scale"):
        trained.generate([APPLE], w=1.0, guidance_scale=2.0)
    with pytest.raises(ValueError, match=r"steps \(sampler steps\) must be a positive integer, got 0"):
        trained.generate([APPLE], steps=0)
    with pytest.raises(ValueError, match="at most 1,000"):
        trained.generate([APPLE], steps=1001)
    with pytest.raises(TypeError, match="steps .* must be an integer"):
        trained.generate([APPLE], steps=2.5)
    with pytest.raises(ValueError, match="unknown sampler 'euler'; choose one of: ddim, ddpm"):
        trained.generate([APPLE], sampler="euler")
    with pytest.raises(TypeError, match="got an unexpected keyword argument 'guidance'"):
        trained.generate([APPLE], guidance=2.0)


def test_config_errors():
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        dm.DiffusionConfig(prediction="score")
    with pytest.raises(ValueError, match="unknown space 'pixels'"):
        dm.DiffusionConfig(space="pixels")
    with pytest.raises(ValueError, match="cannot be halved 3 times"):
        dm.DiffusionConfig(space="latent", latent_size=4, channels=(8, 16, 32, 64))
    with pytest.raises(ValueError, match="guidance"):
        dm.DiffusionConfig(guidance=-1)
    with pytest.raises(ValueError, match="latent_size must be 1"):
        dm.DiffusionConfig(space="latent", latent_size=2)


def test_checkpoint_round_trip(trained, tmp_path):
    path = tmp_path / "diffusion.pt"
    trained.save(path)
    again = load_model(path, device="cpu")
    assert isinstance(again, dm.DiffusionModel) and again.steps_done == trained.steps_done
    torch.testing.assert_close(again.generate([BOX], 2, seed=5, steps=3), trained.generate([BOX], 2, seed=5, steps=3))
    assert again.history["loss"] == trained.history["loss"]
    other = dm.DiffusionModel(dm.DiffusionConfig(**TINY, lr=3e-3, prediction="eps"), trained.world, device="cpu")
    with pytest.raises(CheckpointError, match="prediction"):
        other.load_weights(path)


def test_latent_model_trains_its_autoencoder_first(world, pool, tmp_path):
    torch.manual_seed(0)
    model = dm.DiffusionModel(dm.DiffusionConfig(**TINY_LATENT), world, device="cpu")
    hist = model.fit(pool, mm.TrainConfig(steps=3, batch_size=8, seed=0, progress=False))
    assert hist["autoencoder"]["steps"] == 5 and bool(model.ae_trained)
    assert model.autoencoder.scale.item() != 1.0
    out = model.generate([APPLE], n_per_caption=2, seed=0, steps=2)
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    path = tmp_path / "latent.pt"
    model.save(path)
    again = dm.DiffusionModel.load(path, device="cpu")
    torch.testing.assert_close(again.generate([APPLE], 2, seed=0, steps=2), out)
    # a second fit continues the denoiser and keeps the trained autoencoder
    hist2 = model.fit(pool, mm.TrainConfig(steps=2, batch_size=8, seed=1, progress=False))
    assert "autoencoder" not in hist2 and model.steps_done == 5


def test_noise_streams_make_x_T(trained):
    """generate's x_T for image i is the first draw of stream (seed, i)."""
    x_T = NoiseStreams(7, 0, 2).randn(*trained.config.data_shape)
    first = torch.randn(trained.config.data_shape, generator=torch.Generator().manual_seed(7 * 1_000_003))
    assert torch.equal(x_T[0], first)
    assert math.isclose(float(x_T.std()), 1.0, abs_tol=0.1)
