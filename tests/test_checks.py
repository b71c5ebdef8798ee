"""Bad input gets a clear answer everywhere (issue: "no silent wrong results, no tracebacks").

Our own list of bad inputs, by class, against every public entry point that takes that kind
of input. Each must raise an error whose message names the problem and what is allowed --
or be a documented acceptance, tested as such (float16/float64 images are converted; numpy
integers are integers)."""

import math
import warnings

import numpy as np
import pytest
import torch

import mmtutor as mm
from mmtutor import checks
from mmtutor.checks import ImageRangeWarning

APPLE = "a red apple on the table"


def _images(world, n=2, seed=0):
    return world.sample(n, seed=seed)[0]


# ------------------------------------------------------------------------ the image checker
BAD_IMAGES = [
    # (make images from good ones, error type, message)
    (lambda x: x.numpy(), TypeError, "torch.Tensor.*ndarray.*torch.as_tensor"),
    (lambda x: x.tolist(), TypeError, "torch.Tensor.*list"),
    (lambda x: None, (TypeError, ValueError), "torch.Tensor.*NoneType|needs images, captions or both"),
    (lambda x: ((x + 1) * 127.5).round().to(torch.uint8), TypeError, "uint8.*x.float\\(\\) / 127.5 - 1"),
    (lambda x: x > 0, TypeError, "floating-point"),
    (lambda x: x[0], ValueError, "unsqueeze\\(0\\)"),
    (lambda x: x[:, :1], ValueError, "3 colour channels"),
    (lambda x: x.permute(0, 2, 3, 1), ValueError, "channels last\\? use x.permute\\(0, 3, 1, 2\\)"),
    (lambda x: x[:0], ValueError, "empty batch"),
    (lambda x: x[:, :, :16, :16], ValueError, "32x32.*16x16.*interpolate"),
    (lambda x: x.clone().index_fill_(0, torch.tensor([1]), float("nan")), ValueError, "non-finite.*NaN"),
    (lambda x: x.clone().fill_(float("inf")), ValueError, "non-finite.*\\+inf"),
    (lambda x: x.clone().fill_(float("-inf")), ValueError, "non-finite.*-inf"),
    (lambda x: (x + 1) * 127.5, ValueError, "\\[0, 255\\] images: convert with x / 127.5 - 1"),
    (lambda x: x * 3, ValueError, "values in \\[-1, 1\\].*clamp or rescale"),
]


def _entry_points(world, judge, trained_gan, aligner):
    """Every public function that takes images, as (name, callable(images))."""
    enc = mm.vision.ImageEncoder(world.image_size).eval()
    return [
        ("ImageEncoder", lambda x: enc(x)),
        ("DualEncoder.encode", lambda x: aligner.encode(images=x)),
        ("DualEncoder.embed_images", lambda x: aligner.eval().embed_images(x)),
        ("Judge.predict", lambda x: judge.predict(x)),
        ("Judge.embed", lambda x: judge.embed(x)),
        ("Judge.probabilities", lambda x: judge.probabilities(x)),
        ("ConditionalGAN.discriminate", lambda x: trained_gan.discriminate(x, [APPLE] * len(x) if hasattr(x, "__len__") and len(x) else [APPLE])),
        ("train_judge(data=...)", lambda x: mm.judge.train_judge(world, steps=1, device="cpu", progress=False,
                                                                   data=(x, torch.zeros(len(x) if hasattr(x, "__len__") else 1, 4, dtype=torch.long)))),
    ]


@pytest.mark.parametrize("make, error, message", BAD_IMAGES)
def test_bad_images_are_refused_by_every_entry_point(world, judge, trained_gan, aligner, make, error, message):
    good = _images(world)
    bad = make(good)
    for name, call in _entry_points(world, judge, trained_gan, aligner):
        with pytest.raises(error, match=message):
            call(bad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.bfloat16])
def test_other_float_dtypes_are_converted(world, judge, trained_gan, dtype):
    """Documented acceptance: the same images in another float precision are converted to float32."""
    x = _images(world, 4)
    expected = judge.predict(x)
    got = judge.predict(x.to(dtype))
    assert (got == expected).float().mean() >= 0.75     # half precision may move a borderline pixel
    p = trained_gan.discriminate(x.to(dtype), [APPLE] * 4)
    assert p.dtype == torch.float32 and torch.isfinite(p).all()


