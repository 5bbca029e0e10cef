"""Selection policies: semantics, properties and validation."""

from __future__ import annotations

import math
import random

import pytest

from zerank_core import ConfigurationError, SelectionPolicy
from zerank_core.dedupe import DuplicatePair, Duplicates
from zerank_core.select import DroppedDuplicate

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
        dedupe=True,
        unrelated="ignored",
    )
    assert SelectionPolicy.from_attributes(options) == SelectionPolicy(
        threshold=0.3,
        top_k=2,
        max_tokens=50,
        min_keep=1,
        order="original",
        neighbors=1,
        dedupe=True,
    )
    options.threshold = 2.0
    with pytest.raises(ConfigurationError, match=r"got 2\.0"):
        SelectionPolicy.from_attributes(options)


# --- dedupe: a duplicate of a kept item frees its slot and its budget ----------------

# 0 and 1 are copies (exact), 2 is a near copy of 0; 3, 4, 5 are distinct.
DUP_SCORES = [0.95, 0.95, 0.90, 0.80, 0.70, 0.60]
RELATION = Duplicates(
    6,
    (
        DuplicatePair(0, 1, 1.0, "exact"),
        DuplicatePair(0, 2, 0.85, "lexical"),
        DuplicatePair(1, 2, 0.85, "lexical"),
    ),
)


def test_without_dedupe_copies_fill_the_top_k() -> None:
    selection = SelectionPolicy(top_k=3).select(DUP_SCORES, duplicates=RELATION)
    assert selection.indices == (0, 1, 2)
    assert selection.duplicates == ()


def test_dedupe_gives_the_freed_top_k_slots_to_the_next_distinct_items() -> None:
    selection = SelectionPolicy(top_k=3, dedupe=True).select(DUP_SCORES, duplicates=RELATION)
    assert selection.indices == (0, 3, 4)
    assert selection.selected == {0, 3, 4}
    assert selection.duplicates == (
        DroppedDuplicate(1, 0, 1.0, "exact"),
        DroppedDuplicate(2, 0, 0.85, "lexical"),
    )
    assert selection.duplicates_of(0) == selection.duplicates
    assert selection.duplicates_of(3) == ()


def test_dedupe_with_a_threshold_and_original_order() -> None:
    policy = SelectionPolicy(threshold=0.75, dedupe=True, order="original")
    assert policy.select(DUP_SCORES, duplicates=RELATION).indices == (0, 3)


def test_dedupe_frees_the_character_budget() -> None:
    lengths = [40, 40, 40, 40, 40, 40]
    plain = SelectionPolicy(max_chars=120).select(DUP_SCORES, lengths=lengths)
    assert plain.indices == (0, 1, 2)
    deduped = SelectionPolicy(max_chars=120, dedupe=True).select(
        DUP_SCORES, lengths=lengths, duplicates=RELATION
    )
    assert deduped.indices == (0, 3, 4)


def test_a_duplicate_of_an_item_too_large_for_the_budget_may_take_its_place() -> None:
    # 0 does not fit; 1 is its exact copy and does not fit either; 2 (near, shorter) does.
    selection = SelectionPolicy(max_chars=50, dedupe=True).select(
        DUP_SCORES, lengths=[80, 80, 30, 20, 20, 20], duplicates=RELATION
    )
    assert selection.indices == (2, 3)
    # the left-out copies are still reported, against the copy that was kept
    assert selection.duplicates == (
        DroppedDuplicate(0, 2, 0.85, "lexical"),
        DroppedDuplicate(1, 2, 0.85, "lexical"),
    )


def test_min_keep_counts_distinct_items() -> None:
    policy = SelectionPolicy(threshold=0.99, min_keep=3, dedupe=True)
    selection = policy.select(DUP_SCORES, duplicates=RELATION)
    assert selection.indices == (0, 3, 4)
    assert selection.forced == {0, 3, 4}
    # fewer distinct items than min_keep: no copy is added to reach it
    only_copies = Duplicates(2, (DuplicatePair(0, 1, 1.0, "exact"),))
    assert policy.select([0.5, 0.4], duplicates=only_copies).indices == (0,)


def test_a_neighbour_that_duplicates_a_kept_item_is_not_added() -> None:
    # pages 0..4; page 3 is a copy of page 1 (a re-sent page right after it)
    relation = Duplicates(5, (DuplicatePair(1, 3, 0.9, "lexical"),))
    policy = SelectionPolicy(top_k=1, neighbors=1, order="original")
    scores = [0.1, 0.3, 0.9, 0.2, 0.1]
    assert policy.select(scores).indices == (1, 2, 3)
    deduped = SelectionPolicy(top_k=1, neighbors=1, order="original", dedupe=True)
    selection = deduped.select(scores, duplicates=relation)
    assert selection.indices == (1, 2)
    assert selection.neighbors == {1}
    assert selection.duplicates == (DroppedDuplicate(3, 1, 0.9, "lexical"),)


