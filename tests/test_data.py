"""Paired training data: the held-out split never leaks into a training pool or batch,
batches are deterministic under a generator seed, and the attribute-matching helpers."""

import pytest
import torch

import mmtutor as mm
from mmtutor.data import caption_matches, captions_compatible, to_float


def test_pool_shapes(pool, world, smoke):
    assert len(pool) == smoke.pool_size
    assert pool.images.shape == (smoke.pool_size, 3, 32, 32) and pool.images.dtype == torch.uint8
    assert pool.attrs.shape == (smoke.pool_size, 4)
    n_combos = len(world.splits["train"])
    assert pool.combo_captions.shape == (n_combos, 12)
    assert len(pool.captions) == pool.caption_attrs.shape[0] == n_combos * 12


def test_train_pool_never_contains_a_heldout_combination(pool, world):
    assert not any(tuple(r) in world.heldout for r in pool.attrs.tolist())
    combos = world.splits["train"]
    for k, row in enumerate(pool.caption_attrs.tolist()):
        combo = combos[k // pool.combo_captions.shape[1]]          # the combination caption k was written for
        assert combo not in world.heldout
        assert all(r == c or r == -1 for r, c in zip(row, combo)), (row, combo)
        if -1 not in row:
            assert tuple(row) not in world.heldout


def test_caption_attrs_describe_the_captions(pool, world):
    for caption, row in zip(pool.captions[::7], pool.caption_attrs[::7].tolist()):
        parsed = world.parse(caption)
        expected = {k: world.attributes[k][i] for k, i in zip(world.attributes, row) if i >= 0}
        assert parsed == expected, caption
    assert (pool.caption_attrs[:, 3] == -1).any()        # some captions leave the size out
    assert (pool.caption_attrs[:, :3] >= 0).all()        # colour, object and relation always named


def test_batches_never_leak_heldout_and_pair_matching_captions(pool, world):
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        images, cap, attrs = pool.batch(32, gen)
        assert not any(tuple(r) in world.heldout for r in attrs.tolist())
        assert not any(tuple(r) in world.heldout for r in pool.caption_attrs[cap].tolist() if -1 not in r)
        # every image comes with a caption of its own combination
        assert caption_matches(pool.caption_attrs[cap], attrs).diagonal().all()
    assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1


def test_batch_is_deterministic_given_generator_seed(pool):
    a = pool.batch(16, torch.Generator().manual_seed(5))
    b = pool.batch(16, torch.Generator().manual_seed(5))
    c = pool.batch(16, torch.Generator().manual_seed(6))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[1], c[1])


def test_pool_is_deterministic_under_seed(world):
    a = mm.PairPool(world, "train", n_images=32, captions_per_combo=2, seed=3)
    b = mm.PairPool(world, "train", n_images=32, captions_per_combo=2, seed=3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert torch.equal(a.caption_attrs, b.caption_attrs)


def test_pool_wording_shares(world):
    neutral = set(mm.grammar.NEUTRAL_WORDS)
    extra = (mm.grammar.template_words(mm.grammar.AUGMENT_TEMPLATES) - mm.grammar.template_words(mm.grammar.TEMPLATES)
             - mm.grammar.FILLER)
    p = mm.PairPool(world, "train", n_images=16, captions_per_combo=8, seed=2, augment=0.5, noise=0.5)
    noisy = torch.tensor([any(w in neutral for w in c.split()) for c in p.captions]).float()
    assert 0.45 < noisy.mean() < 0.55
    for caption, row in zip(p.captions, p.caption_attrs.tolist()):     # the labels still hold
        expected = {k: world.attributes[k][i] for k, i in zip(world.attributes, row) if i >= 0}
        assert world.parse(caption) == expected, caption
    plain = mm.PairPool(world, "train", n_images=16, captions_per_combo=8, seed=2)
    assert not any(w in neutral | extra for c in plain.captions for w in c.split())
    with pytest.raises(ValueError, match="noise"):
        mm.PairPool(world, n_images=8, noise=1.5)


def test_heldout_pool(world):
    p = mm.PairPool(world, "heldout", n_images=64, captions_per_combo=2, seed=0)
    assert all(tuple(r) in world.heldout for r in p.attrs.tolist())
    assert len(p.captions) == 2 * len(world.heldout)


def test_pool_rejects_bad_sizes(world):
    with pytest.raises(ValueError, match="n_images must be a positive integer, got 0"):
        mm.PairPool(world, n_images=0)
    with pytest.raises(ValueError, match="captions_per_combo must be a positive integer, got 0"):
        mm.PairPool(world, n_images=8, captions_per_combo=0)


def test_pair_distance_is_positive(pool):
    d = pool.pair_distance(n_pairs=256)
    assert 0.0 < d < 1.0
    assert d == pool.pair_distance(n_pairs=256)


def test_to_float():
    x = torch.tensor([0, 255, 127], dtype=torch.uint8)
    assert torch.allclose(to_float(x), torch.tensor([-1.0, 1.0, 127 / 127.5 - 1]))


def test_caption_matches_hand_made():
    captions = torch.tensor([[0, -1, -1, -1],
                             [1, 2, -1, 0],
                             [-1, -1, -1, -1]])
    scenes = torch.tensor([[0, 1, 2, 0],
                           [1, 2, 3, 0],
                           [1, 2, 0, 1]])
    expected = torch.tensor([[True, False, False],
                             [False, True, False],
                             [True, True, True]])
    assert torch.equal(caption_matches(captions, scenes), expected)


def test_captions_compatible_hand_made():
    a = torch.tensor([[0, -1, 2, -1],
                      [1, 1, 1, 1]])
    b = torch.tensor([[0, 1, -1, -1],
                      [1, -1, -1, -1],
                      [-1, -1, 3, -1],
                      [-1, -1, -1, -1],
                      [1, 1, 1, 1]])
    expected = torch.tensor([[True, False, False, True, False],
                             [False, True, False, True, True]])
    assert torch.equal(captions_compatible(a, b), expected)
    assert torch.equal(captions_compatible(b, a), expected.t())
