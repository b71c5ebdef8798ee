"""Text encoders: the word tokenizer and small BERT (closed vocabulary, documented unknown-word
policy) and the pretrained MiniLM (open vocabulary, L2-normalised, cached)."""

import pytest
import torch

import mmtutor as mm
from mmtutor.checks import captions as check_captions
from mmtutor.text import SmallBert, WordTokenizer, build_text_encoder, masked_mean

CAPTIONS = ["a red apple", "the cube on the table is blue and big"]


@pytest.fixture(scope="module")
def bert(world):
    torch.manual_seed(0)
    return SmallBert(world.vocabulary, dim=32, layers=1, heads=2).eval()


@pytest.fixture(scope="module")
def bert_unk(world):
    torch.manual_seed(0)
    return SmallBert(world.vocabulary, dim=32, layers=1, heads=2, unknown="unk").eval()


# ------------------------------------------------------------------------ tokenizer
def test_tokenizer_wraps_and_pads(world):
    tok = WordTokenizer(world.vocabulary)
    enc = tok(CAPTIONS)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape == mask.shape == (2, 11)          # [CLS] + 9 words + [SEP]
    assert mask[0].tolist() == [1] * 5 + [0] * 6       # [CLS] a red apple [SEP], then padding
    assert ids[0, 0] == tok.vocab["[CLS]"] and ids[0, 4] == tok.vocab["[SEP]"]
    assert ids[0, 1:4].tolist() == [tok.vocab["a"], tok.vocab["red"], tok.vocab["apple"]]
    assert (ids[0, 5:] == tok.vocab["[PAD]"]).all()


def test_tokenizer_lowercases_and_splits_punctuation(world):
    tok = WordTokenizer(world.vocabulary)
    a = tok(["A Red Apple, on the table."])["input_ids"][0]
    assert tok.unk_id not in a.tolist()
    assert a[4] == tok.vocab[","] and a[-2] == tok.vocab["."]


def test_tokenizer_rejects_unknown_policy(world):
    with pytest.raises(ValueError, match="'error' or 'unk', got 'ignore'"):
        WordTokenizer(world.vocabulary, unknown="ignore")


# ------------------------------------------------------------------------ small BERT
def test_bert_encode_shapes(bert):
    assert bert.encode(CAPTIONS).shape == (2, 32)
    tokens, mask = bert.encode_tokens(CAPTIONS)
    assert tokens.shape == (2, 11, 32) and mask.shape == (2, 11)
    assert mask.sum(1).tolist() == [5, 11]


def test_bert_pooled_is_masked_mean_of_tokens(bert):
    tokens, mask = bert.encode_tokens(CAPTIONS)
    pooled = bert.encode(CAPTIONS)
    torch.testing.assert_close(pooled, masked_mean(tokens, mask))
    # padding does not change a caption's vector (eval mode: no dropout)
    torch.testing.assert_close(bert.encode(CAPTIONS[:1]), pooled[:1], atol=1e-5, rtol=1e-5)


def test_masked_mean_hand_made():
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(masked_mean(tokens, mask), torch.tensor([[2.0, 3.0]]))


def test_bert_unknown_word_is_an_error_by_default(bert):
    with pytest.raises(ValueError, match=r"outside the vocabulary: 'zebra'.*allowed words are: .*apple.*unknown='unk'"):
        bert.encode(["a red zebra"])


def test_bert_unknown_word_maps_to_unk_with_unk_policy(bert_unk):
    ids = bert_unk.tokenizer(["a red zebra"])["input_ids"][0].tolist()
    assert ids[3] == bert_unk.tokenizer.unk_id
    assert ids.count(bert_unk.tokenizer.unk_id) == 1
    out = bert_unk.encode(["a red zebra", "a red apple"])
    assert out.shape == (2, 32) and torch.isfinite(out).all()
    # two different unknown words are the same token: the encoder cannot tell them apart
    torch.testing.assert_close(bert_unk.encode(["a red zebra"]), bert_unk.encode(["a red giraffe"]))


@pytest.mark.parametrize("bad, error, message", [
    ([], ValueError, "at least one caption"),
    (["a red apple", "   "], ValueError, "caption 1 is empty or whitespace"),
    ("a red apple", TypeError, "single string; wrap it"),
    ([3], TypeError, "caption 0 is a int"),
])
def test_bert_rejects_bad_captions(bert, bad, error, message):
    with pytest.raises(error, match=message):
        bert.encode(bad)
    with pytest.raises(error, match=message):
        check_captions(bad)


def test_build_text_encoder(world):
    enc = build_text_encoder({"kind": "bert", "words": world.vocabulary, "dim": 16, "layers": 1, "heads": 2})
    assert isinstance(enc, SmallBert) and enc.dim == 16
    with pytest.raises(ValueError, match="unknown text encoder 'gpt'; choose one of: bert, minilm"):
        build_text_encoder({"kind": "gpt"})


# ------------------------------------------------------------------------ MiniLM
def test_minilm_is_loaded_once(minilm):
    assert mm.text.load_minilm() is minilm


def test_minilm_encode_shape_and_norm(minilm):
    out = minilm.encode(["a red apple on the table", "a blue box under the table", "a red apple on the table"])
    assert out.shape == (3, 384)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    assert torch.equal(out[0], out[2])


