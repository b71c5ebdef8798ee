"""The caption encoder's attribute readout: what it reads, what it stores, and what it refuses."""

import pytest
import torch

import mmtutor as mm
from mmtutor.condition import CaptionEncoder

VALUES = (8, 6, 4, 2)          # colours, objects, relations, sizes of the book's world


@pytest.fixture(scope="module")
def encoder(pool, minilm):
    return CaptionEncoder("minilm", dims=24, readout=VALUES).fit(pool.captions, pool.caption_attrs)


def test_readout_probabilities_name_the_caption(encoder, world):
    caps = ["a small red apple on the table", "draw a large blue star under the table",
            "a green box left of the table"]          # the bank leaves out only the size
    probs = encoder.readout_probabilities(caps)
    assert [p.shape for p in probs] == [(3, k + 1) for k in VALUES]
    for p in probs:                                        # one distribution per attribute and caption
        torch.testing.assert_close(p.sum(1), torch.ones(3))
    names = list(world.attributes)
    for i, cap in enumerate(caps):
        said = world.parse(cap, strict=False)
        for a, name in enumerate(names):
            want = list(world.attributes[name]).index(said[name]) if name in said else VALUES[a]  # last: unstated
            assert int(probs[a][i].argmax()) == want, (cap, name)


def test_readout_is_appended_to_the_directions(encoder, pool):
    cond = encoder(pool.captions[:50]).pooled
    assert cond.shape == (50, 24 + sum(k + 1 for k in VALUES))
    assert torch.isfinite(cond).all()
    plain = CaptionEncoder("minilm", dims=24).fit(pool.captions, pool.caption_attrs)
    # the directions are the same as without the readout (its scale is its own)
    torch.testing.assert_close(cond[:, :24], plain(pool.captions[:50]).pooled, atol=1e-4, rtol=1e-4)


def test_readout_travels_in_the_state_and_spec(encoder, pool):
    twin = CaptionEncoder.from_spec(encoder.spec())
    assert twin.readout == VALUES
    twin.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(twin(pool.captions[:8]).pooled, encoder(pool.captions[:8]).pooled)


def test_readout_rejects_what_it_cannot_read(pool):
    with pytest.raises(ValueError, match="needs norm='discriminant'"):
        CaptionEncoder("minilm", norm="zscore", readout=VALUES)
    with pytest.raises(TypeError, match="readout must be a tuple"):
        CaptionEncoder("minilm", readout=8)
    with pytest.raises(ValueError, match="has 3 attributes"):
        CaptionEncoder("minilm", readout=(8, 6, 4)).fit(pool.captions, pool.caption_attrs)
    with pytest.raises(ValueError, match="has 5 values"):
        CaptionEncoder("minilm", readout=(5, 6, 4, 2)).fit(pool.captions, pool.caption_attrs)
    with pytest.raises(ValueError, match="call fit"):
        CaptionEncoder("minilm", readout=VALUES).readout_probabilities(["a red apple"])
    with pytest.raises(ValueError, match="no attribute readout"):
        CaptionEncoder("minilm").readout_probabilities(["a red apple"])


def test_gan_config_checks_the_readout():
    with pytest.raises(ValueError, match="text_readout reads the discriminant directions"):
        mm.GANConfig(text_norm="zscore")
    mm.GANConfig(text_norm="zscore", text_readout=False)
    with pytest.raises(TypeError, match="text_readout must be True or False"):
        mm.GANConfig(text_readout="yes")
    assert mm.GANConfig.reed2016().text_readout is False


def test_without_a_readout_the_state_is_as_before(minilm):
    """Checkpoints written before the readout existed hold no readout buffers and must still load."""
    state = CaptionEncoder("minilm").state_dict()
    assert not any(k.startswith("readout") for k in state)
    CaptionEncoder("minilm").load_state_dict(state)
