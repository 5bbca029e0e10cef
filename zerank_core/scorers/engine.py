"""The execution engine every remote scorer runs through.

A remote scorer (:class:`~zerank_core.scorers.base.BatchedScorer`) owns one
:class:`Engine`, which decides four things for every request it sends:

- **how many at once** — :class:`Slots`, one bound per scorer instance, shared
  by every call, thread and event loop that uses the scorer;
- **how fast** — :class:`Pacer`, client-side token buckets for requests, bytes
  and tokens per minute, plus the pause a 429 imposes on the whole scorer;
- **what to do when a request fails** — the rules of
  :mod:`zerank_core.scorers.retry`, run by tenacity;
- **how a job is cut into requests** — the rules of
  :mod:`zerank_core.scorers.planning`, across all the queries of a job (a
  page gate's criteria, a classifier's labels), for the slots it can get.

How the engine and the ``zeroentropy`` SDK's own retries compose: the clients
a scorer builds itself get ``max_retries=0``, so the engine is the only retry
layer and the scorer's ``max_retries`` means engine retries. A client you pass
in keeps its own ``max_retries``: its retries then happen inside each engine
attempt (up to ``(1 + sdk) × (1 + engine)`` sends for a transient failure).
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import tenacity

from zerank_core.errors import (
    BackendError,
    BatchesFailedError,
    ConfigurationError,
    InvalidResponseError,
)
from zerank_core.scorers.planning import (
    REQUEST_OVERHEAD_TEXTS,
    Batch,
    estimate_tokens,
    plan_requests,
    planning_slots,
    request_bytes,
)
from zerank_core.scorers.retry import Failure, backoff, parse_retry_after

__all__ = [
    "DEFAULT_DEADLINE_S",
    "REQUEST_OVERHEAD_TEXTS",
    "Batch",
    "ConcurrencyLimit",
    "Engine",
    "Failure",
    "Pacer",
    "RateLimits",
    "RequestPacer",
    "Slots",
    "estimate_tokens",
    "parse_retry_after",
    "plan_requests",
    "request_bytes",
]

T = TypeVar("T")

#: How long a call may keep resubmitting rate-limited or failed requests,
#: counted from its start, before the last error surfaces.
DEFAULT_DEADLINE_S = 600.0


#: Requests are paced at this share of each limit: a request sent on time can
#: still arrive late (scheduling, network), and a server counting a sliding
#: window would refuse the one that then lands inside its predecessor's window.
PACING_HEADROOM = 0.95

# --------------------------------------------------------------------------- slots


class _SyncWaiter:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


class _AsyncWaiter:
    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()


class Slots:
    """A counting semaphore shared by threads and event loops alike.

    ``threading.Semaphore`` would block an event loop and ``asyncio.Semaphore``
    belongs to one loop; this one keeps the count under a lock and hands a
    freed slot to the oldest waiter, waking a thread through an event and a
    coroutine through its own loop (``call_soon_threadsafe``), so a coroutine
    never blocks its loop while it waits.
    """

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise ConfigurationError(f"max_concurrency must be an integer >= 1, got {limit!r}")
        if limit < 1:
            raise ConfigurationError(f"max_concurrency must be >= 1, got {limit}")
        self.limit = limit
        self._lock = threading.Lock()
        self._free = limit
        self._waiters: deque[_SyncWaiter | _AsyncWaiter] = deque()

    @property
    def in_use(self) -> int:
        """Slots currently held."""
        with self._lock:
            return self.limit - self._free

    @property
    def free(self) -> int:
        """Slots a request would get at once: none while others are queued."""
        with self._lock:
            return 0 if self._waiters else self._free

    def acquire(self) -> None:
        """Take a slot, blocking this thread until one is free."""
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            waiter = _SyncWaiter()
            self._waiters.append(waiter)
        # A granted slot is handed over directly: the count was not restored.
        waiter.event.wait()

    async def aacquire(self) -> None:
        """Take a slot, suspending (not blocking) the running loop until one is free."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            waiter = _AsyncWaiter(loop)
            self._waiters.append(waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            with self._lock:
                try:
                    self._waiters.remove(waiter)
                    queued = True
                except ValueError:
                    queued = False
            # Not queued any more: the slot was granted (or is being granted;
            # _grant sees the cancelled future and passes the slot on).
            if not queued and waiter.future.done() and not waiter.future.cancelled():
                self.release()
            raise

    def release(self) -> None:
        """Give a slot back, to the oldest waiter if there is one."""
        with self._lock:
            if not self._waiters:
                self._free += 1
                return
            waiter = self._waiters.popleft()
        if isinstance(waiter, _SyncWaiter):
            waiter.event.set()
            return
        try:
            waiter.loop.call_soon_threadsafe(self._grant, waiter)
        except RuntimeError:  # its loop is closed: nobody is waiting there
            self.release()

    def _grant(self, waiter: _AsyncWaiter) -> None:
        if waiter.future.cancelled():
            self.release()
        else:
            waiter.future.set_result(None)


# --------------------------------------------------------------------------- pacing


@dataclass(frozen=True)
class RateLimits:
    """Per-minute budgets a scorer keeps on the client side; ``None`` = unlimited.

    Bytes are counted as ZeroEntropy counts them (``150 + len(query) +
    len(document)`` per document, UTF-8); tokens are estimated before a request
    (UTF-8 bytes / 4) and corrected by the ``total_tokens`` the backend reports.
    """

    requests_per_minute: float | None = None
    bytes_per_minute: float | None = None
    tokens_per_minute: float | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "bytes_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"{name} must be a number > 0, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ConfigurationError(f"{name} must be a number > 0, got {value!r}")

    @property
    def any(self) -> bool:
        return any(
            v is not None
            for v in (self.requests_per_minute, self.bytes_per_minute, self.tokens_per_minute)
        )


class Pacer:
    """Token buckets for one scorer, usable from threads and event loops.

    Each budget is a token bucket that refills at ``PACING_HEADROOM × limit / 60``
    per second and holds one request's worth (the generic cell rate algorithm): a request
    reserves its cost and learns how long to wait before sending, so waiting is
    ``time.sleep`` in a thread and ``asyncio.sleep`` in a loop against the same
    budget. No burst is banked while idle, so a server that counts any rolling
    minute never sees more than the limit. ``pause`` holds every request back
    after a 429 (the server's window is spent for all of them, not one).
    """

    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._paused_until = 0.0
        # Theoretical arrival time per budget: when its bucket holds a request again.
        self._tat = {"requests": 0.0, "bytes": 0.0, "tokens": 0.0}

    def _rates(self) -> dict[str, float | None]:
        limits = self.limits
        return {
            "requests": limits.requests_per_minute,
            "bytes": limits.bytes_per_minute,
            "tokens": limits.tokens_per_minute,
        }

    def reserve(self, *, bytes_: int = 0, tokens: int = 0) -> float:
        """Reserve one request of this size; return the seconds to wait before sending it."""
        costs = {"requests": 1.0, "bytes": float(bytes_), "tokens": float(tokens)}
        with self._lock:
            now = self._clock()
            start = max(now, self._paused_until)
            rates = self._rates()
            for name, limit in rates.items():
                if limit is not None:
                    start = max(start, self._tat[name])
            for name, limit in rates.items():
                if limit is not None:
                    self._tat[name] = start + costs[name] * 60.0 / (limit * PACING_HEADROOM)
            return start - now

    def charge_tokens(self, tokens: int) -> None:
        """Add tokens a response reported beyond the estimate to the token budget."""
        limit = self.limits.tokens_per_minute
        if limit is None or tokens <= 0:
            return
        with self._lock:
            per_token = 60.0 / (limit * PACING_HEADROOM)
            self._tat["tokens"] = max(self._tat["tokens"], self._clock()) + tokens * per_token

    def pause(self, seconds: float) -> None:
        """Hold every request of this scorer back for ``seconds`` from now."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)


class ConcurrencyLimit(Protocol):
    """What an engine asks before each request for a place in flight (:class:`Slots`).

    Another implementation can share the places between processes, as the
    Ray job limiter (:mod:`zerank_core.limits`) does across actors.
    """

    @property
    def limit(self) -> int: ...

    @property
    def free(self) -> int: ...

    def acquire(self) -> None: ...

    async def aacquire(self) -> None: ...

    def release(self) -> None: ...


class RequestPacer(Protocol):
    """What an engine asks before each request for its turn in the budgets (:class:`Pacer`)."""

    @property
    def limits(self) -> RateLimits: ...

    def reserve(self, *, bytes_: int = 0, tokens: int = 0) -> float: ...

    def charge_tokens(self, tokens: int) -> None: ...

    def pause(self, seconds: float) -> None: ...


# --------------------------------------------------------------------------- failures


@dataclass
class _Budget:
    """One batch's retry accounting, and the job's deadline."""

    deadline: float
    transient: int = 0
    rate_limited: int = 0


class Engine:
    """Slots, pacing and retries for one scorer instance; see the module docstring.

    ``classify`` tells a backend's rate-limit and transient errors from the
    rest; :class:`InvalidResponseError` is always transient (a truncated or
    garbled body is worth one more try, and a server that keeps sending them
    still ends in the error after ``max_retries``).
    """

    def __init__(
        self,
        *,
        max_concurrency: int,
        max_retries: int,
        limits: RateLimits,
        deadline: float | None,
        classify: Callable[[BaseException], Failure | None],
        on_retry: Callable[[Failure], None] | None = None,
    ) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int):
            raise ConfigurationError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0, got {max_retries}")
        if deadline is not None and not (
            isinstance(deadline, int | float) and not isinstance(deadline, bool) and deadline >= 0
        ):
            raise ConfigurationError(f"deadline must be a number of seconds >= 0, got {deadline!r}")
        self.slots: ConcurrencyLimit = Slots(max_concurrency)
        self.pacer: RequestPacer = Pacer(limits)
        self.max_retries = max_retries
        self.deadline = deadline
        self._classify = classify
        self._on_retry = on_retry
        self._random = random.Random()
        self._random_lock = threading.Lock()
        self._jobs = 0
        self._jobs_lock = threading.Lock()

    @property
    def limits(self) -> RateLimits:
        return self.pacer.limits

    def share(
        self, *, slots: ConcurrencyLimit | None = None, pacer: RequestPacer | None = None
    ) -> None:
        """Take places in flight and pacing from ``slots`` and ``pacer`` from now on.

        For limits that hold beyond this engine (every actor of a Ray job);
        call it before the first request. Either left ``None`` stays as it is.
        """
        if slots is not None:
            self.slots = slots
        if pacer is not None:
            self.pacer = pacer

    @contextmanager
    def job(self) -> Iterator[int]:
        """Run one job on this engine; yields the slots to plan it for (see :mod:`.planning`)."""
        with self._jobs_lock:
            running = self._jobs
            self._jobs += 1
        try:
            yield planning_slots(self.slots.limit, self.slots.free, running)
        finally:
            with self._jobs_lock:
                self._jobs -= 1

    def keep_going(self, exc: BaseException) -> bool:
        """Whether a job goes on after ``exc`` ended one of its requests.

        Yes after a transient failure that outlasted its retries (that batch
        is lost, the others may well succeed); no after anything else: a
        refusal (401, 400) or a setting would fail every request, and past
        the deadline of 429s every request would be one more 429.
        """
        failure = self.failure(exc)
        return isinstance(exc, BackendError) and failure is not None and failure.kind == "transient"

    def job_deadline(self) -> float:
        """The monotonic time past which a job started now stops retrying."""
        return math.inf if self.deadline is None else time.monotonic() + self.deadline

    def failure(self, exc: BaseException) -> Failure | None:
        if isinstance(exc, InvalidResponseError):
            return Failure("transient")
        if isinstance(exc, BackendError) and exc.__cause__ is not None:
            # Scorers raise typed errors; what to do depends on what caused them.
            return self._classify(exc.__cause__)
        return self._classify(exc)

    def _jitter(self, high: float) -> float:
        with self._random_lock:
            return self._random.uniform(0.0, high)

    # tenacity's three hooks, sharing one batch's _Budget.

    def _retry(self, budget: _Budget) -> Callable[[tenacity.RetryCallState], bool]:
        def retry(state: tenacity.RetryCallState) -> bool:
            outcome = state.outcome
            if outcome is None or not outcome.failed:
                return False
            exc = outcome.exception()
            failure = self.failure(exc) if exc is not None else None
            if failure is None:
                return False
            if failure.kind == "rate_limited":
                budget.rate_limited += 1
            else:
                budget.transient += 1
            return True

        return retry

    def _stop(self, budget: _Budget) -> Callable[[tenacity.RetryCallState], bool]:
        def stop(state: tenacity.RetryCallState) -> bool:
            return budget.transient > self.max_retries or time.monotonic() >= budget.deadline

        return stop

    def _wait(self, budget: _Budget) -> Callable[[tenacity.RetryCallState], float]:
        def wait(state: tenacity.RetryCallState) -> float:
            outcome = state.outcome
            exc = outcome.exception() if outcome is not None else None
            failure = self.failure(exc) if exc is not None else None
            if failure is None:
                return 0.0
            attempt = budget.rate_limited if failure.kind == "rate_limited" else budget.transient
            delay = backoff(failure, attempt=attempt, jitter=self._jitter)
            delay = max(0.0, min(delay, budget.deadline - time.monotonic()))
            if failure.kind == "rate_limited":
                self.pacer.pause(delay)
            return delay

        return wait

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        failure = self.failure(exc) if exc is not None else None
        if failure is not None and self._on_retry is not None:
            self._on_retry(failure)

    def _policy(self, budget: _Budget) -> dict[str, object]:
        return {
            "retry": self._retry(budget),
            "stop": self._stop(budget),
            "wait": self._wait(budget),
            "before_sleep": self._before_sleep,
            "reraise": True,
        }

    def call(self, attempt: Callable[[], T], *, bytes_: int, tokens: int, deadline: float) -> T:
        """Run one request to completion in this thread: slot, pacing, retries."""
        budget = _Budget(deadline=deadline)
        for trial in tenacity.Retrying(**self._policy(budget)):  # type: ignore[arg-type]
            with trial:
                self.slots.acquire()
                try:
                    delay = self.pacer.reserve(bytes_=bytes_, tokens=tokens)
                    if delay > 0:
                        time.sleep(delay)
                    return attempt()
                finally:
                    self.slots.release()
        raise AssertionError("unreachable")  # pragma: no cover

    async def acall(
        self, attempt: Callable[[], Awaitable[T]], *, bytes_: int, tokens: int, deadline: float
    ) -> T:
        """Async :meth:`call`: waits without blocking the loop."""
        budget = _Budget(deadline=deadline)
        async for trial in tenacity.AsyncRetrying(**self._policy(budget)):  # type: ignore[arg-type]
            with trial:
                await self.slots.aacquire()
                try:
                    delay = self.pacer.reserve(bytes_=bytes_, tokens=tokens)
                    if delay > 0:
                        await asyncio.sleep(delay)
                    return await attempt()
                finally:
                    self.slots.release()
        raise AssertionError("unreachable")  # pragma: no cover


def _raise(errors: list[BaseException], count: int, fatal: bool) -> None:
    """Raise what a job's failures amount to (see :func:`run_all`)."""
    if not errors:
        return
    if fatal or len(errors) == 1 or not all(isinstance(e, BackendError) for e in errors):
        raise errors[0]
    failed = sorted(
        (e for e in errors if isinstance(e, BackendError)),
        key=lambda e: -1 if e.batch is None else e.batch,
    )
    raise BatchesFailedError(failed, requests=count) from failed[0]


def run_all(
    count: int,
    work: Callable[[int], None],
    *,
    workers: int,
    stop: threading.Event | None = None,
    keep_going: Callable[[BaseException], bool] | None = None,
) -> None:
    """Run ``work(0..count-1)`` on ``workers`` threads, in order of index.

    An error for which ``keep_going`` is true (a request that failed after
    its retries) does not stop the others: every other piece of work runs,
    and then the error is raised, or :class:`BatchesFailedError` naming
    each when several failed. Any other error stops new work at once (work
    already running finishes, its results are kept) and is raised itself,
    as is a ``KeyboardInterrupt`` in the caller.
    """
    stop = stop or threading.Event()
    lock = threading.Lock()
    next_index = [0]
    errors: list[BaseException] = []
    fatal = [False]

    def worker() -> None:
        while not stop.is_set():
            with lock:
                index = next_index[0]
                if index >= count:
                    return
                next_index[0] += 1
            try:
                work(index)
            except BaseException as exc:
                going = keep_going is not None and keep_going(exc)
                with lock:
                    # The error that stopped the job comes first: it is the one raised.
                    errors.insert(0 if not going and not fatal[0] else len(errors), exc)
                    fatal[0] = fatal[0] or not going
                if not going:
                    stop.set()
                    return

    if workers <= 1 or count <= 1:
        worker()
    else:
        threads = [
            threading.Thread(target=worker, name=f"zerank-request-{i}", daemon=True)
            for i in range(min(workers, count))
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except BaseException:
            stop.set()
            raise
    _raise(errors, count, fatal[0])


async def arun_all(
    count: int,
    work: Callable[[int], Awaitable[None]],
    *,
    workers: int,
    keep_going: Callable[[BaseException], bool] | None = None,
) -> None:
    """Async :func:`run_all`: ``workers`` coroutines take work in order of index."""
    next_index = 0
    errors: list[BaseException] = []
    fatal = False

    async def worker() -> None:
        nonlocal next_index, fatal
        while not fatal and next_index < count:
            index = next_index
            next_index += 1
            try:
                await work(index)
            except Exception as exc:
                going = keep_going is not None and keep_going(exc)
                errors.insert(0 if not going and not fatal else len(errors), exc)
                fatal = fatal or not going
                if not going:
                    return

    await asyncio.gather(*(worker() for _ in range(max(1, min(workers, count)))))
    _raise(errors, count, fatal)
