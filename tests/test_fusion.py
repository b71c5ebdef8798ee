"""Fusion modules: concatenation tiles the sentence vector; cross-attention weights are a
distribution over the real words and ignore padding."""

import pytest
import torch

from mmtutor.condition import TextCondition
from mmtutor.fusion import ConcatFusion, CrossAttentionFusion


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_concat_fusion_tiles_the_condition():
    h = torch.randn(2, 5, 4, 3, generator=_gen())
    cond = torch.randn(2, 7, generator=_gen(1))
    fuse = ConcatFusion(5, 7)
    out = fuse(h, cond)
    assert out.shape == (2, 12, 4, 3) and fuse.out_channels == 12
    assert torch.equal(out[:, :5], h)
    for y in range(4):
        for x in range(3):
            assert torch.equal(out[:, 5:, y, x], cond)


@pytest.fixture
def words():
    tokens = torch.randn(2, 5, 6, generator=_gen(2))
    mask = torch.tensor([[1, 1, 1, 0, 0],
                         [1, 1, 1, 1, 1]])
    return TextCondition(torch.randn(2, 6, generator=_gen(3)), tokens, mask)


def test_cross_attention_shapes_and_weights(words):
    torch.manual_seed(0)
    fuse = CrossAttentionFusion(8, word_dim=6, heads=2)
    h = torch.randn(2, 8, 4, 4, generator=_gen(4))
    out = fuse(h, text=words)
    assert out.shape == h.shape and fuse.out_channels == 8
    w = fuse.last_weights
    assert w.shape == (2, 16, 5)                                     # (B, H*W, L)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 16))
    assert (w[0, :, 3:] == 0).all()                                  # padding gets no attention
    assert (w[0, :, :3] > 0).all() and (w[1] > 0).all()


def test_cross_attention_starts_as_identity_and_learns_a_gate(words):
    torch.manual_seed(0)
    fuse = CrossAttentionFusion(8, word_dim=6, heads=2)
    h = torch.randn(2, 8, 4, 4, generator=_gen(4))
    assert torch.equal(fuse(h, text=words), h)                      # gate = 0 at initialisation
    with torch.no_grad():
        fuse.gate.fill_(1.0)
    out = fuse(h, text=words)
    assert not torch.allclose(out, h)
    # padding words do not change the result: replace them with garbage
    garbage = TextCondition(words.pooled, words.tokens.clone(), words.mask)
    garbage.tokens[0, 3:] = 1e3
    torch.testing.assert_close(fuse(h, text=garbage), out)


def test_cross_attention_needs_words():
    fuse = CrossAttentionFusion(8, word_dim=6, heads=2)
    with pytest.raises(ValueError, match="needs word features"):
        fuse(torch.zeros(1, 8, 4, 4), text=TextCondition(torch.zeros(1, 6)))


def test_text_condition_mix(words):
    other = TextCondition(torch.randn(2, 6, generator=_gen(5)), torch.randn(2, 3, 6, generator=_gen(6)),
                          torch.tensor([[1, 1, 0], [1, 0, 0]]))
    same = words.mix(other, 1.0)
    assert torch.equal(same.pooled, words.pooled)
    assert torch.equal(same.tokens, words.tokens)
    half = words.mix(other, 0.5)
    torch.testing.assert_close(half.pooled, (words.pooled + other.pooled) / 2)
    assert half.tokens.shape == (2, 5, 6)                            # padded to the longer caption
    torch.testing.assert_close(half.tokens[:, 3:], words.tokens[:, 3:] / 2)
    assert half.mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    pooled_only = TextCondition(words.pooled).mix(TextCondition(other.pooled), 0.0)
    assert torch.equal(pooled_only.pooled, other.pooled) and pooled_only.tokens is None


def test_text_condition_indexing(words):
    sub = words[torch.tensor([1])]
    assert torch.equal(sub.pooled, words.pooled[1:2])
    assert torch.equal(sub.tokens, words.tokens[1:2]) and torch.equal(sub.mask, words.mask[1:2])
