"""The scorer contract, score scales, and the machinery remote backends share.

A scorer turns ``(query, texts)`` into one calibrated relevance probability per
text, in input order. Remote backends subclass :class:`BatchedScorer`, which
runs every request through the scorer's :class:`~zerank_core.scorers.engine.Engine`
(planning, one concurrency bound, rate limits, retries), validates every
response and converts the backend's scale to zerank's calibrated one in a
single place (:func:`to_probability`). A job of several queries goes through
:meth:`BatchedScorer.score_many`; :func:`score_many` / :func:`ascore_many`
give any scorer that job-level method, falling back to one call per query.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar, cast, runtime_checkable

from zerank_core.errors import (
    ConfigurationError,
    InvalidResponseError,
    ScorerOutputError,
    ZeRankError,
    as_backend_error,
)
from zerank_core.scorers.engine import (
    DEFAULT_DEADLINE_S,
    Batch,
    Engine,
    Failure,
    RateLimits,
    arun_all,
    plan_requests,
    request_bytes,
    run_all,
)

T = TypeVar("T")

__all__ = [
    "BatchCallback",
    "BatchResult",
    "BatchedScorer",
    "MalformedResponse",
    "PerLoop",
    "Scale",
    "ScoreItem",
    "Scorer",
    "Usage",
    "UsageMeter",
    "ascore_many",
    "check_count",
    "check_query",
    "check_scores",
    "check_texts",
    "check_timeout",
    "check_url",
    "engine_settings",
    "fingerprint",
    "is_blank",
    "json_body",
    "plan_batches",
    "query_with_instruction",
    "rebuild",
    "request_bytes",
    "require_scorer",
    "results_from_json",
    "score_many",
    "to_probability",
    "typed_error",
    "validate_batch",
    "without_blanks",
]


class Scale(StrEnum):
    """What a number coming out of a model or a server means.

    ``PROBABILITY``: zerank's calibrated probability, ``sigmoid(logit / 5)``.
    ``LOGIT``: the raw logit ``x`` of the token "Yes".
    ``SIGMOID``: ``sigmoid(x)``, what most rerank servers apply by default.
    ``UNCALIBRATED``: a score in [0, 1] that orders texts but is not a
    probability (the lexical baseline); fit a calibrator before thresholding.
    """

    PROBABILITY = "probability"
    LOGIT = "logit"
    SIGMOID = "sigmoid"
    UNCALIBRATED = "uncalibrated"


ZERANK_TEMPERATURE = 5.0


def to_probability(value: float, scale: Scale) -> float:
    """Convert one backend value to zerank's calibrated probability.

    ``LOGIT`` → ``sigmoid(x / 5)``; ``SIGMOID`` (``s = sigmoid(x)``) →
    ``1 / (1 + ((1 - s) / s) ** (1 / 5))``, the same quantity without
    recovering ``x`` (``s`` of exactly 0 or 1 maps to 0 or 1: it saturated).
    ``PROBABILITY`` and ``UNCALIBRATED`` pass through.
    """
    if scale is Scale.LOGIT:
        z = value / ZERANK_TEMPERATURE
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return float(e / (1.0 + e))
    if scale is Scale.SIGMOID:
        if value <= 0.0:
            return 0.0
        if value >= 1.0:
            return 1.0
        return float(1.0 / (1.0 + ((1.0 - value) / value) ** (1.0 / ZERANK_TEMPERATURE)))
    return value


#: Names :func:`query_with_instruction`'s format in cache keys: a new format
#: gives every instruction-bearing score a new key.
INSTRUCTION_CONVENTION = "query-tags-v1"


def query_with_instruction(query: str, instruction: str | None) -> str:
    """Append an instruction to the query by zerank's documented convention."""
    if not instruction:
        return query
    return f"<query>{query}</query>\n<instruction>{instruction}</instruction>"


def fingerprint(backend: str, **settings: object) -> str:
    """A scorer's ``cache_identity``: its backend kind and every setting that changes a score.

    Canonical JSON, so equal settings give equal strings. It holds no
    credential: URLs go in as :func:`~zerank_core.redaction.deployment_url`.
    """
    return json.dumps(
        {"backend": backend, **settings}, sort_keys=True, ensure_ascii=False, default=str
    )


