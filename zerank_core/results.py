"""What a page gate returns: per-criterion results, the score matrix and the report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from zerank_core.criteria import Criterion
from zerank_core.loaders import Document
from zerank_core.passages import PassagePolicy
from zerank_core.scorers.base import Scale
from zerank_core.select import SelectionPolicy

__all__ = [
    "CriterionResult",
    "DuplicatePage",
    "GateReport",
    "GateResult",
    "Passage",
    "why_nothing_passed",
]


@dataclass(frozen=True)
class Passage:
    """An evidence passage: ``text`` is ``page``'s text from ``start`` to ``end``."""

    page: int
    start: int
    end: int
    score: float
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "page": self.page,
            "start": self.start,
            "end": self.end,
            "score": round(self.score, 6),
            "text": self.text,
        }


@dataclass(frozen=True)
class DuplicatePage:
    """Page ``page`` duplicates page ``duplicate_of`` (``similarity`` in [0, 1], by ``method``)."""

    page: int
    duplicate_of: int
    similarity: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "page": self.page,
            "duplicate_of": self.duplicate_of,
            "similarity": round(self.similarity, 6),
            "method": self.method,
        }


NO_PAGE_ABOVE_FLOOR = "no page above the floor"
TOP_K_IS_ZERO = "top-K is 0"
BUDGET_TOO_SMALL = "budget smaller than any page"


def why_nothing_passed(
    policy: SelectionPolicy,
    scores: Sequence[float],
    lengths: Sequence[int],
    token_counts: Sequence[int],
) -> str | None:
    """Why ``policy`` passes none of ``scores``; ``None`` when it passes one.

    In the policy's own order: a top-K of 0 keeps nothing; a floor above the
    best score is a lack of evidence; otherwise every candidate was larger
    than the character or token budget.
    """
    if policy.top_k == 0:
        return TOP_K_IS_ZERO
    if not scores:
        return NO_PAGE_ABOVE_FLOOR
    floor = policy.threshold
    candidates = [i for i, score in enumerate(scores) if floor is None or score >= floor]
    if not candidates:
        return NO_PAGE_ABOVE_FLOOR
    fits_chars = policy.max_chars is None or any(lengths[i] <= policy.max_chars for i in candidates)
    fits_tokens = policy.max_tokens is None or any(
        token_counts[i] <= policy.max_tokens for i in candidates
    )
    if not (fits_chars and fits_tokens):
        return BUDGET_TOO_SMALL
    return None


@dataclass(frozen=True)
class CriterionResult:
    """What the gate kept for one criterion.

    ``pages`` are the kept page numbers in the policy's order; ``scores`` has
    every scored page's score (empty pages are absent). ``evidence_pages``
    passed the policy, ``neighbor_pages`` were added around them and
    ``forced_pages`` only to honour ``min_keep``. ``context`` is the kept
    pages' text, each after a ``[page N]`` marker. With ``dedupe``,
    ``duplicates`` are the pages left out because they duplicate a kept page.
    """

    criterion: Criterion
    pages: tuple[int, ...]
    scores: Mapping[int, float]
    evidence_pages: tuple[int, ...]
    neighbor_pages: tuple[int, ...]
    forced_pages: tuple[int, ...]
    context: str
    chars_kept: int
    duplicates: tuple[DuplicatePage, ...] = ()
    kept_nothing: str | None = None
    passages: tuple[Passage, ...] | None = None

    @property
    def no_evidence(self) -> bool:
        """True when no page passed for lack of evidence: none scored above the floor.

        A policy that can keep nothing (top-K of 0, a budget smaller than
        every page) is not a lack of evidence: see :attr:`kept_nothing`.
        """
        if not self.evidence_pages:
            return self.kept_nothing in (None, NO_PAGE_ABOVE_FLOOR)
        return False


