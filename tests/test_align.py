"""Contrastive alignment: the CLIP loss on hand-made logits, the temperature, retrieval
metrics on crafted embeddings, a short training run, and the dual encoder's checkpoints."""

import math

import pytest
import torch
import torch.nn.functional as F

import mmtutor as mm
from mmtutor.align import LOGIT_SCALE_INIT, LOGIT_SCALE_MAX, retrieval_metrics
from mmtutor.losses import clip_loss


def _plain(logits):
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


# ------------------------------------------------------------------------ the loss
def test_clip_loss_aligned_is_near_zero_and_beats_shuffled():
    emb = torch.eye(6)                                   # distinct unit vectors
    aligned = clip_loss(100.0 * emb @ emb.t())
    assert aligned < 1e-6
    shuffled = clip_loss(100.0 * emb @ emb[torch.tensor([1, 2, 3, 4, 5, 0])].t())
    assert shuffled > 50.0 > aligned


def test_clip_loss_without_positives_is_symmetric_cross_entropy():
    logits = torch.randn(7, 7, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(clip_loss(logits), _plain(logits), rtol=0, atol=0)
    torch.testing.assert_close(clip_loss(logits.t()), clip_loss(logits), rtol=0, atol=1e-6)


def test_clip_loss_with_identity_positives_is_plain_loss():
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(1)) * 3
    torch.testing.assert_close(clip_loss(logits, torch.eye(5, dtype=torch.bool)), _plain(logits))


def test_clip_loss_with_positives_spreads_the_target():
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(2)) * 2
    pos = torch.eye(4, dtype=torch.bool)
    pos[0, 1] = pos[1, 0] = True                          # captions 0 and 1 describe images 0 and 1
    pos[2, 3] = True                                      # caption 2 also describes image 3
    p = pos.float()
    t2i = F.cross_entropy(logits, p / p.sum(1, keepdim=True))          # soft targets, row-wise
    i2t = F.cross_entropy(logits.t(), (p / p.sum(0, keepdim=True)).t())
    torch.testing.assert_close(clip_loss(logits, pos), (t2i + i2t) / 2)
    # plain CLIP wants all mass on the diagonal; with positives, mass spread over every
    # matching pair is the better answer
    concentrated, spread = 10.0 * torch.eye(4), 10.0 * pos.float()
    assert clip_loss(concentrated) < clip_loss(spread)
    assert clip_loss(spread, pos) < clip_loss(concentrated, pos)


