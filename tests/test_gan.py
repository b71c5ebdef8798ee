"""The conditional GAN: sampling, input checks, checkpoints, and recovery from divergence."""

import random

import pytest
import torch

import mmtutor as mm
from mmtutor.gan import ConditionalGAN
from mmtutor.loop import TrainingDiverged
from mmtutor.checkpoint import CheckpointError

APPLE = "a red apple on the table"
BOX = "a large blue box under the table"


def _finite(module_or_state) -> bool:
    state = module_or_state.state_dict() if hasattr(module_or_state, "state_dict") else module_or_state
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _load_without_field(gan, tmp_path, field: str):
    """Save ``gan``, drop ``field`` from the saved config (a checkpoint written before the field
    existed) and load it back."""
    path = tmp_path / "old.pt"
    gan.save(path)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["model"][field]
    torch.save(ckpt, path)
    return ConditionalGAN.load(path, device="cpu")


# ------------------------------------------------------------------------ sampling
def test_generate_shape_range_and_determinism(trained_gan):
    images = trained_gan.generate([APPLE, BOX], n_per_caption=3, seed=0)
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, trained_gan.generate([APPLE, BOX], n_per_caption=3, seed=0))
    assert not torch.equal(images, trained_gan.generate([APPLE, BOX], n_per_caption=3, seed=1))
    # different noise, one caption: different images
    assert not torch.equal(images[0], images[1])


def test_generate_is_grouped_by_caption(trained_gan):
    z = torch.randn(4, trained_gan.config.z_dim, generator=torch.Generator().manual_seed(3))
    both = trained_gan.generate_from([APPLE, APPLE, BOX, BOX], z)
    apple = trained_gan.generate_from([APPLE, APPLE], z[:2])
    torch.testing.assert_close(both[:2], apple, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"z must be a tensor of shape \(4, 64\)"):
        trained_gan.generate_from([APPLE, APPLE, BOX, BOX], z[:3])
    # generate's images are grouped by caption, each from its own noise stream (captions as given:
    # with completion, generate first fills in the size each caption leaves out)
    grouped = trained_gan.generate([APPLE, BOX], n_per_caption=2, seed=3, complete=False)
    torch.testing.assert_close(grouped, trained_gan.generate_from([APPLE, APPLE, BOX, BOX], trained_gan.noise(4, 3)),
                               atol=1e-5, rtol=1e-5)


def test_an_image_does_not_depend_on_the_other_captions(trained_gan):
    alone = trained_gan.generate([APPLE], n_per_caption=3, seed=7)
    batched = trained_gan.generate([APPLE, BOX, APPLE], n_per_caption=3, seed=7)
    torch.testing.assert_close(batched[:3], alone, atol=1e-5, rtol=1e-5)


def test_an_image_does_not_depend_on_the_chunk_size(trained_gan, monkeypatch):
    default = trained_gan.generate([APPLE, BOX], n_per_caption=4, seed=9)
    monkeypatch.setattr(mm.text2image, "GENERATE_CHUNK", 3)          # 8 images in passes of 3, 3, 2
    torch.testing.assert_close(trained_gan.generate([APPLE, BOX], n_per_caption=4, seed=9), default,
                               atol=1e-5, rtol=1e-5)


