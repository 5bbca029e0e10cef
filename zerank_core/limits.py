"""The limits a user sets on what a job sends to a backend, for one process or a whole Ray job.

Four limits: ``requests_per_minute``, ``bytes_per_minute``,
``tokens_per_minute`` and ``max_concurrency`` (requests in flight). They are
keyword arguments of the remote scorers, flags of the command line
(``--requests-per-minute`` ...) and environment variables
(:data:`LIMIT_VARIABLES`: ``ZERANK_REQUESTS_PER_MINUTE`` ...), read by
:func:`~zerank_core.scorers.auto.resolve_backend`.

In one process a scorer's engine keeps them (:mod:`zerank_core.scorers.engine`).
On Ray every actor builds its own scorer, so the limits would hold per actor;
:class:`JobLimiter` makes them hold for the job instead. It is one named Ray
actor per job, holding the token buckets and the places in flight; every
actor's scorer asks it before each request (:class:`SharedSlots`,
:class:`SharedPacer`) through :meth:`Engine.share
<zerank_core.scorers.engine.Engine.share>`. The first actor to build its
scorer declares the limits; an actor whose scorer declares other limits is an
error. Restarts stay correct:

- an actor that Ray restarts keeps its actor id and starts by handing back
  every place its previous life held (:meth:`JobLimiter.forget`);
- the limiter itself is restarted by Ray like any actor (``max_restarts=-1``)
  with empty buckets and every place free; each request carries the limits,
  so the new limiter knows them at once, and a place handed back that it
  never gave out is ignored.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from zerank_core.errors import ConfigurationError
from zerank_core.scorers.engine import Pacer, RateLimits

__all__ = [
    "LIMIT_VARIABLES",
    "JobLimiter",
    "SharedPacer",
    "SharedSlots",
    "check_limits",
    "limits_from_env",
]

#: The environment variable of each limit.
LIMIT_VARIABLES: dict[str, str] = {
    "requests_per_minute": "ZERANK_REQUESTS_PER_MINUTE",
    "bytes_per_minute": "ZERANK_BYTES_PER_MINUTE",
    "tokens_per_minute": "ZERANK_TOKENS_PER_MINUTE",
    "max_concurrency": "ZERANK_MAX_CONCURRENCY",
}


def check_limits(limits: Mapping[str, Any], *, names: Mapping[str, str] | None = None) -> None:
    """Raise :class:`ConfigurationError` for an unknown limit or a bad value.

    ``names`` says how the message names each limit (a flag, an environment
    variable); by default its keyword.
    """
    for key, value in limits.items():
        name = (names or {}).get(key, key)
        if key not in LIMIT_VARIABLES:
            raise ConfigurationError(
                f"unknown limit {key!r}; limits are {', '.join(LIMIT_VARIABLES)}"
            )
        if key == "max_concurrency":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
        elif (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and value > 0)
        ):
            raise ConfigurationError(f"{name} must be a number > 0, got {value!r}")


def limits_from_env(environ: Mapping[str, str] | None = None) -> dict[str, float | int]:
    """The limits set in the environment, as scorer keyword arguments (unset ones left out)."""
    env = os.environ if environ is None else environ
    limits: dict[str, float | int] = {}
    for key, variable in LIMIT_VARIABLES.items():
        text = env.get(variable, "").strip()
        if not text:
            continue
        try:
            value: float | int = int(text) if key == "max_concurrency" else float(text)
        except ValueError:
            kind = "an integer >= 1" if key == "max_concurrency" else "a number > 0"
            raise ConfigurationError(f"{variable} must be {kind}, got {text!r}") from None
        check_limits({key: value}, names={key: variable})
        limits[key] = value
    return limits


#: What an engine declares to the job limiter: its rate limits and places in flight.
Declared = tuple[float | None, float | None, float | None, int]


def declared_limits(rates: RateLimits, max_concurrency: int) -> Declared:
    return (
        rates.requests_per_minute,
        rates.bytes_per_minute,
        rates.tokens_per_minute,
        max_concurrency,
    )


class JobLimiter:
    """The state behind a Ray job's shared limits; Ray runs it as one async actor.

    Every method is a coroutine, so the actor serves them on one event loop:
    a request waiting for a place never blocks one handing a place back.
    ``holder`` names an actor (its Ray actor id, which a restart keeps).
    """

    def __init__(self) -> None:
        self._declared: Declared | None = None
        self._pacer: Pacer | None = None
        self._free = 0
        self._held: dict[str, int] = {}
        self._waiters: deque[tuple[str, asyncio.Future[None]]] = deque()
        self._built: dict[str, tuple[float, int | None]] = {}
        self._batches = 0
        self._busy = 0.0
        self._first: float | None = None
        self._last: float | None = None
        self._admitted = 0
        self._peak = 0
        self._started = time.monotonic()

    def _configure(self, declared: Declared) -> None:
        if self._declared is None:
            requests, bytes_, tokens, concurrency = declared
            self._declared = declared
            self._pacer = Pacer(RateLimits(requests, bytes_, tokens))
            self._free = concurrency
        elif declared != self._declared:
            raise ConfigurationError(
                "the actors of one Ray job declared different limits: "
                f"{_describe(self._declared)} and {_describe(declared)}"
            )

    async def acquire(self, holder: str, declared: Declared) -> None:
        """Wait for a place in flight, then hold it for ``holder``."""
        self._configure(declared)
        if self._free > 0 and not self._waiters:
            self._free -= 1
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((holder, future))
            await future  # a place handed over directly: the count was not restored
        self._held[holder] = self._held.get(holder, 0) + 1
        self._admitted += 1
        in_use = sum(self._held.values())
        self._peak = max(self._peak, in_use)

    async def free(self) -> int:
        """Places a request would get at once: none while others wait."""
        return 0 if self._waiters else self._free

    async def release(self, holder: str) -> None:
        """Hand one of ``holder``'s places back (ignored when it holds none)."""
        held = self._held.get(holder, 0)
        if held <= 0:
            return
        self._held[holder] = held - 1
        self._hand_over(1)

    async def forget(self, holder: str) -> int:
        """Hand back every place ``holder`` holds (an actor restarted); how many it held."""
        held = self._held.pop(holder, 0)
        self._hand_over(held)
        return held

    def _hand_over(self, count: int) -> None:
        for _ in range(count):
            while self._waiters:
                _, future = self._waiters.popleft()
                if not future.done():
                    future.set_result(None)
                    break
            else:
                self._free += 1

    async def reserve(self, declared: Declared, bytes_: int, tokens: int) -> float:
        """Seconds to wait before sending a request of this size (see :class:`Pacer`)."""
        self._configure(declared)
        assert self._pacer is not None
        return self._pacer.reserve(bytes_=bytes_, tokens=tokens)

    async def charge_tokens(self, declared: Declared, tokens: int) -> None:
        self._configure(declared)
        assert self._pacer is not None
        self._pacer.charge_tokens(tokens)

    async def pause(self, declared: Declared, seconds: float) -> None:
        self._configure(declared)
        assert self._pacer is not None
        self._pacer.pause(seconds)

    async def note_built(self, holder: str, seconds: float, threads: int | None) -> None:
        """Record that ``holder`` built its scorer (loaded its model) in ``seconds``."""
        self._built[holder] = (seconds, threads)

    async def note_batch(self, holder: str, start: float, end: float) -> None:
        """Record one batch an actor gated, from ``start`` to ``end`` (``time.time()``)."""
        self._batches += 1
        self._busy += end - start
        self._first = start if self._first is None else min(self._first, start)
        self._last = end if self._last is None else max(self._last, end)

    async def report(self) -> dict[str, Any]:
        """What the job used: builds, batches, requests admitted, peak in flight."""
        threads = sorted({t for _, t in self._built.values() if t is not None})
        return {
            "actors_built": len(self._built),
            "build_seconds": max((s for s, _ in self._built.values()), default=0.0),
            "threads": threads,
            "batches": self._batches,
            "busy_seconds": self._busy,
            "gating_seconds": (
                0.0 if self._first is None or self._last is None else self._last - self._first
            ),
            "requests": self._admitted,
            "peak_in_flight": self._peak,
            "limits": None if self._declared is None else _describe(self._declared),
        }