def test_clip_loss_rejects_bad_positives_and_shapes():
    logits = torch.zeros(3, 3)
    bad = torch.ones(3, 3, dtype=torch.bool)
    bad[1, 1] = False
    with pytest.raises(ValueError, match="True diagonal"):
        clip_loss(logits, bad)
    with pytest.raises(ValueError, match=r"\(N, N\) bool"):
        clip_loss(logits, torch.eye(4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"square \(N, N\), got \(3, 4\)"):
        clip_loss(torch.zeros(3, 4))


# ------------------------------------------------------------------------ the model
@pytest.fixture(scope="module")
def tiny_dual(world):
    torch.manual_seed(0)
    return mm.DualEncoder(mm.AlignConfig(embed_dim=16, image_width=8, text_dim=16, text_layers=1), world)


def test_logit_scale_init_and_clamp(tiny_dual):
    assert LOGIT_SCALE_INIT == pytest.approx(math.log(1 / 0.07))
    assert tiny_dual.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert tiny_dual.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    model = mm.DualEncoder(mm.AlignConfig(embed_dim=16, image_width=8, text_dim=16, text_layers=1),
                           mm.World(), text_encoder=tiny_dual.text_encoder)
    with torch.no_grad():
        model.logit_scale.fill_(LOGIT_SCALE_MAX + 5.0)
    assert model.scale().item() == pytest.approx(100.0, rel=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(50.0)
    assert model.scale().item() == pytest.approx(100.0, rel=1e-6)
    # the clamp stops the gradient: a scale stuck at the maximum is not pushed further
    model.scale().backward()
    assert model.logit_scale.grad.item() == 0.0


def test_dual_encoder_embeddings(tiny_dual, world):
    images, captions, _ = world.sample(4, seed=0)
    t, v = tiny_dual.encode(images=images, captions=captions)
    assert t.shape == v.shape == (4, 16)
    torch.testing.assert_close(t.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(v.norm(dim=1), torch.ones(4))
    tiny_dual.eval()
    with torch.no_grad():
        logits = tiny_dual(images, captions)
    assert logits.shape == (4, 4)
    torch.testing.assert_close(logits, tiny_dual.scale() * t @ v.t(), atol=1e-4, rtol=1e-4)


def test_dual_encoder_rejects_bad_input(tiny_dual):
    with pytest.raises(ValueError, match="unknown text encoder 'gpt'; choose one of: bert, minilm"):
        mm.DualEncoder(mm.AlignConfig(text_encoder="gpt"), mm.World())
    with pytest.raises(ValueError, match="3 colour channels"):
        tiny_dual.embed_images(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="outside the vocabulary: 'zebra'"):
        tiny_dual.embed_text(["a red zebra"])
    with pytest.raises(TypeError, match="single string"):
        tiny_dual.embed_text("a red apple")


def test_dual_encoder_save_load_round_trip(tiny_dual, world, tmp_path):
    path = tmp_path / "align.pt"
    tiny_dual.save(path, history={"loss": [1.0]})
    loaded = mm.DualEncoder.load(path)
    images, captions, _ = world.sample(3, seed=2)
    a = tiny_dual.encode(images=images, captions=captions)
    b = loaded.encode(images=images, captions=captions)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert loaded.history == {"loss": [1.0]}
    with pytest.raises(mm.checkpoint.CheckpointError, match="holds a 'align' checkpoint, expected 'gan'"):
        mm.ConditionalGAN.load(path)


# ------------------------------------------------------------------------ retrieval
def test_retrieval_perfect_when_embeddings_coincide():
    emb = F.normalize(torch.randn(10, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    attrs = torch.arange(40).view(10, 4)                 # every pair distinct
    out = retrieval_metrics(emb, emb.clone(), attrs, attrs, ks=(1, 5))
    assert set(out) == {f"{d}_{s}R@{k}" for d in ("t2i", "i2t") for s in ("", "semantic_") for k in (1, 5)}
    assert all(v == 1.0 for v in out.values())


def test_retrieval_crafted_example():
    # text_emb = I, so sim[i, j] = image_emb[j, i]: image_emb = S.T gives similarity matrix S.
    S = torch.tensor([[0.9, 0.5, 0.1],      # caption 0 ranks images 0, 1, 2 -> its pair first
                      [0.8, 0.3, 0.2],      # caption 1 ranks 0, 1, 2      -> its pair second
                      [0.7, 0.6, 0.4]])     # caption 2 ranks 0, 1, 2      -> its pair third
    text_attrs = torch.tensor([[0, 0, 0, 0],
                               [0, -1, -1, -1],    # names only the colour: image 0 matches it too
                               [1, 1, 1, 1]])
    image_attrs = torch.tensor([[0, 0, 0, 0],
                                [0, 2, 2, 1],
                                [1, 1, 1, 1]])
    out = retrieval_metrics(torch.eye(3), S.t().contiguous(), text_attrs, image_attrs, ks=(1, 2, 3))
    expected = {
        # exact: text->image ranks of the pairs are 0, 1, 2
        "t2i_R@1": 1 / 3, "t2i_R@2": 2 / 3, "t2i_R@3": 1.0,
        # image->text: image 0 ranks t0 t1 t2 (pair 1st); image 1 ranks t2 t0 t1 (3rd); image 2 ranks t2 t1 t0 (1st)
        "i2t_R@1": 2 / 3, "i2t_R@2": 2 / 3, "i2t_R@3": 1.0,
        # semantic: caption 1's top image (0) has colour 0 -> a hit; caption 2's top two miss
        "t2i_semantic_R@1": 2 / 3, "t2i_semantic_R@2": 2 / 3, "t2i_semantic_R@3": 1.0,
        # image 1 (0, 2, 2, 1): only caption 1 describes it, and it comes third
        "i2t_semantic_R@1": 2 / 3, "i2t_semantic_R@2": 2 / 3, "i2t_semantic_R@3": 1.0,
    }
    assert out.keys() == expected.keys()
    for k, v in expected.items():
        assert out[k] == pytest.approx(v), k


def test_retrieval_rejects_unpaired():
    with pytest.raises(ValueError, match="as many images as captions, got 2 and 3"):
        retrieval_metrics(torch.eye(3), torch.eye(3)[:2], torch.zeros(3, 4), torch.zeros(2, 4))


# ------------------------------------------------------------------------ training
def test_train_alignment_lowers_the_loss(aligner_and_history):
    _, hist = aligner_and_history
    loss = hist["loss"]
    first, last = sum(loss[:5]) / 5, sum(loss[-5:]) / 5
    # measured (seeds 0-2): first ~3.9, last ~1.0
    assert last < 0.6 * first
    assert all(math.isfinite(v) for v in loss)
    assert max(hist["scale"]) <= 100.0 + 1e-3


def test_trained_aligner_retrieves_above_chance(aligner, world):
    out = mm.align.evaluate_retrieval(aligner, world, n=200, split="train", seed=7)
    # chance: R@1 = 1/200, R@10 = 10/200. Measured after 150 steps: R@1 ~0.3, R@10 ~0.95.
    assert out["t2i_R@10"] > 0.5 and out["i2t_R@10"] > 0.5
    assert out["t2i_R@1"] > 0.1


def test_train_alignment_is_deterministic(world):
    small = mm.PairPool(world, "train", n_images=64, captions_per_combo=1, seed=1)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = mm.DualEncoder(mm.AlignConfig(embed_dim=8, image_width=4, text_dim=16, text_layers=1), world)
        runs.append(mm.align.train_alignment(model, small, steps=3, batch_size=8, seed=0, bf16=False,
                                             log_every=1, progress=False)["loss"])
    assert runs[0] == runs[1]


def test_train_alignment_rejects_bad_arguments(tiny_dual, pool):
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        mm.align.train_alignment(tiny_dual, pool, steps=0)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 2"):
        mm.align.train_alignment(tiny_dual, pool, steps=1, batch_size=1)
