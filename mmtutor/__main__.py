"""Command line: train a text-to-image model, generate images from captions, evaluate a model.

    python -m mmtutor train --out gan.pt
    python -m mmtutor generate "a red apple on the table" --out apple.png
    python -m mmtutor evaluate --checkpoint gan.pt
    torchrun --nproc_per_node=2 -m mmtutor train --out gan.pt     # DistributedDataParallel, 2 processes
    python -m mmtutor prepare                    # train the book's models ahead (make book does)

Run ``python -m mmtutor COMMAND --help`` for the options of each command. Every expected
error (a bad option, an unreadable checkpoint, a caption the model cannot read, a file that
cannot be written) is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from . import captioner, checkpoint, checks, distributed, metrics, runtime, text2image, viz, zoo
from .gan import RECIPES, ConditionalGAN
from .loop import TrainConfig, TrainingDiverged
from .world import World

EPILOG = """examples:
  python -m mmtutor train --out gan.pt                    # a few minutes on a laptop CPU
  python -m mmtutor generate "a red apple on the table" --checkpoint gan.pt --out apple.png
  python -m mmtutor evaluate --checkpoint gan.pt --json report.json
  torchrun --nproc_per_node=2 -m mmtutor train --out gan.pt   # two processes (gloo on CPU, NCCL on GPUs)

Without --checkpoint, generate and evaluate use the profile's default model from the
cache (~/.cache/mmtutor or $MMTUTOR_CACHE), training it first if it is not there yet;
--model-seed picks which default model, --seed only the noise.
Profiles: smoke (seconds, tests only), cpu (default without a GPU), gpu (default with one);
choose with --profile or MMTUTOR_PROFILE."""

MAX_SCALE = 16


class CommandLineError(ValueError):
    """An option value the command cannot use."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus exit status 2)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _int_at_least(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=sorted(runtime.PROFILES), default=None,
                   help="sizes and step budgets (default: gpu if a GPU is present, else cpu)")
    p.add_argument("--device", choices=["cpu", "cuda", "mps"], default=None, help="default: the best available")
    p.add_argument("--seed", type=_int_at_least(0, checks.SEED_MAX), default=0,
                   help="random seed (default 0): the noise when sampling, everything when training")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _setup(args):
    dev = runtime.device(args.device)
    prof = runtime.profile(args.profile, dev)
    runtime.seed_everything(args.seed)
    return dev, prof


def _model(args, dev, prof) -> text2image.TextToImage:
    if args.checkpoint:
        return text2image.load_model(args.checkpoint, device=dev)
    world = World(image_size=prof.image_size)
    print(f"no --checkpoint: using the cached default model of this profile (model seed {args.model_seed}; "
          "training it if needed)", file=sys.stderr)
    return zoo.gan(world, prof, seed=args.model_seed, device=dev, progress=not args.quiet)[0]


def _png_path(path: str) -> Path:
    out = checkpoint.writable_path(path, "--out")
    if out.suffix.lower() != ".png":
        raise CommandLineError(f"--out {path!r} must name a .png file (the image grid is written as PNG)")
    return out


# ------------------------------------------------------------------------ commands
def cmd_train(args) -> int:
    dev, prof = _setup(args)
    if args.fp32:
        prof = dataclasses.replace(prof, bf16=False)
    ctx = distributed.init(dev)
    dev = distributed.device_for(ctx, dev)
    out = checkpoint.writable_path(args.out, "--out")                 # fail now, not after training
    if ctx.main:
        print(runtime.describe(dev, prof, args.seed) + (f" | processes: {ctx.world_size}" if ctx.active else ""),
              file=sys.stderr)
    world = World(image_size=prof.image_size)
    over = {k: v for k, v in (("text_encoder", args.text_encoder), ("fusion", args.fusion),
                              ("loss", args.loss)) if v is not None}
    config = zoo.gan_config(world, prof, recipe=args.recipe, **over)
    aligner = None
    if config.text_encoder != "minilm":
        aligner, info = zoo.aligner(world, prof, seed=args.seed, device=dev, progress=not args.quiet)
        print(f"dual encoder: {'loaded from cache' if info['cached'] else 'trained'} ({info['path']})", file=sys.stderr)
    gan = ConditionalGAN(config, world, aligner=aligner, device=dev)
    pool = zoo.pool(world, prof, seed=args.seed)
    train = TrainConfig(steps=args.steps or prof.gan_steps, batch_size=prof.batch_size, seed=args.seed,
                        bf16=prof.bf16, max_seconds=args.max_seconds, checkpoint=str(out),
                        progress=not args.quiet and ctx.main, log_every=args.log_every)
    t0 = time.perf_counter()
    hist = gan.fit(pool, train)
    if ctx.main:
        gan.save(out, history=hist)
        print(f"trained {hist['steps']} steps in {time.perf_counter() - t0:.1f} s "
              f"({hist['images_per_second']:.0f} images/s); saved {out}")
    distributed.shutdown()
    return 0