def _describe(declared: Declared) -> str:
    names = ("requests_per_minute", "bytes_per_minute", "tokens_per_minute", "max_concurrency")
    return ", ".join(f"{n}={v}" for n, v in zip(names, declared, strict=True) if v is not None)


class SharedSlots:
    """Places in flight held by a :class:`JobLimiter` actor (an engine's ``slots``)."""

    def __init__(self, limiter: Any, holder: str, declared: Declared) -> None:
        self._limiter = limiter
        self._holder = holder
        self._declared = declared

    @property
    def limit(self) -> int:
        return self._declared[3]

    @property
    def free(self) -> int:
        """Places free for the whole job now (asked once per job, for its plan)."""
        import ray

        free: int = ray.get(self._limiter.free.remote())
        return free

    def acquire(self) -> None:
        import ray

        ray.get(self._limiter.acquire.remote(self._holder, self._declared))

    async def aacquire(self) -> None:
        await self._limiter.acquire.remote(self._holder, self._declared)

    def release(self) -> None:
        import ray

        # Awaited, so that a place is never handed back after the holder's
        # restart has already handed back everything it held.
        ray.get(self._limiter.release.remote(self._holder))


class SharedPacer:
    """Token buckets held by a :class:`JobLimiter` actor (an engine's ``pacer``)."""

    def __init__(self, limiter: Any, limits: RateLimits, declared: Declared) -> None:
        self._limiter = limiter
        self._limits = limits
        self._declared = declared

    @property
    def limits(self) -> RateLimits:
        return self._limits

    def reserve(self, *, bytes_: int = 0, tokens: int = 0) -> float:
        if not self._limits.any:
            return 0.0
        import ray

        delay: float = ray.get(self._limiter.reserve.remote(self._declared, bytes_, tokens))
        return delay

    def charge_tokens(self, tokens: int) -> None:
        if self._limits.tokens_per_minute is not None and tokens > 0:
            self._limiter.charge_tokens.remote(self._declared, tokens)

    def pause(self, seconds: float) -> None:
        self._limiter.pause.remote(self._declared, seconds)
