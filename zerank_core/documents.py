"""Long documents against many criteria: pages in, evidence pages per criterion out.

A :class:`Document` is a list of pages (from a PDF, a form-feed text file, a
folder of text files or JSON: :func:`load_document`); a :class:`Criterion` is
one question to answer from it (:func:`load_criteria`). :class:`PageGate`
scores every non-empty page against every criterion (one scorer call per
criterion, criteria run concurrently, the scorer batches pages itself), keeps
each criterion's evidence pages with a :class:`~zerank_core.select.SelectionPolicy`
and reports what that saved.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from zerank_core.errors import (
    ConfigurationError,
    DocumentError,
    InvalidResponseError,
    MissingDependencyError,
)
from zerank_core.scorers.base import Scale, Scorer, Usage
from zerank_core.select import SelectionPolicy, estimate_tokens

if TYPE_CHECKING:
    from zerank_core.cache import CacheStats

__all__ = [
    "DEFAULT_PAGE_POLICY",
    "Criterion",
    "CriterionResult",
    "Document",
    "GateReport",
    "GateResult",
    "Page",
    "PageGate",
    "load_criteria",
    "load_document",
    "parse_criteria",
    "plot_heatmap",
]

#: Top-3 pages per criterion with a floor of 0.5, read in page order. With an
#: uncalibrated scorer (BM25, max-scaled per call) the floor means "at least
#: half as good as the best page", which still keeps one to three pages.
DEFAULT_PAGE_POLICY = SelectionPolicy(threshold=0.5, top_k=3, order="original")

TEXT_SUFFIXES = frozenset({".txt", ".text", ".md"})
_CRITERION_KEYS = frozenset({"id", "text", "instruction", "threshold"})


@dataclass(frozen=True)
class Page:
    """One page: its 1-based ``number`` in the document and its text."""

    number: int
    text: str

    @property
    def is_empty(self) -> bool:
        """True when the page has no text (a blank or image-only page)."""
        return not self.text.strip()


@dataclass(frozen=True)
class Document:
    """A document as pages; ``source`` names where it came from."""

    source: str
    pages: tuple[Page, ...]

    @classmethod
    def from_texts(cls, texts: Iterable[str], source: str = "<texts>") -> Document:
        """Pages from strings, numbered from 1."""
        pages = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ConfigurationError(
                    f"page {index + 1} of {source} must be a str, got {type(text).__name__}"
                )
            pages.append(Page(index + 1, text))
        return cls(source, tuple(pages))

    @property
    def empty_pages(self) -> tuple[int, ...]:
        """Numbers of the pages with no text; they are never sent to a model."""
        return tuple(p.number for p in self.pages if p.is_empty)


def load_document(path: str | Path) -> Document:
    """Read pages from a PDF, a folder of text files, JSON, or form-feed text.

    - ``*.pdf``: one page per PDF page, text through pypdf (no OCR: a scanned
      page without a text layer comes back empty);
    - a folder: one page per ``.txt``/``.md`` file, in natural name order
      (``page2`` before ``page10``);
    - ``*.json``: a list of page strings, a list of ``{"text": ...}``, or
      ``{"pages": [...]}`` of either;
    - anything else: UTF-8 text, pages separated by form feeds (``\\f``, as
      ``pdftotext`` writes them).

    Unreadable, encrypted or corrupt input raises :class:`DocumentError`.
    """
    path = Path(path)
    if path.is_dir():
        return _load_folder(path)
    if not path.is_file():
        raise DocumentError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return _load_pdf(path)
    text = _read_text(path)
    if suffix == ".json":
        return _load_json(path, text)
    pages = text.split("\f")
    if len(pages) > 1 and not pages[-1].strip():
        # pdftotext ends every page with a form feed, the last one included.
        pages.pop()
    return Document.from_texts(pages, str(path))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DocumentError(f"cannot read {path}: {exc.strerror}") from exc


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name)]


def _load_folder(path: Path) -> Document:
    files = sorted(
        (
            p
            for p in path.iterdir()
            if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES and not p.name.startswith(".")
        ),
        key=lambda p: _natural_key(p.name),
    )
    if not files:
        raise DocumentError(f"{path} holds no .txt or .md files to read as pages")
    return Document.from_texts((_read_text(p) for p in files), str(path))


def _load_json(path: Path, text: str) -> Document:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict) and set(data) >= {"pages"}:
        data = data["pages"]
    if not isinstance(data, list):
        raise DocumentError(
            f"{path}: expected a list of pages or {{'pages': [...]}}, got {type(data).__name__}"
        )
    texts = []
    for index, item in enumerate(data):
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            item = item["text"]
        if not isinstance(item, str):
            raise DocumentError(
                f"{path}: page {index + 1} must be a string or {{'text': ...}}, got {item!r:.60}"
            )
        texts.append(item)
    return Document.from_texts(texts, str(path))


def _load_pdf(path: Path) -> Document:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            try:
                unlocked = reader.decrypt("")
            except (DependencyError, NotImplementedError) as exc:
                raise DocumentError(f"{path} is encrypted and cannot be opened: {exc}") from exc
            if not unlocked:
                raise DocumentError(
                    f"{path} is encrypted with a password; decrypt it first "
                    "(for example: qpdf --decrypt --password=... in.pdf out.pdf)"
                )
        texts = [page.extract_text() or "" for page in reader.pages]
    except DocumentError:
        raise
    except Exception as exc:
        # pypdf reports damage with many exception types (PdfReadError,
        # ValueError, KeyError, ...): all of them mean this file cannot be read.
        raise DocumentError(f"{path} is not a readable PDF ({type(exc).__name__}: {exc})") from exc
    if not texts:
        raise DocumentError(f"{path} has no pages")
    return Document.from_texts(texts, str(path))


@dataclass(frozen=True)
class Criterion:
    """One thing to find evidence for.

    ``text`` is what the scorer reads as the query. ``instruction`` (appended
    by zerank's convention) and ``threshold`` (the selection floor) override
    the gate's for this criterion only.
    """

    id: str
    text: str
    instruction: str | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise ConfigurationError(f"criterion id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.text, str) or not self.text.strip():
            raise ConfigurationError(f"criterion {self.id!r} needs a non-empty text")
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise ConfigurationError(
                f"criterion {self.id!r}: instruction must be a string, got {self.instruction!r}"
            )
        if self.threshold is not None:
            value = self.threshold
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or math.isnan(value)
                or not 0.0 <= value <= 1.0
            ):
                raise ConfigurationError(
                    f"criterion {self.id!r}: threshold must be in [0, 1], got {value!r}"
                )


def parse_criteria(data: object, *, source: str = "criteria") -> list[Criterion]:
    """Criteria from already-parsed data.

    Accepted: a list whose items are strings or mappings with ``text`` and
    optional ``id``, ``instruction``, ``threshold``; or a mapping
    ``{"criteria": [...], "instruction": ...}`` whose instruction applies to
    every criterion that has none. Ids default to ``C1``, ``C2``, ...
    """
    default_instruction = None
    if isinstance(data, Mapping):
        unknown = sorted(set(map(str, data)) - {"criteria", "instruction"})
        if unknown or "criteria" not in data:
            raise ConfigurationError(
                f"{source}: expected a list of criteria or a mapping with 'criteria' "
                f"(and optionally 'instruction'); got keys {sorted(map(str, data))}"
            )
        default_instruction = data.get("instruction")
        data = data["criteria"]
    if not isinstance(data, list) or not data:
        raise ConfigurationError(f"{source}: expected a non-empty list of criteria")
    criteria = []
    for position, item in enumerate(data, start=1):
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, Mapping):
            raise ConfigurationError(
                f"{source}: criterion {position} must be a string or a mapping, got {item!r:.60}"
            )
        unknown = sorted(set(map(str, item)) - _CRITERION_KEYS)
        if unknown:
            raise ConfigurationError(
                f"{source}: criterion {position} has unknown keys {unknown}; "
                f"allowed: {sorted(_CRITERION_KEYS)}"
            )
        criteria.append(
            Criterion(
                id=str(item.get("id", f"C{position}")),
                text=item.get("text", ""),
                instruction=item.get("instruction", default_instruction),
                threshold=item.get("threshold"),
            )
        )
    seen: set[str] = set()
    for criterion in criteria:
        if criterion.id in seen:
            raise ConfigurationError(f"{source}: criterion id {criterion.id!r} appears twice")
        seen.add(criterion.id)
    return criteria


def load_criteria(path: str | Path) -> list[Criterion]:
    """Criteria from YAML (``.yaml``/``.yml``), JSON, or text (one per line).

    In a text file blank lines and lines starting with ``#`` are skipped.
    YAML and JSON follow :func:`parse_criteria`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read criteria file {path}: {exc}") from exc
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"{path} is not valid YAML: {exc}") from exc
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{path} is not valid JSON: {exc}") from exc
    else:
        data = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    return parse_criteria(data, source=str(path))