@dataclass(frozen=True)
class GateReport:
    """What gating saved, and what it cost.

    ``chars_full`` is what sending the whole document with every criterion
    would cost (``chars_total × criteria``); ``chars_kept`` sums the kept
    pages' characters over criteria (page markers not counted). Token figures
    are estimates at four characters a token. ``model_*`` fields come from the
    scorer's usage (``model_tokens`` is ``None`` when the backend does not
    report tokens, and then so is the cost); ``cache_*`` are ``None`` without
    a cache.
    """

    pages: int
    empty_pages: tuple[int, ...]
    criteria: int
    chars_total: int
    chars_full: int
    chars_kept: int
    tokens_full_estimate: int
    tokens_kept_estimate: int
    pages_kept: Mapping[str, int]
    no_evidence: tuple[str, ...]
    model_requests: int
    model_texts: int
    model_tokens: int | None
    estimated_cost_usd: float | None
    cache_hits: int | None
    cache_misses: int | None
    kept_nothing: Mapping[str, str] = field(default_factory=dict)
    """Criteria whose policy kept no page for another reason than evidence, and why."""

    @property
    def compression_ratio(self) -> float | None:
        """``chars_full / chars_kept``: how many times less text reaches the LLM."""
        return self.chars_full / self.chars_kept if self.chars_kept else None

    @property
    def kept_fraction(self) -> float:
        """``chars_kept / chars_full``, in [0, 1]."""
        return self.chars_kept / self.chars_full if self.chars_full else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "pages": self.pages,
            "empty_pages": list(self.empty_pages),
            "criteria": self.criteria,
            "chars_total": self.chars_total,
            "chars_full": self.chars_full,
            "chars_kept": self.chars_kept,
            "kept_fraction": round(self.kept_fraction, 6),
            "compression_ratio": (
                None if self.compression_ratio is None else round(self.compression_ratio, 3)
            ),
            "tokens_full_estimate": self.tokens_full_estimate,
            "tokens_kept_estimate": self.tokens_kept_estimate,
            "pages_kept": dict(self.pages_kept),
            "no_evidence": list(self.no_evidence),
            "kept_nothing": dict(self.kept_nothing),
            "model_requests": self.model_requests,
            "model_texts": self.model_texts,
            "model_tokens": self.model_tokens,
            "estimated_cost_usd": self.estimated_cost_usd,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
        }


@dataclass(frozen=True)
class GateResult:
    """The score matrix, the per-criterion results and the report of one run.

    ``matrix[i][j]`` is criterion ``i``'s score for page ``j + 1`` (``None``
    for an empty page, which was not scored). ``scale`` is the scorer's.
    ``duplicates`` are the duplicate page pairs found when the policy has
    ``dedupe`` (each later page against the earlier one).
    """

    document: Document
    criteria: tuple[Criterion, ...]
    matrix: tuple[tuple[float | None, ...], ...]
    results: tuple[CriterionResult, ...]
    report: GateReport
    policy: SelectionPolicy
    scale: Scale = Scale.PROBABILITY
    model: str | None = None
    duplicates: tuple[DuplicatePage, ...] = ()
    passage_policy: PassagePolicy | None = None

    def to_dict(self, *, include_context: bool = True) -> dict[str, Any]:
        """A JSON-ready view: policy, per-criterion pages and scores, matrix, report."""
        criteria = []
        for result in self.results:
            c = result.criterion
            entry: dict[str, Any] = {
                "id": c.id,
                "text": c.text,
                "instruction": c.instruction,
                "threshold": c.threshold,
                "pages": list(result.pages),
                "scores": [round(result.scores[p], 6) for p in result.pages],
                "evidence_pages": list(result.evidence_pages),
                "neighbor_pages": list(result.neighbor_pages),
                "forced_pages": list(result.forced_pages),
                "duplicates": [d.to_dict() for d in result.duplicates],
                "no_evidence": result.no_evidence,
                "kept_nothing": result.kept_nothing,
                "chars_kept": result.chars_kept,
            }
            if result.passages is not None:
                entry["passages"] = [
                    p.to_dict() if include_context else {**p.to_dict(), "text": None}
                    for p in result.passages
                ]
            if include_context:
                entry["context"] = result.context
            criteria.append(entry)
        return {
            "document": self.document.source,
            "model": self.model,
            "scale": self.scale.value,
            "policy": self.policy.to_dict(),
            "passage_policy": None
            if self.passage_policy is None
            else self.passage_policy.to_dict(),
            "duplicates": [d.to_dict() for d in self.duplicates],
            "criteria": criteria,
            "matrix": {
                "pages": [p.number for p in self.document.pages],
                "criteria": [c.id for c in self.criteria],
                "scores": [
                    [None if v is None else round(v, 6) for v in row] for row in self.matrix
                ],
            },
            "report": self.report.to_dict(),
        }
