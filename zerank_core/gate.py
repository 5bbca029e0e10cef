"""Score pages × criteria and keep each criterion's evidence pages.

:class:`PageGate` scores every non-empty page against every criterion as one
job (:func:`~zerank_core.scorers.base.score_many`: a remote scorer plans the
requests of all criteria together and keeps its slots busy), keeps each
criterion's evidence pages with a :class:`~zerank_core.select.SelectionPolicy`
and reports what that saved.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from zerank_core.criteria import Criterion
from zerank_core.dedupe import Duplicates, LexicalDetector
from zerank_core.errors import (
    ConfigurationError,
    DocumentError,
    ZeRankError,
)
from zerank_core.loaders import Document, Page
from zerank_core.results import (
    CriterionResult,
    DocumentRecord,
    DuplicatePage,
    GateReport,
    GateResult,
    PageRecord,
    Timings,
    why_nothing_passed,
)
from zerank_core.scorers.base import (
    BatchCallback,
    ScoreItem,
    Scorer,
    Usage,
    ascore_many,
    check_scores,
    require_scorer,
    score_many,
)
from zerank_core.select import SelectionPolicy, estimate_tokens

if TYPE_CHECKING:
    from zerank_core.cache import CacheStats
    from zerank_core.dedupe import DuplicateDetector

__all__ = ["DEFAULT_PAGE_POLICY", "PageGate", "count_pairs", "progress_bar"]

#: Top-3 pages per criterion with a floor of 0.5, read in page order. With an
#: uncalibrated scorer (BM25, max-scaled per call) the floor means "at least
#: half as good as the best page", which still keeps one to three pages.
DEFAULT_PAGE_POLICY = SelectionPolicy(threshold=0.5, top_k=3, order="original")


@dataclass
class PageGate:
    """Score pages × criteria and keep each criterion's evidence pages.

    ``policy`` defaults to :data:`DEFAULT_PAGE_POLICY`; a criterion's own
    threshold replaces the policy's for that criterion. ``instruction`` is the
    default for criteria without one. All pages × criteria go to the scorer
    as one job: a scorer with ``score_many`` (the remote backends, the cache)
    plans the requests of every criterion together and bounds its own
    concurrency; ``max_concurrency`` only bounds how many criteria are scored
    at once for a scorer that has just ``score``/``ascore``. ``progress``
    shows a bar on stderr: ``None`` means only when stderr is a terminal.
    ``price_per_million_tokens`` turns reported tokens into an estimated cost.
    With a policy that has ``dedupe``, ``duplicate_detector`` (default
    :class:`~zerank_core.dedupe.LexicalDetector`) finds the duplicate pages
    once per document, after scoring, and each criterion keeps one page of
    each set of duplicates.
    """

    scorer: Scorer
    policy: SelectionPolicy = DEFAULT_PAGE_POLICY
    instruction: str | None = None
    max_concurrency: int = 4
    progress: bool | None = None
    price_per_million_tokens: float | None = None
    duplicate_detector: DuplicateDetector | None = None
    _cache_stats: Callable[[], CacheStats] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        require_scorer(self.scorer)
        if not isinstance(self.policy, SelectionPolicy):
            raise ConfigurationError(
                f"policy must be a SelectionPolicy, got {type(self.policy).__name__}"
            )
        if isinstance(self.max_concurrency, bool) or not isinstance(self.max_concurrency, int):
            raise ConfigurationError(
                f"max_concurrency must be an integer >= 1, got {self.max_concurrency!r}"
            )
        if self.max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        price = self.price_per_million_tokens
        if price is not None and (math.isnan(price) or price < 0):
            raise ConfigurationError(f"price_per_million_tokens must be >= 0, got {price}")
        from zerank_core.cache import CachedScorer

        if isinstance(self.scorer, CachedScorer):
            cached = self.scorer
            self._cache_stats = lambda: cached.stats

    def run(self, document: Document, criteria: Sequence[Criterion]) -> GateResult:
        """Score and select; the whole pages × criteria job goes to the scorer at once."""
        pages, criteria = self._check(document, criteria)
        texts = [p.text for p in pages]
        items = self._items(pages, criteria)
        before = self._snapshot()
        started = time.perf_counter()
        with self._bar(len(pages) * len(criteria), document) as bar, _naming_criteria(criteria):
            columns: list[list[float] | None] = list(
                score_many(
                    self.scorer,
                    items,
                    on_batch=count_pairs(bar),
                    max_concurrency=self.max_concurrency,
                )
            )
        duplicates = None
        if self.policy.dedupe:
            duplicates = self._detector().find(texts, score_columns=_complete(columns, len(texts)))
        return self._finish(document, pages, criteria, columns, before, duplicates, started)

    async def arun(self, document: Document, criteria: Sequence[Criterion]) -> GateResult:
        """Async :meth:`run`, through the scorer's ``ascore_many`` (or ``ascore``)."""
        pages, criteria = self._check(document, criteria)
        texts = [p.text for p in pages]
        items = self._items(pages, criteria)
        before = self._snapshot()
        started = time.perf_counter()
        with self._bar(len(pages) * len(criteria), document) as bar, _naming_criteria(criteria):
            columns: list[list[float] | None] = list(
                await ascore_many(
                    self.scorer,
                    items,
                    on_batch=count_pairs(bar),
                    max_concurrency=self.max_concurrency,
                )
            )
        duplicates = None
        if self.policy.dedupe:
            duplicates = await self._detector().afind(
                texts, score_columns=_complete(columns, len(texts))
            )
        return self._finish(document, pages, criteria, columns, before, duplicates, started)

    def _detector(self) -> DuplicateDetector:
        return self.duplicate_detector if self.duplicate_detector is not None else LexicalDetector()

    def _items(self, pages: list[Page], criteria: list[Criterion]) -> list[ScoreItem]:
        texts = [p.text for p in pages]
        return [ScoreItem(c.text, texts, self._instruction(c)) for c in criteria]

    def _instruction(self, criterion: Criterion) -> str | None:
        return criterion.instruction if criterion.instruction is not None else self.instruction

    def _check(
        self, document: Document, criteria: Sequence[Criterion]
    ) -> tuple[list[Page], list[Criterion]]:
        if not isinstance(document, Document):
            raise ConfigurationError(f"document must be a Document, got {type(document).__name__}")
        criteria = list(criteria)
        if not criteria:
            raise ConfigurationError("criteria must hold at least one Criterion")
        for index, criterion in enumerate(criteria):
            if not isinstance(criterion, Criterion):
                raise ConfigurationError(
                    f"criteria[{index}] must be a Criterion, got {type(criterion).__name__}"
                )
        ids = [c.id for c in criteria]
        if len(set(ids)) != len(ids):
            duplicated = sorted({i for i in ids if ids.count(i) > 1})
            raise ConfigurationError(f"criterion ids must be unique; repeated: {duplicated}")
        pages = [p for p in document.pages if not p.is_empty]
        if not pages:
            # Only a PDF's empty pages can be a scan that OCR would read.
            why = (
                "a scan without a text layer needs OCR"
                if document.reading is not None and document.reading.reader == "pypdfium2"
                else "whitespace only"
            )
            raise DocumentError(
                f"{document.source} has no page with text "
                f"({len(document.pages)} pages, all empty: {why})"
            )
        return pages, criteria

    def _bar(self, total: int, document: Document) -> Any:
        """Page × criterion pairs scored of those planned, named after the document."""
        return progress_bar(
            self.progress, total=total, desc=f"scoring {_name(document.source)}", unit="pair"
        )

    def _snapshot(self) -> tuple[Usage | None, CacheStats | None]:
        stats = self._cache_stats() if self._cache_stats is not None else None
        return self.scorer.usage, stats

    def _finish(
        self,
        document: Document,
        pages: list[Page],
        criteria: list[Criterion],
        columns: list[list[float] | None],
        before: tuple[Usage | None, CacheStats | None],
        duplicates: Duplicates | None = None,
        started: float | None = None,
    ) -> GateResult:
        by_number = {p.number: p for p in document.pages}
        lengths = [len(p.text) for p in pages]
        tokens = [estimate_tokens(p.text) for p in pages]
        results: list[CriterionResult] = []
        for criterion, column in zip(criteria, columns, strict=True):
            scores = _checked_column(criterion, column, pages)
            by_page = dict(zip((p.number for p in pages), scores, strict=True))
            policy = self.policy
            if criterion.threshold is not None:
                policy = replace(policy, threshold=criterion.threshold)
            selection = policy.select(
                scores, lengths=lengths, token_counts=tokens, duplicates=duplicates
            )
            kept = tuple(pages[i].number for i in selection.indices)
            context = "\n\n".join(
                f"[page {number}]\n{by_number[number].text.strip()}" for number in kept
            )
            results.append(
                CriterionResult(
                    criterion=criterion,
                    pages=kept,
                    scores=by_page,
                    evidence_pages=_numbers(pages, selection.selected, kept),
                    neighbor_pages=_numbers(pages, selection.neighbors, kept),
                    forced_pages=_numbers(pages, selection.forced, kept),
                    context=context,
                    chars_kept=sum(len(by_number[n].text) for n in kept),
                    duplicates=tuple(
                        DuplicatePage(
                            page=pages[d.index].number,
                            duplicate_of=pages[d.of].number,
                            similarity=d.similarity,
                            method=d.method,
                        )
                        for d in selection.duplicates
                    ),
                    kept_nothing=None
                    if selection.selected
                    else why_nothing_passed(policy, scores, lengths, tokens),
                )
            )
        report = self._report(document, pages, criteria, results, before)
        return GateResult(
            document=_record(document, {n for r in results for n in r.pages}),
            results=tuple(results),
            report=report,
            policy=self.policy,
            scale=self.scorer.scale,
            model=self.scorer.model,
            duplicates=()
            if duplicates is None
            else tuple(
                DuplicatePage(
                    page=pages[p.second].number,
                    duplicate_of=pages[p.first].number,
                    similarity=p.similarity,
                    method=p.method,
                )
                for p in sorted(duplicates.pairs, key=lambda p: (p.second, p.first))
            ),
            timings=Timings.of(
                document.reading, None if started is None else time.perf_counter() - started
            ),
        )

    def _report(
        self,
        document: Document,
        pages: list[Page],
        criteria: list[Criterion],
        results: list[CriterionResult],
        before: tuple[Usage | None, CacheStats | None],
    ) -> GateReport:
        usage_before, stats_before = before
        usage_after, stats_after = self._snapshot()
        usage = (
            usage_after - usage_before
            if usage_after is not None and usage_before is not None
            else Usage()
        )
        cost = None
        if usage.total_tokens is not None and self.price_per_million_tokens is not None:
            cost = usage.total_tokens * self.price_per_million_tokens / 1_000_000
        stats = (
            stats_after - stats_before
            if stats_after is not None and stats_before is not None
            else None
        )
        chars_total = sum(len(p.text) for p in pages)
        page_tokens = {p.number: estimate_tokens(p.text) for p in pages}
        return GateReport(
            pages=len(document.pages),
            empty_pages=document.empty_pages,
            criteria=len(criteria),
            chars_total=chars_total,
            chars_full=chars_total * len(criteria),
            chars_kept=sum(r.chars_kept for r in results),
            tokens_full_estimate=sum(page_tokens.values()) * len(criteria),
            tokens_kept_estimate=sum(page_tokens[n] for r in results for n in r.pages),
            pages_kept={r.criterion.id: len(r.pages) for r in results},
            no_evidence=tuple(r.criterion.id for r in results if r.no_evidence),
            kept_nothing={
                r.criterion.id: r.kept_nothing
                for r in results
                if r.kept_nothing is not None and not r.no_evidence
            },
            usage=usage,
            estimated_cost_usd=cost,
            cache_hits=None if stats is None else stats.hits,
            cache_misses=None if stats is None else stats.misses,
        )


