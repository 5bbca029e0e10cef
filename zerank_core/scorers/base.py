"""The scorer contract, score scales, and the batching machinery backends share.

A scorer turns ``(query, texts)`` into one calibrated relevance probability per
text, in input order. Remote backends subclass :class:`BatchedScorer`, which
plans batches, bounds concurrency, validates every response and converts the
backend's scale to zerank's calibrated one in a single place
(:func:`to_probability`).
"""

from __future__ import annotations

import asyncio
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, Protocol, TypeVar, runtime_checkable

from zerank_core.errors import ConfigurationError, InvalidResponseError

T = TypeVar("T")

__all__ = [
    "BatchResult",
    "BatchedScorer",
    "MalformedResponse",
    "PerLoop",
    "Scale",
    "Scorer",
    "Usage",
    "UsageMeter",
    "check_texts",
    "plan_batches",
    "query_with_instruction",
    "to_probability",
    "validate_batch",
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


def query_with_instruction(query: str, instruction: str | None) -> str:
    """Append an instruction to the query by zerank's documented convention."""
    if not instruction:
        return query
    return f"<query>{query}</query>\n<instruction>{instruction}</instruction>"


@runtime_checkable
class Scorer(Protocol):
    """Anything with these two methods can drive every adapter of the package.

    Both return one score per text, in input order, on the calibrated scale
    unless the scorer declares otherwise in its ``scale`` attribute.
    """

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]: ...

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]: ...


@dataclass(frozen=True)
class Usage:
    """What a scorer has spent since it was created (or since ``reset``).

    ``total_tokens`` is ``None`` when the backend does not report tokens.
    """

    requests: int = 0
    texts: int = 0
    total_bytes: int = 0
    total_tokens: int | None = None

    def __sub__(self, other: Usage) -> Usage:
        tokens = None
        if self.total_tokens is not None:
            tokens = self.total_tokens - (other.total_tokens or 0)
        return Usage(
            requests=self.requests - other.requests,
            texts=self.texts - other.texts,
            total_bytes=self.total_bytes - other.total_bytes,
            total_tokens=tokens,
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
            )

    @property
    def usage(self) -> Usage:
        return self._usage

    def reset(self) -> None:
        with self._lock:
            self._usage = Usage()


def request_bytes(query: str, text: str) -> int:
    """Bytes one document adds to a rerank request, as ZeroEntropy counts them."""
    return 150 + len(query.encode("utf-8")) + len(text.encode("utf-8"))


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


class PerLoop(Generic[T]):
    """One lazily created object per running event loop.

    Async HTTP clients hold connections bound to the loop that opened them;
    reusing one from another loop (``asyncio.run`` twice, notebooks, worker
    threads) fails. Entries of closed loops are dropped.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._items: dict[asyncio.AbstractEventLoop, T] = {}
        self._lock = threading.Lock()

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        with self._lock:
            item = self._items.get(loop)
            if item is None:
                for old in [old for old in self._items if old.is_closed()]:
                    del self._items[old]
                item = self._items[loop] = self._factory()
            return item


class MalformedResponse(Exception):
    """Raised by a backend's ``_request`` when a body cannot be parsed at all.

    :class:`BatchedScorer` reports it as :class:`InvalidResponseError` with the
    batch number, which the backend does not know.
    """


class BatchedScorer(ABC):
    """Base of remote backends: batching, bounded concurrency, validation.

    Subclasses implement :meth:`_request` and :meth:`_arequest` (one HTTP call
    for one batch) and set ``model``, ``scale`` (of what the backend returns),
    ``max_batch_size``, ``max_bytes`` and ``max_concurrency``. The public
    methods always return calibrated probabilities in input order.
    """

    model: str
    backend_scale: Scale
    max_batch_size: int
    max_bytes: int | None = None
    max_concurrency: int

    def __init__(self) -> None:
        self._meter = UsageMeter()

    @property
    def scale(self) -> Scale:
        """Scale of the scores this scorer returns."""
        if self.backend_scale is Scale.UNCALIBRATED:
            return Scale.UNCALIBRATED
        return Scale.PROBABILITY

    @property
    def usage(self) -> Usage:
        """Requests, texts, bytes and tokens (where reported) spent so far."""
        return self._meter.usage

    @abstractmethod
    def _request(self, query: str, texts: list[str]) -> BatchResult: ...

    @abstractmethod
    async def _arequest(self, query: str, texts: list[str]) -> BatchResult: ...

    def _plan(self, query: str, texts: Sequence[str]) -> list[list[int]]:
        return plan_batches(
            query, texts, max_batch_size=self.max_batch_size, max_bytes=self.max_bytes
        )

    def _finish(self, query: str, batch: int, texts: list[str], result: BatchResult) -> list[float]:
        scores = validate_batch(result, batch=batch, size=len(texts), scale=self.backend_scale)
        self._meter.add(
            texts=len(texts),
            total_bytes=sum(request_bytes(query, t) for t in texts),
            total_tokens=result.total_tokens,
        )
        return scores

    @staticmethod
    def _assemble(
        n: int, batches: Iterable[list[int]], results: Iterable[list[float]]
    ) -> list[float]:
        out = [math.nan] * n
        for indices, scores in zip(batches, results, strict=True):
            for index, value in zip(indices, scores, strict=True):
                out[index] = value
        return out

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Score every text against the query; see :class:`Scorer`."""
        texts = check_texts(texts)
        if not texts:
            return []
        full_query = query_with_instruction(query, instruction)
        batches = self._plan(full_query, texts)

        def run(numbered: tuple[int, list[int]]) -> list[float]:
            number, indices = numbered
            batch_texts = [texts[i] for i in indices]
            try:
                result = self._request(full_query, batch_texts)
            except MalformedResponse as exc:
                raise InvalidResponseError(
                    str(exc), batch=number, batch_size=len(batch_texts)
                ) from exc
            return self._finish(full_query, number, batch_texts, result)

        if len(batches) == 1 or self.max_concurrency == 1:
            results = [run(item) for item in enumerate(batches)]
        else:
            workers = min(self.max_concurrency, len(batches))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(run, enumerate(batches)))
        return self._assemble(len(texts), batches, results)

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Async :meth:`score`: batches run concurrently, bounded by a semaphore."""
        texts = check_texts(texts)
        if not texts:
            return []
        full_query = query_with_instruction(query, instruction)
        batches = self._plan(full_query, texts)
        semaphore = asyncio.Semaphore(self.max_concurrency)

        async def run(number: int, indices: list[int]) -> list[float]:
            batch_texts = [texts[i] for i in indices]
            try:
                async with semaphore:
                    result = await self._arequest(full_query, batch_texts)
            except MalformedResponse as exc:
                raise InvalidResponseError(
                    str(exc), batch=number, batch_size=len(batch_texts)
                ) from exc
            return self._finish(full_query, number, batch_texts, result)

        results = await asyncio.gather(*(run(n, b) for n, b in enumerate(batches)))
        return self._assemble(len(texts), batches, results)


def check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ConfigurationError("texts must be a sequence of strings, got a single str")
    out = list(texts)
    for index, text in enumerate(out):
        if not isinstance(text, str):
            raise ConfigurationError(f"texts[{index}] must be a str, got {type(text).__name__}")
    return out