def test_the_relation_is_not_transitive() -> None:
    # 0 ~ 1 and 1 ~ 2, but 2 is not a duplicate of 0: keeping 0 drops 1 only.
    chain = Duplicates(
        3, (DuplicatePair(0, 1, 0.8, "lexical"), DuplicatePair(1, 2, 0.8, "lexical"))
    )
    selection = SelectionPolicy(dedupe=True).select([0.9, 0.8, 0.7], duplicates=chain)
    assert selection.indices == (0, 2)


def test_a_dropped_item_names_its_most_similar_kept_item() -> None:
    relation = Duplicates(
        3, (DuplicatePair(0, 2, 0.75, "lexical"), DuplicatePair(1, 2, 0.9, "lexical"))
    )
    selection = SelectionPolicy(dedupe=True).select([0.9, 0.8, 0.7], duplicates=relation)
    assert selection.indices == (0, 1)
    assert selection.duplicates == (DroppedDuplicate(2, 1, 0.9, "lexical"),)


def test_dedupe_needs_a_matching_relation() -> None:
    with pytest.raises(ConfigurationError, match=r"dedupe needs the duplicate relation"):
        SelectionPolicy(dedupe=True).select([0.5])
    with pytest.raises(ConfigurationError, match="describes 6 items, but there are 2 scores"):
        SelectionPolicy(dedupe=True).select([0.5, 0.4], duplicates=RELATION)
    with pytest.raises(ConfigurationError, match="must be a Duplicates relation, got list"):
        SelectionPolicy(dedupe=True).select([0.5], duplicates=[])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="dedupe must be True or False, got 'yes'"):
        SelectionPolicy(dedupe="yes")  # type: ignore[arg-type]


def test_dedupe_properties_on_random_relations() -> None:
    rng = random.Random(11)
    for _ in range(400):
        n = rng.randint(0, 25)
        scores = [round(rng.random(), 2) for _ in range(n)]
        lengths = [rng.randint(1, 100) for _ in range(n)]
        pairs = set()
        for _ in range(rng.randint(0, n) if n >= 2 else 0):
            a, b = sorted(rng.sample(range(n), 2))
            pairs.add((a, b))
        relation = Duplicates(
            n, tuple(DuplicatePair(a, b, rng.random(), "lexical") for a, b in sorted(pairs))
        )
        options = {
            "threshold": rng.choice([None, rng.random()]),
            "top_k": rng.choice([None, rng.randint(0, 8)]),
            "max_chars": rng.choice([None, rng.randint(0, 400)]),
            "min_keep": rng.randint(0, 3),
            "neighbors": rng.randint(0, 2),
        }
        plain = SelectionPolicy(**options).select(scores, lengths=lengths)  # type: ignore[arg-type]
        selection = SelectionPolicy(**options, dedupe=True).select(  # type: ignore[arg-type]
            scores, lengths=lengths, duplicates=relation
        )
        kept = set(selection.indices)
        # no two kept items are duplicates of each other
        assert not any(a in kept and b in kept for a, b in pairs)
        # every dropped item names a kept item it is linked to
        for dropped in selection.duplicates:
            assert dropped.index not in kept
            assert dropped.of in kept
            assert (min(dropped.index, dropped.of), max(dropped.index, dropped.of)) in pairs
        if options["top_k"] is not None:
            assert len(selection.selected) <= options["top_k"]
        if options["max_chars"] is not None:
            unforced = [i for i in kept if i not in selection.forced]
            assert sum(lengths[i] for i in unforced) <= options["max_chars"]
        # a relation without pairs changes nothing
        empty = SelectionPolicy(**options, dedupe=True).select(  # type: ignore[arg-type]
            scores, lengths=lengths, duplicates=Duplicates(n)
        )
        assert empty == plain


def test_a_policy_describes_itself_as_the_cli_and_the_report_print_it() -> None:
    assert SelectionPolicy().describe() == "score order"
    policy = SelectionPolicy(
        threshold=0.5, top_k=3, max_chars=12000, neighbors=1, min_keep=1, order="original"
    )
    assert policy.describe() == (
        "top 3, floor 0.5, ≤ 12,000 characters, ± 1 neighbour pages, at least 1, original order"
    )
