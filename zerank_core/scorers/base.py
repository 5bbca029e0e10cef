"""Remote scorers' shared machinery: the batched engine, and job-level scoring for any scorer.

Remote backends subclass :class:`BatchedScorer`, which runs every request
through the scorer's :class:`~zerank_core.scorers.engine.Engine` (planning,
one concurrency bound, rate limits, retries), validates every response and
converts the backend's scale to zerank's calibrated one in a single place. A
job of several queries goes through :meth:`BatchedScorer.score_many`;
:func:`score_many` / :func:`ascore_many` give any scorer that job-level
method, falling back to one call per query.

The pieces live in small modules, re-exported here: the contract and scales
(:mod:`~zerank_core.scorers.protocol`), usage metering
(:mod:`~zerank_core.scorers.usage`), batch planning
(:mod:`~zerank_core.scorers.planning`), the retry policy
(:mod:`~zerank_core.scorers.retry`), response validation
(:mod:`~zerank_core.scorers.responses`), per-event-loop clients
(:mod:`~zerank_core.scorers.loops`) and input checks
(:mod:`~zerank_core.scorers.inputs`).
"""

from __future__ import annotations

import asyncio
import math
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, Self, TypeVar

from zerank_core.errors import ConfigurationError, ZeRankError
from zerank_core.scorers.engine import (
    DEFAULT_DEADLINE_S,
    Engine,
    RateLimits,
    arun_all,
    run_all,
)
from zerank_core.scorers.inputs import (
    check_count,
    check_query,
    check_texts,
    check_timeout,
    check_url,
    is_blank,
    without_blanks,
)
from zerank_core.scorers.loops import PerLoop
from zerank_core.scorers.planning import Batch, plan_batches, plan_requests, request_bytes
from zerank_core.scorers.protocol import (
    INSTRUCTION_CONVENTION,
    ZERANK_TEMPERATURE,
    Scale,
    Scorer,
    check_scores,
    fingerprint,
    query_with_instruction,
    require_scorer,
    to_probability,
)
from zerank_core.scorers.responses import (
    BatchResult,
    MalformedResponse,
    json_body,
    results_from_json,
    typed_error,
    validate_batch,
)
from zerank_core.scorers.retry import Failure
from zerank_core.scorers.usage import Usage, UsageMeter

T = TypeVar("T")

__all__ = [
    "INSTRUCTION_CONVENTION",
    "ZERANK_TEMPERATURE",
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


@contextmanager
def _keeping_partial(job: _Job) -> Iterator[None]:
    """Give a job's error the scores that did come back (``partial_scores``; NaN: none)."""
    try:
        yield
    except ZeRankError as exc:
        exc.partial_scores = [list(row) for row in job.out]  # type: ignore[attr-defined]
        raise


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

    def _plan_job(self, items: list[ScoreItem], slots: int) -> tuple[list[str], list[Batch]]:
        """Plan the job's requests for ``slots`` slots; ``items`` hold only texts worth sending."""
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
            slots=slots,
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

        The job is planned as a whole (:mod:`~zerank_core.scorers.planning`)
        and its requests run on up to ``max_concurrency`` threads through the
        scorer's shared slots. ``on_batch`` sees each request's scores as it
        completes, so a caller can keep them even if a later request fails.

        A request that still fails after its retries (a transient failure)
        does not stop the others: they all run, and then its error is raised,
        or :class:`~zerank_core.errors.BatchesFailedError` naming every
        failed batch when there are several. A refusal (401, 400) or 429s
        past the deadline stop the job at once. Either way the error's
        ``partial_scores`` holds one list per item, NaN where no score came back.
        """
        job = _Job(_items(items), on_batch)
        with self._engine.job() as slots, _keeping_partial(job):
            queries, batches = self._plan_job(job.sent, slots)
            deadline = self._engine.job_deadline()
            job.report_blanks()
            run_all(
                len(batches),
                partial(self._work, job, queries, batches, deadline),
                workers=self.max_concurrency,
                keep_going=self._engine.keep_going,
            )
        return job.out

    def _work(
        self, job: _Job, queries: list[str], batches: list[Batch], deadline: float, position: int
    ) -> None:
        """Send one planned request of a job, with the engine's retries, and file its scores."""
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

    async def ascore_many(
        self,
        items: Sequence[ScoreItem | tuple[Any, ...]],
        *,
        on_batch: BatchCallback | None = None,
    ) -> list[list[float]]:
        """Async :meth:`score_many`: requests run as coroutines on the shared slots."""
        job = _Job(_items(items), on_batch)
        with self._engine.job() as slots, _keeping_partial(job):
            queries, batches = self._plan_job(job.sent, slots)
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

                cost = self._cost(batch)
                try:
                    scores = await self._engine.acall(attempt, deadline=deadline, **cost)
                except ZeRankError as exc:
                    exc.job_item = batch.item  # type: ignore[attr-defined]
                    raise
                job.done(batch, scores)

            job.report_blanks()
            await arun_all(
                len(batches), work, workers=self.max_concurrency, keep_going=self._engine.keep_going
            )
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
