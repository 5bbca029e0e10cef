"""Gate many documents as one job: the pages of every document share the scorer's batches.

:func:`gate_documents` scores the pages of all documents against every
criterion in one scorer job (:func:`~zerank_core.scorers.base.score_many`: a
scorer that plans several queries together gets them all at once), then selects each
document's evidence pages with the :class:`~zerank_core.gate.PageGate` it was
given, exactly as :meth:`PageGate.run <zerank_core.gate.PageGate.run>` does
for one document. Identical page texts, within or across documents, are
scored once.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from zerank_core.criteria import Criterion
from zerank_core.errors import ConfigurationError, InvalidResponseError
from zerank_core.gate import PageGate, count_pairs, progress_bar
from zerank_core.loaders import Document
from zerank_core.results import (
    BackendInfo,
    CacheInfo,
    GateResult,
    JobSummary,
    JobTimings,
    MultiResult,
    RayInfo,
)
from zerank_core.scorers.base import Scale, ScoreItem, Scorer, Usage, score_many

__all__ = ["JobSummary", "MultiResult", "gate_documents", "summarize"]


def gate_documents(
    gate: PageGate, documents: Sequence[Document], criteria: Sequence[Criterion]
) -> MultiResult:
    """Gate every document against every criterion; the scorer sees one job.

    Each document's result is what ``gate.run(document, criteria)`` returns
    (same scores, selection, dedupe and report), except that its report's
    usage counts only its page scores: requests and tokens are the job's,
    in the :class:`~zerank_core.results.JobSummary`. A document without any page text raises
    :class:`~zerank_core.errors.DocumentError`, as :meth:`PageGate.run` does,
    before anything is scored.
    """
    if not isinstance(gate, PageGate):
        raise ConfigurationError(f"gate must be a PageGate, got {type(gate).__name__}")
    if isinstance(documents, Document) or not isinstance(documents, Sequence):
        raise ConfigurationError(
            f"documents must be a sequence of Document, got {type(documents).__name__}"
        )
    documents = list(documents)
    if not documents:
        raise ConfigurationError("documents must hold at least one Document")
    for index, document in enumerate(documents):
        if not isinstance(document, Document):
            raise ConfigurationError(
                f"documents[{index}] must be a Document, got {type(document).__name__}"
            )
    criteria = list(criteria)
    # The gate's own checks (criteria, empty documents) run before any scoring.
    for document in documents:
        gate._check(document, criteria)

    start = time.perf_counter()
    usage_before = _usage(gate.scorer)
    scale = Scale(getattr(gate.scorer, "scale", Scale.PROBABILITY))
    # An uncalibrated (lexical) scorer normalises over the texts of each call:
    # scoring documents together would change every document's scores.
    shared = scale is not Scale.UNCALIBRATED
    texts = list(dict.fromkeys(p.text for d in documents for p in d.pages if not p.is_empty))
    results: list[GateResult] = []
    table = _score_job(gate, texts, criteria, len(documents)) if shared else None
    # Stage 2 (passages) depends on what stage 1 kept: the replay sends those
    # texts to the real scorer, one document at a time.
    fallback = gate.scorer if gate.passages is not None else None
    with progress_bar(
        gate.progress, total=len(documents), desc="documents", unit="document"
    ) as finished:
        for document in documents:
            finished.set_postfix_str(document.source.rsplit("/", 1)[-1], refresh=False)
            if table is not None:
                replay = _Replay(gate.scorer, table, fallback)
                one = dataclasses.replace(gate, scorer=replay, progress=False)
                results.append(one.run(document, criteria))
            else:
                results.append(gate.run(document, criteria))
            finished.update(1)
    seconds = time.perf_counter() - start
    usage = _usage(gate.scorer) - usage_before
    summary = summarize(results, documents, usage=usage, seconds=seconds, shared=shared)
    return MultiResult(results=tuple(results), summary=summary)


def summarize(
    results: Sequence[GateResult],
    documents: Sequence[Document],
    *,
    usage: Usage,
    seconds: float,
    shared: bool,
    ray: RayInfo | None = None,
    backend: BackendInfo | None = None,
    cache: CacheInfo | None = None,
) -> JobSummary:
    """The :class:`~zerank_core.results.JobSummary` of a job's per-document results.

    In a process and on Ray alike: totals over ``results``, the distinct page
    texts of ``documents``, the scorer's ``usage`` over the job, and the
    job's ``seconds`` (``ray``: where it ran) in its timings.
    """
    unique = {p.text for d in documents for p in d.pages if not p.is_empty}
    return JobSummary(
        documents=len(results),
        pages=sum(r.report.pages for r in results),
        empty_pages=sum(len(r.report.empty_pages) for r in results),
        criteria=results[0].report.criteria if results else 0,
        unique_texts=len(unique),
        chars_full=sum(r.report.chars_full for r in results),
        chars_kept=sum(r.report.chars_kept for r in results),
        no_evidence=sum(len(r.report.no_evidence) for r in results),
        shared_batches=shared,
        backend=backend,
        usage=usage,
        cache=cache,
        timings=JobTimings(
            seconds=seconds,
            documents_per_second=len(results) / seconds if seconds > 0 else None,
            read_seconds=_read_seconds(documents),
            ray=ray,
        ),
    )


def _read_seconds(documents: Sequence[Document]) -> float | None:
    """The time spent reading the documents, when they were read from files."""
    readings = [d.reading for d in documents if d.reading is not None]
    return sum(r.seconds for r in readings) if readings else None


def _usage(scorer: Any) -> Usage:
    usage = getattr(scorer, "usage", None)
    return usage if isinstance(usage, Usage) else Usage()


_Key = tuple[str, str | None]


def _score_job(
    gate: PageGate, texts: list[str], criteria: list[Criterion], documents: int
) -> dict[_Key, dict[str, float]]:
    """Every text's score for every criterion, keyed by (criterion text, instruction)."""
    keys = list(
        dict.fromkeys(
            (c.text, c.instruction if c.instruction is not None else gate.instruction)
            for c in criteria
        )
    )
    with progress_bar(
        gate.progress,
        total=len(texts) * len(keys),
        desc=f"scoring {documents} documents",
        unit="pair",
    ) as bar:
        columns = score_many(
            gate.scorer,
            [ScoreItem(query, texts, instruction) for query, instruction in keys],
            on_batch=count_pairs(bar),
            max_concurrency=gate.max_concurrency,
        )
    table: dict[_Key, dict[str, float]] = {}
    for key, column in zip(keys, columns, strict=True):
        if len(column) != len(texts):
            raise InvalidResponseError(
                f"scorer returned {len(column)} scores for {len(texts)} pages "
                f"(criterion {key[0]!r})",
                batch=0,
                batch_size=len(texts),
            )
        table[key] = dict(zip(texts, column, strict=True))
    return table


