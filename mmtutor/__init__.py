"""mmtutor: a small, complete PyTorch library for learning text-to-image generation.

It follows the five steps of the article the book is built on: captioned data (``world``,
``data``), text and image features (``text``, ``vision``), contrastive alignment
(``align``), fusion and a conditional GAN (``fusion``, ``gan``), and measurement
(``metrics``). ``runtime`` picks device and profile, ``zoo`` caches trained models between
chapters, ``viz`` draws.

    import mmtutor as mm
    world = mm.World()
    gan, info = mm.zoo.gan(world, mm.runtime.profile())
    images = gan.generate(["a red apple on the table"], n_per_caption=8)
"""

__version__ = "0.1.0"

from . import align, data, fusion, gan, metrics, runtime, text, viz, vision, world, zoo  # noqa: E402
from .align import AlignConfig, DualEncoder  # noqa: E402
from .data import PairPool  # noqa: E402
from .gan import ConditionalGAN, GANConfig  # noqa: E402
from .world import World  # noqa: E402

__all__ = ["World", "PairPool", "AlignConfig", "DualEncoder", "GANConfig", "ConditionalGAN",
           "align", "data", "fusion", "gan", "metrics", "runtime", "text", "viz", "vision", "world", "zoo"]