def test_images_that_look_like_zero_one_range_warn(world, judge):
    x = (_images(world, 4) + 1) / 2                          # [0, 1] images: plausible but probably wrong
    with pytest.warns(ImageRangeWarning, match="convert them with x \\* 2 - 1"):
        judge.predict(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        judge.predict(_images(world, 4))                     # real renders: no warning


# ------------------------------------------------------------------------ captions
BAD_CAPTIONS = [
    (None, (TypeError, ValueError), "expects a list of captions \\(strings\\), got NoneType|needs images, captions"),
    (123, TypeError, "expects a list of captions \\(strings\\), got int 123"),
    (APPLE, TypeError, "got a single string; wrap it"),
    ([], ValueError, "at least one caption"),
    ([APPLE, None], TypeError, "caption 1 is a NoneType"),
    ([APPLE, 7], TypeError, "caption 1 is a int"),
    (["  "], ValueError, "caption 0 is empty or whitespace"),
    (["a big red on the table"], ValueError, "names no object; name one of: apple"),
    (["a red apple and a red box on the table"], ValueError, "names two objects"),
]


@pytest.mark.parametrize("captions, error, message", BAD_CAPTIONS)
def test_bad_captions_are_refused_by_every_entry_point(world, trained_gan, aligner, captions, error, message):
    images = _images(world, 1)
    calls = [("generate", lambda c: trained_gan.generate(c)),
             ("generate_from", lambda c: trained_gan.generate_from(c, torch.zeros(len(c) if isinstance(c, list) else 1, 64))),
             ("discriminate", lambda c: trained_gan.discriminate(images.expand(len(c) if isinstance(c, list) and c else 1, -1, -1, -1), c))]
    calls += [("real_images_for", lambda c: mm.metrics.real_images_for(world, c, 1)),
              ("caption_consistency", lambda c: mm.metrics.caption_consistency(trained_gan, None, world, c, 1))]
    if not message.startswith("names"):                      # the dual encoder reads text, it does not parse it
        calls.append(("DualEncoder.encode", lambda c: aligner.encode(captions=c)))
    for name, call in calls:
        with pytest.raises(error, match=message):
            call(captions)


def test_small_bert_refuses_captions_it_would_cut(world):
    bert = mm.text.SmallBert(world.vocabulary)
    long = " ".join(["a red apple on the table"] * 5)       # 30 words; it reads 22
    with pytest.raises(ValueError, match="has 30 words; this tokenizer reads at most 22"):
        bert.encode([long])


def test_minilm_refuses_captions_longer_than_it_reads(minilm):
    with pytest.raises(ValueError, match="caption 0 has \\d+ tokens; the pretrained MiniLM reads at most 512"):
        minilm.encode(["a red apple " + "very " * 600])


# ------------------------------------------------------------------------ counts and seeds
@pytest.mark.parametrize("n, error, message", [
    (0, ValueError, "must be a positive integer, got 0"),
    (-2, ValueError, "must be a positive integer, got -2"),
    (True, TypeError, "must be an integer, got the boolean True"),
    (1.5, TypeError, "must be an integer, got 1.5"),
    (2.0, TypeError, "must be an integer, got 2.0"),
    ("2", TypeError, "must be an integer, got '2'"),
    (None, TypeError, "must be an integer, got None"),
])
def test_bad_counts(world, trained_gan, n, error, message):
    for call in (lambda: trained_gan.generate([APPLE], n_per_caption=n),
                 lambda: world.sample(n),
                 lambda: mm.metrics.real_images_for(world, [APPLE], n),
                 lambda: mm.PairPool(world, n_images=n)):
        with pytest.raises(error, match=message):
            call()


def test_numpy_integers_are_integers(world, trained_gan):
    assert trained_gan.generate([APPLE], n_per_caption=np.int64(2), seed=np.int32(3)).shape == (2, 3, 32, 32)
    assert world.sample(np.int64(3), seed=np.int64(1))[0].shape == (3, 3, 32, 32)


def test_counts_too_large_for_memory_are_refused(world, trained_gan):
    with pytest.raises(ValueError, match="would need .* GiB for the images alone; this machine allows at most"):
        trained_gan.generate([APPLE], n_per_caption=10**9)
    with pytest.raises(ValueError, match="would need .* GiB"):
        world.sample(10**10)


@pytest.mark.parametrize("seed, error, message", [
    (-1, ValueError, "seed must be an integer >= 0, got -1"),
    (2**64, ValueError, "seed must be at most"),
    (1.5, TypeError, "seed must be an integer, got 1.5"),
    ("0", TypeError, "seed must be an integer, got '0'"),
])
def test_bad_seeds(world, trained_gan, seed, error, message):
    for call in (lambda: trained_gan.generate([APPLE], seed=seed),
                 lambda: world.sample(2, seed=seed),
                 lambda: world.render({"color": "red", "object": "apple", "relation": "on the table", "size": "small"},
                                      seed=seed),
                 lambda: mm.runtime.seed_everything(seed)):
        with pytest.raises(error, match=message):
            call()


# ------------------------------------------------------------------------ the world
@pytest.mark.parametrize("attrs, error, message", [
    (None, TypeError, "attributes must be a dict"),
    (APPLE, TypeError, "got the string .*use world.parse\\(caption\\)"),
    ({"color": "crimson", "object": "apple", "relation": "on the table", "size": "small"}, ValueError,
     "unknown color 'crimson'; choose one of: red"),
    ({"color": "red", "object": "apple", "relation": "on the table"}, ValueError, "missing attribute 'size'"),
    ([], ValueError, "at least one scene"),
    (42, TypeError, "dict of attributes or a list of them, got int"),
])
def test_render_bad_attributes(world, attrs, error, message):
    with pytest.raises(error, match=message):
        world.render(attrs)


def test_parse_refuses_non_strings_with_a_pointer(world):
    with pytest.raises(TypeError, match="a caption must be a string, got dict; to draw attributes, pass them to render"):
        world.parse({"color": "red"})


# ------------------------------------------------------------------------ metrics
def test_frechet_distance_names_nan_features():
    a = torch.randn(10, 4)
    b = a.clone()
    b[3, 1] = float("nan")
    with pytest.raises(ValueError, match="features b contain NaN or inf"):
        mm.metrics.frechet_distance(a, b)
    with pytest.raises(ValueError, match="at least 2 samples"):
        mm.metrics.frechet_distance(a[:1], a)
    with pytest.raises(ValueError, match="feature sizes differ"):
        mm.metrics.frechet_distance(a, a[:, :3])


def test_empty_inputs_to_metrics_are_errors(world):
    with pytest.raises(ValueError, match="non-empty"):
        mm.metrics.attribute_accuracy(torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, 4, dtype=torch.long),
                                      world.attributes)
    with pytest.raises(ValueError, match="at least one"):
        mm.align.retrieval_metrics(torch.zeros(0, 8), torch.zeros(0, 8), torch.zeros(0, 4), torch.zeros(0, 4))


