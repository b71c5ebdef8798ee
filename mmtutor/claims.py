"""Premises of the book's sentences, checked where the numbers are made.

A chapter that writes "the generator satisfies more seen captions than held-out ones" states
an outcome. Either the sentence is computed from the run (a glued number or verdict), or it
holds on every run -- and then the chapter checks it right after computing the number:

    mm.claims.premise(seen >= heldout, "§3.2: seen combinations are satisfied at least as often as held-out ones",
                      seen=seen, heldout=heldout)

If a regression or another platform breaks the premise, the cell raises ``PremiseError``,
which names the sentence and the measured values; the book build and the test suite (nbval
executes every chapter) fail instead of printing a false sentence.
"""

from __future__ import annotations


class PremiseError(AssertionError):
    """A sentence of the book is contradicted by the numbers of this run."""


def premise(condition: bool, sentence: str, **measured) -> None:
    """Raise PremiseError naming ``sentence`` and the ``measured`` values when ``condition`` is false."""
    if not bool(condition):
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in measured.items())
        raise PremiseError(f"this run contradicts a sentence of the book: {sentence!r}"
                           + (f" (measured: {values})" if values else "")
                           + ". Fix the experiment or the sentence.")


__all__ = ["premise", "PremiseError"]
