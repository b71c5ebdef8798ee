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


def test_smoke_profile_only_warns(monkeypatch):
    """The smoke profile finds code errors in a chapter; its results cannot carry a sentence."""
    from mmtutor.claims import PremiseWarning
    monkeypatch.setenv("MMTUTOR_PROFILE", "smoke")
    with pytest.warns(PremiseWarning, match="premise not checked.*joint=0.42"):
        premise(False, "x", joint=0.42)
    monkeypatch.setenv("MMTUTOR_PROFILE", "cpu")
    with pytest.raises(PremiseError):
        premise(False, "x", joint=0.42)