# ------------------------------------------------------------------------ configs
@pytest.mark.parametrize("field, value, message", [
    ("z_dim", 0, "z_dim must be a positive integer, got 0"),
    ("g_channels", -4, "g_channels must be a positive integer"),
    ("d_feat", 1.5, "d_feat must be an integer"),
    ("lr_g", 0.0, "lr_g must be in \\(0, 1\\], got 0"),
    ("lr_d", float("nan"), "lr_d must be a finite number"),
    ("mismatch_weight", 1.5, "mismatch_weight must be in \\[0, 1\\], got 1.5"),
    ("interp_fraction", 1.0, "interp_fraction must be in \\[0, 1\\), got 1"),
    ("interp_fraction", 0.95, "leaves no room for the diversity term's pairs"),
    ("diversity_weight", -1.0, "diversity_weight must be at least 0"),
    ("betas", (0.5,), "betas must be two numbers"),
    ("betas", (0.5, 1.0), "betas\\[1\\] must be in \\[0, 1\\), got 1"),
    ("ema_decay", 1.0, "ema_decay must be in \\[0, 1\\), got 1"),
])
def test_gan_config_ranges(field, value, message):
    with pytest.raises((ValueError, TypeError), match=message):
        mm.GANConfig(**{field: value})


@pytest.mark.parametrize("kw, message", [
    ({"steps": 0}, "steps must be a positive integer, got 0"),
    ({"batch_size": 1}, "batch_size must be an integer >= 2, got 1"),
    ({"max_seconds": -1}, "max_seconds must be greater than 0, got -1"),
    ({"max_seconds": 0}, "max_seconds must be greater than 0, got 0"),
    ({"seed": -3}, "seed must be an integer >= 0"),
])
def test_train_config_ranges(kw, message):
    with pytest.raises(ValueError, match=message):
        mm.TrainConfig(**kw)


def test_batch_without_room_for_pairs_is_refused_clearly(make_gan, pool):
    """batch 2 and interp 0.5 once gave an empty half and a NaN 'diversity' loss blamed on the
    learning rates; now a batch with no pairs for the diversity term is refused up front."""
    gan = make_gan(interp_fraction=0.5)
    with pytest.raises(ValueError, match="batch of 2 has no pairs for the diversity term.*at least 8"):
        gan.fit(pool, steps=1, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="must be even"):
        mm.gan.GeneratorBatch(3, 0.25, pairs=True)


# ------------------------------------------------------------------------ checker units
def test_count_accepts_and_refuses():
    assert checks.count(3) == 3 and checks.count(np.int16(3)) == 3 and checks.count(torch.tensor(3)) == 3
    with pytest.raises(ValueError, match="at most 10"):
        checks.count(11, maximum=10)


def test_number_ranges():
    assert checks.number(0.5, "x", 0, 1) == 0.5
    with pytest.raises(ValueError, match="x must be in \\(0, 1\\], got 0"):
        checks.number(0, "x", 0, 1, low_open=True)
    with pytest.raises(TypeError, match="x must be a number, got 'a'"):
        checks.number("a", "x")
    with pytest.raises(ValueError, match="finite"):
        checks.number(math.inf, "x")