def _record(document: Document, kept: set[int]) -> DocumentRecord:
    """The result's view of ``document``: every page's length, the kept pages' text."""
    return DocumentRecord(
        source=document.source,
        pages=tuple(
            PageRecord(
                number=p.number,
                chars=len(p.text),
                empty=p.is_empty,
                text=p.text if p.number in kept else None,
            )
            for p in document.pages
        ),
        reading=document.reading,
    )


@contextmanager
def _naming_criteria(criteria: list[Criterion]) -> Iterator[None]:
    """Name the criterion whose request failed: a batch number alone does not say."""
    try:
        yield
    except ZeRankError as exc:
        # Several failed batches: each names its own criterion.
        for error in getattr(exc, "errors", None) or [exc]:
            item = getattr(error, "job_item", None)
            if isinstance(item, int) and 0 <= item < len(criteria):
                error.in_criterion(criteria[item].id)
        raise


def progress_bar(show: bool | None, **settings: Any) -> Any:
    """A tqdm bar on stderr: ``show=None`` means only when stderr is a terminal."""
    from tqdm import tqdm

    visible = sys.stderr.isatty() if show is None else show
    return tqdm(disable=not visible, leave=False, dynamic_ncols=True, **settings)


def _name(source: str) -> str:
    name = source.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or source
    return name if len(name) <= 40 else name[:39] + "…"


def count_pairs(bar: Any) -> BatchCallback:
    """Advance the bar by the pairs of each scored batch."""
    lock = threading.Lock()

    def advance(item: int, indices: Sequence[int], scores: Sequence[float]) -> None:
        with lock:
            bar.update(len(indices))

    return advance


def _checked_column(
    criterion: Criterion, column: list[float] | None, pages: list[Page]
) -> list[float]:
    return check_scores(
        [] if column is None else column,
        len(pages),
        context=f"criterion {criterion.id!r}",
        items="pages",
        names=[f"page {page.number}" for page in pages],
    )


def _complete(columns: list[list[float] | None], n: int) -> list[list[float]]:
    # A column of the wrong length is reported by _finish, naming its
    # criterion; here it only must not reach the detector.
    return [c for c in columns if c is not None and len(c) == n]


def _numbers(pages: list[Page], indices: frozenset[int], order: tuple[int, ...]) -> tuple[int, ...]:
    wanted = {pages[i].number for i in indices}
    return tuple(n for n in order if n in wanted)
