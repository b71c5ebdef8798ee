"""Shared fixtures for the mmtutor unit tests.

Everything trained here is trained once per session, at smoke sizes, on the CPU, so the
whole suite stays well under the CI limit on two cores. Two rules keep the tests from
leaking into what runs after them in the same pytest process (nbval's notebook kernels):

* ``MMTUTOR_PROFILE`` is never written to ``os.environ``; tests pass profiles by name.
* ``MMTUTOR_CACHE`` points at a session temp folder only *while a test runs* (function-scoped
  ``monkeypatch``, restored after each test), so nothing is ever written to ~/.cache and
  the notebooks later see the user's real cache setting.
  Session fixtures below never touch the model cache (they do not call ``mmtutor.zoo``).
"""

from __future__ import annotations

import pytest
import torch

import mmtutor as mm
from mmtutor.gan import ConditionalGAN

SEED = 0

# Size of the session's trained GAN. Measured on a quiet 2-core machine (fp32, 2 threads,
# seeds 0-4): 400 steps of batch 32 take ~14 s (~21 s with one thread) and reach
# judge-measured colour consistency 0.50-0.84 on the seen combinations and 0.38-0.75 on the
# held-out ones (chance 1/8); relation is only 0.36-0.45 (chance 1/4) after so few steps,
# so test_training relies on colour only.
GAN_STEPS = 400
GAN_BATCH = 32

# The judge: measured held-out accuracy after 100 steps of batch 128 (seeds 0, 1, 2):
# colour 1.00, object 0.99, relation 1.00, size 1.00, joint 0.99 -- 10-17 s.
# (After the smoke profile's 40 steps: colour 0.96, object 0.68, size 0.86.)
JUDGE_STEPS = 100

# The dual encoder: 150 steps of batch 32 take ~4 s; loss 3.9 -> ~1.0 and, on 200 fresh
# pairs of the train split, t2i R@1 0.27-0.32, R@10 0.95-0.97 (seeds 0-2).
ALIGN_STEPS = 150
ALIGN_BATCH = 32


# ------------------------------------------------------------------------ environment
def train_tiny(model_cls, config, world, pool, steps: int):
    """A small generator (VAE, diffusion) trained from seed 0 on the smoke pool for a few seconds."""
    torch.manual_seed(0)
    model = model_cls(config, world, device="cpu")
    model.fit(pool, mm.TrainConfig(steps=steps, batch_size=32, seed=0, progress=False, log_every=10))
    return model


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("mmtutor-cache")


@pytest.fixture(autouse=True)
def tmp_cache(monkeypatch, cache_root):
    """Every test sees MMTUTOR_CACHE = a temp folder; restored after the test."""
    monkeypatch.setenv("MMTUTOR_CACHE", str(cache_root))
    return cache_root


# ------------------------------------------------------------------------ basics
@pytest.fixture(scope="session")
def world():
    return mm.World()


@pytest.fixture(scope="session")
def smoke():
    return mm.runtime.profile("smoke")


@pytest.fixture(scope="session")
def minilm():
    return mm.text.load_minilm()


@pytest.fixture(scope="session")
def pool(world, smoke):
    """The smoke profile's training pairs (the same pool ``python -m mmtutor train`` builds
    with --profile smoke --seed 0, so MiniLM's per-caption cache is shared with the CLI tests)."""
    return mm.PairPool(world, "train", n_images=smoke.pool_size, seed=SEED)


# ------------------------------------------------------------------------ trained models
@pytest.fixture(scope="session")
def judge_and_history(world):
    judge, hist = mm.metrics.train_judge(world, steps=JUDGE_STEPS, device="cpu", bf16=False,
                                         seed=SEED, progress=False)
    return judge, hist


@pytest.fixture(scope="session")
def judge(judge_and_history):
    return judge_and_history[0]


@pytest.fixture(scope="session")
def aligner_and_history(world, pool):
    """A small CLIP-style dual encoder (small BERT + CNN), trained briefly."""
    torch.manual_seed(SEED)
    config = mm.AlignConfig(image_size=world.image_size, embed_dim=32, image_width=16, text_dim=32)
    model = mm.DualEncoder(config, world)
    hist = mm.align.train_alignment(model, pool, steps=ALIGN_STEPS, batch_size=ALIGN_BATCH, seed=SEED,
                                    bf16=False, log_every=1, progress=False)
    return model, hist


@pytest.fixture(scope="session")
def aligner(aligner_and_history):
    return aligner_and_history[0]


@pytest.fixture(scope="session")
def make_gan(world, smoke, minilm):
    """Factory: an untrained smoke-size GAN on the CPU, with config overrides."""
    def make(aligner=None, **overrides):
        torch.manual_seed(SEED)
        return ConditionalGAN(mm.zoo.gan_config(world, smoke, **overrides), world, aligner=aligner, device="cpu")
    return make


@pytest.fixture(scope="session")
def trained_gan(make_gan, pool):
    """The session's GAN (MiniLM text features, concat fusion, hinge loss, EMA), trained
    GAN_STEPS steps. Tests must not change its weights."""
    gan = make_gan()
    gan.history = gan.fit(pool, steps=GAN_STEPS, batch_size=GAN_BATCH, seed=SEED, bf16=False, progress=False)
    return gan


@pytest.fixture(scope="session")
def gan_checkpoint(trained_gan, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "gan.pt"
    trained_gan.save(path, history={"note": "session"})
    return path