def test_minilm_cache_gives_identical_vectors(minilm):
    a = minilm.encode(["a small green cone left of the table"])
    b = minilm.encode(["a small green cone left of the table", "a star"])
    assert torch.equal(a[0], b[0])


def test_minilm_cache_equals_direct_computation(minilm):
    caption = "a large pink donut right of the table"
    enc = minilm.tokenize([caption])
    _, pooled = minilm(**enc)
    torch.testing.assert_close(minilm.encode([caption]), pooled, atol=1e-5, rtol=1e-5)


def test_minilm_open_vocabulary(minilm):
    out = minilm.encode(["a crimson giraffe beside a wooden chair"])
    assert out.shape == (1, 384) and torch.isfinite(out).all()


def test_minilm_similarity_is_meaningful(minilm):
    a, b, c = minilm.encode(["a red apple on the table", "a red apple on top of the table",
                             "a large white bottle to the right of the table"])
    assert a @ b > a @ c


def test_minilm_encode_tokens(minilm):
    tokens, mask = minilm.encode_tokens(["a red apple", "a small green cone left of the table"])
    assert tokens.shape[0] == 2 and tokens.shape[2] == 384 and mask.shape == tokens.shape[:2]
    assert mask[0].sum() < mask[1].sum() == tokens.shape[1]
    assert (tokens[0, int(mask[0].sum()):] == 0).all()


@pytest.mark.parametrize("bad, error", [([], ValueError), ([" "], ValueError), ("a red apple", TypeError)])
def test_minilm_rejects_bad_captions(minilm, bad, error):
    with pytest.raises(error):
        minilm.encode(bad)


# ------------------------------------------------------------------------ MiniLM features on disk
@pytest.fixture
def fresh_minilm_cache(minilm, monkeypatch, tmp_path):
    """The shared MiniLM with empty in-memory caches (restored afterwards), a cache folder of
    its own and a low threshold for keeping features on disk (a handful of captions is a bank)."""
    monkeypatch.setenv("MMTUTOR_CACHE", str(tmp_path))
    saved = minilm._pooled, minilm._tokens, minilm._store_read
    minilm._pooled, minilm._tokens, minilm._store_read = {}, {}, {}
    monkeypatch.setattr(minilm, "persist_min", 3)
    yield minilm
    minilm._pooled, minilm._tokens, minilm._store_read = saved


BANK = ["a red apple on the table", "a tiny blue star beneath the table", "there is a big green cone left of the table",
        "a photo of a small pink ring to the right of the table"]


def test_minilm_features_survive_the_process(fresh_minilm_cache, tmp_path, monkeypatch):
    m = fresh_minilm_cache
    first = m.encode(BANK)
    assert m.store_path().parent == tmp_path and m.store_path().exists()
    assert not m.store_path("tokens").exists()        # token vectors go to disk only where they were asked for
    # a new process: nothing in memory; the model itself must not run again for these captions
    m._tokens = {}
    first_tokens, first_mask = m.encode_tokens(BANK)
    assert m.store_path("tokens").exists()
    m._pooled, m._tokens, m._store_read = {}, {}, {}
    with monkeypatch.context() as mp:
        mp.setattr(m, "forward", lambda **_: pytest.fail("MiniLM ran although the features were on disk"))
        again = m.encode(list(reversed(BANK)))
        tokens, mask = m.encode_tokens(list(reversed(BANK)))
    torch.testing.assert_close(again, first.flip(0), atol=0, rtol=0)
    # the token vectors come back exactly as the process that computed them saw them (half precision)
    assert tokens.dtype == torch.float32 and tokens.shape[-1] == 384
    torch.testing.assert_close(tokens, first_tokens.flip(0)[:, :tokens.shape[1]], atol=0, rtol=0)
    torch.testing.assert_close(mask, first_mask.flip(0)[:, :mask.shape[1]], atol=0, rtol=0)
    with pytest.raises(ValueError, match="unknown feature store"):
        m.store_path("pixels")


def test_minilm_small_batches_stay_in_memory(fresh_minilm_cache):
    m = fresh_minilm_cache
    m.encode(BANK[:2])                                # fewer than persist_min new captions
    assert not m.store_path().exists()


def test_minilm_damaged_feature_file_is_reported_and_replaced(fresh_minilm_cache):
    m = fresh_minilm_cache
    m.store_path().write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="ignoring the caption-feature file"):
        out = m.encode(BANK)
    torch.save({"captions": BANK, "lengths": torch.tensor([3, 3]), "tokens": torch.zeros(6, 384)},
               m.store_path("tokens"))
    m._tokens, m._store_read = {}, {}
    with pytest.warns(UserWarning, match="4 captions, 2 lengths"):
        m.encode_tokens(BANK)
    blob = torch.load(m.store_path(), weights_only=True)
    assert blob["captions"] == sorted(BANK, key=lambda c: len(m.tokenizer(c)["input_ids"]))
    torch.testing.assert_close(blob["pooled"][blob["captions"].index(BANK[0])], out[0])


def test_minilm_batches_by_length_match_one_at_a_time(fresh_minilm_cache):
    m = fresh_minilm_cache
    together = m.encode(BANK)
    for i, c in enumerate(BANK):
        _, alone = m(**m.tokenize([c]))
        torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=1e-5)
