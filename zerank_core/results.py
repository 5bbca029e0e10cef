"""The result model: what a gate run returns, and what every output file holds.

One set of frozen pydantic models defines a gate result (:class:`GateResult`),
a document's reading (:class:`Reading`), the job summary of several documents
(:class:`JobSummary`, :class:`MultiResult`) and, embedded as they are, the
selection policy (:class:`~zerank_core.select.SelectionPolicy`), the criteria
(:class:`~zerank_core.criteria.Criterion`) and the scorer's usage
(:class:`~zerank_core.scorers.base.Usage`). The library, the command line and
the Ray path all build these models and write them through one serialiser
(:func:`dump_result`, :func:`write_result`): the same keys, in the same order,
with the same rounding (scores and similarities to six decimals, seconds to
three). Everything that differs from one run to the next lives in a field
named ``timings``.

A file loads back without rescoring: ``GateResult.model_validate_json(text)``
(or :func:`read_result`). ``schema_version`` names the shape; the JSON Schema
of every model is committed in ``zerank_core/schema/`` and regenerated with
``python -m zerank_core.results``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    computed_field,
    model_validator,
)

from zerank_core.criteria import Criterion
from zerank_core.passages import PassagePolicy
from zerank_core.scorers.base import Scale, Usage
from zerank_core.select import SelectionPolicy

__all__ = [
    "SCHEMA_VERSION",
    "BackendInfo",
    "CacheInfo",
    "CriterionResult",
    "DocumentRecord",
    "DuplicatePage",
    "GateReport",
    "GateResult",
    "JobSummary",
    "JobTimings",
    "MultiResult",
    "PageRecord",
    "Passage",
    "PolicySource",
    "RayInfo",
    "Reading",
    "Timings",
    "dump_result",
    "read_result",
    "result_schemas",
    "why_nothing_passed",
    "write_result",
]

#: The shape of every result file. It changes (and the committed schema with
#: it) whenever a field is added, removed, renamed or changes meaning.
SCHEMA_VERSION: Literal[1] = 1

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"


def _round(digits: int) -> PlainSerializer:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, digits)

    return PlainSerializer(rounded, when_used="always")


#: A score or a similarity: written with six decimals.
Score = Annotated[float, _round(6)]
#: Seconds: written with three decimals.
Seconds = Annotated[float, _round(3)]


class _Model(BaseModel):
    """Frozen, strict about unknown keys; computed fields are written but not read back."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Fields left out of ``==``: what varies between two runs that say the same.
    _not_compared: ClassVar[frozenset[str]] = frozenset()

    def __eq__(self, other: object) -> bool:
        # Compared as written: excluded fields (a reading's seconds) and timings do not count.
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Model)
        return self.model_dump(exclude=set(self._not_compared)) == other.model_dump(
            exclude=set(self._not_compared)
        )

    @model_validator(mode="before")
    @classmethod
    def _drop_computed(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.model_computed_fields:
            return {k: v for k, v in data.items() if k not in cls.model_computed_fields}
        return data


class Reading(_Model):
    """How a document was read.

    ``reader`` names the format's reader (``pypdfium2``, ``text``, ``json``,
    ``folder``). ``ocr_pages`` lists the pages whose text came from
    ``ocr_engine``; ``needs_ocr`` the image-only pages left empty because OCR
    was off or not installed. ``seconds`` (the whole read, OCR included) and
    ``ocr_seconds`` (the OCR part) are not written with the reading: a result
    file has them in its ``timings``.
    """

    reader: str
    ocr_engine: str | None = None
    ocr_pages: tuple[int, ...] = ()
    needs_ocr: tuple[int, ...] = ()
    seconds: float = Field(default=0.0, exclude=True)
    ocr_seconds: float = Field(default=0.0, exclude=True)


class Passage(_Model):
    """The part of a page that matched a criterion.

    ``start`` and ``end`` are character offsets into page ``page``'s text
    (``text == page_text[start:end]``); ``score`` is the passage's own score.
    """

    page: int
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    score: Score
    text: str

    @model_validator(mode="after")
    def _ordered(self) -> Passage:
        if self.end < self.start:
            raise ValueError(f"passage end ({self.end}) is before its start ({self.start})")
        return self


class DuplicatePage(_Model):
    """Page ``page`` duplicates page ``duplicate_of`` (``similarity`` in [0, 1], by ``method``)."""

    page: int
    duplicate_of: int
    similarity: Score
    method: str


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


class CriterionResult(_Model):
    """What the gate kept for one criterion.

    ``pages`` are the kept page numbers in the policy's order; ``scores`` has
    every scored page's score by page number (empty pages are absent).
    ``evidence_pages`` passed the policy, ``neighbor_pages`` were added
    around them and ``forced_pages`` only to honour ``min_keep``. With
    ``dedupe``, ``duplicates`` are the pages left out because they duplicate
    a kept page. ``passages`` are the parts of kept pages that matched (empty:
    the whole pages are the evidence). ``context`` is the kept pages' text,
    each after a ``[page N]`` marker (``None`` when left out of the output).
    """

    criterion: Criterion
    pages: tuple[int, ...]
    scores: dict[int, Score]
    evidence_pages: tuple[int, ...]
    neighbor_pages: tuple[int, ...] = ()
    forced_pages: tuple[int, ...] = ()
    duplicates: tuple[DuplicatePage, ...] = ()
    passages: tuple[Passage, ...] = ()
    kept_nothing: str | None = None
    chars_kept: int
    context: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def no_evidence(self) -> bool:
        """True when no page passed for lack of evidence: none scored above the floor.

        A policy that can keep nothing (top-K of 0, a budget smaller than
        every page) is not a lack of evidence: see :attr:`kept_nothing`.
        """
        if not self.evidence_pages:
            return self.kept_nothing in (None, NO_PAGE_ABOVE_FLOOR)
        return False

    @property
    def best_score(self) -> float | None:
        """The highest score of any page (``None`` when no page was scored)."""
        return max(self.scores.values()) if self.scores else None


class GateReport(_Model):
    """What gating saved, and what it cost.

    ``chars_total`` is the document's text; ``chars_full`` what sending the
    whole document with every criterion would cost (``chars_total ×
    criteria``); ``chars_kept`` sums the kept pages' characters over criteria
    (page markers not counted). Token figures are estimates at four
    characters a token. ``usage`` is the scorer's (``total_tokens`` is
    ``None`` when the backend does not report tokens, and then so is the
    cost); ``cache_*`` are ``None`` without a cache.
    """

    pages: int
    empty_pages: tuple[int, ...]
    criteria: int
    chars_total: int
    chars_full: int
    chars_kept: int
    tokens_full_estimate: int
    tokens_kept_estimate: int
    pages_kept: dict[str, int]
    no_evidence: tuple[str, ...]
    kept_nothing: dict[str, str] = Field(default_factory=dict)
    """Criteria whose policy kept no page for another reason than evidence, and why."""
    usage: Usage = Field(default_factory=Usage)
    estimated_cost_usd: float | None = None
    cache_hits: int | None = None
    cache_misses: int | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def kept_fraction(self) -> Annotated[float, _round(6)]:
        """``chars_kept / chars_full``, in [0, 1]."""
        return self.chars_kept / self.chars_full if self.chars_full else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def compression_ratio(self) -> Annotated[float | None, _round(3)]:
        """``chars_full / chars_kept``: how many times less text reaches the LLM."""
        return self.chars_full / self.chars_kept if self.chars_kept else None

    @property
    def per_criterion_fraction(self) -> float:
        """The mean share of the document each criterion keeps: ``kept_fraction`` again.

        ``chars_kept / chars_full`` is both the share of (document × criteria)
        kept and the mean per criterion; ``chars_kept / chars_total`` can
        exceed 1 with many criteria.
        """
        return self.kept_fraction

    @property
    def model_requests(self) -> int:
        return self.usage.requests

    @property
    def model_texts(self) -> int:
        return self.usage.texts

    @property
    def model_tokens(self) -> int | None:
        return self.usage.total_tokens


class PageRecord(_Model):
    """One page of the gated document: its number, length and, when kept, its text.

    ``text`` is the page's text when some criterion kept it (``None`` for
    the others, and for every page when text is left out of the output).
    """

    number: int
    chars: int
    empty: bool = False
    text: str | None = None


class DocumentRecord(_Model):
    """The gated document: its source, its pages and how it was read."""

    source: str
    pages: tuple[PageRecord, ...]
    reading: Reading | None = None

    @property
    def empty_pages(self) -> tuple[int, ...]:
        """Numbers of the pages with no text; they are never sent to a model."""
        return tuple(p.number for p in self.pages if p.empty)

    def page(self, number: int) -> PageRecord:
        """Page ``number`` (a ``KeyError`` naming it when there is none)."""
        for page in self.pages:
            if page.number == number:
                return page
        raise KeyError(f"{self.source} has no page {number}")


class BackendInfo(_Model):
    """The backend that scored: its name and a one-line description (no credentials)."""

    name: str
    description: str


class PolicySource(_Model):
    """The threshold policy file a run applied (``zerank compress --policy``).

    ``fitted_on`` names the backend whose scores it was fitted on: its
    thresholds hold for that backend's scores only.
    """

    path: str
    method: str
    target: float
    fitted_on: str | None = None


class Timings(_Model):
    """How long one document took: the only fields of a result that vary between runs."""

    read_seconds: Seconds | None = None
    ocr_seconds: Seconds | None = None
    gate_seconds: Seconds | None = None

    @classmethod
    def of(cls, reading: Reading | None, gate_seconds: float | None = None) -> Timings:
        """The timings of a document read as ``reading`` and gated in ``gate_seconds``."""
        return cls(
            read_seconds=None if reading is None else reading.seconds,
            ocr_seconds=None if reading is None or not reading.ocr_pages else reading.ocr_seconds,
            gate_seconds=gate_seconds,
        )


class GateResult(_Model):
    """The per-criterion results and the report of one document's gate run.

    ``results`` holds one :class:`CriterionResult` per criterion, in the
    criteria's order; ``matrix`` (derived) is the pages × criteria score
    table. ``scale`` and ``model`` are the scorer's. ``duplicates`` are the
    duplicate page pairs found when the policy has ``dedupe`` (each later
    page against the earlier one). ``passage_policy`` is set when the gate
    trimmed kept pages to their evidence passages (two-stage gating): each
    result's ``passages`` and ``context`` then hold those passages.
    """

    _not_compared: ClassVar[frozenset[str]] = frozenset({"timings"})

    schema_version: Literal[1] = SCHEMA_VERSION
    document: DocumentRecord
    backend: BackendInfo | None = None
    model: str | None = None
    scale: Scale = Scale.PROBABILITY
    policy: SelectionPolicy
    policy_source: PolicySource | None = None
    report: GateReport
    results: tuple[CriterionResult, ...]
    duplicates: tuple[DuplicatePage, ...] = ()
    passage_policy: PassagePolicy | None = None
    timings: Timings = Field(default_factory=Timings)

    @property
    def criteria(self) -> tuple[Criterion, ...]:
        return tuple(r.criterion for r in self.results)

    @property
    def matrix(self) -> tuple[tuple[float | None, ...], ...]:
        """``matrix[i][j]``: criterion ``i``'s score for the ``j``-th page (``None``: empty)."""
        return tuple(
            tuple(r.scores.get(p.number) for p in self.document.pages) for r in self.results
        )

    def result_for(self, criterion_id: str) -> CriterionResult:
        """The result of criterion ``criterion_id`` (a ``KeyError`` naming it otherwise)."""
        for result in self.results:
            if result.criterion.id == criterion_id:
                return result
        raise KeyError(f"no criterion {criterion_id!r} in this result")

    def without_text(self) -> GateResult:
        """This result with no document text: no page texts, no contexts, no passages' text."""
        pages = tuple(p.model_copy(update={"text": None}) for p in self.document.pages)
        results = tuple(
            r.model_copy(
                update={
                    "context": None,
                    "passages": tuple(q.model_copy(update={"text": ""}) for q in r.passages),
                }
            )
            for r in self.results
        )
        document = self.document.model_copy(update={"pages": pages})
        return self.model_copy(update={"document": document, "results": results})


class CacheInfo(_Model):
    """The score cache a job used, and its hits and misses over the job."""

    path: str
    hits: int | None = None
    misses: int | None = None


class RayInfo(_Model):
    """Where a ``--ray`` job ran and how it went.

    ``actors_built`` counts the actors that built their scorer (a fully
    cached rerun builds none); ``requests`` and ``peak_in_flight`` are the
    requests the job limiter admitted and the most in flight at once.
    """

    address: str | None = None
    actors: int
    gpus_per_actor: float = 0.0
    actors_built: int | None = None
    requests: int | None = None
    peak_in_flight: int | None = None


class JobTimings(_Model):
    """How long a job of several documents took, and where it ran (``ray``: ``None`` here)."""

    seconds: Seconds
    documents_per_second: Annotated[float | None, _round(3)] = None
    read_seconds: Seconds | None = None
    ray: RayInfo | None = None


class JobSummary(_Model):
    """What a many-document job did, in total.

    ``usage`` is the scorer's over the whole job (pages of different
    documents share requests, so requests and tokens are not split per
    document). ``unique_texts`` is how many distinct page texts were scored
    per criterion; ``shared_batches`` is False when the scorer's scores depend
    on the other texts of a call (uncalibrated lexical scores), so each
    document was scored on its own. ``files`` maps each document's source to
    its result file in an output folder; ``documents`` counts those this run
    gated.
    """

    _not_compared: ClassVar[frozenset[str]] = frozenset({"timings"})

    schema_version: Literal[1] = SCHEMA_VERSION
    documents: int
    pages: int
    empty_pages: int
    criteria: int
    unique_texts: int
    chars_full: int
    chars_kept: int
    no_evidence: int
    shared_batches: bool
    backend: BackendInfo | None = None
    usage: Usage = Field(default_factory=Usage)
    cache: CacheInfo | None = None
    files: dict[str, str] | None = None
    resumed: int = 0
    """Documents an earlier run into the same folder had done, skipped by this one."""
    timings: JobTimings

    @property
    def seconds(self) -> float:
        return self.timings.seconds

    @property
    def documents_per_second(self) -> float:
        seconds = self.timings.seconds
        return self.documents / seconds if seconds > 0 else float("inf")

    @property
    def model_requests(self) -> int:
        return self.usage.requests

    @property
    def model_texts(self) -> int:
        return self.usage.texts

    @property
    def model_tokens(self) -> int | None:
        return self.usage.total_tokens


class MultiResult(_Model):
    """One :class:`GateResult` per document, in input order, and the job's summary."""

    schema_version: Literal[1] = SCHEMA_VERSION
    summary: JobSummary
    results: tuple[GateResult, ...]


_Result = TypeVar("_Result", bound=BaseModel)


def dump_result(result: BaseModel, *, include_text: bool = True) -> str:
    """The one serialiser: indented JSON with a final newline.

    ``include_text=False`` leaves out the document's text (page texts,
    contexts, passages' text) of a :class:`GateResult` or :class:`MultiResult`.
    """
    if not include_text:
        if isinstance(result, GateResult):
            result = result.without_text()
        elif isinstance(result, MultiResult):
            result = result.model_copy(
                update={"results": tuple(r.without_text() for r in result.results)}
            )
    return result.model_dump_json(indent=2) + "\n"


def write_result(
    path: str | os.PathLike[str], result: BaseModel, *, include_text: bool = True
) -> Path:
    """Write ``result`` to ``path`` through :func:`dump_result`, atomically.

    The JSON goes to a temporary file in the same folder, which then replaces
    ``path`` (``os.replace``): a reader sees the old file or the new one,
    never a half-written one. Parent folders are created.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = dump_result(result, include_text=include_text)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp makes the file private; a result file gets the usual permissions.
        os.chmod(temp, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_result(
    path: str | os.PathLike[str],
    model: type[_Result] = GateResult,  # type: ignore[assignment]
) -> _Result:
    """Load a result file written by :func:`write_result` (no rescoring)."""
    return model.model_validate_json(Path(path).read_bytes())


def result_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every file the package writes, by file name."""
    # Imported here: the calibration module needs numpy and the scorers, which
    # reading a result does not.
    from zerank_core.calibrate import PolicyFile

    return {
        "gate-result.schema.json": GateResult.model_json_schema(mode="serialization"),
        "job-summary.schema.json": JobSummary.model_json_schema(mode="serialization"),
        "multi-result.schema.json": MultiResult.model_json_schema(mode="serialization"),
        "threshold-policy.schema.json": PolicyFile.model_json_schema(mode="serialization"),
    }


def _write_schemas(folder: Path = SCHEMA_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in result_schemas().items():
        path = folder / name
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in _write_schemas(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR):
        print(written_path)
