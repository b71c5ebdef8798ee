"""Image -> text: a captioner, its measurement, and a round trip that checks text-to-image models.

The article defines cross-modal generation in both directions (its section 2, item 2); every
other chapter goes from text to image. This file goes back:

* ``Captioner`` -- a CNN reads the image into a grid of features (the trunk of
  ``vision.ImageEncoder``), and a small Transformer decoder writes the caption one word at a
  time, attending to the image positions through cross-attention. This is Show and Tell
  (Vinyals et al. 2015: CNN encoder, language-model decoder, teacher forcing, beam search)
  with the attention over image positions of Show, Attend and Tell (Xu et al. 2015), in the
  Transformer form (Vaswani et al. 2017) that BLIP's image-grounded text decoder uses
  (Li et al. 2022: BERT layers with causal self-attention and cross-attention to the image).
* decoding: ``greedy``, ``beam`` search and temperature ``sample``-ing (``Captioner.caption``);
* measurement by the world's own grammar: every caption is parsed (``World.parse``) and its
  attributes are compared with the scene's (``caption_scores``): per attribute, jointly, the
  share that does not parse, the share that the training grammar could have written, and
  the variety of phrasings when sampling -- beside BLEU-4 (Papineni et al. 2002, computed by
  ``sacrebleu``, Post 2018), which counts shared n-grams and can disagree with the meaning;
* retrieval captioning (``retrieve_captions``): the aligned dual encoder picks the nearest
  caption from a bank -- it can only ever return a caption that is in the bank;
* the round trip (``round_trip``): caption -> any text-to-image model -> image -> captioner ->
  parsed attributes. Agreement with the caption is a cycle-consistency score that needs no
  judge (the redescription idea of MirrorGAN, Qiao et al. 2019); it measures the generator
  *and* the captioner together, and is reported beside the judges' consistency;
* ``caption_file`` -- what the command line's ``caption`` subcommand does with a PNG.

Why a ``transformers`` BERT decoder (``BertConfig(is_decoder=True, add_cross_attention=True)``,
``BertLMHeadModel``) and not ``torch.nn.TransformerDecoder`` or GPT-2:

1. it returns its cross-attention weights (``output_attentions=True``, eager attention),
   which the chapter needs to show which image positions a word looks at;
   ``nn.TransformerDecoderLayer`` computes them and throws them away (``need_weights=False``);
   GPT-2's cross-attention works too, but it is a second model family for the reader;
2. it is the same BERT block the reader met in ``text.SmallBert``, made a decoder by two
   flags: a causal self-attention mask and a cross-attention sublayer -- BLIP's design;
3. word embeddings tied to the output layer, learned positions and the causal mask come
   built in, and at our sizes (2 layers, 96 wide, 15 tokens, 64 image positions) a training
   step costs the same as with ``nn.TransformerDecoder`` (measured: 83 vs 105 ms for the
   decoder's forward and backward at batch 64, one thread).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from . import checkpoint, checks, grammar, runtime
from .align import decay_groups
from .data import PairPool, to_float
from .judge import all_named_right, attribute_accuracy
from .judge import augment as corrupt
from .loop import Loop, TrainConfig
from .losses import caption_loss
from .metrics import consistency_by_judge, evaluation_captions
from .text import SPECIAL_TOKENS, WordTokenizer, _quiet_transformers
from .vision import ImageEncoder, n_halvings
from .world import World

KIND = "captioner"                       # the checkpoint's "kind"
METHODS = ("greedy", "beam", "sample")
MAX_TEMPERATURE = 100.0
MAX_CAPTIONS_PER_IMAGE = 1000
NOT_PARSED = -2                          # parse_captions: the parser refused the caption


@dataclass
class CaptionerConfig:
    image_size: int = 32      # pixels per side of the images it reads
    width: int = 32           # CNN trunk width at full resolution (vision.ImageEncoder)
    grid: int = 8             # the decoder attends to grid x grid image positions (the CNN's map)
    global_token: bool = True # ... and to the CNN's whole-image vector (ImageEncoder's output)
    dim: int = 96             # decoder hidden size; image features are projected to it
    layers: int = 2           # decoder blocks: causal self-attention, cross-attention, MLP
    heads: int = 4            # attention heads (dim must be a multiple)
    dropout: float = 0.1      # dropout inside the decoder
    max_length: int = 24      # tokens a caption may have, [CLS] and [SEP] included

    def __post_init__(self):
        self.image_size = checks.count(self.image_size, "image_size", maximum=1024)
        n_halvings(self.image_size)                                # 4 * 2^k, or a clear error
        for name in ("width", "dim", "layers", "heads"):
            setattr(self, name, checks.count(getattr(self, name), name, maximum=4096))
        self.grid = checks.count(self.grid, "grid", minimum=4, maximum=self.image_size)
        if not isinstance(self.global_token, bool):
            raise TypeError(f"global_token must be True or False, got {self.global_token!r}")
        if self.image_size % self.grid or self.image_size // self.grid & (self.image_size // self.grid - 1):
            raise ValueError(f"grid must be image_size / 2^k and at least 4 (for {self.image_size} px: "
                             f"{', '.join(str(self.image_size >> k) for k in range(n_halvings(self.image_size) + 1))})"
                             f", got {self.grid}")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")
        self.dropout = checks.fraction(self.dropout, "dropout", open_high=True)
        self.max_length = checks.count(self.max_length, "max_length", minimum=4, maximum=512)


# ======================================================================================
# the model
class Captioner(nn.Module):
    """(N, 3, S, S) images in [-1, 1] -> captions.

    ``encode_images``: CNN -> (N, 1 + grid*grid, dim): the whole-image vector (with
    ``global_token``) and one vector per image position -- the decoder's memory.
    ``forward(images, input_ids)``: next-token logits (N, L, V) under teacher forcing.
    ``caption(images, n, method)``: N * n captions, grouped by image.
    """

    def __init__(self, config: CaptionerConfig, world: World):
        super().__init__()
        from transformers import BertConfig, BertLMHeadModel
        _quiet_transformers()
        if config.image_size != world.image_size:
            raise ValueError(f"CaptionerConfig.image_size={config.image_size} but the world renders "
                             f"{world.image_size}x{world.image_size} images")
        self.config, self.world = config, world
        self.tokenizer = WordTokenizer(world.vocabulary, max_length=config.max_length)
        self.pad_id, self.bos_id, self.eos_id = (self.tokenizer.vocab[t] for t in ("[PAD]", "[CLS]", "[SEP]"))
        # tokens never generated: [PAD], [UNK], [CLS], [MASK] ([SEP] ends a caption)
        self.register_buffer("banned", torch.tensor([self.tokenizer.vocab[t] for t in SPECIAL_TOKENS
                                                     if t != "[SEP]"]), persistent=False)
        # image side: the CNN trunk of vision.ImageEncoder, stopped at a grid x grid map
        k = (config.image_size // config.grid).bit_length() - 1    # stride-2 stages down to the grid
        cnn = runtime.channels_last(ImageEncoder(config.image_size, dim=config.dim, width=config.width))
        self.trunk = cnn.features[:3 * (1 + k)]                    # (N, 3, S, S) -> (N, c, G, G)
        # the rest of the encoder: down to 4x4, flattened, linear -> one whole-image vector
        self.rest = nn.Sequential(cnn.features[3 * (1 + k):], cnn.head) if config.global_token else None
        c = config.width if k == 0 else min(config.width * 2 ** k, 4 * config.width)
        self.project = nn.Linear(c, config.dim)                    # (N, G*G, c) -> (N, G*G, dim)
        self.position = nn.Parameter(0.02 * torch.randn(config.grid ** 2, config.dim))
        self.norm = nn.LayerNorm(config.dim)
        # text side: a BERT made a decoder (causal self-attention + cross-attention to the image)
        bert = BertConfig(vocab_size=len(self.tokenizer), hidden_size=config.dim,
                          num_hidden_layers=config.layers, num_attention_heads=config.heads,
                          intermediate_size=4 * config.dim, max_position_embeddings=config.max_length,
                          hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout,
                          type_vocab_size=1, pad_token_id=self.pad_id, is_decoder=True,
                          add_cross_attention=True, tie_word_embeddings=True)
        self.decoder = BertLMHeadModel(bert)
        self.decoder.set_attn_implementation("eager")              # returns attention weights
        self.history: dict = {}

    @property
    def device(self) -> torch.device:
        return self.position.device

    @torch.no_grad()
    def start_from(self, encoder: ImageEncoder) -> "Captioner":
        """Copy the convolutional trunk of a trained ``vision.ImageEncoder`` of the same size and
        width -- e.g. the dual encoder's image tower, ``aligner.image_encoder`` -- into this
        captioner's CNN (as BLIP starts from a pretrained vision encoder); training then
        fine-tunes it. The projection, the whole-image head and the decoder start fresh."""
        if not isinstance(encoder, ImageEncoder):
            raise TypeError(f"start_from expects a vision.ImageEncoder, got {type(encoder).__name__}")
        ours = nn.Sequential(*self.trunk, *(self.rest[0] if self.rest is not None else []))
        theirs = encoder.features[:len(ours)]
        if encoder.image_size != self.config.image_size or [p.shape for p in ours.parameters()] != \
                [p.shape for p in theirs.parameters()]:
            raise ValueError(f"start_from needs an ImageEncoder for {self.config.image_size}px images of width "
                             f"{self.config.width}; got one for {encoder.image_size}px of another width")
        ours.load_state_dict(theirs.state_dict())
        return self

    # ---------------------------------------------------------------- forward
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, [1 +] G*G, dim): [the whole-image vector, then] one feature per
        image position (row-major), each with a learned embedding of its position."""
        images = checks.images(images, self.config.image_size, "Captioner", check_values=not self.training)
        fmap = self.trunk(images.to(self.device))                  # (N, c, G, G)
        f = fmap.flatten(2).transpose(1, 2)                        # (N, G*G, c), row-major positions
        memory = self.project(f) + self.position                   # (N, G*G, dim)
        if self.rest is not None:
            memory = torch.cat([self.rest(fmap).unsqueeze(1), memory], 1)   # (N, 1 + G*G, dim)
        return self.norm(memory)

    def decode(self, memory: torch.Tensor, input_ids: torch.Tensor, attentions: bool = False):
        """Next-token logits (N, L, V) for token prefixes (N, L) given image memory (N, P, dim).
        No padding mask is needed: the causal mask keeps real tokens from seeing the padding
        that follows them. With ``attentions`` the decoder's output object (cross_attentions)."""
        out = self.decoder(input_ids=input_ids, encoder_hidden_states=memory, use_cache=False,
                           output_attentions=attentions)
        return out if attentions else out.logits

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: (N, 3, S, S), (N, L) -> logits (N, L, V); logits[:, t] predicts token t+1."""
        return self.decode(self.encode_images(images), input_ids.to(self.device))

    def _next_logprobs(self, memory: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """log p(next token | prefix, image): (N, V), special tokens other than [SEP] excluded."""
        logits = self.decode(memory, ids)[:, -1].float()           # (N, V)
        logits[:, self.banned] = float("-inf")
        if ids.shape[1] == 1:                                      # a caption has at least one word
            logits[:, self.eos_id] = float("-inf")
        return logits.log_softmax(-1)

    # ---------------------------------------------------------------- decoding
    def _decode(self, memory: torch.Tensor, choose):
        """Left to right, one word per step for every caption; ``choose(log p (N, V))`` picks the
        next tokens (N,). Finished captions are padded. -> ids (N, T), log p of the choices (N,)."""
        n, dev = len(memory), memory.device
        ids = torch.full((n, 1), self.bos_id, dtype=torch.long, device=dev)
        logp = torch.zeros(n, device=dev)
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        for _ in range(self.config.max_length - 2):          # at most max_length - 2 words
            lp = self._next_logprobs(memory, ids)                  # (N, V)
            tok = choose(lp)                                       # (N,)
            logp += torch.where(done, 0.0, lp.gather(1, tok[:, None]).squeeze(1))
            tok = torch.where(done, self.pad_id, tok)              # finished captions are padded
            ids = torch.cat([ids, tok[:, None]], 1)
            done |= tok == self.eos_id
            if bool(done.all()):
                break
        return ids, logp

    def _greedy(self, memory: torch.Tensor):
        """The most likely next token, step by step. -> ids (N, T), log p (N,)."""
        return self._decode(memory, lambda lp: lp.argmax(1))

    def _beam(self, memory: torch.Tensor, beam: int, keep: int):
        """Beam search: keep the ``beam`` prefixes of highest total log-probability; a finished
        caption stays in its slot with its score frozen. -> ids (N, keep, T), log p (N, keep),
        best first. (No length normalisation: every phrasing of the grammar names all four
        attributes, so preferring shorter phrasings costs nothing here.)"""
        n, dev = len(memory), memory.device
        mem = memory.repeat_interleave(beam, 0)                    # (N*k, P, dim)
        ids = torch.full((n * beam, 1), self.bos_id, dtype=torch.long, device=dev)
        scores = torch.zeros(n, beam, device=dev)
        scores[:, 1:] = float("-inf")                              # start from one prefix, not k copies
        done = torch.zeros(n * beam, dtype=torch.bool, device=dev)
        for _ in range(self.config.max_length - 2):          # at most max_length - 2 words
            lp = self._next_logprobs(mem, ids)                     # (N*k, V)
            v = lp.shape[1]
            frozen = torch.full_like(lp, float("-inf"))
            frozen[:, self.pad_id] = 0.0                           # a finished caption only pads, at no cost
            lp = torch.where(done[:, None], frozen, lp)
            cand = (scores.view(-1, 1) + lp).view(n, beam * v)     # (N, k*V)
            scores, idx = cand.topk(beam, dim=1)                   # (N, k), sorted
            src = (torch.arange(n, device=dev)[:, None] * beam + idx // v).view(-1)
            tok = (idx % v).view(-1)
            ids = torch.cat([ids[src], tok[:, None]], 1)
            done = done[src] | (tok == self.eos_id)
            if bool(done.all()):
                break
        return ids.view(n, beam, -1)[:, :keep], scores[:, :keep]

    def _sample(self, memory: torch.Tensor, temperature: float, generator: torch.Generator):
        """Ancestral sampling from p^(1/T) (renormalised). Draws come from ``generator`` on the
        CPU, so a seed gives the same captions on every device. -> ids (N, T), log p (N,)."""
        def draw(lp):
            probs = (lp / temperature).softmax(-1).cpu()
            return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(memory.device)
        return self._decode(memory, draw)

    @torch.no_grad()
    def caption(self, images: torch.Tensor, n: int = 1, method: str = "greedy", beam: int | None = None,
                temperature: float = 1.0, seed: int = 0, batch_size: int = 256,
                return_scores: bool = False):
        """Captions for images: a list of N * n strings, grouped by image (image 0's n first).

        method "greedy": the most likely word at each step (n must be 1);
        "beam": beam search of width ``beam`` (default max(4, n)); the n best, best first;
        "sample": n independent samples at ``temperature`` (1: the model's own distribution,
        below 1: sharper, above 1: flatter), seeded by ``seed``.
        ``return_scores``: also a (N * n,) tensor of the captions' log-probabilities."""
        images = checks.images(images, self.config.image_size, "Captioner.caption")
        method = checks.choice(method, "caption method", METHODS)
        n = checks.count(n, "n (captions per image)", maximum=MAX_CAPTIONS_PER_IMAGE)
        temperature = checks.number(temperature, "temperature", 0.0, MAX_TEMPERATURE, low_open=True)
        seed = checks.seed(seed)
        batch_size = checks.count(batch_size, "batch_size")
        if method == "greedy" and n > 1:
            raise ValueError(f"greedy decoding gives one caption per image, got n={n}; "
                             "use method='beam' (the n best) or method='sample' (n samples)")
        if method != "sample" and temperature != 1.0:
            raise ValueError(f"temperature applies to method='sample' only (got temperature={temperature:g} "
                             f"with method={method!r})")
        if beam is not None and method != "beam":
            raise ValueError(f"beam applies to method='beam' only (got beam={beam} with method={method!r})")
        if method == "beam":
            beam = max(4, n) if beam is None else checks.count(beam, "beam", maximum=256)
            if n > beam:
                raise ValueError(f"beam search keeps {beam} captions per image; n={n} needs beam >= {n}")
        gen = torch.Generator().manual_seed(seed)
        was = self.training
        self.eval()
        texts, scores = [], []
        try:
            for i in range(0, len(images), batch_size):
                memory = self.encode_images(images[i:i + batch_size])
                if method == "greedy":
                    ids, lp = self._greedy(memory)
                elif method == "beam":
                    ids, lp = self._beam(memory, beam, n)
                    ids, lp = ids.flatten(0, 1), lp.flatten()
                else:
                    ids, lp = self._sample(memory.repeat_interleave(n, 0), temperature, gen)
                texts += [self.tokenizer.decode(row) for row in ids.cpu()]
                scores.append(lp.float().cpu())
        finally:
            self.train(was)
        return (texts, torch.cat(scores)) if return_scores else texts

    @torch.no_grad()
    def cross_attention(self, image: torch.Tensor, caption: str):
        """Where the decoder looks while it writes ``caption`` for one image (3, S, S).

        Returns (words, grid, whole): the words it emits ([SEP] last); their cross-attention
        weights over the image positions, (layers, heads, words, G, G); and the weight on the
        whole-image vector, (layers, heads, words) (zeros without ``global_token``). For each
        layer, head and word the weights sum to 1 over the G*G positions and the whole-image
        vector. Row j is the attention at the step that *writes* word j (its input is the
        word before)."""
        if isinstance(image, torch.Tensor) and image.ndim == 3:
            image = image.unsqueeze(0)
        image = checks.images(image, self.config.image_size, "Captioner.cross_attention")
        if len(image) != 1:
            raise ValueError(f"cross_attention reads one image, got {len(image)}")
        ids = self.tokenizer([caption], who="Captioner.cross_attention")["input_ids"].to(self.device)
        was = self.training
        self.eval()
        try:
            out = self.decode(self.encode_images(image), ids[:, :-1], attentions=True)
        finally:
            self.train(was)
        att = torch.stack([a[0] for a in out.cross_attentions]).float().cpu()   # (layers, heads, L, P)
        g = self.config.grid
        whole = att[..., 0] if self.rest is not None else torch.zeros(att.shape[:3])
        grid = att[..., 1:] if self.rest is not None else att
        words = self.tokenizer.hf.convert_ids_to_tokens(ids[0, 1:].tolist())
        return words, grid.reshape(*att.shape[:3], g, g), whole

    # ---------------------------------------------------------------- checkpoints
    def save(self, path, history: dict | None = None) -> None:
        """state_dict + config + world + vocabulary (read back with ``weights_only=True``)."""
        checkpoint.save(path, KIND, asdict(self.config), {"model": self.state_dict()},
                        world=self.world.config(), words=list(self.tokenizer.words),
                        history=history if history is not None else self.history)

    @classmethod
    def load(cls, path, map_location=None) -> "Captioner":
        """Rebuild a captioner from a checkpoint; every way the file can be wrong is a
        ``CheckpointError`` (or ``FileNotFoundError``) that says which."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no captioner checkpoint at {path} (train one with "
                                    "mmtutor.zoo.captioner(world, profile), which caches it, or "
                                    "Captioner.save)")
        ckpt = checkpoint.load(path, kind=KIND, map_location="cpu", require=("config", "state", "world", "words"))
        config = checkpoint.dataclass_from_dict(CaptionerConfig, ckpt["config"], str(path))
        try:
            world = World(**ckpt["world"])
        except (TypeError, ValueError) as e:
            raise checkpoint.CheckpointError(f"{path}: its world config is not valid: {e}") from None
        model = cls(config, world)
        if list(ckpt["words"]) != list(model.tokenizer.words):
            diff = sorted(set(ckpt["words"]) ^ set(model.tokenizer.words))
            raise checkpoint.CheckpointError(f"{path} was trained on another vocabulary (words that differ: "
                                             f"{', '.join(diff[:8]) or 'their order'}); retrain it")
        checkpoint.load_state(model, ckpt["state"].get("model"), str(path))
        model.history = ckpt.get("history", {})
        return model.to(map_location or "cpu").eval()


# ======================================================================================
# training
def caption_bank(world: World, split: str = "train", per_combo: int = 16, seed: int = 0) -> list[list[str]]:
    """``per_combo`` captions for every combination of a split, each naming all four attributes
    (``world.caption`` with fresh seeds: every template and synonym of the grammar).
    Returns one list per combination, in the order of ``world.splits[split]``."""
    checks.choice(split, "split", world.splits)
    per_combo = checks.count(per_combo, "per_combo", maximum=1000)
    rng = torch.Generator().manual_seed(checks.seed(seed))
    seeds = torch.randint(2**31, (len(world.splits[split]), per_combo), generator=rng).tolist()
    return [[world.caption(world.attrs_of(c), seed=s) for s in row] for c, row in zip(world.splits[split], seeds)]


def train_captioner(model: Captioner, pool: PairPool, train: TrainConfig | None = None, lr: float = 2e-3,
                    augment: bool = False, captions_per_combo: int = 16, **train_kw) -> dict:
    """Teacher forcing: each image of the pool is paired with a random caption of its
    combination naming all four attributes (a bank of ``captions_per_combo`` per combination,
    so the decoder learns every phrasing), and the decoder learns to predict each next word
    (``losses.caption_loss``). AdamW, warm-up then cosine decay. ``augment``: train on images
    corrupted by ``judge.augment`` (noise, blur, blotches -- what a generator's images carry).
    ``train`` (or its fields as keywords) sets the loop. Returns the history."""
    train = train or TrainConfig(**{"steps": 600, "batch_size": 64, **train_kw})
    lr = checks.number(lr, "lr", 0, 1, low_open=True)
    world, dev = pool.world, model.device
    gen = torch.Generator().manual_seed(train.seed)
    torch.manual_seed(train.seed)
    bank = caption_bank(world, pool.split, captions_per_combo, seed=train.seed)
    enc = model.tokenizer([c for row in bank for c in row], who="train_captioner")
    ids = enc["input_ids"].view(len(bank), captions_per_combo, -1)          # (C, K, L)
    lengths = enc["attention_mask"].sum(1).view(len(bank), captions_per_combo)  # (C, K)
    opt = torch.optim.AdamW(decay_groups(model, 0.01), lr=lr, betas=(0.9, 0.98))
    warmup = max(1, train.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, train.steps) / train.steps)))
    model.train()
    loop = Loop("captioner", train, {"model": model}, hint=f"Lower the learning rate (lr={lr}).", save=model.save)
    for step in loop:
        idx = torch.randint(len(pool), (train.batch_size,), generator=gen)
        which = torch.randint(captions_per_combo, (train.batch_size,), generator=gen)
        combo = pool.image_combo[idx]
        length = int(lengths[combo, which].max())
        tokens = ids[combo, which, :length].to(dev)                           # (B, L)
        images = to_float(pool.images[idx])
        if augment:
            images = corrupt(images, gen)
        with runtime.autocast(dev, train.bf16):
            logits = model(images.to(dev), tokens[:, :-1])                    # (B, L-1, V)
        loss = caption_loss(logits.float(), tokens[:, 1:], pad_id=model.pad_id)
        loop.check(loss=loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loop.log(step, loss=loss, lr=sched.get_last_lr()[0])
    model.eval()
    model.history = loop.finish()
    return model.history


# ======================================================================================
# measurement by the grammar
def parse_captions(world: World, captions: list[str]) -> torch.Tensor:
    """Captions -> (N, 4) attribute indices each names; -1 where it names nothing for an
    attribute, and the whole row ``NOT_PARSED`` (-2) where the parser refuses it (two values
    of one attribute, no object, an empty caption)."""
    rows = []
    for c in captions:
        try:
            rows.append(world.index_of(world.parse(c)))
        except ValueError:
            rows.append([NOT_PARSED] * len(world.attributes))
    return torch.tensor(rows, dtype=torch.long).view(-1, len(world.attributes))


@functools.lru_cache(maxsize=4096)
def _phrasings(attrs: tuple[tuple[str, str], ...]) -> dict[str, int]:
    """Every caption the training grammar writes for these attributes -> its template index."""
    a = dict(attrs)
    out = {}
    for t, (text, needs) in enumerate(grammar.TEMPLATES):
        if not all(k in a for k in needs):
            continue
        fields = [k for k in grammar.SYNONYMS if k in a]
        for words in itertools.product(*(grammar.SYNONYMS[k][a[k]] for k in fields)):
            filled = {k: "" for k in grammar.SYNONYMS} | dict(zip(fields, words))   # as grammar.describe
            out.setdefault(grammar._finish(text.format(a="{a}", **filled)), t)
    return out


def phrasings(world: World, attrs: dict) -> dict[str, int]:
    """Every caption the training grammar can write for ``attrs`` (all templates, all
    synonyms), mapped to the template that writes it."""
    return dict(_phrasings(tuple(sorted(world._check(dict(attrs), require_all=False).items()))))


def template_of(world: World, caption: str) -> int | None:
    """The training-grammar template that writes ``caption`` exactly, or None (a caption the
    grammar never writes: a word order of its own, a repeated word, ...)."""
    try:
        attrs = world.parse(caption)
    except ValueError:
        return None
    return phrasings(world, attrs).get(" ".join(caption.split()))


def _texts(captions, who: str) -> list[str]:
    """Captions to *grade*: any strings, empty ones included (a model may write nonsense);
    only the container and the types are checked."""
    if isinstance(captions, str):
        raise TypeError(f"{who} expects a list of captions, got a single string; wrap it: [{captions!r}]")
    if captions is None or not hasattr(captions, "__iter__") or isinstance(captions, (bytes, dict)):
        raise TypeError(f"{who} expects a list of captions (strings), got {type(captions).__name__}")
    captions = list(captions)
    if not captions:
        raise ValueError(f"{who} expects at least one caption, got an empty list")
    bad = next((c for c in captions if not isinstance(c, str)), None)
    if bad is not None:
        raise TypeError(f"{who}: every caption must be a string, got a {type(bad).__name__} ({bad!r})")
    return captions


def caption_scores(world: World, captions: list[str], attrs: torch.Tensor, n_per_image: int = 1) -> dict:
    """Grade captions against the true attributes of their images by parsing them.

    ``captions`` are grouped by image (``n_per_image`` each); ``attrs`` (N, 4) are the images'
    attribute indices. An attribute counts as right when the caption names the true value;
    a caption that leaves it out, or does not parse, counts as wrong. Returns per-attribute
    accuracy, ``joint`` (all four right), ``unparseable`` (share the parser refuses),
    ``incomplete`` (parsed but leaves an attribute out) and ``grammatical`` (share that the
    training grammar writes word for word)."""
    captions = _texts(captions, "caption_scores")
    n_per_image = checks.count(n_per_image, "n_per_image")
    attrs = torch.as_tensor(attrs, dtype=torch.long)
    if attrs.ndim != 2 or attrs.shape[1] != len(world.attributes) or (attrs < 0).any():
        raise ValueError(f"attrs must be (N, {len(world.attributes)}) attribute indices of the images, "
                         f"got shape {tuple(attrs.shape)}")
    if len(captions) != len(attrs) * n_per_image:
        raise ValueError(f"expected {len(attrs)} images x {n_per_image} = {len(attrs) * n_per_image} captions, "
                         f"got {len(captions)}")
    target = attrs.repeat_interleave(n_per_image, 0)
    pred = parse_captions(world, captions)
    out = {k: (pred[:, j] == target[:, j]).float().mean().item() for j, k in enumerate(world.attributes)}
    out["joint"] = (pred == target).all(1).float().mean().item()
    parsed = pred[:, 0] != NOT_PARSED
    out["unparseable"] = 1.0 - parsed.float().mean().item()
    out["incomplete"] = (parsed & (pred < 0).any(1)).float().mean().item()
    out["grammatical"] = sum(template_of(world, c) is not None for c in captions) / len(captions)
    out["captions"] = len(captions)
    return out


def phrasing_diversity(world: World, captions: list[str], n_per_image: int) -> dict:
    """How varied are the n captions of each image (grouped by image)? Mean number of distinct
    captions and of distinct templates per image, and the share of all captions written by
    each template of the grammar (None: outside the grammar)."""
    captions = _texts(captions, "phrasing_diversity")
    n = checks.count(n_per_image, "n_per_image")
    if len(captions) % n:
        raise ValueError(f"{len(captions)} captions do not split into groups of {n}")
    groups = [captions[i:i + n] for i in range(0, len(captions), n)]
    templates = [template_of(world, c) for c in captions]
    tgroups = [templates[i:i + n] for i in range(0, len(templates), n)]
    use = {t: templates.count(t) / len(templates) for t in [*range(len(grammar.TEMPLATES)), None]}
    return {"distinct_captions": sum(len(set(g)) for g in groups) / len(groups),
            "distinct_templates": sum(len({t for t in g if t is not None}) for g in tgroups) / len(groups),
            "template_share": use, "n_per_image": n}


def evaluate(model: Captioner, world: World, n: int = 1000, split: str = "heldout", seed: int = 1234,
             method: str = "greedy", **options) -> dict:
    """Caption ``n`` fresh real renders of a split (one caption each) and grade them
    (``caption_scores``). Returns the scores plus the images, attributes and captions."""
    images, _, attrs = world.sample(checks.count(n, "n"), split=split, seed=seed)
    captions = model.caption(images, method=method, **options)
    out = caption_scores(world, captions, attrs)
    return {**out, "images": images, "attrs": attrs, "captions": captions}


# ------------------------------------------------------------------------ where words look
def object_masks(world: World, attrs: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Render scenes (N, 4) and find each object's pixels exactly: the same scenes (same random
    layout) rendered once more in another colour differ only where the object is.
    Returns (images (N, 3, S, S), masks (N, S, S) bool)."""
    attrs = torch.as_tensor(attrs, dtype=torch.long)
    images = world.render_index(attrs, torch.Generator().manual_seed(checks.seed(seed)))
    other = attrs.clone()
    other[:, 0] = (attrs[:, 0] + len(world.attributes["color"]) // 2) % len(world.attributes["color"])
    recolored = world.render_index(other, torch.Generator().manual_seed(seed))
    return images, (images - recolored).abs().amax(1) > 0.05


def word_roles(world: World, words: list[str]) -> list[str]:
    """The attribute each emitted word names ("color", "object", "relation", "size"), else
    "other" (template words, [SEP])."""
    lookup = {w: attr for attr, table in grammar.SYNONYMS.items() for values in table.values()
              for phrase in values for w in phrase.split() if w not in ("the", "of", "to", "table")}
    return [lookup.get(w, "other") for w in words]


@torch.no_grad()
def attention_on_object(model: Captioner, world: World, n: int = 200, split: str = "heldout",
                        seed: int = 0, layer: int = -1) -> dict:
    """Where the decoder looks while writing each kind of word, over ``n`` fresh scenes.

    For every word of the (greedy) caption, the share of its cross-attention (one layer,
    averaged over heads) that falls on grid cells the object covers (a cell counts in
    proportion to its object pixels), and the share on the whole-image vector. The object's
    share of the image's cells is the baseline a look anywhere would give. Returns
    {role: {"object": share, "whole_image": share, "words": count}, "object_area": share}."""
    attrs = torch.tensor(world.splits[split])[torch.randint(len(world.splits[split]), (n,),
                                                            generator=torch.Generator().manual_seed(seed))]
    images, masks = object_masks(world, attrs, seed=seed)
    g = model.config.grid
    cover = nn.functional.adaptive_avg_pool2d(masks.float().unsqueeze(1), g).squeeze(1)   # (N, G, G)
    captions = model.caption(images)
    sums: dict[str, list[float]] = {}
    for img, cap, cov in zip(images, captions, cover):
        words, grid, whole = model.cross_attention(img, cap)
        grid, whole = grid[layer].mean(0), whole[layer].mean(0)             # (L, G, G), (L,)
        on_object = (grid * cov).sum((-2, -1))                              # (L,)
        for role, o, w in zip(word_roles(world, words), on_object.tolist(), whole.tolist()):
            s = sums.setdefault(role, [0.0, 0.0, 0])
            s[0] += o
            s[1] += w
            s[2] += 1
    out = {role: {"object": s[0] / s[2], "whole_image": s[1] / s[2], "words": s[2]} for role, s in sums.items()}
    out["object_area"] = cover.mean().item()
    return out


# ------------------------------------------------------------------------ BLEU
def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:
        raise ImportError("BLEU is computed with the package sacrebleu (pip install 'sacrebleu>=2.3')") from None
    return sacrebleu


def reference_captions(world: World, attrs: torch.Tensor, k: int = 5, seed: int = 0) -> list[list[str]]:
    """``k`` reference captions per image (as COCO has five per image), written by the grammar
    with random templates and synonyms: a list of N lists of k captions."""
    k = checks.count(k, "k", maximum=100)
    rng = torch.Generator().manual_seed(checks.seed(seed))
    return [[world.caption(world.attrs_of(row), seed=int(s)) for s in torch.randint(2**31, (k,), generator=rng)]
            for row in torch.as_tensor(attrs).tolist()]


def bleu(hypotheses: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU-4 (0-100) of one hypothesis per image against its references (sacrebleu's
    defaults: 13a tokenisation, brevity penalty, uniform 1-4-gram weights)."""
    hypotheses = _texts(hypotheses, "bleu")
    if len(references) != len(hypotheses) or len({len(r) for r in references}) != 1:
        raise ValueError("bleu needs one list of references per hypothesis, all of the same length")
    streams = [list(s) for s in zip(*references)]                 # k streams of N references
    return float(_sacrebleu().corpus_bleu(hypotheses, streams).score)


def sentence_bleu(hypothesis: str, references: list[str]) -> float:
    """BLEU-4 (0-100) of one caption against its references (sacrebleu's smoothed sentence BLEU)."""
    return float(_sacrebleu().sentence_bleu(hypothesis, list(references)).score)


# ------------------------------------------------------------------------ retrieval
@torch.no_grad()
def retrieve_captions(aligner, images: torch.Tensor, bank: list[str]) -> tuple[list[str], torch.Tensor]:
    """Retrieval captioning: for each image, the bank caption the aligned dual encoder finds
    most similar (``aligner.encode(images=..., captions=...)``, cosine similarity). It can
    only return captions that are in the bank. Returns (captions, similarities (N,))."""
    bank = checks.captions(bank, "retrieve_captions")
    text, image = aligner.encode(images=images, captions=bank)     # (M, E), (N, E)
    sim = image.float() @ text.float().t()                         # (N, M)
    best, idx = sim.max(1)
    return [bank[i] for i in idx.tolist()], best


# ------------------------------------------------------------------------ the round trip
def round_trip(captioner: Captioner, model, judges, world: World, captions: list[str], n_per_caption: int = 8,
               seed: int = 0, images: torch.Tensor | None = None) -> dict:
    """caption -> ``model.generate`` (any text-to-image model) -> image -> captioner (greedy)
    -> parsed attributes, compared with the attributes the caption names.

    ``cycle`` is that agreement (per attribute and joint, as ``caption_scores``; an attribute
    the caption leaves out is not scored): a consistency score without a judge. It is a
    product of two instruments -- a generator error is counted only if the captioner reads it,
    and a captioner error on a good image counts against the generator -- so it is reported
    beside the judges' consistency on the *same images* (``metrics.consistency_by_judge``),
    and ``disagree`` lists the images on which the cycle and a judge give different verdicts.

    Returns {"cycle": scores, "judges": consistency_by_judge(...), "read_back": the
    captioner's captions, "cycle_right": (N,) bool, "judge_right": {judge: (N,) bool},
    "disagree": indices where the cycle's verdict differs from the first judge's,
    "images", "target"}."""
    captions = checks.captions(captions, "round_trip")
    n_per_caption = checks.count(n_per_caption, "n_per_caption")
    if images is None:
        images = model.generate(captions, n_per_caption=n_per_caption, seed=seed)
    elif len(images) != len(captions) * n_per_caption:
        raise ValueError(f"expected {len(captions)} x {n_per_caption} images, got {len(images)}")
    target = torch.tensor([world.index_of(world.parse(c)) for c in captions]).repeat_interleave(n_per_caption, 0)
    read = captioner.caption(images, method="greedy")
    pred = parse_captions(world, read)
    cycle = attribute_accuracy(pred, target, world.attributes)
    cycle["unparseable"] = (pred[:, 0] == NOT_PARSED).float().mean().item()
    by_judge = consistency_by_judge(model, judges, world, captions, n_per_caption, seed, images=images)
    judge_list = judges if isinstance(judges, dict) else {j.name: j for j in judges}
    judge_right = {name: all_named_right(j.predict(images), target) for name, j in judge_list.items()}
    cycle_right = all_named_right(pred, target)
    first = next(iter(judge_right.values()))
    return {"cycle": cycle, "judges": by_judge, "read_back": read, "cycle_right": cycle_right,
            "judge_right": judge_right, "disagree": (cycle_right != first).nonzero().flatten().tolist(),
            "images": images, "target": target}


# ======================================================================================
# files: what ``python -m mmtutor caption image.png`` does
def load_image(path, image_size: int, resize: bool = False) -> torch.Tensor:
    """A PNG (or any image PIL reads) -> (1, 3, S, S) float in [-1, 1].

    An image of another size is refused unless ``resize``: then a square image is scaled to
    S x S (box filter when shrinking, as the renderer's supersampling; bicubic when
    enlarging). A non-square image is always refused: stretching it would move the object
    relative to the table. Transparency is dropped (RGB only)."""
    from PIL import Image, UnidentifiedImageError
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no image file at {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give an image file, e.g. a PNG")
    try:
        with Image.open(path) as im:
            im.load()
            img = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not an image this program can read ({type(e).__name__}); "
                         "give a PNG (or JPEG) of a scene") from None
    w, h = img.size
    if w != h:
        raise ValueError(f"{path} is {w}x{h}; the captioner reads square {image_size}x{image_size} scenes "
                         "(a non-square image is refused rather than stretched)")
    if w != image_size:
        if not resize:
            raise ValueError(f"{path} is {w}x{h}, but this captioner reads {image_size}x{image_size} images; "
                             f"pass resize=True (command line: --resize) to scale it, or use a captioner "
                             f"trained at {w}x{w}")
        filt = Image.Resampling.BOX if w > image_size else Image.Resampling.BICUBIC
        img = img.resize((image_size, image_size), filt)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(image_size, image_size, 3)
    return to_float(x.permute(2, 0, 1).unsqueeze(0))              # (1, 3, S, S) in [-1, 1]


def caption_file(path, model, n: int = 1, method: str = "greedy", resize: bool = False,
                 device=None, **options) -> list[str]:
    """Caption an image file: ``model`` is a ``Captioner`` or the path of a captioner
    checkpoint. Every argument is checked before the image is read; returns n captions.
    ``options`` go to ``Captioner.caption`` (beam, temperature, seed)."""
    method = checks.choice(method, "caption method", METHODS)
    n = checks.count(n, "n (captions per image)", maximum=MAX_CAPTIONS_PER_IMAGE)
    if method == "greedy" and n > 1:
        raise ValueError(f"greedy decoding gives one caption per image, got n={n}; "
                         "use method 'beam' (the n best) or 'sample' (n samples)")
    if isinstance(model, (str, Path)):
        model = Captioner.load(model, map_location=device)
    elif not isinstance(model, Captioner):
        raise TypeError(f"model must be a Captioner or a checkpoint path, got {type(model).__name__}")
    image = load_image(path, model.config.image_size, resize=resize)
    return model.caption(image, n=n, method=method, **options)


__all__ = ["CaptionerConfig", "Captioner", "train_captioner", "caption_bank", "parse_captions", "phrasings",
           "template_of", "caption_scores", "phrasing_diversity", "evaluate", "object_masks", "word_roles",
           "attention_on_object", "reference_captions", "bleu", "sentence_bleu", "retrieve_captions",
           "round_trip", "load_image", "caption_file", "METHODS", "NOT_PARSED"]
