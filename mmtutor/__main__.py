"""Command line: train a text-to-image GAN, generate images from captions, evaluate a model.

    python -m mmtutor train --out gan.pt
    python -m mmtutor generate "a red apple on the table" --out apple.png
    python -m mmtutor evaluate --checkpoint gan.pt

Run ``python -m mmtutor COMMAND --help`` for the options of each command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict


from . import metrics, runtime, viz, zoo
from .data import PairPool
from .gan import ConditionalGAN, GANConfig
from .world import World

EPILOG = """examples:
  python -m mmtutor train --out gan.pt                    # about 2.5 minutes on a laptop CPU
  python -m mmtutor generate "a red apple on the table" --checkpoint gan.pt --out apple.png
  python -m mmtutor evaluate --checkpoint gan.pt --json report.json

Without --checkpoint, generate and evaluate use the profile's default model from the
cache (~/.cache/mmtutor or $MMTUTOR_CACHE), training it first if it is not there yet.
Profiles: smoke (seconds, tests only), cpu (default without a GPU), gpu (default with one);
choose with --profile or MMTUTOR_PROFILE."""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=sorted(runtime.PROFILES), default=None,
                   help="sizes and step budgets (default: gpu if a GPU is present, else cpu)")
    p.add_argument("--device", choices=["cpu", "cuda", "mps"], default=None, help="default: the best available")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _setup(args):
    dev = runtime.device(args.device)
    prof = runtime.profile(args.profile, dev)
    runtime.seed_everything(args.seed)
    print(runtime.describe(dev, prof, args.seed), file=sys.stderr)
    return dev, prof


def _model(args, dev, prof) -> ConditionalGAN:
    if args.checkpoint:
        return ConditionalGAN.load(args.checkpoint, device=dev)
    world = World(image_size=prof.image_size)
    print("no --checkpoint: using the cached default model of this profile (training it if needed)",
          file=sys.stderr)
    return zoo.gan(world, prof, seed=args.seed, device=dev, progress=not args.quiet)[0]


def cmd_train(args) -> int:
    dev, prof = _setup(args)
    world = World(image_size=prof.image_size)
    over = {}
    if args.classic:
        base = GANConfig.classic(image_size=world.image_size, g_channels=prof.g_channels, d_channels=prof.d_channels)
        over = asdict(base)
    over.update({k: v for k, v in (("text_encoder", args.text_encoder), ("fusion", args.fusion),
                                   ("loss", args.loss)) if v is not None})
    config = zoo.gan_config(world, prof, **over)
    aligner = None
    if config.text_encoder != "minilm":
        aligner, info = zoo.aligner(world, prof, seed=args.seed, device=dev, progress=not args.quiet)
        print(f"dual encoder: {'loaded from cache' if info['cached'] else 'trained'} ({info['path']})", file=sys.stderr)
    gan = ConditionalGAN(config, world, aligner=aligner, device=dev)
    steps = args.steps or prof.gan_steps
    pool = PairPool(world, "train", n_images=prof.pool_size, seed=args.seed)
    t0 = time.perf_counter()
    hist = gan.fit(pool, steps=steps, batch_size=prof.batch_size, seed=args.seed, bf16=prof.bf16,
                   max_seconds=args.max_seconds, checkpoint=args.out, progress=not args.quiet)
    gan.save(args.out, history=hist)
    print(f"trained {hist['steps']} steps in {time.perf_counter() - t0:.1f} s "
          f"({hist['images_per_second']:.0f} images/s); saved {args.out}")
    return 0


def cmd_generate(args) -> int:
    dev, prof = _setup(args)
    gan = _model(args, dev, prof)
    images = gan.generate(args.captions, n_per_caption=args.n, seed=args.seed)
    viz.save_grid(images, args.out, nrow=args.n, scale=args.scale)
    print(f"wrote {len(images)} images ({len(args.captions)} caption(s) x {args.n}) to {args.out}; "
          "one row per caption")
    return 0


def cmd_evaluate(args) -> int:
    dev, prof = _setup(args)
    gan = _model(args, dev, prof)
    judge, info = zoo.judge(gan.world, prof, device=dev, progress=not args.quiet)
    report = {"judge_accuracy_real": {s: metrics.judge_accuracy(judge, gan.world, split=s)
                                      for s in ("train", "heldout")},
              "consistency": metrics.consistency_report(gan, judge, gan.world, n_per_caption=args.n,
                                                        seed=args.seed)}
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmtutor", description=__doc__.split("\n")[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a conditional GAN and save a checkpoint",
                       description="Train a conditional GAN on the captioned world and save a checkpoint "
                                   "(state_dict + config).")
    p.add_argument("--out", required=True, help="checkpoint file to write, e.g. gan.pt")
    p.add_argument("--text-encoder", choices=["minilm", "clip", "bert"], default=None,
                   help="caption features: pretrained MiniLM (default), or the aligned text tower / small BERT "
                        "(trains the dual encoder first)")
    p.add_argument("--fusion", choices=["concat", "attention"], default=None, help="how G reads the text")
    p.add_argument("--loss", choices=["hinge", "bce", "bce-saturating"], default=None)
    p.add_argument("--classic", action="store_true", help="the 2016 recipe: BCE, batch norm, no EMA, no TTUR")
    p.add_argument("--steps", type=int, default=None, help="generator updates (default: the profile's)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this much wall time")
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="generate images for captions into a PNG grid",
                       description="Generate images for one or more captions; writes a PNG with one row per caption.")
    p.add_argument("captions", nargs="+", help='captions, e.g. "a red apple on the table"')
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--checkpoint", default=None, help="a checkpoint from `train` (default: the cached model)")
    p.add_argument("--n", type=int, default=8, help="images per caption (default 8)")
    p.add_argument("--scale", type=int, default=4, help="enlarge pixels this many times (default 4)")
    _common(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("evaluate", help="measure caption consistency with the judge",
                       description="Judge-measured caption consistency on every seen and held-out attribute "
                                   "combination, plus the judge's own accuracy on real images.")
    p.add_argument("--checkpoint", default=None, help="a checkpoint from `train` (default: the cached model)")
    p.add_argument("--n", type=int, default=8, help="images per caption (default 8)")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    _common(p)
    p.set_defaults(func=cmd_evaluate)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, runtime.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