def cmd_generate(args) -> int:
    dev, prof = _setup(args)
    out = _png_path(args.out)
    print(runtime.describe(dev, prof, args.seed), file=sys.stderr)
    model = _model(args, dev, prof)
    checks.image_count(len(args.captions) * args.n, model.world.image_size * args.scale,
                       "images in the grid (captions x --n, at --scale)")
    images = model.generate(args.captions, n_per_caption=args.n, seed=args.seed)
    viz.save_grid(images, out, nrow=args.n, scale=args.scale)
    print(f"wrote {len(images)} images ({len(args.captions)} caption(s) x {args.n}) to {out}; one row per caption")
    return 0


def cmd_evaluate(args) -> int:
    dev, prof = _setup(args)
    print(runtime.describe(dev, prof, args.seed), file=sys.stderr)
    if args.json:
        checkpoint.writable_path(args.json, "--json")
    model = _model(args, dev, prof)
    judges = zoo.judges(model.world, prof, device=dev, progress=not args.quiet)
    report = {"judge_accuracy_real": {name: j.accuracy for name, j in judges.items()},
              "consistency": metrics.consistency_report(model, judges, model.world, n_per_caption=args.n,
                                                        seed=args.seed)}
    text = json.dumps(report, indent=2, default=list)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def cmd_caption(args) -> int:
    dev, prof = _setup(args)
    print(runtime.describe(dev, prof, args.seed), file=sys.stderr)
    if args.method == "greedy" and args.n > 1:
        raise CommandLineError("--n > 1 needs --method beam or --method sample (greedy decoding gives one caption)")
    options = {"seed": args.seed, **({"beam": args.beam} if args.beam is not None else {}),
               **({"temperature": args.temperature} if args.temperature is not None else {})}
    if args.checkpoint:
        model = args.checkpoint                   # caption_file loads it or says why not
    else:
        captioner.load_image(args.image, prof.image_size, resize=args.resize)   # fail before any training
        print(f"no --checkpoint: using the cached captioner of this profile (model seed {args.model_seed}; "
              "training it if needed)", file=sys.stderr)
        model = zoo.captioner(World(image_size=prof.image_size), prof, seed=args.model_seed,
                              device=dev, progress=not args.quiet)[0]
    for text in captioner.caption_file(args.image, model, n=args.n, method=args.method,
                                       resize=args.resize, device=dev, **options):
        print(text)
    return 0