@dataclass(frozen=True)
class CriterionResult:
    """What the gate kept for one criterion.

    ``pages`` are the kept page numbers in the policy's order; ``scores`` has
    every scored page's score (empty pages are absent). ``evidence_pages``
    passed the policy, ``neighbor_pages`` were added around them and
    ``forced_pages`` only to honour ``min_keep``. ``context`` is the kept
    pages' text, each after a ``[page N]`` marker.
    """

    criterion: Criterion
    pages: tuple[int, ...]
    scores: Mapping[int, float]
    evidence_pages: tuple[int, ...]
    neighbor_pages: tuple[int, ...]
    forced_pages: tuple[int, ...]
    context: str
    chars_kept: int

    @property
    def no_evidence(self) -> bool:
        """True when no page passed the policy (with a threshold: none above the floor)."""
        return not self.evidence_pages


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
    """

    document: Document
    criteria: tuple[Criterion, ...]
    matrix: tuple[tuple[float | None, ...], ...]
    results: tuple[CriterionResult, ...]
    report: GateReport
    policy: SelectionPolicy
    scale: Scale = Scale.PROBABILITY
    model: str | None = None

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
                "no_evidence": result.no_evidence,
                "chars_kept": result.chars_kept,
            }
            if include_context:
                entry["context"] = result.context
            criteria.append(entry)
        return {
            "document": self.document.source,
            "model": self.model,
            "scale": self.scale.value,
            "policy": {
                "threshold": self.policy.threshold,
                "top_k": self.policy.top_k,
                "max_chars": self.policy.max_chars,
                "max_tokens": self.policy.max_tokens,
                "min_keep": self.policy.min_keep,
                "order": self.policy.order,
                "neighbors": self.policy.neighbors,
            },
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


@dataclass
class PageGate:
    """Score pages × criteria and keep each criterion's evidence pages.

    ``policy`` defaults to :data:`DEFAULT_PAGE_POLICY`; a criterion's own
    threshold replaces the policy's for that criterion. ``instruction`` is the
    default for criteria without one. ``max_concurrency`` bounds how many
    criteria are scored at once (each is one scorer call over all pages; the
    scorer plans its own batches). ``progress`` shows a bar on stderr: ``None``
    means only when stderr is a terminal. ``price_per_million_tokens`` turns
    reported tokens into an estimated cost.
    """

    scorer: Scorer
    policy: SelectionPolicy = DEFAULT_PAGE_POLICY
    instruction: str | None = None
    max_concurrency: int = 4
    progress: bool | None = None
    price_per_million_tokens: float | None = None
    _cache_stats: Callable[[], CacheStats] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
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
        """Score and select; criteria are scored concurrently in worker threads."""
        pages, criteria = self._check(document, criteria)
        texts = [p.text for p in pages]
        before = self._snapshot()
        columns: list[list[float] | None] = [None] * len(criteria)
        with (
            self._bar(len(criteria)) as bar,
            ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(criteria))) as pool,
        ):
            futures = {
                pool.submit(self.scorer.score, c.text, texts, instruction=self._instruction(c)): i
                for i, c in enumerate(criteria)
            }
            for future in as_completed(futures):
                columns[futures[future]] = future.result()
                bar.update(1)
        return self._finish(document, pages, criteria, columns, before)

    async def arun(self, document: Document, criteria: Sequence[Criterion]) -> GateResult:
        """Async :meth:`run`: criteria scored concurrently with ``scorer.ascore``."""
        pages, criteria = self._check(document, criteria)
        texts = [p.text for p in pages]
        before = self._snapshot()
        semaphore = asyncio.Semaphore(self.max_concurrency)
        with self._bar(len(criteria)) as bar:

            async def one(criterion: Criterion) -> list[float]:
                async with semaphore:
                    scores = await self.scorer.ascore(
                        criterion.text, texts, instruction=self._instruction(criterion)
                    )
                bar.update(1)
                return scores

            columns: list[list[float] | None] = list(
                await asyncio.gather(*(one(c) for c in criteria))
            )
        return self._finish(document, pages, criteria, columns, before)

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
            raise DocumentError(
                f"{document.source} has no page with text "
                f"({len(document.pages)} pages, all empty: a scan without a text layer needs OCR)"
            )
        return pages, criteria

    def _bar(self, total: int) -> Any:
        from tqdm import tqdm

        show = sys.stderr.isatty() if self.progress is None else self.progress
        return tqdm(total=total, desc="criteria", unit="criterion", disable=not show, leave=False)

    def _snapshot(self) -> tuple[Usage | None, CacheStats | None]:
        usage = getattr(self.scorer, "usage", None)
        stats = self._cache_stats() if self._cache_stats is not None else None
        return (usage if isinstance(usage, Usage) else None), stats

    def _finish(
        self,
        document: Document,
        pages: list[Page],
        criteria: list[Criterion],
        columns: list[list[float] | None],
        before: tuple[Usage | None, CacheStats | None],
    ) -> GateResult:
        by_number = {p.number: p for p in document.pages}
        lengths = [len(p.text) for p in pages]
        tokens = [estimate_tokens(p.text) for p in pages]
        matrix: list[tuple[float | None, ...]] = []
        results: list[CriterionResult] = []
        for criterion, column in zip(criteria, columns, strict=True):
            scores = _checked_column(criterion, column, pages)
            by_page = dict(zip((p.number for p in pages), scores, strict=True))
            matrix.append(tuple(by_page.get(p.number) for p in document.pages))
            policy = self.policy
            if criterion.threshold is not None:
                policy = replace(policy, threshold=criterion.threshold)
            selection = policy.select(scores, lengths=lengths, token_counts=tokens)
            kept = tuple(pages[i].number for i in selection.indices)
            context = "\n\n".join(
                f"[page {number}]\n{by_number[number].text.strip()}" for number in kept
            )
            results.append(
                CriterionResult(
                    criterion=criterion,
                    pages=kept,
                    scores=MappingProxyType(by_page),
                    evidence_pages=_numbers(pages, selection.selected, kept),
                    neighbor_pages=_numbers(pages, selection.neighbors, kept),
                    forced_pages=_numbers(pages, selection.forced, kept),
                    context=context,
                    chars_kept=sum(len(by_number[n].text) for n in kept),
                )
            )
        report = self._report(document, pages, criteria, results, before)
        return GateResult(
            document=document,
            criteria=tuple(criteria),
            matrix=tuple(matrix),
            results=tuple(results),
            report=report,
            policy=self.policy,
            scale=Scale(getattr(self.scorer, "scale", Scale.PROBABILITY)),
            model=getattr(self.scorer, "model", None),
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
            pages_kept=MappingProxyType({r.criterion.id: len(r.pages) for r in results}),
            no_evidence=tuple(r.criterion.id for r in results if r.no_evidence),
            model_requests=usage.requests,
            model_texts=usage.texts,
            model_tokens=usage.total_tokens,
            estimated_cost_usd=cost,
            cache_hits=None if stats is None else stats.hits,
            cache_misses=None if stats is None else stats.misses,
        )


def _checked_column(
    criterion: Criterion, column: list[float] | None, pages: list[Page]
) -> list[float]:
    n = len(pages)
    if column is None or len(column) != n:
        got = "nothing" if column is None else f"{len(column)} scores"
        raise InvalidResponseError(
            f"scorer returned {got} for {n} pages (criterion {criterion.id!r})",
            batch=0,
            batch_size=n,
        )
    for page, value in zip(pages, column, strict=True):
        if isinstance(value, bool) or not isinstance(value, int | float):
            bad = True
        else:
            bad = not math.isfinite(value)
        if bad:
            raise InvalidResponseError(
                f"scorer returned {value!r} for page {page.number} (criterion {criterion.id!r})",
                batch=0,
                batch_size=n,
            )
    return [float(v) for v in column]


def _numbers(pages: list[Page], indices: frozenset[int], order: tuple[int, ...]) -> tuple[int, ...]:
    wanted = {pages[i].number for i in indices}
    return tuple(n for n in order if n in wanted)


def plot_heatmap(
    result: GateResult, path: str | Path, *, title: str | None = None, dpi: int = 150
) -> Path:
    """Save a pages × criteria picture of the scores to ``path`` (PNG, SVG, PDF).

    Colour is the score; a dot marks a kept page (hollow: a neighbour or a
    forced page); hatched grey columns are empty pages. Needs matplotlib
    (``pip install 'zerank-gate[eval]'``).
    """
    try:
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError("matplotlib", "eval") from exc

    path = Path(path)
    n_pages, n_criteria = len(result.document.pages), len(result.criteria)
    values = np.array(
        [[math.nan if v is None else v for v in row] for row in result.matrix], dtype=float
    )
    figure = Figure(figsize=(max(6.0, 0.28 * n_pages + 3.0), max(3.0, 0.42 * n_criteria + 1.6)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    masked = np.ma.masked_invalid(values)
    upper = 1.0 if result.scale in (Scale.PROBABILITY, Scale.UNCALIBRATED) else None
    image = axes.imshow(
        masked, aspect="auto", cmap="viridis", vmin=0.0, vmax=upper, interpolation="nearest"
    )
    axes.set_facecolor("#d9d9d9")
    for page in result.document.empty_pages:
        axes.axvspan(page - 1.5, page - 0.5, facecolor="none", hatch="///", edgecolor="#999999")
    for row, item in enumerate(result.results):
        evidence = set(item.evidence_pages)
        for page in item.pages:
            axes.plot(
                page - 1,
                row,
                marker="o",
                markersize=5,
                markeredgecolor="white",
                markerfacecolor="white" if page in evidence else "none",
            )
    step = 1 if n_pages <= 40 else 5
    axes.set_xticks(range(0, n_pages, step))
    axes.set_xticklabels([str(i + 1) for i in range(0, n_pages, step)], fontsize=7)
    axes.set_yticks(range(n_criteria))
    axes.set_yticklabels([f"{c.id}  {_shorten(c.text, 38)}" for c in result.criteria], fontsize=7)
    axes.set_xlabel("page")
    scale_label = {
        Scale.PROBABILITY: "calibrated probability",
        Scale.UNCALIBRATED: "uncalibrated score (1 = best page)",
    }.get(result.scale, result.scale.value)
    colorbar = figure.colorbar(image, ax=axes, fraction=0.03, pad=0.02)
    colorbar.set_label(scale_label, fontsize=8)
    name = Path(result.document.source).name
    axes.set_title(
        title or f"{name}: {n_pages} pages × {n_criteria} criteria (dot = kept page)", fontsize=9
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
