"""Checks at the door: every public entry point validates its inputs here.

A reader calls the library from a notebook; a mistake must come back as one sentence that
names what was wrong and what is allowed -- never as a tensor of NaNs, never as an error from
deep inside torch. Each kind of input has one checker, so each message is written once:

* ``images``   -- type, dtype (float16/float64/bfloat16 are converted to float32; integers are
  refused with the conversion to use), shape (N, 3, S, S), size, non-empty, finite values,
  value range [-1, 1] (with a hint for [0, 255] inputs; an all-non-negative batch, which is
  what [0, 1] images look like, gets a warning because a bright [-1, 1] image can be too);
* ``captions`` -- a non-empty list of non-blank strings (``None``, a single string, numbers
  are refused, each with its fix);
* ``count``    -- a positive integer (``bool`` refused, numpy integers accepted), with an
  optional upper bound; ``image_count`` derives that bound from the memory the images need;
* ``seed``     -- an integer in [0, 2**63);
* ``number``, ``fraction``, ``choice`` -- configuration values.
"""

from __future__ import annotations

import operator
import os
import warnings
from numbers import Real

import torch

SEED_MAX = 2**63 - 1
RANGE_TOLERANCE = 1e-3      # generated images are tanh outputs; renders are clamped: [-1, 1] exactly


class ImageRangeWarning(UserWarning):
    """Images whose values all lie in [0, 1]: probably not yet mapped to [-1, 1]."""


# ------------------------------------------------------------------------ numbers
def count(n, name: str = "n", maximum: int | None = None, minimum: int = 1) -> int:
    """A whole number >= ``minimum`` (default 1), optionally <= ``maximum``. Python and numpy
    integers pass; ``True``, floats (even 2.0) and strings are refused."""
    if isinstance(n, bool):
        raise TypeError(f"{name} must be an integer, got the boolean {n!r}")
    try:
        value = operator.index(n)          # int, numpy integer, 0-d integer tensor
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {n!r} ({type(n).__name__})") from None
    if value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum:,}, got {value:,}")
    return value


def seed(s, name: str = "seed") -> int:
    """An integer seed in [0, 2**63)."""
    return count(s, name, maximum=SEED_MAX, minimum=0)


def number(x, name: str, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number in the given range (bounds inclusive unless ``*_open``)."""
    if isinstance(x, bool) or not isinstance(x, Real):
        try:
            x = float(x) if isinstance(x, torch.Tensor) and x.numel() == 1 else x
        except (TypeError, ValueError):
            pass
        if isinstance(x, bool) or not isinstance(x, Real):
            raise TypeError(f"{name} must be a number, got {x!r} ({type(x).__name__})")
    x = float(x)
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number, got {x}")
    lo_bad = low is not None and (x <= low if low_open else x < low)
    hi_bad = high is not None and (x >= high if high_open else x > high)
    if lo_bad or hi_bad:
        lo = "" if low is None else f"{'(' if low_open else '['}{low:g}"
        hi = "" if high is None else f"{high:g}{')' if high_open else ']'}"
        if low is None:
            rng = f"at most {high:g}" if not high_open else f"below {high:g}"
        elif high is None:
            rng = f"at least {low:g}" if not low_open else f"greater than {low:g}"
        else:
            rng = f"in {lo}, {hi}"
        raise ValueError(f"{name} must be {rng}, got {x:g}")
    return x


def fraction(x, name: str, open_high: bool = False) -> float:
    """A number in [0, 1] (or [0, 1) with ``open_high``)."""
    return number(x, name, 0.0, 1.0, high_open=open_high)


def choice(value, name: str, allowed) -> str:
    """One of ``allowed``; the message lists them."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, allowed))}")
    return value