def test_interpolate(trained_gan):
    out = trained_gan.interpolate(APPLE, BOX, steps=5, n=2, seed=4)
    assert out.shape == (10, 3, 32, 32) and torch.isfinite(out).all()
    # the walk starts at caption a and ends at caption b (same noise as generate with that seed)
    a = trained_gan.generate([APPLE], n_per_caption=2, seed=4, complete=False)     # the walk reads captions as given
    b = trained_gan.generate([BOX], n_per_caption=2, seed=4, complete=False)
    torch.testing.assert_close(out[0], a[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[4], b[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[5], a[1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="steps must be an integer >= 2, got 1"):
        trained_gan.interpolate(APPLE, BOX, steps=1)


def test_discriminate_gives_probabilities(trained_gan, world):
    images, captions, _ = world.sample(6, seed=0)
    p = trained_gan.discriminate(images, captions)
    assert p.shape == (6,)
    assert (p > 0).all() and (p < 1).all()
    with pytest.raises(ValueError, match="6 images but 5 captions"):
        trained_gan.discriminate(images, captions[:5])


@pytest.mark.parametrize("n", [0, -2])
def test_generate_rejects_bad_n_per_caption(trained_gan, n):
    with pytest.raises(ValueError, match=f"n_per_caption must be a positive integer, got {n!r}"):
        trained_gan.generate([APPLE], n_per_caption=n)


@pytest.mark.parametrize("n", [1.5, "2", True, None, 2.0])
def test_generate_rejects_non_integer_n_per_caption(trained_gan, n):
    with pytest.raises(TypeError, match="n_per_caption must be an integer"):
        trained_gan.generate([APPLE], n_per_caption=n)


def test_generate_accepts_numpy_integers(trained_gan):
    np = pytest.importorskip("numpy")
    assert trained_gan.generate([APPLE], n_per_caption=np.int64(2)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("captions, error, message", [
    ([""], ValueError, "empty or whitespace"),
    (["  "], ValueError, "empty or whitespace"),
    ([], ValueError, "at least one caption"),
    (APPLE, TypeError, "single string"),
    (["a big red on the table"], ValueError, "names no object; name one of: apple"),
    (["a red zebra on the table"], ValueError, "names no object; name one of: apple"),
])
def test_generate_rejects_bad_captions(trained_gan, captions, error, message):
    with pytest.raises(error, match=message):
        trained_gan.generate(captions)


def test_minilm_gan_accepts_unknown_words(trained_gan):
    """MiniLM has an open vocabulary: an extra word is fine as long as the scene has an object."""
    out = trained_gan.generate(["a shiny red apple on the wooden table"], n_per_caption=1)
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("images, error, message", [
    (torch.zeros(2, 1, 32, 32), ValueError, "3 colour channels"),
    (torch.zeros(2, 3, 16, 16), ValueError, "32x32"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), TypeError, "floating-point"),
    (torch.zeros(3, 32, 32), ValueError, "unsqueeze"),
])
def test_bad_images_are_rejected_everywhere(trained_gan, judge, images, error, message):
    with pytest.raises(error, match="ConditionalGAN.discriminate.*" + message):
        trained_gan.discriminate(images, [APPLE] * len(images))
    with pytest.raises(error, match="Judge.*" + message):
        judge.predict(images)


def test_gan_needs_aligner_for_clip_and_bert(world, smoke):
    for enc in ("clip", "bert"):
        with pytest.raises(ValueError, match="needs the trained dual encoder"):
            ConditionalGAN(mm.zoo.gan_config(world, smoke, text_encoder=enc), world, device="cpu")


def test_gan_rejects_image_size_mismatch(world):
    with pytest.raises(ValueError, match="image_size=64 but the world renders 32x32"):
        ConditionalGAN(mm.GANConfig(image_size=64), world, device="cpu")


@pytest.mark.parametrize("enc", ["clip", "bert"])
def test_closed_vocabulary_gan_names_the_unknown_word(make_gan, aligner, enc):
    gan = make_gan(aligner=aligner, text_encoder=enc)
    assert gan.generate([APPLE], n_per_caption=2).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="'zebra'"):
        gan.generate(["a red zebra on the table"])
    with pytest.raises(ValueError, match="'shiny'"):
        gan.generate(["a shiny red apple"])


def test_attention_gan_generates_and_trains(make_gan, pool):
    gan = make_gan(fusion="attention")
    hist = gan.fit(pool, steps=3, batch_size=8, seed=0, bf16=False, log_every=1, progress=False)
    assert len(hist["d_loss"]) == 3 and all(torch.isfinite(torch.tensor(hist["d_loss"] + hist["g_loss"])))
    out = gan.generate([APPLE, BOX], n_per_caption=2)
    assert out.shape == (4, 3, 32, 32)
    w = gan.sampler.fusions[0].last_weights
    assert w.shape[:2] == (4, 16)                              # (B, 4*4 positions, L words)
    torch.testing.assert_close(w.sum(-1), torch.ones(4, 16))


@pytest.mark.parametrize("recipe", ["ablation", "reed2016"])
def test_other_recipes_train(world, smoke, pool, recipe):
    gan = ConditionalGAN(mm.zoo.gan_config(world, smoke, recipe=recipe), world, device="cpu")
    assert gan.G_ema is None and gan.sampler is gan.G
    hist = gan.fit(pool, steps=3, batch_size=8, seed=0, bf16=False, log_every=1, progress=False)
    assert hist["steps"] == 3 and gan.steps_done == 3
    assert all(0 < p < 1 for p in hist["p_real"] + hist["p_fake"])


def test_fit_is_deterministic_under_seed(make_gan, pool):
    outs = []
    for _ in range(2):
        gan = make_gan()
        gan.fit(pool, steps=3, batch_size=8, seed=5, bf16=False, log_every=1, progress=False)
        outs.append(gan.generate([APPLE], n_per_caption=2, seed=0))
    assert torch.equal(outs[0], outs[1])


def test_fit_rejects_bad_arguments(make_gan, pool):
    gan = make_gan()
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        gan.fit(pool, steps=0, progress=False)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 2, got 1"):
        gan.fit(pool, steps=1, batch_size=1, progress=False)
    other = mm.PairPool(mm.World(image_size=64), n_images=4, captions_per_combo=1)
    with pytest.raises(ValueError, match="renders 64x64 images, this GAN makes 32x32"):
        gan.fit(other, steps=1, progress=False)


# ------------------------------------------------------------------------ checkpoints
def test_save_load_round_trip(trained_gan, gan_checkpoint):
    loaded = ConditionalGAN.load(gan_checkpoint, device="cpu")
    assert loaded.config == trained_gan.config
    assert loaded.steps_done == trained_gan.steps_done
    assert loaded.history == {"note": "session"}
    for seed in (0, 9):
        assert torch.equal(loaded.generate([APPLE, BOX], n_per_caption=2, seed=seed),
                           trained_gan.generate([APPLE, BOX], n_per_caption=2, seed=seed))


def test_load_weights_into_same_config(make_gan, trained_gan, gan_checkpoint):
    gan = make_gan()
    assert not torch.equal(gan.generate([APPLE], 2), trained_gan.generate([APPLE], 2))
    gan.load_weights(gan_checkpoint)
    assert torch.equal(gan.generate([APPLE], 2), trained_gan.generate([APPLE], 2))


@pytest.mark.parametrize("override, field", [({"z_dim": 32}, "z_dim"), ({"fusion": "attention"}, "fusion"),
                                             ({"loss": "bce"}, "loss")])
def test_load_weights_with_other_config_names_the_field(make_gan, gan_checkpoint, override, field):
    gan = make_gan(**override)
    with pytest.raises(CheckpointError, match=f"saved with {field}=.*but this model has {field}="):
        gan.load_weights(gan_checkpoint)


def test_truncated_checkpoint(gan_checkpoint, make_gan, tmp_path):
    data = gan_checkpoint.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable mmtutor checkpoint"):
        ConditionalGAN.load(bad)
    with pytest.raises(CheckpointError, match="truncated, corrupted"):
        make_gan().load_weights(bad)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_checkpoint(tmp_path, seed):
    bad = tmp_path / "noise.pt"
    bad.write_bytes(random.Random(seed).randbytes(4096))
    with pytest.raises(CheckpointError, match=f"{bad.name} is not .*mmtutor checkpoint"):
        ConditionalGAN.load(bad)


def test_missing_checkpoint(tmp_path, make_gan):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        ConditionalGAN.load(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        make_gan().load_weights(tmp_path / "nope.pt")


def test_clip_gan_checkpoint_carries_the_aligner(make_gan, aligner, tmp_path):
    gan = make_gan(aligner=aligner, text_encoder="clip")
    gan.save(tmp_path / "clip.pt")
    loaded = ConditionalGAN.load(tmp_path / "clip.pt", device="cpu")
    assert loaded.text.aligner is not None
    assert torch.equal(loaded.generate([APPLE, BOX], 2, seed=1), gan.generate([APPLE, BOX], 2, seed=1))
    with pytest.raises(ValueError, match="'zebra'"):
        loaded.generate(["a zebra"])


# ------------------------------------------------------------------------ divergence
def _break_generator_at(step):
    """A fit() callback that writes NaN into a generator weight after step ``step``."""
    def callback(gan, i):
        if i == step:
            with torch.no_grad():
                gan.G.to_rgb[0].weight.fill_(float("nan"))
    return callback


def _check_recovered(gan, path, steps_done):
    assert _finite(gan.G) and _finite(gan.D) and _finite(gan.sampler), "restored weights hold NaN/inf"
    assert gan.steps_done == steps_done
    out = gan.generate([APPLE, BOX], n_per_caption=2)
    assert torch.isfinite(out).all()
    saved = ConditionalGAN.load(path, device="cpu")
    assert _finite(saved.G) and _finite(saved.D) and _finite(saved.sampler), "checkpoint file holds NaN/inf"
    assert saved.steps_done == steps_done
    assert torch.equal(saved.generate([APPLE], 2), gan.generate([APPLE], 2))
    for k, v in saved.G.state_dict().items():
        assert torch.equal(v, gan.G.state_dict()[k]), k


@pytest.mark.parametrize("break_at, match, steps_done", [
    # checkpoints after steps 2 and 4 (i = 1, 3); weights broken after i = 4; the next D loss is NaN
    (4, r"loss became (nan|inf).*restored", 4),
    # weights that break on the very step that ends a checkpoint interval must not become the
    # 'last good' state (nor be written to the checkpoint file)
    (3, r"(loss|weight) became (nan|inf|NaN)", 2),
], ids=["between-checkpoints", "on-a-checkpoint-step"])
def test_divergence_restores_the_last_good_state(make_gan, pool, tmp_path, break_at, match, steps_done):
    gan = make_gan()
    path = tmp_path / "gan.pt"
    with pytest.raises(TrainingDiverged, match=match):
        gan.fit(pool, steps=20, batch_size=8, seed=0, bf16=False, progress=False, checkpoint=str(path),
                checkpoint_every=2, callback=_break_generator_at(break_at))
    _check_recovered(gan, path, steps_done=steps_done)


def test_absurd_learning_rates_are_refused(world, smoke):
    with pytest.raises(ValueError, match=r"lr_g must be in \(0, 1\], got 1e\+30"):
        mm.zoo.gan_config(world, smoke, lr_g=1e30)


def test_conditioning_augmentation_is_checked_and_off_by_default(world, smoke):
    with pytest.raises(ValueError, match=r"text_noise must be in \[0(\.0)?, 10(\.0)?\], got -0.1"):
        mm.zoo.gan_config(world, smoke, text_noise=-0.1)
    for recipe in ("book", "reed2016", "ablation"):            # off unless asked for
        assert mm.zoo.gan_config(world, smoke, recipe=recipe).text_noise == 0


def test_conditioning_augmentation_feeds_g_noisy_features_that_pairs_share(make_gan, pool):
    """G's caption features differ from the bank's by Gaussian noise of std text_noise, and the
    two images of a diversity pair still share one condition; D reads the clean features."""
    gan = make_gan(text_noise=0.5)
    seen = {}
    real_g, real_d = gan._generator_step, gan._discriminator_step
    def g_step(G, D, opt, z, g_text, layout, *a):
        seen["g"], seen["layout"] = g_text.pooled.detach().clone(), layout
        return real_g(G, D, opt, z, g_text, layout, *a)
    def d_step(G, D, opt, real, text, text_wrong, *a):
        seen["d"] = text.pooled.detach().clone()
        return real_d(G, D, opt, real, text, text_wrong, *a)
    gan._generator_step, gan._discriminator_step = g_step, d_step
    gan.fit(pool, steps=1, batch_size=16, seed=0, bf16=False, progress=False)
    layout = seen["layout"]
    clean = seen["d"][layout.caption_source]
    first = layout.first                                   # a pair: positions first and first + 1
    noise = (seen["g"] - clean)[first]
    assert 0.3 < float(noise.std()) < 0.7
    torch.testing.assert_close(seen["g"][first], seen["g"][first + 1])
    bank = gan.condition(pool.captions)
    assert any(torch.allclose(row, b) for row in seen["d"][:1] for b in bank.pooled)   # D: clean features


def test_broken_starting_weights_are_refused_before_training(make_gan, pool, tmp_path):
    gan = make_gan()
    with torch.no_grad():
        gan.D.trunk[0].bias.fill_(float("inf"))           # D is broken before training starts
    path = tmp_path / "gan.pt"
    with pytest.raises(TrainingDiverged, match=r"before step 0.*NaN/inf") as info:
        gan.fit(pool, steps=20, batch_size=8, seed=0, bf16=False, progress=False, checkpoint=str(path))
    assert "lr_g=" in str(info.value)
    assert not path.exists()                               # nothing broken was written
    assert gan.steps_done == 0


def test_linear_decay_schedule():
    from mmtutor.gan import linear_decay
    assert [linear_decay(p, 0.5) for p in (0.0, 0.25, 0.5, 0.75, 1.0)] == pytest.approx([1, 1, 1, 0.5, 0])
    assert linear_decay(0.99, 0.0) == 1.0                       # share 0: constant rates
    assert linear_decay(1.2, 0.5) == 0.0                        # past the end (a time budget): never negative


@pytest.mark.parametrize("decay, factors", [(0.5, (1, 1, 1, 0.5)), (0.0, (1, 1, 1, 1))])
def test_lr_decay_reaches_both_optimisers(make_gan, pool, monkeypatch, decay, factors):
    lrs = []
    step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        lrs.append((self.param_groups[0]["params"][0], self.param_groups[0]["lr"]))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    gan = make_gan(lr_decay=decay)
    gan.fit(pool, steps=4, batch_size=16, seed=0, bf16=False, progress=False)
    ours = {id(p) for p in [*gan.G.parameters(), *gan.D.parameters()]}
    lrs = [lr for first, lr in lrs if id(first) in ours]     # G's and D's (the token readout's fit uses Adam too)
    cfg = gan.config
    assert lrs[0::2] == pytest.approx([cfg.lr_d * f for f in factors])    # D's step, then G's, every step
    assert lrs[1::2] == pytest.approx([cfg.lr_g * f for f in factors])


def test_published_recipes_keep_constant_rates():
    assert mm.GANConfig().lr_decay == 0.5
    assert mm.GANConfig.reed2016().lr_decay == 0.0 and mm.GANConfig.ablation().lr_decay == 0.0
    with pytest.raises(ValueError, match="lr_decay"):
        mm.GANConfig(lr_decay=1.5)


# ------------------------------------------------------------------------ attribute classifier (AC-GAN)
def test_attribute_classifier_is_checked_and_on_in_the_book_only(world, smoke):
    with pytest.raises(ValueError, match=r"aux_weight must be .*got -1"):
        mm.GANConfig(aux_weight=-1)
    assert mm.GANConfig().aux_weight > 0
    assert mm.GANConfig.reed2016().aux_weight == 0 and mm.GANConfig.ablation().aux_weight == 0


def test_without_the_classifier_d_has_none(make_gan):
    gan = make_gan(aux_weight=0.0)
    assert gan.D.aux_head is None
    x = torch.zeros(2, 3, gan.config.image_size, gan.config.image_size)
    with pytest.raises(ValueError, match="no attribute classifier"):
        gan.D(x, torch.zeros(2, gan.text.dim), aux=True)


def test_attribute_classifier_reads_real_scenes_and_steers_g_by_the_caption(make_gan, pool):
    """D's classifier learns every attribute of the real images (their whole scene); G's targets
    are what each caption names (-1 where it leaves an attribute out, all -1 for interpolated
    captions), shared by the two images of a pair; the classifier's weights train."""
    gan = make_gan(aux_weight=1.0, unstated_weight=0.25)
    n_values = tuple(len(v) for v in pool.world.attributes.values())
    assert gan.D.n_values == n_values and gan.D.aux_head[-1].out_features == sum(n_values)
    seen = {}
    real_g, real_d = gan._generator_step, gan._discriminator_step

    def g_step(G, D, opt, z, g_text, layout, div_target, bf16, g_attrs, g_unstated, shares):
        seen["g_attrs"], seen["layout"], seen["g_unstated"], seen["shares"] = g_attrs.clone(), layout, g_unstated, shares
        return real_g(G, D, opt, z, g_text, layout, div_target, bf16, g_attrs, g_unstated, shares)

    def d_step(G, D, opt, real, text, text_wrong, z, bf16, real_attrs):
        seen["real_attrs"] = real_attrs.clone()
        return real_d(G, D, opt, real, text, text_wrong, z, bf16, real_attrs)

    gan._generator_step, gan._discriminator_step = g_step, d_step
    before = gan.D.aux_head[-1].parametrizations.weight.original.detach().clone()
    gan.fit(pool, steps=2, batch_size=16, seed=0, bf16=False, progress=False)
    layout, g_attrs = seen["layout"], seen["g_attrs"]
    assert seen["real_attrs"].shape == (16, 4) and (seen["real_attrs"] >= 0).all()
    assert len(layout.interp) and (g_attrs[layout.interp] == -1).all()
    named = torch.ones(16, dtype=torch.bool)
    named[layout.interp] = False
    assert (g_attrs[named] >= 0).any(1).all()                  # every caption names something
    rows = {tuple(r) for r in pool.caption_attrs.tolist()}
    assert all(tuple(r) in rows for r in g_attrs[named].tolist())   # each is a caption's parse
    torch.testing.assert_close(g_attrs[layout.first], g_attrs[layout.first + 1])
    assert not torch.equal(before, gan.D.aux_head[-1].parametrizations.weight.original)
    # what each caption leaves out (never an interpolation's), and the real images' shares of each value
    unstated = seen["g_unstated"]
    assert unstated.dtype == torch.bool and not unstated[layout.interp].any()
    assert torch.equal(unstated[named], g_attrs[named] < 0)
    assert [q.tolist() for q in seen["shares"]] == list(pool.attribute_shares().values())


def test_unstated_term_is_checked_off_in_the_book_and_for_old_checkpoints(make_gan, pool, tmp_path):
    with pytest.raises(ValueError, match=r"unstated_weight must be .*got -0.5"):
        mm.GANConfig(unstated_weight=-0.5)
    assert mm.GANConfig().unstated_weight == 0                       # measured, not kept (gan.py says why)
    with pytest.raises(ValueError, match=r"pairs only with diversity_weight > 0 or pair_weight > 0: set unstated_weight=0"):
        mm.GANConfig(diversity_weight=0.0, unstated_weight=0.25)  # no pairs: no second image of a caption
    with pytest.raises(ValueError, match=r"aux_weight=0 leaves D without one: set unstated_weight=0 as well"):
        mm.GANConfig(aux_weight=0.0, unstated_weight=0.25)
    seen = []
    gan = make_gan(aux_weight=1.0)                                   # off: G's step gets no mask
    real_g = gan._generator_step
    gan._generator_step = lambda *a: seen.append(a[9]) or real_g(*a)
    gan.fit(pool, steps=1, batch_size=16, seed=0, bf16=False, progress=False)
    assert seen == [None]
    # a checkpoint written before the term: it trained without it
    assert _load_without_field(gan, tmp_path, "unstated_weight").config.unstated_weight == 0.0


def test_unstated_term_changes_what_g_learns(make_gan, pool):
    """Same seed, same batches: with the term on, the generator's weights end elsewhere."""
    on, off = make_gan(aux_weight=1.0, unstated_weight=1.0), make_gan(aux_weight=1.0, unstated_weight=0.0)
    masks, real_g = [], on._generator_step
    on._generator_step = lambda *a: masks.append(a[9]) or real_g(*a)
    for gan in (on, off):
        gan.fit(pool, steps=2, batch_size=16, seed=0, bf16=False, progress=False)
    assert any(m.any() for m in masks)                         # these batches hold captions without a size
    assert any(not torch.equal(a, b) for a, b in zip(on.G.state_dict().values(), off.G.state_dict().values()))


def test_a_checkpoint_from_before_the_classifier_loads_without_it(make_gan, tmp_path):
    """Checkpoints written before ``aux_weight`` existed hold no classifier weights and no such
    config field: they load as what they were trained as (aux_weight=0), not as today's default."""
    old = make_gan(aux_weight=0.0)
    loaded = _load_without_field(old, tmp_path, "aux_weight")
    assert loaded.config.aux_weight == 0.0 and loaded.D.aux_head is None
    torch.testing.assert_close(loaded.generate([APPLE], n_per_caption=2, seed=1), old.generate([APPLE], n_per_caption=2, seed=1))


# ------------------------------------------------------------------------ the code for what captions leave out
def test_unstated_code_is_on_in_the_book_and_refused_where_it_cannot_work():
    assert mm.GANConfig().unstated_code is True                      # readout + classifier: on
    assert mm.GANConfig.ablation().unstated_code is False            # no classifier to train it
    assert mm.GANConfig.reed2016().unstated_code is False            # no readout to move
    assert mm.GANConfig(unstated_weight=0.25).unstated_code is False  # the other way to spread sizes
    with pytest.raises(ValueError, match=r"needs a readout and the classifier \(got text_readout='none', aux_weight=2.0\)"):
        mm.GANConfig(unstated_code=True, text_readout="none")
    with pytest.raises(ValueError, match=r"aux_weight=0.0\); set unstated_code=False or leave it unset"):
        mm.GANConfig(unstated_code=True, aux_weight=0.0)
    with pytest.raises(ValueError, match=r"use one of them \(unstated_weight=0, or unstated_code=False\)"):
        mm.GANConfig(unstated_code=True, unstated_weight=0.25)


def test_codes_follow_the_noise_and_the_shares(make_gan, pool):
    gan = make_gan()
    gan.fit(pool, steps=1, batch_size=16, seed=0, bf16=False, progress=False)
    shares = list(pool.attribute_shares().values())
    torch.testing.assert_close(gan.code_shares, torch.tensor(sum(shares, [])))   # fit() keeps the data's shares
    z = torch.randn(40000, gan.config.z_dim, generator=torch.Generator().manual_seed(0))
    codes = gan.codes(z)
    assert codes.shape == (40000, 4) and codes.dtype == torch.long
    for a, q in enumerate(shares):                                   # Phi(z_a) is uniform: each value as often as in the data
        freq = torch.bincount(codes[:, a], minlength=len(q)).float() / len(z)
        assert (freq - torch.tensor(q)).abs().max() < 0.01, (a, freq, q)
    z[:, 3] = -8.0                                                   # the code reads coordinate 3 for the size
    assert (gan.codes(z)[:, 3] == 0).all()
    z[:, 3] = 8.0
    assert (gan.codes(z)[:, 3] == 1).all()


def test_coded_moves_only_the_unstated_probability(make_gan, pool):
    gan = make_gan()
    gan.fit(pool, steps=1, batch_size=16, seed=0, bf16=False, progress=False)
    enc = gan.text
    part = enc._parts()[-1]
    named, unnamed = "a large red apple on the table", APPLE
    z = torch.randn(2, gan.config.z_dim, generator=torch.Generator().manual_seed(1))
    z[0, 3], z[1, 3] = -3.0, 3.0                                     # draws small, then large
    text = gan.condition([unnamed, unnamed])
    probs = lambda t: t.pooled[:, part] * enc.out_std[part] + enc.out_mean[part]
    before, after = probs(text), probs(gan.coded(text, z))
    size = slice(-3, None)                                           # small, large, unstated
    assert before[:, -1].min() > 0.5                                 # the readout sees no size
    torch.testing.assert_close(after[:, size].sum(1), before[:, size].sum(1))
    assert after[:, -1].abs().max() < 1e-5
    torch.testing.assert_close(after[0, -3], before[0, -3] + before[0, -1])     # onto "small"
    torch.testing.assert_close(after[1, -2], before[1, -2] + before[1, -1])     # onto "large"
    # the other attributes are named: only their tiny "unstated" probabilities move
    torch.testing.assert_close(after[:, :-3], before[:, :-3], atol=1e-3, rtol=0)
    for a, k in enumerate(enc.readout[:-1]):
        first = sum(j + 1 for j in enc.readout[:a])
        assert after[:, first + k].abs().max() < 1e-5
    stated = gan.condition([named, named])                           # a size named: nearly nothing to move
    torch.testing.assert_close(gan.coded(stated, z).pooled, stated.pooled, atol=0.05, rtol=0)
    off = make_gan(unstated_code=False)
    assert not hasattr(off, "code_shares") and off.coded(text, z) is text
    with pytest.raises(ValueError, match=r"draws nothing from its noise \(unstated_code=False\)"):
        off.codes(z)


def test_g_is_trained_to_draw_its_code(make_gan, pool, monkeypatch):
    """For a caption without a size the classifier term's target is the size G's noise drew; for
    a caption that names one, the caption's size."""
    gan = make_gan()
    caps, seen = [], []
    real_batch, real_g = pool.batch, gan._generator_step
    monkeypatch.setattr(pool, "batch", lambda *a: (lambda out: caps.append(out[1]) or out)(real_batch(*a)))
    gan._generator_step = lambda *a: seen.append((a[3].cpu(), a[5], a[8].cpu())) or real_g(*a)
    gan.fit(pool, steps=3, batch_size=16, seed=0, bf16=False, progress=False)
    drawn = 0
    for cap, (z, layout, g_attrs) in zip(caps, seen):
        written = pool.caption_attrs[cap[layout.caption_source]]     # what each row's caption names
        rows = torch.ones(len(z), dtype=torch.bool)
        rows[layout.interp] = False
        assert (g_attrs[layout.interp] == -1).all()                  # an interpolation names nothing
        unnamed = rows & (written[:, 3] < 0)
        assert torch.equal(g_attrs[unnamed, 3], gan.codes(z)[unnamed, 3])
        assert torch.equal(g_attrs[rows & ~unnamed], written[rows & ~unnamed])
        drawn += int(unnamed.sum())
    assert len(seen) == 3 and drawn > 0                              # these batches held captions without a size


def test_a_checkpoint_from_before_the_code_loads_without_it(make_gan, tmp_path):
    old = make_gan(unstated_code=False)
    loaded = _load_without_field(old, tmp_path, "unstated_code")
    assert loaded.config.unstated_code is False
    torch.testing.assert_close(loaded.generate([APPLE], n_per_caption=2, seed=1, complete=False),
                               old.generate([APPLE], n_per_caption=2, seed=1, complete=False))
