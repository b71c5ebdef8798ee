"""Premises of the book's sentences, checked where the numbers are made.

A chapter that writes "the generator satisfies more seen captions than held-out ones" states
an outcome. Either the sentence is computed from the run (a glued number or verdict), or it
holds on every run -- and then the chapter checks it right after computing the number:

    mm.claims.premise(seen >= heldout, "§3.2: seen combinations are satisfied at least as often as held-out ones",
                      seen=seen, heldout=heldout)

If a regression or another platform breaks the premise, the cell raises ``PremiseError``,
which names the sentence and the measured values; the book build and the test suite (nbval
executes every chapter) fail instead of printing a false sentence.

Under the ``smoke`` profile (``MMTUTOR_PROFILE=smoke``: seconds of training, results barely
better than chance) no sentence of the book can hold, so a broken premise only warns: that
profile exists to find code errors in a chapter quickly, never to print the book.
"""

from __future__ import annotations

import os
import warnings


class PremiseError(AssertionError):
    """A sentence of the book is contradicted by the numbers of this run."""


class PremiseWarning(UserWarning):
    """A premise broken under the smoke profile, where no premise is expected to hold."""


def premise(condition: bool, sentence: str, **measured) -> None:
    """Raise PremiseError naming ``sentence`` and the ``measured`` values when ``condition`` is false
    (under the smoke profile: warn instead)."""
    if bool(condition):
        return
    values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in measured.items())
    if os.environ.get("MMTUTOR_PROFILE") == "smoke":
        warnings.warn(f"smoke profile, premise not checked: {sentence!r} ({values})", PremiseWarning, stacklevel=2)
        return
    raise PremiseError(f"this run contradicts a sentence of the book: {sentence!r}"
                       + (f" (measured: {values})" if values else "")
                       + ". Fix the experiment or the sentence.")


__all__ = ["premise", "PremiseError", "PremiseWarning"]
