"""The premise checker the chapters use: a broken premise stops the build with a sentence."""

import pytest

from mmtutor.claims import PremiseError, premise


def test_a_true_premise_passes():
    premise(0.99 >= 0.90, "the case study reaches 0.90", joint=0.99)


def test_a_broken_premise_names_the_sentence_and_the_numbers():
    """The same check as 07_case_study's, with its premise broken on purpose."""
    joint = 0.42
    with pytest.raises(PremiseError, match=r"contradicts a sentence of the book: 'the judge accepts at least 90 % of "
                                           r"the apples'.*measured: joint=0.42"):
        premise(joint >= 0.90, "the judge accepts at least 90 % of the apples", joint=joint)


def test_premise_error_is_an_assertion_error():
    with pytest.raises(AssertionError):
        premise(False, "x")