@runtime_checkable
class Scorer(Protocol):
    """What every adapter, the gate and the classifier need from a scorer.

    ``score``/``ascore`` return one number per text, in input order, on
    ``scale`` (:attr:`Scale.PROBABILITY` for zerank's calibrated probability).
    ``model`` names the model (it goes into cache keys, reports and traces);
    ``usage`` is what the scorer has spent so far, or ``None`` when it does
    not count its calls. A class attribute or a property satisfies each.
    """

    @property
    def model(self) -> str: ...

    @property
    def scale(self) -> Scale: ...

    @property
    def usage(self) -> Usage | None: ...

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]: ...

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]: ...


SCORER_MEMBERS = ("score", "ascore", "model", "scale", "usage")


def require_scorer(scorer: object, *, name: str = "scorer") -> Scorer:
    """Return ``scorer`` if it fulfils :class:`Scorer`, else say what it lacks.

    Checked where a scorer enters the package (adapters, gate, classifier,
    cache), so a scorer written for an older version fails with the list of
    what to add, not with an ``AttributeError`` in the middle of a job.
    """
    missing = [member for member in SCORER_MEMBERS if not hasattr(scorer, member)]
    if missing:
        raise ConfigurationError(
            f"{name} {type(scorer).__name__} lacks {', '.join(missing)}: a scorer has "
            "score() and ascore(), and declares model (a str), scale (a zerank_core.Scale) "
            "and usage (a zerank_core.Usage, or None if it does not count its calls)"
        )
    checked = cast(Scorer, scorer)
    for member in ("score", "ascore"):
        if not callable(getattr(checked, member)):
            raise ConfigurationError(f"{name} {type(scorer).__name__}.{member} is not callable")
    if not isinstance(checked.model, str) or not checked.model:
        raise ConfigurationError(
            f"{name} {type(scorer).__name__}.model must be a non-empty str, got {checked.model!r}"
        )
    if not isinstance(checked.scale, Scale):
        raise ConfigurationError(
            f"{name} {type(scorer).__name__}.scale must be a zerank_core.Scale, "
            f"got {checked.scale!r}"
        )
    return checked


def check_scores(
    scores: Sequence[object],
    n: int,
    *,
    context: str,
    items: str = "texts",
    names: Sequence[object] | None = None,
) -> list[float]:
    """The one check of a scorer call's output: ``n`` finite numbers, as floats.

    ``context`` says which call it was (``"criterion 'DX'"``, ``"label
    'billing'"``), ``items`` what was scored (``"pages"``), and ``names``
    optionally how to name each item in a message (``["page 1", ...]``). A
    wrong count or a value that is not a finite number raises
    :class:`ScorerOutputError`: a missing score is never read as 0.
    """
    if len(scores) != n:
        raise ScorerOutputError(
            f"scorer returned {len(scores)} scores for {n} {items} ({context})", expected=n
        )
    out = []
    for index, value in enumerate(scores):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            where = f"for {names[index]}" if names is not None else f"as score {index}"
            raise ScorerOutputError(f"scorer returned {value!r} {where} ({context})", expected=n)
        out.append(float(value))
    return out


@dataclass(frozen=True)
class Usage:
    """What a scorer has spent since it was created (or since ``reset``).

    ``total_tokens`` is ``None`` when the backend does not report tokens.
    ``retries`` counts requests sent again after a failure, ``rate_limited``
    the 429s among those failures (absorbed, not raised).
    """

    requests: int = 0
    texts: int = 0
    total_bytes: int = 0
    total_tokens: int | None = None
    retries: int = 0
    rate_limited: int = 0

    def __sub__(self, other: Usage) -> Usage:
        tokens = None
        if self.total_tokens is not None:
            tokens = self.total_tokens - (other.total_tokens or 0)
        return Usage(
            requests=self.requests - other.requests,
            texts=self.texts - other.texts,
            total_bytes=self.total_bytes - other.total_bytes,
            total_tokens=tokens,
            retries=self.retries - other.retries,
            rate_limited=self.rate_limited - other.rate_limited,
        )


