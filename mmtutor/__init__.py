"""mmtutor: a small, complete PyTorch library for learning text-to-image generation.

It follows the five steps of the article the book is built on: captioned data (``world``,
``grammar``, ``render``, ``data``), text and image features (``text``, ``vision``,
``condition``), contrastive alignment (``align``), fusion and generative models (``fusion``,
``gan``, and beside the GAN ``vae`` and ``diffusion``, all of the shape ``text2image``), the
other direction (``captioner``), and measurement (``judge``, ``metrics``). ``losses`` holds
every loss, ``loop`` the shared training loop, ``checks`` the input checks, ``checkpoint``
the file format, ``runtime`` device, profile and machine, ``distributed`` multi-process
training, ``zoo`` the model cache, ``viz`` the pictures.

    import mmtutor as mm
    world = mm.World()
    gan, info = mm.zoo.gan(world, mm.runtime.profile())
    images = gan.generate(["a red apple on the table"], n_per_caption=8)

This file only re-exports; no module of the library imports it.
"""

__version__ = "0.2.0"

from . import (align, captioner, checkpoint, checks, claims, condition, data, distributed, fusion, gan, grammar, judge,  # noqa: E402
               loop, losses, metrics, render, runtime, text, text2image, viz, vision, world, zoo)
from .align import AlignConfig, DualEncoder  # noqa: E402
from .captioner import Captioner, CaptionerConfig  # noqa: E402
from .condition import CaptionEncoder, TextCondition  # noqa: E402
from .data import PairPool  # noqa: E402
from .gan import ConditionalGAN, GANConfig  # noqa: E402
from .judge import Judge  # noqa: E402
from .loop import TrainConfig, TrainingDiverged  # noqa: E402
from .world import World  # noqa: E402

__all__ = ["Captioner", "CaptionerConfig", "World", "PairPool", "AlignConfig", "DualEncoder", "GANConfig", "ConditionalGAN", "Judge", "TrainConfig",
           "TrainingDiverged", "CaptionEncoder", "TextCondition",
           "align", "captioner", "checkpoint", "checks", "claims", "condition", "data", "distributed", "fusion", "gan", "grammar", "judge",
           "loop", "losses", "metrics", "render", "runtime", "text", "text2image", "viz", "vision", "world", "zoo"]