# ------------------------------------------------------------------------ memory
def available_memory_bytes() -> int:
    """Physical memory of this machine (the bound for a single tensor we are asked to build)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):   # not POSIX: assume a modest laptop
        return 8 * 2**30


def image_count(n, image_size: int, name: str = "number of images", share: float = 0.25) -> int:
    """A positive count of images whose float32 tensor fits in ``share`` of the machine's memory."""
    n = count(n, name)
    per_image = 3 * image_size * image_size * 4
    limit = max(1, int(share * available_memory_bytes() // per_image))
    if n > limit:
        raise ValueError(f"{name} {n:,} would need {n * per_image / 2**30:,.1f} GiB for the images alone; "
                         f"this machine allows at most {limit:,} images of {image_size}x{image_size} at once "
                         f"({share:.0%} of its {available_memory_bytes() / 2**30:.0f} GiB)")
    return n


# ------------------------------------------------------------------------ captions
def captions(c, who: str = "model") -> list[str]:
    """A non-empty list (or tuple) of non-blank strings."""
    if isinstance(c, str):
        raise TypeError(f"{who} expects a list of captions, got a single string; wrap it: [{c!r}]")
    if c is None or isinstance(c, (bytes, dict)) or not hasattr(c, "__iter__"):
        raise TypeError(f"{who} expects a list of captions (strings), got {type(c).__name__}"
                        + (f" {c!r}" if isinstance(c, (int, float)) else ""))
    c = list(c)
    if not c:
        raise ValueError(f"{who} expects at least one caption, got an empty list")
    for i, s in enumerate(c):
        if not isinstance(s, str):
            raise TypeError(f"{who}: caption {i} is a {type(s).__name__} ({s!r}), not a string")
        if not s.strip():
            raise ValueError(f"{who}: caption {i} is empty or whitespace; describe a scene, "
                             "e.g. 'a red apple on the table'")
    return c


# ------------------------------------------------------------------------ images
def images(x, image_size: int | None = None, who: str = "model", check_values: bool = True) -> torch.Tensor:
    """(N, 3, S, S) float32 images in [-1, 1], or a clear error.

    float16 / bfloat16 / float64 are converted to float32 (a documented acceptance: the values
    are the same images); integer tensors are refused with the conversion to use, because
    uint8 [0, 255] and float [-1, 1] mean different things for the same numbers."""
    if not isinstance(x, torch.Tensor):
        kind = type(x).__name__
        hint = " (convert with torch.as_tensor(x))" if kind in ("ndarray", "list") else ""
        raise TypeError(f"{who} expects images as a torch.Tensor of shape (N, 3, H, W), got {kind}{hint}")
    if x.dtype == torch.bool or not (x.is_floating_point()):
        hint = ("; convert uint8 images with x.float() / 127.5 - 1" if x.dtype == torch.uint8 else
                "; images are floats in [-1, 1]")
        raise TypeError(f"{who} expects floating-point images in [-1, 1], got dtype {x.dtype}{hint}")
    if x.ndim != 4:
        hint = " (add a batch dimension: x.unsqueeze(0))" if x.ndim == 3 else ""
        raise ValueError(f"{who} expects images of shape (N, 3, H, W), got shape {tuple(x.shape)}{hint}")
    if x.shape[1] != 3:
        hint = " (channels last? use x.permute(0, 3, 1, 2))" if x.shape[-1] == 3 else ""
        raise ValueError(f"{who} expects 3 colour channels (RGB) in dimension 1, got {x.shape[1]} in shape "
                         f"{tuple(x.shape)}{hint}")
    if x.shape[0] == 0:
        raise ValueError(f"{who} got an empty batch (0 images); pass at least one image")
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        raise ValueError(f"{who} expects {image_size}x{image_size} images, got {x.shape[-2]}x{x.shape[-1]} "
                         f"(resize with torch.nn.functional.interpolate(x, size={image_size}, "
                         "mode='area'), or use a model of that size)")
    if x.dtype != torch.float32:
        x = x.float()
    if check_values:
        values(x, who)
    return x


def values(x: torch.Tensor, who: str = "model") -> None:
    """Finite values in [-1, 1]. One reduction per statistic, so the check costs ~1 % of a forward pass."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        kinds = [k for k, m in (("NaN", torch.isnan(x)), ("+inf", x == float("inf")), ("-inf", x == float("-inf")))
                 if bool(m.any())]
        raise ValueError(f"{who} got images with {bad} non-finite value(s) ({', '.join(kinds)}); "
                         "images must be finite numbers in [-1, 1]")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        if lo >= 0 and hi > 1.5:
            hint = "they look like [0, 255] images: convert with x / 127.5 - 1"
        elif lo >= 0:
            hint = "they look like unnormalised images: map them to [-1, 1]"
        else:
            hint = "clamp or rescale them"
        raise ValueError(f"{who} expects pixel values in [-1, 1], got values from {lo:.3g} to {hi:.3g}; {hint}")
    if lo >= 0 and x.numel() >= 3 * 8 * 8 * 2:
        warnings.warn(f"{who}: every pixel value is in [0, 1] (min {lo:.3g}); if these are [0, 1] images, "
                      "convert them with x * 2 - 1 (images are expected in [-1, 1])", ImageRangeWarning,
                      stacklevel=3)


__all__ = ["count", "seed", "number", "fraction", "choice", "captions", "images", "values", "image_count",
           "available_memory_bytes", "ImageRangeWarning", "SEED_MAX"]