class UsageMeter:
    """Thread-safe accumulator behind a scorer's ``usage`` property."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._usage = Usage()

    def add(self, *, texts: int, total_bytes: int = 0, total_tokens: int | None = None) -> None:
        with self._lock:
            current = self._usage
            tokens = current.total_tokens
            if total_tokens is not None:
                tokens = (tokens or 0) + total_tokens
            self._usage = Usage(
                requests=current.requests + 1,
                texts=current.texts + texts,
                total_bytes=current.total_bytes + total_bytes,
                total_tokens=tokens,
                retries=current.retries,
                rate_limited=current.rate_limited,
            )

    def add_retry(self, *, rate_limited: bool) -> None:
        with self._lock:
            current = self._usage
            self._usage = Usage(
                requests=current.requests,
                texts=current.texts,
                total_bytes=current.total_bytes,
                total_tokens=current.total_tokens,
                retries=current.retries + 1,
                rate_limited=current.rate_limited + int(rate_limited),
            )

    @property
    def usage(self) -> Usage:
        return self._usage

    def reset(self) -> None:
        with self._lock:
            self._usage = Usage()


def plan_batches(
    query: str,
    texts: Sequence[str],
    *,
    max_batch_size: int,
    max_bytes: int | None = None,
) -> list[list[int]]:
    """Split ``texts`` into consecutive batches of indices.

    A batch holds at most ``max_batch_size`` texts and, when ``max_bytes`` is
    set, at most ``max_bytes`` counted as ``150 + len(query) + len(text)`` per
    text (UTF-8). A single text that cannot fit any batch is an error naming
    its index: truncating it silently would change its score.
    """
    if max_batch_size < 1:
        raise ConfigurationError(f"max_batch_size must be >= 1, got {max_batch_size}")
    batches: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for index, text in enumerate(texts):
        size = request_bytes(query, text) if max_bytes is not None else 0
        if max_bytes is not None and size > max_bytes:
            raise ConfigurationError(
                f"text {index} needs {size} bytes with its query, over the "
                f"per-request limit of {max_bytes} bytes; split it first"
            )
        full = len(current) >= max_batch_size or (
            max_bytes is not None and current_bytes + size > max_bytes
        )
        if current and full:
            batches.append(current)
            current, current_bytes = [], 0
        current.append(index)
        current_bytes += size
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class BatchResult:
    """What one backend request returned, before validation.

    ``scores`` pairs each returned index (local to the batch) with its raw value.
    """

    scores: list[tuple[object, object]]
    total_tokens: int | None = None


def validate_batch(result: BatchResult, *, batch: int, size: int, scale: Scale) -> list[float]:
    """Check a batch's scores and return them in batch order on ``scale``.

    Every index in ``range(size)`` must appear exactly once with a finite
    number; probabilities and sigmoid values must lie in [0, 1]. Anything else
    raises :class:`InvalidResponseError`: a missing score is never read as 0.
    """
    values: list[float | None] = [None] * size
    for raw_index, raw_value in result.scores:
        if isinstance(raw_index, bool) or not isinstance(raw_index, int):
            raise InvalidResponseError(
                f"index {raw_index!r} is not an integer", batch=batch, batch_size=size
            )
        if not 0 <= raw_index < size:
            raise InvalidResponseError(
                f"index {raw_index} is out of range", batch=batch, batch_size=size
            )
        if values[raw_index] is not None:
            raise InvalidResponseError(
                f"index {raw_index} appears more than once", batch=batch, batch_size=size
            )
        if isinstance(raw_value, bool) or not isinstance(raw_value, int | float):
            raise InvalidResponseError(
                f"score for index {raw_index} is not a number: {raw_value!r}",
                batch=batch,
                batch_size=size,
            )
        value = float(raw_value)
        if not math.isfinite(value):
            raise InvalidResponseError(
                f"score for index {raw_index} is not finite: {value}",
                batch=batch,
                batch_size=size,
            )
        if scale is not Scale.LOGIT and not 0.0 <= value <= 1.0:
            raise InvalidResponseError(
                f"score for index {raw_index} is {value}, outside [0, 1] for scale {scale.value!r}",
                batch=batch,
                batch_size=size,
            )
        values[raw_index] = value
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        raise InvalidResponseError(
            f"no score for indices {missing[:10]}{' ...' if len(missing) > 10 else ''}",
            batch=batch,
            batch_size=size,
        )
    return [to_probability(v, scale) for v in values if v is not None]


def results_from_json(
    payload: object, *, key: str = "relevance_score", where: str = "the backend"
) -> BatchResult:
    """A rerank body's ``results[{index, <key>}]`` (or a bare list of them), unvalidated.

    Values are passed on exactly as JSON decoded them, so :func:`validate_batch`
    sees ``true`` or a string for what it is instead of a number cast from it.
    A body of any other shape raises :class:`MalformedResponse`.
    """
    items = payload.get("results") if isinstance(payload, dict) else payload
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        found = type(items).__name__ if isinstance(payload, dict) else type(payload).__name__
        raise MalformedResponse(
            f"{where} returned an unexpected body shape: expected a list of results, got {found}"
        )
    tokens = None
    if isinstance(payload, dict):
        tokens = payload.get("total_tokens")
        usage = payload.get("usage") or (payload.get("meta") or {}).get("billed_units") or {}
        if tokens is None and isinstance(usage, dict):
            tokens = usage.get("total_tokens")
    return BatchResult(
        scores=[(item.get("index"), item.get(key)) for item in items],
        total_tokens=tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None,
    )


def json_body(content: bytes, *, where: str) -> object:
    """A response body decoded as JSON, or :class:`MalformedResponse` saying why not."""
    if not content.strip():
        raise MalformedResponse(f"{where} returned an empty body")
    try:
        return json.loads(content)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise MalformedResponse(f"{where} returned a body that is not JSON: {exc}") from exc


class PerLoop(Generic[T]):
    """One lazily created object per running event loop, closed with its loop.

    Async HTTP clients hold connections bound to the loop that opened them;
    reusing one from another loop (``asyncio.run`` twice, notebooks, worker
    threads) fails, and one dropped without ``aclose()`` leaks its sockets.
    Each item is closed by ``closer``: when :meth:`aclose` / :meth:`close` is
    called, and otherwise when its loop shuts down — a started async
    generator per loop holds the item, and ``loop.shutdown_asyncgens()``
    (which ``asyncio.run`` and ``asyncio.Runner`` call) runs its ``finally``.
    """

    def __init__(
        self, factory: Callable[[], T], closer: Callable[[T], Awaitable[None]] | None = None
    ) -> None:
        self._factory = factory
        self._closer = closer
        self._items: dict[asyncio.AbstractEventLoop, tuple[T, object]] = {}
        self._lock = threading.Lock()
        self._pending: set[asyncio.Future[None]] = set()

    async def get(self) -> T:
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._items.get(loop)
            if entry is not None:
                return entry[0]
            for old in [old for old in self._items if old.is_closed()]:
                del self._items[old]
            item = self._factory()
            guard = self._guard(loop, item)
            self._items[loop] = (item, guard)
        await guard.__anext__()
        return item

    async def _guard(self, loop: asyncio.AbstractEventLoop, item: T) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with self._lock:
                mine = self._items.get(loop, (None,))[0] is item
                if mine:
                    del self._items[loop]
            if mine and self._closer is not None:
                await self._closer(item)

    def _take_all(self) -> list[tuple[asyncio.AbstractEventLoop, T]]:
        with self._lock:
            items = [(loop, entry[0]) for loop, entry in self._items.items()]
            self._items.clear()
        return items

    async def aclose(self) -> None:
        """Close every item: this loop's here, the others' in their own loops."""
        current = asyncio.get_running_loop()
        for loop, item in self._take_all():
            if loop is current and self._closer is not None:
                await self._closer(item)
            else:
                self._close_elsewhere(loop, item)

    def close(self) -> None:
        """Close every item from synchronous code (see :meth:`aclose`)."""
        for loop, item in self._take_all():
            self._close_elsewhere(loop, item)

    def _close_elsewhere(self, loop: asyncio.AbstractEventLoop, item: T) -> None:
        if self._closer is None or loop.is_closed():
            # A loop closed without shutdown_asyncgens(): its transports
            # cannot be closed any more; nothing left to do but drop it.
            return
        coroutine = self._closer(item)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is running:
            task: asyncio.Future[None] = loop.create_task(coroutine)  # type: ignore[arg-type]
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        elif loop.is_running():
            asyncio.run_coroutine_threadsafe(coroutine, loop)  # type: ignore[arg-type]
        else:
            loop.run_until_complete(coroutine)


class MalformedResponse(Exception):
    """Raised by a backend's ``_request`` when a body cannot be parsed at all.

    :class:`BatchedScorer` reports it as :class:`InvalidResponseError` with the
    batch number, which the backend does not know.
    """


@dataclass(frozen=True)
class ScoreItem:
    """One query of a job: score ``texts`` against ``query`` (with ``instruction``)."""

    query: str
    texts: Sequence[str]
    instruction: str | None = None


#: Called as each request of a job completes: ``(item, indices, scores)`` with
#: the item's position in the job, the text indices the request held and their
#: calibrated scores. It may run in a worker thread.
BatchCallback = Callable[[int, Sequence[int], Sequence[float]], None]


def _items(items: Sequence[ScoreItem | tuple[Any, ...]]) -> list[ScoreItem]:
    if isinstance(items, ScoreItem | str):
        raise ConfigurationError("items must be a sequence of ScoreItem or (query, texts) tuples")
    out: list[ScoreItem] = []
    checked: dict[int, list[str]] = {}  # one check per distinct text list
    for position, item in enumerate(items):
        if isinstance(item, tuple) and len(item) in (2, 3):
            item = ScoreItem(*item)
        if not isinstance(item, ScoreItem):
            raise ConfigurationError(
                f"items[{position}] must be a ScoreItem or a (query, texts[, instruction]) "
                f"tuple, got {type(item).__name__}"
            )
        texts = checked.get(id(item.texts))
        if texts is None:
            texts = checked[id(item.texts)] = check_texts(item.texts)
        out.append(ScoreItem(check_query(item.query), texts, item.instruction))
    return out


def _typed(exc: Exception, batch: Batch, size: int) -> Exception:
    typed = typed_error(exc, batch=batch.number, batch_size=size)
    return exc if typed is None else typed


class _Job:
    """One ``score_many`` call's results, filled in as its requests complete.

    Blank texts (:func:`is_blank`) are not sent: they score 0.0 at once.
    ``sent`` holds each item's texts worth sending; a batch's indices point
    into those and are mapped back to the caller's.
    """

    def __init__(self, items: list[ScoreItem], on_batch: BatchCallback | None) -> None:
        self.on_batch = on_batch
        # Shared text lists (a page gate's pages) are filtered once and stay shared.
        memo: dict[int, tuple[list[int], Sequence[str]]] = {}
        for item in items:
            if id(item.texts) not in memo:
                kept = [i for i, t in enumerate(item.texts) if not is_blank(t)]
                sent = item.texts if len(kept) == len(item.texts) else [item.texts[i] for i in kept]
                memo[id(item.texts)] = (kept, sent)
        self.kept = [memo[id(item.texts)][0] for item in items]
        self.sent = [
            ScoreItem(item.query, memo[id(item.texts)][1], item.instruction) for item in items
        ]
        self.out = [[0.0] * len(item.texts) for item in items]
        for row, kept in zip(self.out, self.kept, strict=True):
            for index in kept:
                row[index] = math.nan

    def report_blanks(self) -> None:
        if self.on_batch is None:
            return
        for position, (row, kept) in enumerate(zip(self.out, self.kept, strict=True)):
            blanks = sorted(set(range(len(row))) - set(kept))
            if blanks:
                self.on_batch(position, blanks, [0.0] * len(blanks))

    def done(self, batch: Batch, scores: list[float]) -> None:
        kept, row = self.kept[batch.item], self.out[batch.item]
        indices = [kept[i] for i in batch.indices]
        for index, value in zip(indices, scores, strict=True):
            row[index] = value
        if self.on_batch is not None:
            self.on_batch(batch.item, indices, scores)


class BatchedScorer(ABC):
    """Base of remote backends: one engine, planned jobs, validated responses.

    Subclasses implement :meth:`_request` and :meth:`_arequest` (one HTTP call
    for one batch, no retries of their own), :meth:`_failure` (which of their
    exceptions are 429s or transient) and :meth:`_take_client`, and set
    ``model``, ``backend_scale``, ``max_batch_size``, ``max_bytes`` and
    ``_async_clients`` (their per-loop async clients, closed by :meth:`close`).

    Every call of every thread and event loop shares the scorer's engine:
    at most ``max_concurrency`` requests are in flight per scorer instance,
    within the per-minute budgets, retried as the engine module describes.
    ``deadline`` is how long one call (one whole job) may keep retrying.
    """

    model: str
    backend_scale: Scale
    max_batch_size: int
    max_bytes: int | None = None
    _async_clients: PerLoop[Any]

    def __init__(
        self,
        *,
        max_concurrency: int,
        max_retries: int,
        requests_per_minute: float | None = None,
        bytes_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        deadline: float | None = DEFAULT_DEADLINE_S,
    ) -> None:
        self._meter = UsageMeter()
        meter = weakref.ref(self._meter)

        def on_retry(failure: Failure) -> None:
            alive = meter()
            if alive is not None:
                alive.add_retry(rate_limited=failure.kind == "rate_limited")

        self._engine = Engine(
            max_concurrency=max_concurrency,
            max_retries=max_retries,
            limits=RateLimits(requests_per_minute, bytes_per_minute, tokens_per_minute),
            deadline=deadline,
            classify=self._failure,
            on_retry=on_retry,
        )

    @property
    def max_concurrency(self) -> int:
        """Most requests this scorer has in flight at once, over all its callers."""
        return self._engine.slots.limit

    @property
    def engine(self) -> Engine:
        """The engine every request goes through (slots, pacing, retries).

        :meth:`Engine.share` makes its limits hold beyond this scorer, as the
        Ray job limiter does for every actor of a job.
        """
        return self._engine

    @property
    def max_retries(self) -> int:
        """How many times a request that failed transiently is sent again."""
        return self._engine.max_retries

    @property
    def limits(self) -> RateLimits:
        """The per-minute budgets kept on the client side."""
        return self._engine.limits

    @property
    def deadline(self) -> float | None:
        """Seconds one call may keep retrying 429s and failures; ``None``: no limit."""
        return self._engine.deadline

    @property
    def scale(self) -> Scale:
        """Scale of the scores this scorer returns."""
        if self.backend_scale is Scale.UNCALIBRATED:
            return Scale.UNCALIBRATED
        return Scale.PROBABILITY

    @property
    def usage(self) -> Usage:
        """Requests, texts, bytes, tokens (where reported) and retries so far."""
        return self._meter.usage

    @abstractmethod
    def _request(self, query: str, texts: list[str]) -> BatchResult: ...

    @abstractmethod
    async def _arequest(self, query: str, texts: list[str]) -> BatchResult: ...

    @abstractmethod
    def _failure(self, exc: BaseException) -> Failure | None:
        """Whether ``exc`` is a 429 (with its retry-after) or transient; ``None``: neither."""

    @abstractmethod
    def _take_client(self) -> Any | None:
        """Detach and return the sync client this scorer created (``None``: none, or
        the caller's own); it is closed by :meth:`close`."""

    def close(self) -> None:
        """Close the HTTP clients this scorer created; later calls open new ones."""
        client = self._take_client()
        if client is not None:
            client.close()
        self._async_clients.close()

    async def aclose(self) -> None:
        """Async :meth:`close`: this loop's async client is closed here."""
        client = self._take_client()
        if client is not None:
            client.close()
        await self._async_clients.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _plan_job(self, items: list[ScoreItem]) -> tuple[list[str], list[Batch]]:
        """Plan the job's requests; ``items`` hold only texts worth sending."""
        queries = [query_with_instruction(i.query, i.instruction) for i in items]
        max_bytes = self.max_bytes
        limits = self.limits
        if limits.bytes_per_minute is not None:
            # One request must fit the minute's budget, or it could never be sent.
            budget = int(limits.bytes_per_minute)
            max_bytes = budget if max_bytes is None else min(max_bytes, budget)
        batches = plan_requests(
            queries,
            [list(i.texts) for i in items],
            slots=self.max_concurrency,
            max_batch_size=self.max_batch_size,
            max_bytes=max_bytes,
            fewest_requests=limits.requests_per_minute is not None,
        )
        return queries, batches

    def _finish(self, batch: Batch, texts: list[str], result: BatchResult) -> list[float]:
        scores = validate_batch(
            result, batch=batch.number, size=len(texts), scale=self.backend_scale
        )
        self._meter.add(
            texts=len(texts), total_bytes=batch.size_bytes, total_tokens=result.total_tokens
        )
        if result.total_tokens is not None:
            self._engine.pacer.charge_tokens(result.total_tokens - self._cost(batch)["tokens"])
        return scores

    @staticmethod
    def _cost(batch: Batch) -> dict[str, int]:
        # Token estimate: UTF-8 bytes / 4 (see engine.estimate_tokens), from the planned size.
        content = batch.size_bytes - 150 * len(batch.indices)
        return {"bytes_": batch.size_bytes, "tokens": max(len(batch.indices), content // 4)}

    def score_many(
        self,
        items: Sequence[ScoreItem | tuple[Any, ...]],
        *,
        on_batch: BatchCallback | None = None,
    ) -> list[list[float]]:
        """Score several queries' texts as one job; one score list per item.

        The job is planned as a whole (:func:`~zerank_core.scorers.engine.plan_requests`)
        and its requests run on up to ``max_concurrency`` threads through the
        scorer's shared slots. ``on_batch`` sees each request's scores as it
        completes, so a caller can keep them even if a later request fails.
        """
        job = _Job(_items(items), on_batch)
        queries, batches = self._plan_job(job.sent)
        deadline = self._engine.job_deadline()

        def work(position: int) -> None:
            batch = batches[position]
            query = queries[batch.item]
            texts = [job.sent[batch.item].texts[i] for i in batch.indices]

            def attempt() -> list[float]:
                try:
                    result = self._request(query, texts)
                except Exception as exc:
                    raise _typed(exc, batch, len(texts)) from exc
                return self._finish(batch, texts, result)

            try:
                scores = self._engine.call(attempt, deadline=deadline, **self._cost(batch))
            except ZeRankError as exc:
                exc.job_item = batch.item  # type: ignore[attr-defined]
                raise
            job.done(batch, scores)

        job.report_blanks()
        run_all(len(batches), work, workers=self.max_concurrency)
        return job.out

    async def ascore_many(
        self,
        items: Sequence[ScoreItem | tuple[Any, ...]],
        *,
        on_batch: BatchCallback | None = None,
    ) -> list[list[float]]:
        """Async :meth:`score_many`: requests run as coroutines on the shared slots."""
        job = _Job(_items(items), on_batch)
        queries, batches = self._plan_job(job.sent)
        deadline = self._engine.job_deadline()

        async def work(position: int) -> None:
            batch = batches[position]
            query = queries[batch.item]
            texts = [job.sent[batch.item].texts[i] for i in batch.indices]

            async def attempt() -> list[float]:
                try:
                    result = await self._arequest(query, texts)
                except Exception as exc:
                    raise _typed(exc, batch, len(texts)) from exc
                return self._finish(batch, texts, result)

            try:
                scores = await self._engine.acall(attempt, deadline=deadline, **self._cost(batch))
            except ZeRankError as exc:
                exc.job_item = batch.item  # type: ignore[attr-defined]
                raise
            job.done(batch, scores)

        job.report_blanks()
        await arun_all(len(batches), work, workers=self.max_concurrency)
        return job.out

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Score every text against the query; see :class:`Scorer`."""
        return self.score_many([ScoreItem(query, texts, instruction)])[0]

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Async :meth:`score`."""
        return (await self.ascore_many([ScoreItem(query, texts, instruction)]))[0]


#: How many queries the fallback of :func:`score_many` scores at once for a
#: scorer without a job-level method of its own.
FALLBACK_CONCURRENCY = 4


def score_many(
    scorer: Scorer,
    items: Sequence[ScoreItem | tuple[Any, ...]],
    *,
    on_batch: BatchCallback | None = None,
    max_concurrency: int = FALLBACK_CONCURRENCY,
) -> list[list[float]]:
    """Score a job of several queries with any scorer.

    Uses the scorer's own ``score_many`` when it has one (remote backends and
    :class:`~zerank_core.cache.CachedScorer` plan the whole job); otherwise
    calls ``score`` once per item, ``max_concurrency`` items at a time, and
    reports each item to ``on_batch`` as one batch.
    """
    method = getattr(scorer, "score_many", None)
    if callable(method):
        result: list[list[float]] = method(items, on_batch=on_batch)
        return result
    jobs = _items(items)
    if max_concurrency < 1:
        raise ConfigurationError(f"max_concurrency must be >= 1, got {max_concurrency}")

    def one(position: int) -> list[float]:
        job = jobs[position]
        scores = scorer.score(job.query, job.texts, instruction=job.instruction)
        if on_batch is not None:
            on_batch(position, range(len(job.texts)), scores)
        return scores

    if max_concurrency == 1 or len(jobs) <= 1:
        return [one(i) for i in range(len(jobs))]
    with ThreadPoolExecutor(max_workers=min(max_concurrency, len(jobs))) as pool:
        return list(pool.map(one, range(len(jobs))))


async def ascore_many(
    scorer: Scorer,
    items: Sequence[ScoreItem | tuple[Any, ...]],
    *,
    on_batch: BatchCallback | None = None,
    max_concurrency: int = FALLBACK_CONCURRENCY,
) -> list[list[float]]:
    """Async :func:`score_many`; the fallback awaits at most ``max_concurrency`` items at once."""
    method = getattr(scorer, "ascore_many", None)
    if callable(method):
        result: list[list[float]] = await method(items, on_batch=on_batch)
        return result
    jobs = _items(items)
    if max_concurrency < 1:
        raise ConfigurationError(f"max_concurrency must be >= 1, got {max_concurrency}")
    semaphore = asyncio.Semaphore(max_concurrency)

    async def one(position: int) -> list[float]:
        job = jobs[position]
        async with semaphore:
            scores = await scorer.ascore(job.query, job.texts, instruction=job.instruction)
        if on_batch is not None:
            on_batch(position, range(len(job.texts)), scores)
        return scores

    return list(await asyncio.gather(*(one(i) for i in range(len(jobs)))))


def engine_settings(scorer: BatchedScorer) -> dict[str, Any]:
    """The constructor arguments that rebuild ``scorer``'s engine (for pickling)."""
    limits = scorer.limits
    return {
        "max_concurrency": scorer.max_concurrency,
        "max_retries": scorer.max_retries,
        "requests_per_minute": limits.requests_per_minute,
        "bytes_per_minute": limits.bytes_per_minute,
        "tokens_per_minute": limits.tokens_per_minute,
        "deadline": scorer.deadline,
    }


def rebuild(cls: Callable[..., T], settings: dict[str, object]) -> T:
    """Unpickle a scorer by constructing it anew from the settings it pickled.

    Scorers pickle as their settings, never as their clients, locks or
    credentials: a rebuilt scorer reads its keys from the environment again.
    """
    return cls(**settings)


def typed_error(exc: Exception, *, batch: int, batch_size: int) -> Exception | None:
    """The package error a batch's failure stands for; ``None`` to let it through as is.

    An unreadable body is :class:`InvalidResponseError`, an HTTP-client or SDK
    failure :class:`~zerank_core.errors.BackendError`, both naming the batch.
    """
    if isinstance(exc, MalformedResponse):
        return InvalidResponseError(str(exc), batch=batch, batch_size=batch_size)
    if isinstance(exc, ZeRankError):
        return None
    return as_backend_error(exc, batch=batch, batch_size=batch_size)


_SURROGATE = re.compile("[\ud800-\udfff]")
# Whitespace and control characters (NUL included): nothing a model can read.
_BLANK = re.compile(r"[\s\x00-\x1f\x7f-\x9f]*")


def _check_unicode(text: str, name: str) -> None:
    found = _SURROGATE.search(text)
    if found is not None:
        raise ConfigurationError(
            f"{name} holds a lone surrogate ({found.group()!r}) at character {found.start()}: "
            "it is not valid Unicode and cannot be sent; decode the source with "
            "errors='replace' (or fix its encoding)"
        )


def is_blank(text: str) -> bool:
    """True for a text with nothing to read: empty, whitespace or control characters only."""
    return _BLANK.fullmatch(text) is not None


def check_query(query: object) -> str:
    """``query`` if it is a non-blank string of valid Unicode; else an error naming it."""
    if not isinstance(query, str):
        raise ConfigurationError(f"query must be a str, got {type(query).__name__}: {query!r:.80}")
    if is_blank(query):
        raise ConfigurationError(f"query is empty or whitespace only: {query!r:.80}")
    _check_unicode(query, "query")
    return query


def check_texts(texts: object) -> list[str]:
    """``texts`` as a list of valid-Unicode strings; else an error naming the bad item.

    Blank texts pass: scorers give them 0.0 without a model call (see
    :func:`without_blanks`).
    """
    if isinstance(texts, str | bytes):
        raise ConfigurationError(
            f"texts must be a sequence of strings, got a single {type(texts).__name__}"
        )
    if not isinstance(texts, Iterable):
        raise ConfigurationError(
            f"texts must be a sequence of strings, got {type(texts).__name__}: {texts!r:.80}"
        )
    out = list(texts)
    for index, text in enumerate(out):
        if not isinstance(text, str):
            raise ConfigurationError(f"texts[{index}] must be a str, got {type(text).__name__}")
        _check_unicode(text, f"texts[{index}]")
    return out


def check_url(url: object, name: str = "url") -> str:
    """An ``http(s)://host...`` URL that httpx can use; else an error naming it (redacted)."""
    import httpx

    from zerank_core.redaction import redact_url

    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        shown = redact_url(url) if isinstance(url, str) else url
        raise ConfigurationError(f"{name} must start with http:// or https://, got {shown!r}")
    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL as exc:
        raise ConfigurationError(
            f"{name} is not a valid URL: {redact_url(url)!r} ({exc})"
        ) from None
    if not host:
        raise ConfigurationError(f"{name} has no host: {redact_url(url)!r}")
    return url


def check_timeout(timeout: object, name: str = "timeout") -> None:
    """A timeout must be a finite number of seconds > 0 (or ``None`` for the default)."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds, got {timeout!r}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigurationError(f"{name} must be a finite number of seconds > 0, got {timeout}")


def check_count(value: object, name: str, minimum: int) -> None:
    """An integer setting such as ``max_retries`` must be an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")


def without_blanks(texts: list[str]) -> tuple[list[str], Callable[[list[float]], list[float]]]:
    """The texts worth scoring, and a function that puts 0.0 back at the blank ones.

    A blank text (:func:`is_blank`) has no evidence to find: it scores 0.0
    without a model call, instead of whatever a model makes of an empty prompt.
    """
    kept = [i for i, text in enumerate(texts) if not is_blank(text)]
    if len(kept) == len(texts):
        return texts, lambda scores: scores

    def restore(scores: list[float]) -> list[float]:
        out = [0.0] * len(texts)
        for index, value in zip(kept, scores, strict=True):
            out[index] = value
        return out

    return [texts[i] for i in kept], restore