def cmd_prepare(args) -> int:
    from . import prepare
    dev = runtime.device(args.device)
    prof = runtime.profile(args.profile, dev)
    info = prepare.prepare(prof.name, args.device, jobs=args.jobs, seed=args.seed,
                           models=tuple(args.models) if args.models else prepare.BOOK_MODELS,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    runtime.record_models(info, dev, prof)
    return 0


# ------------------------------------------------------------------------ the parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m mmtutor", description=__doc__.split("\n")[0], epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("train", help="train a conditional GAN and save a checkpoint",
                       description="Train a conditional GAN on the captioned world and save a checkpoint "
                                   "(state_dict + config). Under torchrun, trains with DistributedDataParallel.")
    p.add_argument("--out", required=True, help="checkpoint file to write, e.g. gan.pt")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="book",
                   help="book (default); ablation: the book's without SN/hinge/EMA/TTUR/diversity term; "
                        "reed2016: Reed et al.'s GAN-INT-CLS")
    p.add_argument("--text-encoder", choices=["minilm", "clip", "bert"], default=None,
                   help="caption features: pretrained MiniLM (default), or the aligned text tower / small BERT "
                        "(trains the dual encoder first)")
    p.add_argument("--fusion", choices=["concat", "attention"], default=None, help="how G reads the text")
    p.add_argument("--loss", choices=["hinge", "bce", "bce-saturating"], default=None)
    p.add_argument("--steps", type=_int_at_least(1, 10**7), default=None,
                   help="generator updates (default: the profile's)")
    p.add_argument("--max-seconds", type=_positive_float, default=None, help="stop after this much wall time")
    p.add_argument("--log-every", type=_int_at_least(1), default=25, help="history entries every N steps (default 25)")
    p.add_argument("--fp32", action="store_true",
                   help="train in fp32 even where the profile would use bf16 autocast (CPUs with AMX, recent GPUs)")
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="generate images for captions into a PNG grid",
                       description="Generate images for one or more captions; writes a PNG with one row per caption.")
    p.add_argument("captions", nargs="+", help='captions, e.g. "a red apple on the table"')
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--checkpoint", default=None, help="a checkpoint from `train` (default: the cached model)")
    p.add_argument("--model-seed", type=_int_at_least(0, checks.SEED_MAX), default=0,
                   help="which cached default model (its training seed; default 0)")
    p.add_argument("--n", type=_int_at_least(1, 4096), default=8, help="images per caption (default 8, at most 4096)")
    p.add_argument("--scale", type=_int_at_least(1, MAX_SCALE), default=4,
                   help=f"enlarge pixels this many times (default 4, 1-{MAX_SCALE})")
    _common(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("evaluate", help="measure caption consistency with the judges",
                       description="Judge-measured caption consistency on every seen and held-out attribute "
                                   "combination (both judges), size coverage, and the judges' own accuracy on "
                                   "real images.")
    p.add_argument("--checkpoint", default=None, help="a checkpoint from `train` (default: the cached model)")
    p.add_argument("--model-seed", type=_int_at_least(0, checks.SEED_MAX), default=0,
                   help="which cached default model (its training seed; default 0)")
    p.add_argument("--n", type=_int_at_least(2, 256), default=8, help="images per caption (default 8)")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    _common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("caption", help="describe an image in words (image -> text)",
                       description="Caption a square PNG/JPEG scene of the profile's size with the captioner. "
                                   "Another size is refused unless --resize; non-square images are always refused.")
    p.add_argument("image", help="image file, e.g. scene.png")
    p.add_argument("--checkpoint", default=None, help="a captioner checkpoint (default: the cached captioner)")
    p.add_argument("--model-seed", type=_int_at_least(0, checks.SEED_MAX), default=0,
                   help="which cached captioner (its training seed; default 0)")
    p.add_argument("--n", type=_int_at_least(1, 1000), default=1, help="captions (more than 1 needs beam or sample)")
    p.add_argument("--method", choices=["greedy", "beam", "sample"], default="greedy")
    p.add_argument("--beam", type=_int_at_least(1, 256), default=None, help="beam width (default max(4, --n))")
    p.add_argument("--temperature", type=_positive_float, default=None, help="sampling temperature in (0, 100]")
    p.add_argument("--resize", action="store_true", help="scale a square image of another size (default: refuse)")
    _common(p)
    p.set_defaults(func=cmd_caption)

    about = ("Train (into the model cache) every model the chapters load that is not there yet: on a CPU in two "
             "processes of half the threads each, which uses two cores better than one process does (make book "
             "runs this first).")
    p = sub.add_parser("prepare", help="train the models the book's chapters load, in parallel processes",
                       description=about)
    p.set_defaults(func=cmd_prepare)
    _common(p)
    p.add_argument("--jobs", type=_int_at_least(1, 256), default=None,
                   help="training processes (default: 2 on a CPU with 2 or more cores, 1 on a GPU)")
    p.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help="only these (default: all of them): " + ", ".join(_book_models()))
    return parser


def _book_models() -> tuple[str, ...]:
    from .prepare import BOOK_MODELS
    return BOOK_MODELS


EXPECTED = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError, OSError,
            checkpoint.CheckpointError, TrainingDiverged, MemoryError)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EXPECTED as e:
        message = str(e).strip().split("\n")[0] or type(e).__name__
        if isinstance(e, MemoryError):
            message = "out of memory; ask for fewer images (--n) or a smaller --scale"
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