class _Replay:
    """Answers a gate's score calls for one document from the job's scores.

    It declares the real scorer's ``model`` and ``scale``; its ``usage``
    counts the page scores it handed out (no requests, no tokens: those are
    the job's). With a ``fallback`` scorer, a call holding a text the job did
    not score (a passage of two-stage gating) goes to it whole.
    """

    def __init__(
        self,
        scorer: Scorer,
        table: Mapping[_Key, Mapping[str, float]],
        fallback: Scorer | None = None,
    ) -> None:
        self._table = table
        self._fallback = fallback
        self.scale = Scale(getattr(scorer, "scale", Scale.PROBABILITY))
        self.model: str = scorer.model
        self._texts = 0
        self._lock = threading.Lock()

    @property
    def usage(self) -> Usage:
        return Usage(requests=0, texts=self._texts, total_tokens=None)

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        column = self._table.get((query, instruction))
        if self._fallback is not None and (column is None or any(t not in column for t in texts)):
            scores = self._fallback.score(query, texts, instruction=instruction)
            with self._lock:
                self._texts += len(texts)
            return scores
        if column is None:
            raise InvalidResponseError(
                f"no scores were computed for criterion {query!r}", batch=0, batch_size=len(texts)
            )
        scores = []
        for text in texts:
            value = column.get(text)
            if value is None:
                # Never read a missing score as 0.0.
                raise InvalidResponseError(
                    f"no score was computed for a page of {len(text)} characters "
                    f"(criterion {query!r})",
                    batch=0,
                    batch_size=len(texts),
                )
            scores.append(value)
        with self._lock:
            self._texts += len(texts)
        return scores

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        column = self._table.get((query, instruction))
        if self._fallback is not None and (column is None or any(t not in column for t in texts)):
            scores = await self._fallback.ascore(query, texts, instruction=instruction)
            with self._lock:
                self._texts += len(texts)
            return scores
        return self.score(query, texts, instruction=instruction)
