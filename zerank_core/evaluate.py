"""Measure a scorer against ground truth: how much of the relevant evidence a
selection keeps, against how many characters (or units) it keeps.

The input is one :class:`LabelledQuery` per query: the scores of its units
(chunks, spans or pages), their lengths in characters, and which of them are
relevant. Recall is the share of a query's relevant units that are kept;
queries with no relevant unit have no recall and are left out of every recall
figure (they still count in the characters kept). "Mean" figures average over
queries, "pooled" figures sum units over all queries first.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from zerank_core.errors import ConfigurationError
from zerank_core.scorers.base import Scorer, check_scores
from zerank_core.select import CHARS_PER_TOKEN, SelectionPolicy

__all__ = [
    "Example",
    "LabelledQuery",
    "NoEvidenceReport",
    "RecallReport",
    "ascore_examples",
    "evaluate_selection",
    "no_evidence_detection",
    "pooled_units",
    "recall_at_fraction",
    "recall_at_k",
    "score_examples",
]


@dataclass(frozen=True)
class LabelledQuery:
    """One query's scored units and which of them are relevant.

    ``scores`` and ``lengths`` (characters) are per unit, in the same order;
    ``relevant`` holds unit indices. ``token_counts`` is optional: without it
    tokens are estimated at four characters a token. Sequences are copied into
    tuples, so the caller's lists are never aliased or changed.
    """

    scores: tuple[float, ...]
    lengths: tuple[int, ...]
    relevant: frozenset[int] = field(default_factory=frozenset)
    token_counts: tuple[int, ...] | None = None
    query_id: str = ""

    def __post_init__(self) -> None:
        where = f"query {self.query_id!r}: " if self.query_id else ""
        scores = tuple(self.scores)
        for index, value in enumerate(scores):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float | np.integer | np.floating)
                or not math.isfinite(value)
            ):
                raise ConfigurationError(
                    f"{where}scores[{index}] must be a finite number, got {value!r}"
                )
        lengths = _counts(where, "lengths", self.lengths, len(scores))
        tokens = None
        if self.token_counts is not None:
            tokens = _counts(where, "token_counts", self.token_counts, len(scores))
        relevant = frozenset(self.relevant)
        for index in relevant:
            if (
                isinstance(index, bool)
                or not isinstance(index, int)
                or not 0 <= index < len(scores)
            ):
                raise ConfigurationError(
                    f"{where}relevant index {index!r} is not a unit index (0..{len(scores) - 1})"
                )
        object.__setattr__(self, "scores", tuple(float(v) for v in scores))
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "token_counts", tokens)
        object.__setattr__(self, "relevant", relevant)

    @property
    def tokens(self) -> tuple[int, ...]:
        """Token counts, given or estimated from the lengths."""
        if self.token_counts is not None:
            return self.token_counts
        return tuple(-(-n // CHARS_PER_TOKEN) for n in self.lengths)

    def ranking(self) -> np.ndarray:
        """Unit indices, best score first; ties go to the earlier index."""
        scores = np.asarray(self.scores, dtype=float)
        return np.lexsort((np.arange(len(scores)), -scores))


@dataclass(frozen=True)
class RecallReport:
    """What one selection rule kept over a set of labelled queries.

    ``budget`` is the fraction of characters or the K the rule was given
    (``None`` for a policy). ``mean_recall`` and ``full_recall_rate`` (share of
    queries that kept every relevant unit) are over the ``n_with_relevant``
    queries that have relevant units; ``pooled_recall`` is relevant units kept
    over relevant units. ``chars_kept`` and ``tokens_kept`` are pooled shares
    over all queries; ``mean_chars_kept`` averages the per-query share.
    ``per_query`` is each query's recall in input order, ``None`` where it has
    no relevant unit.
    """

    budget: float | None
    n_queries: int
    n_with_relevant: int
    mean_recall: float
    pooled_recall: float
    full_recall_rate: float
    chars_kept: float
    mean_chars_kept: float
    tokens_kept: float
    per_query: tuple[float | None, ...]

    @property
    def chars_saved(self) -> float:
        """Pooled share of characters not sent on: ``1 - chars_kept``."""
        return 1.0 - self.chars_kept

    @property
    def tokens_saved(self) -> float:
        """Pooled share of tokens not sent on: ``1 - tokens_kept``."""
        return 1.0 - self.tokens_kept


class Example(Protocol):
    """A labelled retrieval case: a query, its units, the relevant unit indices."""

    @property
    def id(self) -> str: ...

    @property
    def query(self) -> str: ...

    @property
    def units(self) -> Sequence[str]: ...

    @property
    def relevant(self) -> frozenset[int]: ...


def recall_at_fraction(
    queries: Sequence[LabelledQuery], fractions: Iterable[float], *, fill: bool = False
) -> list[RecallReport]:
    """Recall when each query keeps at most ``fraction`` of its characters.

    Units are taken best first. By default (``fill=False``) the query keeps the
    longest prefix of its ranking that fits ``floor(fraction * characters)``:
    what any score threshold keeps, so the result is the recall-vs-characters
    curve of the ranking itself. ``fill=True`` applies
    ``SelectionPolicy(max_chars=...)`` instead, which skips a unit that does
    not fit and goes on with smaller ones after it.
    """
    queries = _check_queries(queries)
    budgets = [_check_fraction(f) for f in fractions]
    kept: list[list[tuple[int, ...]]] = [[] for _ in budgets]
    for q in queries:
        total = sum(q.lengths)
        order = q.ranking()
        cum = np.cumsum(np.asarray(q.lengths, dtype=np.int64)[order])
        for column, fraction in zip(kept, budgets, strict=True):
            limit = math.floor(fraction * total)
            if fill:
                policy = SelectionPolicy(max_chars=limit)
                column.append(policy.select(q.scores, lengths=q.lengths).indices)
            else:
                count = int(np.searchsorted(cum, limit, side="right"))
                column.append(tuple(int(i) for i in order[:count]))
    return [
        _report(queries, column, fraction) for column, fraction in zip(kept, budgets, strict=True)
    ]


def recall_at_k(queries: Sequence[LabelledQuery], ks: Iterable[int]) -> list[RecallReport]:
    """Recall when each query keeps its ``k`` best units (all of them if fewer)."""
    queries = _check_queries(queries)
    reports = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigurationError(f"k must be an integer >= 0, got {k!r}")
        kept = [tuple(q.ranking()[:k]) for q in queries]
        reports.append(_report(queries, kept, float(k)))
    return reports


def evaluate_selection(
    queries: Sequence[LabelledQuery], policy: SelectionPolicy | Sequence[SelectionPolicy]
) -> RecallReport:
    """Recall and savings of a :class:`SelectionPolicy` applied to every query.

    ``policy`` may also be one policy per query (for instance a threshold per
    criterion).
    """
    queries = _check_queries(queries)
    kept = [
        p.select(q.scores, lengths=q.lengths, token_counts=q.token_counts).indices
        for q, p in zip(queries, _per_query(policy, len(queries)), strict=True)
    ]
    return _report(queries, kept, None)


@dataclass(frozen=True)
class NoEvidenceReport:
    """How well a policy says "nothing here".

    A query "keeps nothing" when no unit passes the policy itself (units
    added by ``neighbors`` or ``min_keep`` do not count, as in
    ``zerank compress``'s "no evidence"). Of the ``n_without_evidence``
    queries with no relevant unit, ``correct_empty`` kept nothing (right);
    of the ``n_with_evidence`` others, ``wrong_empty`` kept nothing (all of
    their evidence lost).
    """

    n_without_evidence: int
    correct_empty: int
    n_with_evidence: int
    wrong_empty: int

    @property
    def detection_rate(self) -> float | None:
        """Share of no-evidence queries that kept nothing (``None`` if there are none)."""
        return self.correct_empty / self.n_without_evidence if self.n_without_evidence else None

    @property
    def false_empty_rate(self) -> float | None:
        """Share of queries with evidence that kept nothing (``None`` if there are none)."""
        return self.wrong_empty / self.n_with_evidence if self.n_with_evidence else None


def no_evidence_detection(
    queries: Sequence[LabelledQuery], policy: SelectionPolicy | Sequence[SelectionPolicy]
) -> NoEvidenceReport:
    """Count the queries where ``policy`` keeps nothing, with and without evidence."""
    queries = _check_queries(queries)
    without = correct = with_evidence = wrong = 0
    for q, p in zip(queries, _per_query(policy, len(queries)), strict=True):
        empty = not p.select(q.scores, lengths=q.lengths, token_counts=q.token_counts).selected
        if q.relevant:
            with_evidence += 1
            wrong += empty
        else:
            without += 1
            correct += empty
    return NoEvidenceReport(without, correct, with_evidence, wrong)


def _per_query(
    policy: SelectionPolicy | Sequence[SelectionPolicy], n: int
) -> list[SelectionPolicy]:
    if isinstance(policy, SelectionPolicy):
        return [policy] * n
    policies = list(policy)
    if len(policies) != n:
        raise ConfigurationError(f"got {len(policies)} policies for {n} queries")
    for index, item in enumerate(policies):
        if not isinstance(item, SelectionPolicy):
            raise ConfigurationError(
                f"policy[{index}] must be a SelectionPolicy, got {type(item).__name__}"
            )
    return policies


def pooled_units(queries: Sequence[LabelledQuery]) -> tuple[list[float], list[int]]:
    """Every unit of every query as ``(scores, labels)``, label 1 if relevant.

    The input a calibrator is fitted on, or a reliability diagram is drawn from.
    """
    scores: list[float] = []
    labels: list[int] = []
    for q in _check_queries(queries):
        scores.extend(q.scores)
        labels.extend(int(i in q.relevant) for i in range(len(q.scores)))
    return scores, labels


def score_examples(
    scorer: Scorer, examples: Sequence[Example], *, instruction: str | None = None
) -> list[LabelledQuery]:
    """Score each example's units against its query (one scorer call each)."""
    return [
        _labelled(
            example, scorer.score(example.query, list(example.units), instruction=instruction)
        )
        for example in examples
    ]


async def ascore_examples(
    scorer: Scorer,
    examples: Sequence[Example],
    *,
    instruction: str | None = None,
    max_concurrency: int = 4,
) -> list[LabelledQuery]:
    """Async :func:`score_examples`, at most ``max_concurrency`` calls at a time."""
    if (
        isinstance(max_concurrency, bool)
        or not isinstance(max_concurrency, int)
        or max_concurrency < 1
    ):
        raise ConfigurationError(
            f"max_concurrency must be an integer >= 1, got {max_concurrency!r}"
        )
    semaphore = asyncio.Semaphore(max_concurrency)

    async def one(example: Example) -> LabelledQuery:
        async with semaphore:
            scores = await scorer.ascore(
                example.query, list(example.units), instruction=instruction
            )
        return _labelled(example, scores)

    return list(await asyncio.gather(*(one(e) for e in examples)))


def _labelled(example: Example, scores: Sequence[float]) -> LabelledQuery:
    checked = check_scores(
        scores, len(example.units), context=f"example {example.id!r}", items="units"
    )
    return LabelledQuery(
        scores=tuple(checked),
        lengths=tuple(len(u) for u in example.units),
        relevant=example.relevant,
        query_id=example.id,
    )


def _report(
    queries: Sequence[LabelledQuery], kept: Sequence[Sequence[int]], budget: float | None
) -> RecallReport:
    per_query: list[float | None] = []
    recalls: list[float] = []
    full = 0
    relevant_total = relevant_kept = 0
    chars_total = chars_kept = tokens_total = tokens_kept = 0
    shares: list[float] = []
    for q, indices in zip(queries, kept, strict=True):
        chosen = set(int(i) for i in indices)
        q_chars = sum(q.lengths)
        q_kept = sum(q.lengths[i] for i in chosen)
        tokens = q.tokens
        chars_total += q_chars
        chars_kept += q_kept
        tokens_total += sum(tokens)
        tokens_kept += sum(tokens[i] for i in chosen)
        if q_chars:
            shares.append(q_kept / q_chars)
        if not q.relevant:
            per_query.append(None)
            continue
        hit = len(q.relevant & chosen)
        relevant_total += len(q.relevant)
        relevant_kept += hit
        recall = hit / len(q.relevant)
        recalls.append(recall)
        per_query.append(recall)
        full += hit == len(q.relevant)
    if not recalls:
        raise ConfigurationError("no query has a relevant unit: recall is undefined")
    return RecallReport(
        budget=budget,
        n_queries=len(queries),
        n_with_relevant=len(recalls),
        mean_recall=float(np.mean(recalls)),
        pooled_recall=relevant_kept / relevant_total,
        full_recall_rate=full / len(recalls),
        chars_kept=chars_kept / chars_total if chars_total else 0.0,
        mean_chars_kept=float(np.mean(shares)) if shares else 0.0,
        tokens_kept=tokens_kept / tokens_total if tokens_total else 0.0,
        per_query=tuple(per_query),
    )


def _check_queries(queries: Sequence[LabelledQuery]) -> list[LabelledQuery]:
    out = list(queries)
    if not out:
        raise ConfigurationError("queries is empty: nothing to evaluate")
    for index, q in enumerate(out):
        if not isinstance(q, LabelledQuery):
            raise ConfigurationError(
                f"queries[{index}] must be a LabelledQuery, got {type(q).__name__}"
            )
    return out


def _check_fraction(value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or not 0.0 <= value <= 1.0
    ):
        raise ConfigurationError(f"fraction must be a number in [0, 1], got {value!r}")
    return float(value)


def _counts(where: str, name: str, values: Sequence[int], n: int) -> tuple[int, ...]:
    out = tuple(values)
    if len(out) != n:
        raise ConfigurationError(f"{where}{name} has {len(out)} entries for {n} scores")
    for index, value in enumerate(out):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ConfigurationError(
                f"{where}{name}[{index}] must be an integer >= 0, got {value!r}"
            )
    return tuple(int(v) for v in out)
