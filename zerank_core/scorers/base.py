"""The scorer contract, score scales, and the batching machinery backends share.

A scorer turns ``(query, texts)`` into one calibrated relevance probability per
text, in input order. Remote backends subclass :class:`BatchedScorer`, which
plans batches, bounds concurrency, validates every response and converts the
backend's scale to zerank's calibrated one in a single place
(:func:`to_probability`).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, Protocol, TypeVar, runtime_checkable

from zerank_core.errors import (
    ConfigurationError,
    InvalidResponseError,
    ZeRankError,
    as_backend_error,
)

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
    "check_count",
    "check_query",
    "check_texts",
    "check_timeout",
    "check_url",
    "fingerprint",
    "is_blank",
    "json_body",
    "plan_batches",
    "query_with_instruction",
    "results_from_json",
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
        query = check_query(query)
        texts, restore = without_blanks(check_texts(texts))
        if not texts:
            return restore([])
        full_query = query_with_instruction(query, instruction)
        batches = self._plan(full_query, texts)

        def run(numbered: tuple[int, list[int]]) -> list[float]:
            number, indices = numbered
            batch_texts = [texts[i] for i in indices]
            try:
                result = self._request(full_query, batch_texts)
            except Exception as exc:
                typed = typed_error(exc, batch=number, batch_size=len(batch_texts))
                if typed is None:
                    raise
                raise typed from exc
            return self._finish(full_query, number, batch_texts, result)

        if len(batches) == 1 or self.max_concurrency == 1:
            results = [run(item) for item in enumerate(batches)]
        else:
            workers = min(self.max_concurrency, len(batches))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(run, enumerate(batches)))
        return restore(self._assemble(len(texts), batches, results))

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Async :meth:`score`: batches run concurrently, bounded by a semaphore."""
        query = check_query(query)
        texts, restore = without_blanks(check_texts(texts))
        if not texts:
            return restore([])
        full_query = query_with_instruction(query, instruction)
        batches = self._plan(full_query, texts)
        semaphore = asyncio.Semaphore(self.max_concurrency)

        async def run(number: int, indices: list[int]) -> list[float]:
            batch_texts = [texts[i] for i in indices]
            try:
                async with semaphore:
                    result = await self._arequest(full_query, batch_texts)
            except Exception as exc:
                typed = typed_error(exc, batch=number, batch_size=len(batch_texts))
                if typed is None:
                    raise
                raise typed from exc
            return self._finish(full_query, number, batch_texts, result)

        results = await asyncio.gather(*(run(n, b) for n, b in enumerate(batches)))
        return restore(self._assemble(len(texts), batches, results))


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
