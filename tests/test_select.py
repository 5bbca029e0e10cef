"""Selection policies: semantics, properties and validation."""

from __future__ import annotations

import math
import random

import pytest

from zerank_core import ConfigurationError, SelectionPolicy

SCORES = [0.10, 0.90, 0.40, 0.90, 0.75, 0.05]


def test_no_options_keeps_everything_ranked_with_ties_to_earlier_index() -> None:
    assert SelectionPolicy().select(SCORES).indices == (1, 3, 4, 2, 0, 5)


def test_threshold_keeps_scores_at_or_above() -> None:
    assert SelectionPolicy(threshold=0.75).select(SCORES).indices == (1, 3, 4)


def test_top_k_with_floor() -> None:
    assert SelectionPolicy(top_k=2).select(SCORES).indices == (1, 3)
    assert SelectionPolicy(top_k=5, threshold=0.5).select(SCORES).indices == (1, 3, 4)


def test_original_order() -> None:
    policy = SelectionPolicy(threshold=0.4, order="original")
    assert policy.select(SCORES).indices == (1, 2, 3, 4)


def test_char_budget_skips_what_does_not_fit() -> None:
    lengths = [10, 60, 10, 50, 30, 10]
    selection = SelectionPolicy(max_chars=100).select(SCORES, lengths=lengths)
    # 1 (60) fits, 3 (50) would make 110, 4 (30) fits: 90, 2 (10) fits: 100.
    assert selection.indices == (1, 4, 2)


def test_token_budget_uses_counts_or_estimates_from_lengths() -> None:
    policy = SelectionPolicy(max_tokens=10)
    assert policy.select(SCORES, token_counts=[1, 6, 1, 6, 4, 1]).indices == (1, 4)
    assert policy.select(SCORES, lengths=[4, 24, 4, 24, 16, 4]).indices == (1, 4)


def test_neighbors_add_context_around_kept_items() -> None:
    selection = SelectionPolicy(top_k=1, neighbors=1, order="original").select(
        [0.1, 0.2, 0.9, 0.3, 0.1]
    )
    assert selection.indices == (1, 2, 3)
    assert selection.selected == {2}
    assert selection.neighbors == {1, 3}


def test_neighbors_respect_the_budget() -> None:
    selection = SelectionPolicy(top_k=1, neighbors=2, max_chars=30).select(
        [0.1, 0.2, 0.9, 0.3, 0.1], lengths=[10, 10, 10, 10, 10]
    )
    assert len(selection.indices) == 3


def test_min_keep_fails_open_past_the_threshold() -> None:
    selection = SelectionPolicy(threshold=0.95, min_keep=2).select(SCORES)
    assert selection.indices == (1, 3)
    assert selection.forced == {1, 3}
    assert selection.selected == frozenset()


def test_empty_scores() -> None:
    assert SelectionPolicy(threshold=0.5, min_keep=3).select([]).indices == ()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"threshold": 1.5}, "1.5"),
        ({"threshold": -0.1}, "-0.1"),
        ({"threshold": math.nan}, "nan"),
        ({"top_k": -1}, "top_k"),
        ({"max_chars": -5}, "-5"),
        ({"min_keep": 1.5}, "min_keep"),
        ({"neighbors": -1}, "neighbors"),
        ({"order": "random"}, "random"),
    ],
)
def test_invalid_values_are_rejected_at_construction(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        SelectionPolicy(**kwargs)


def test_nan_score_and_missing_lengths_are_errors() -> None:
    with pytest.raises(ConfigurationError, match=r"scores\[1\]"):
        SelectionPolicy().select([0.1, math.nan])
    with pytest.raises(ConfigurationError, match="lengths"):
        SelectionPolicy(max_chars=10).select([0.1])
    with pytest.raises(ConfigurationError, match="2 entries for 1"):
        SelectionPolicy(max_chars=10).select([0.1], lengths=[1, 2])


def test_properties_on_random_inputs() -> None:
    rng = random.Random(7)
    for _ in range(500):
        n = rng.randint(0, 30)
        scores = [round(rng.random(), 2) for _ in range(n)]
        lengths = [rng.randint(1, 100) for _ in range(n)]
        policy = SelectionPolicy(
            threshold=rng.choice([None, rng.random()]),
            top_k=rng.choice([None, rng.randint(0, 10)]),
            max_chars=rng.choice([None, rng.randint(0, 500)]),
            min_keep=rng.randint(0, 3),
            neighbors=rng.randint(0, 2),
            order=rng.choice(["score", "original"]),
        )
        selection = policy.select(scores, lengths=lengths)
        kept = selection.indices
        assert len(set(kept)) == len(kept)
        # top-K with a floor never returns a selected item under the floor
        if policy.threshold is not None:
            assert all(scores[i] >= policy.threshold for i in selection.selected)
        if policy.top_k is not None:
            assert len(selection.selected) <= policy.top_k
        # the budget is never exceeded except by min_keep
        if policy.max_chars is not None:
            unforced = [i for i in kept if i not in selection.forced]
            assert sum(lengths[i] for i in unforced) <= policy.max_chars
        assert len(kept) >= min(policy.min_keep, n)
        if policy.order == "original":
            assert list(kept) == sorted(kept)
        else:
            ranked = [(-scores[i], i) for i in kept]
            assert ranked == sorted(ranked)


def test_policy_is_a_frozen_value() -> None:
    policy = SelectionPolicy(top_k=3)
    with pytest.raises(AttributeError):
        policy.top_k = 4  # type: ignore[misc]
    assert policy == SelectionPolicy(top_k=3)


def test_policy_from_attributes_reads_every_option() -> None:
    import argparse

    options = argparse.Namespace(
        threshold=0.3,
        top_k=2,
        max_chars=None,
        max_tokens=50,
        min_keep=1,
        order="original",
        neighbors=1,
        unrelated="ignored",
    )
    assert SelectionPolicy.from_attributes(options) == SelectionPolicy(
        threshold=0.3, top_k=2, max_tokens=50, min_keep=1, order="original", neighbors=1
    )
    options.threshold = 2.0
    with pytest.raises(ConfigurationError, match=r"got 2\.0"):
        SelectionPolicy.from_attributes(options)
