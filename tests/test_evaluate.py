"""Recall against characters and K, selection reports, scoring labelled examples, plots."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from tests.extras import needs_matplotlib
from zerank_core.errors import ConfigurationError, InvalidResponseError, MissingDependencyError
from zerank_core.evaluate import (
    LabelledQuery,
    ascore_examples,
    evaluate_selection,
    pooled_units,
    recall_at_fraction,
    recall_at_k,
    score_examples,
)
from zerank_core.scorers.base import Scale
from zerank_core.scorers.lexical import BM25Scorer
from zerank_core.select import SelectionPolicy

# Ranking 0 (0.9), 3 (0.7), 2 (0.5), 1 (0.1); cumulative characters 10, 50, 80, 100.
A = LabelledQuery(
    scores=(0.9, 0.1, 0.5, 0.7), lengths=(10, 20, 30, 40), relevant=frozenset({1, 2}), query_id="a"
)
# Nothing relevant: counts for characters, not for recall.
B = LabelledQuery(scores=(0.2, 0.8), lengths=(30, 30), query_id="b")
C = LabelledQuery(scores=(0.3, 0.2, 0.1), lengths=(1, 1, 1), relevant=frozenset({0, 1, 2}))


def test_recall_at_fraction_takes_the_longest_fitting_prefix_of_the_ranking() -> None:
    reports = recall_at_fraction([A], [0.0, 0.1, 0.49, 0.5, 0.8, 1.0])
    assert [r.mean_recall for r in reports] == [0.0, 0.0, 0.0, 0.0, 0.5, 1.0]
    assert [r.chars_kept for r in reports] == [0.0, 0.1, 0.1, 0.5, 0.8, 1.0]
    assert [r.budget for r in reports] == [0.0, 0.1, 0.49, 0.5, 0.8, 1.0]


def test_fill_skips_a_unit_that_does_not_fit_like_a_character_budget_policy() -> None:
    prefix, filled = (recall_at_fraction([A], [0.35], fill=fill)[0] for fill in (False, True))
    # Prefix stops at unit 3 (50 > 35); fill skips 3 and 2 and still takes unit 1.
    assert (prefix.mean_recall, prefix.chars_kept) == (0.0, 0.1)
    assert (filled.mean_recall, filled.chars_kept) == (0.5, 0.3)


def test_mean_and_pooled_recall_full_recall_and_characters_over_several_queries() -> None:
    report = recall_at_fraction([A, B, C], [0.8])[0]
    # A keeps {0, 3, 2} (recall 1/2); B keeps its best unit (48 chars allowed);
    # C keeps 2 of 3 units (floor(2.4) = 2 chars).
    assert report.n_queries == 3
    assert report.n_with_relevant == 2
    assert list(report.per_query) == [0.5, None, pytest.approx(2 / 3)]
    assert report.mean_recall == pytest.approx((0.5 + 2 / 3) / 2)
    assert report.pooled_recall == pytest.approx(3 / 5)
    assert report.full_recall_rate == 0.0
    assert report.chars_kept == pytest.approx((80 + 30 + 2) / 163)
    assert report.mean_chars_kept == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert report.chars_saved == pytest.approx(1 - (80 + 30 + 2) / 163)


def test_full_recall_rate_counts_queries_with_every_relevant_unit_kept() -> None:
    reports = recall_at_fraction([A, C], [1.0, 0.8])
    assert reports[0].full_recall_rate == 1.0
    assert reports[1].full_recall_rate == 0.0
    assert recall_at_k([A, C], [3])[0].full_recall_rate == 0.5


def test_recall_at_k_per_query_and_pooled() -> None:
    k0, k2, k9 = recall_at_k([A, B, C], [0, 2, 9])
    assert k0.mean_recall == 0.0
    assert list(k2.per_query) == [0.0, None, pytest.approx(2 / 3)]
    assert k2.mean_recall == pytest.approx(1 / 3)
    assert k2.pooled_recall == pytest.approx(2 / 5)
    assert k9.mean_recall == 1.0
    assert k2.budget == 2.0


def test_ties_go_to_the_earlier_index() -> None:
    tied = (0.5, 0.5, 0.5)
    first = LabelledQuery(scores=tied, lengths=(1, 1, 1), relevant=frozenset({1}))
    last = LabelledQuery(scores=tied, lengths=(1, 1, 1), relevant=frozenset({2}))
    assert recall_at_k([first], [2])[0].mean_recall == 1.0
    assert recall_at_k([last], [2])[0].mean_recall == 0.0


def test_evaluate_selection_reports_recall_and_tokens_saved() -> None:
    report = evaluate_selection([A, B], SelectionPolicy(threshold=0.5))
    # A keeps {0, 3, 2}; B keeps {1}. Tokens estimated at 4 characters a token.
    assert report.budget is None
    assert report.mean_recall == 0.5
    assert report.chars_kept == pytest.approx((80 + 30) / 160)
    a_tokens = [3, 5, 8, 10]
    kept_tokens = 3 + 10 + 8 + 8
    assert report.tokens_kept == pytest.approx(kept_tokens / (sum(a_tokens) + 16))
    assert report.tokens_saved == pytest.approx(1 - kept_tokens / (sum(a_tokens) + 16))


def test_given_token_counts_are_used_for_token_savings() -> None:
    query = LabelledQuery(
        scores=(0.9, 0.1), lengths=(10, 10), relevant=frozenset({0}), token_counts=(1, 9)
    )
    report = evaluate_selection([query], SelectionPolicy(top_k=1))
    assert report.tokens_kept == 0.1
    assert report.chars_kept == 0.5


def test_labelled_query_copies_its_inputs_and_leaves_them_alone() -> None:
    scores, lengths, relevant = [0.9, 0.1], [3, 4], {1}
    query = LabelledQuery(scores=scores, lengths=lengths, relevant=relevant)  # type: ignore[arg-type]
    assert query.scores == (0.9, 0.1)
    assert query.relevant == frozenset({1})
    recall_at_fraction([query], [0.5])
    assert (scores, lengths, relevant) == ([0.9, 0.1], [3, 4], {1})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": (0.1, math.nan), "lengths": (1, 1)}, "scores[1]"),
        ({"scores": (0.1, None), "lengths": (1, 1)}, "scores[1]"),
        ({"scores": (0.1,), "lengths": (1, 2)}, "lengths has 2 entries for 1 scores"),
        ({"scores": (0.1,), "lengths": (-1,)}, "lengths[0]"),
        ({"scores": (0.1,), "lengths": (1,), "relevant": frozenset({3})}, "relevant index 3"),
        ({"scores": (0.1,), "lengths": (1,), "token_counts": (1, 2)}, "token_counts"),
    ],
)
def test_bad_labelled_query_is_rejected_with_the_bad_value(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        LabelledQuery(**kwargs)  # type: ignore[arg-type]


def test_bad_budgets_and_empty_inputs_are_rejected() -> None:
    with pytest.raises(
        ConfigurationError, match=r"fraction must be a number in \[0, 1\], got 1\.5"
    ):
        recall_at_fraction([A], [1.5])
    with pytest.raises(ConfigurationError, match="k must be an integer >= 0, got -1"):
        recall_at_k([A], [-1])
    with pytest.raises(ConfigurationError, match="queries is empty"):
        recall_at_k([], [1])
    with pytest.raises(ConfigurationError, match="no query has a relevant unit"):
        recall_at_k([B], [1])
    with pytest.raises(ConfigurationError, match="queries\\[0\\] must be a LabelledQuery"):
        recall_at_k([("not", "a query")], [1])  # type: ignore[list-item]


def test_pooled_units_flattens_scores_and_relevance_labels() -> None:
    assert pooled_units([A, B]) == ([0.9, 0.1, 0.5, 0.7, 0.2, 0.8], [0, 1, 1, 0, 0, 0])


@dataclass(frozen=True)
class _Example:
    id: str
    query: str
    units: tuple[str, ...]
    relevant: frozenset[int]


EXAMPLES = [
    _Example(
        "cats",
        "cats purr",
        ("dogs bark loudly", "cats purr when content", "fish swim"),
        frozenset({1}),
    ),
    _Example("fish", "fish swim", ("fish swim in water", "birds fly"), frozenset({0})),
]


def test_score_examples_with_a_real_scorer() -> None:
    queries = score_examples(BM25Scorer(), EXAMPLES)
    assert [q.query_id for q in queries] == ["cats", "fish"]
    assert queries[0].lengths == (16, 22, 9)
    assert queries[0].scores[1] == 1.0
    assert recall_at_k(queries, [1])[0].mean_recall == 1.0


async def test_ascore_examples_matches_score_examples() -> None:
    scorer = BM25Scorer()
    assert await ascore_examples(scorer, EXAMPLES, max_concurrency=1) == score_examples(
        scorer, EXAMPLES
    )
    with pytest.raises(ConfigurationError, match="max_concurrency must be an integer >= 1, got 0"):
        await ascore_examples(scorer, EXAMPLES, max_concurrency=0)


class _ShortScorer:
    """A broken scorer that drops the last score."""

    model = "short"
    scale = Scale.PROBABILITY
    usage = None

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return [0.5] * (len(texts) - 1)

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return self.score(query, texts)


def test_a_missing_score_is_an_error_not_a_zero() -> None:
    with pytest.raises(InvalidResponseError, match="returned 2 scores for 3 units"):
        score_examples(_ShortScorer(), EXAMPLES)


@needs_matplotlib
def test_recall_plot_is_written_as_png(tmp_path: object) -> None:
    from pathlib import Path

    from zerank_core.plots import plot_recall_curves

    path = Path(str(tmp_path)) / "curve.png"
    figure = plot_recall_curves(
        {"A": [A, C], "C": [C]},
        path,
        reference={"ref": {0.05: 0.3, 0.1: 0.4}},
        max_fraction=1.0,
        points=3,
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = figure.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["A", "C", "ref"]
    # The drawn curve is recall_at_fraction's: C keeps 0, 1, 3 units at 0 %, 50 %, 100 %.
    assert list(lines[1].get_xdata()) == [0.0, 50.0, 100.0]
    assert list(lines[1].get_ydata()) == [0.0, pytest.approx(1 / 3), 1.0]


def test_plots_name_the_extra_when_matplotlib_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from zerank_core.plots import plot_reliability

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MissingDependencyError, match=r"zerank-gate\[eval\]"):
        plot_reliability({"x": ([0.5], [1])})
