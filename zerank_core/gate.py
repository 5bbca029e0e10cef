"""Score pages × criteria and keep each criterion's evidence pages (and passages).

:class:`PageGate` scores every non-empty page against every criterion as one
job (:func:`~zerank_core.scorers.base.score_many`: a remote scorer plans the
requests of all criteria together and keeps its slots busy), keeps each
criterion's evidence pages with a :class:`~zerank_core.select.SelectionPolicy`
and reports what that saved. With a :class:`~zerank_core.passages.PassagePolicy`
a second stage cuts only the kept pages into passages, scores them against
the same criteria as a second job of the same scorer, and keeps each page's
evidence passages.
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
from zerank_core.passages import PassagePolicy, choose_passages
from zerank_core.results import (
    CriterionResult,
    DocumentRecord,
    DuplicatePage,
    GateReport,
    GateResult,
    PageRecord,
    Passage,
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
from zerank_core.select import Selection, SelectionPolicy, estimate_tokens

if TYPE_CHECKING:
    from zerank_core.cache import CacheStats
    from zerank_core.dedupe import DuplicateDetector

__all__ = ["DEFAULT_PAGE_POLICY", "PageGate", "count_pairs", "passage_context", "progress_bar"]

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

    ``passages`` turns on two-stage gating: a
    :class:`~zerank_core.passages.PassagePolicy` by which each criterion's
    kept pages are cut into passages, scored against that criterion (a
    second job for the scorer, with only the passages of kept pages) and
    trimmed to their evidence passages. Each result then carries
    ``passages`` and its ``context`` is those passages in document order
    under ``[page N]`` markers; ``None`` (the default) keeps whole pages.
    """

    scorer: Scorer
    policy: SelectionPolicy = DEFAULT_PAGE_POLICY
    instruction: str | None = None
    max_concurrency: int = 4
    progress: bool | None = None
    price_per_million_tokens: float | None = None
    duplicate_detector: DuplicateDetector | None = None
    passages: PassagePolicy | None = None
    _cache_stats: Callable[[], CacheStats] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        require_scorer(self.scorer)
        if not isinstance(self.policy, SelectionPolicy):
            raise ConfigurationError(
                f"policy must be a SelectionPolicy, got {type(self.policy).__name__}"
            )
        if self.passages is not None and not isinstance(self.passages, PassagePolicy):
            raise ConfigurationError(
                f"passages must be a PassagePolicy or None, got {type(self.passages).__name__}"
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
        """Score and select; the whole pages × criteria job goes to the scorer at once.

        With :attr:`passages`, the passages of every criterion's kept pages
        then go to the scorer as a second job.
        """
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
        picked = self._pick(pages, criteria, columns, duplicates)
        plan = None
        if self.passages is not None:
            plan = _PassagePlan(self.passages, pages, criteria, picked, self._instruction)
            if plan.items:
                with self._passage_bar(plan, document) as bar, _naming_criteria(plan.criteria):
                    plan.scored = list(
                        score_many(
                            self.scorer,
                            plan.items,
                            on_batch=count_pairs(bar),
                            max_concurrency=self.max_concurrency,
                        )
                    )
        return self._finish(document, pages, criteria, picked, before, duplicates, plan, started)

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
        picked = self._pick(pages, criteria, columns, duplicates)
        plan = None
        if self.passages is not None:
            plan = _PassagePlan(self.passages, pages, criteria, picked, self._instruction)
            if plan.items:
                with self._passage_bar(plan, document) as bar, _naming_criteria(plan.criteria):
                    plan.scored = list(
                        await ascore_many(
                            self.scorer,
                            plan.items,
                            on_batch=count_pairs(bar),
                            max_concurrency=self.max_concurrency,
                        )
                    )
        return self._finish(document, pages, criteria, picked, before, duplicates, plan, started)

    def _pick(
        self,
        pages: list[Page],
        criteria: list[Criterion],
        columns: list[list[float] | None],
        duplicates: Duplicates | None,
    ) -> list[_Picked]:
        """Stage 1: each criterion's checked page scores, its policy and the pages it keeps."""
        lengths = [len(p.text) for p in pages]
        tokens = [estimate_tokens(p.text) for p in pages]
        picked = []
        for criterion, column in zip(criteria, columns, strict=True):
            scores = _checked_column(criterion, column, pages)
            policy = self.policy
            if criterion.threshold is not None:
                policy = replace(policy, threshold=criterion.threshold)
            selection = policy.select(
                scores, lengths=lengths, token_counts=tokens, duplicates=duplicates
            )
            picked.append(_Picked(scores, policy, selection))
        return picked

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

    def _passage_bar(self, plan: _PassagePlan, document: Document) -> Any:
        """Passage × criterion pairs scored in stage 2, of those planned."""
        return progress_bar(
            self.progress,
            total=sum(len(item.texts) for item in plan.items),
            desc=f"passages {_name(document.source)}",
            unit="pair",
        )

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
        picked: list[_Picked],
        before: tuple[Usage | None, CacheStats | None],
        duplicates: Duplicates | None = None,
        plan: _PassagePlan | None = None,
        started: float | None = None,
    ) -> GateResult:
        by_number = {p.number: p for p in document.pages}
        lengths = [len(p.text) for p in pages]
        tokens = [estimate_tokens(p.text) for p in pages]
        results: list[CriterionResult] = []
        for position, (criterion, pick) in enumerate(zip(criteria, picked, strict=True)):
            scores, policy, selection = pick.scores, pick.policy, pick.selection
            by_page = dict(zip((p.number for p in pages), scores, strict=True))
            kept = tuple(pages[i].number for i in selection.indices)
            evidence = None if plan is None else plan.kept(position)
            if evidence is None:
                context = "\n\n".join(
                    f"[page {number}]\n{by_number[number].text.strip()}" for number in kept
                )
                chars_kept = sum(len(by_number[n].text) for n in kept)
            else:
                context = passage_context(evidence)
                chars_kept = sum(p.end - p.start for p in evidence)
            results.append(
                CriterionResult(
                    criterion=criterion,
                    pages=kept,
                    scores=by_page,
                    evidence_pages=_numbers(pages, selection.selected, kept),
                    neighbor_pages=_numbers(pages, selection.neighbors, kept),
                    forced_pages=_numbers(pages, selection.forced, kept),
                    context=context,
                    chars_kept=chars_kept,
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
                    passages=() if evidence is None else tuple(evidence),
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
            passage_policy=self.passages,
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
            tokens_kept_estimate=sum(page_tokens[n] for r in results for n in r.pages)
            if self.passages is None
            else sum(estimate_tokens(q.text) for r in results for q in r.passages),
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


@dataclass(frozen=True)
class _Picked:
    """Stage 1 for one criterion: its page scores, the policy applied, the pages kept."""

    scores: list[float]
    policy: SelectionPolicy
    selection: Selection


class _PassagePlan:
    """Stage 2: the passages of each criterion's kept pages, as one scorer job.

    A page is cut once, however many criteria kept it. ``items`` holds one
    :class:`ScoreItem` per criterion that kept a page (``criteria`` names
    them, for errors); ``scored`` receives the job's columns.
    """

    def __init__(
        self,
        policy: PassagePolicy,
        pages: list[Page],
        criteria: list[Criterion],
        picked: list[_Picked],
        instruction: Callable[[Criterion], str | None],
    ) -> None:
        self.policy = policy
        self.pages = pages
        self._cuts: dict[int, list[tuple[int, int]]] = {}
        self.items: list[ScoreItem] = []
        self.criteria: list[Criterion] = []
        self._slots: dict[int, tuple[int, list[int]]] = {}
        self.scored: list[list[float]] = []
        for position, (criterion, pick) in enumerate(zip(criteria, picked, strict=True)):
            kept = sorted(pick.selection.indices)
            if not kept:
                continue
            texts = [pages[i].text[start:end] for i in kept for start, end in self._passages_of(i)]
            self._slots[position] = (len(self.items), kept)
            self.items.append(ScoreItem(criterion.text, texts, instruction(criterion)))
            self.criteria.append(criterion)

    def _passages_of(self, index: int) -> list[tuple[int, int]]:
        if index not in self._cuts:
            self._cuts[index] = self.policy.split(self.pages[index].text)
        return self._cuts[index]

    def kept(self, position: int) -> list[Passage] | None:
        """The evidence passages of criterion ``position``, in document order.

        ``None`` for a criterion that kept no page (its context stays empty).
        """
        slot = self._slots.get(position)
        if slot is None:
            return None
        item, kept = slot
        criterion = self.criteria[item]
        names = [
            f"page {self.pages[i].number} passage {start}-{end}"
            for i in kept
            for start, end in self._passages_of(i)
        ]
        column = self.scored[item] if item < len(self.scored) else None
        scores = check_scores(
            [] if column is None else column,
            len(names),
            context=f"criterion {criterion.id!r}",
            items="passages",
            names=names,
        )
        cuts = [self._passages_of(i) for i in kept]
        chosen = choose_passages(self.policy, cuts, scores)
        out = []
        for i, page_passages in zip(kept, chosen, strict=True):
            page = self.pages[i]
            for start, end, score in page_passages:
                out.append(
                    Passage(
                        page=page.number,
                        start=start,
                        end=end,
                        score=score,
                        text=page.text[start:end],
                    )
                )
        return out


def passage_context(passages: Sequence[Passage]) -> str:
    """Passages in the given order, each page's under one ``[page N]`` marker."""
    blocks: list[tuple[int, list[str]]] = []
    for passage in passages:
        if not blocks or blocks[-1][0] != passage.page:
            blocks.append((passage.page, []))
        blocks[-1][1].append(passage.text)
    return "\n\n".join(f"[page {page}]\n" + "\n".join(texts) for page, texts in blocks)


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
