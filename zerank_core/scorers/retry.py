"""The retry policy of remote scorers: what is sent again, how often, after how long.

Rules, applied per planned request (batch):

1. A **429** is resubmitted until the job's deadline; it does not count
   against ``max_retries``.
2. A **transient** failure (connection error, timeout, 408/409/5xx, a body
   that fails validation) is resubmitted up to ``max_retries`` times.
3. Anything else (401, 400, ...) raises at once.
4. The wait before a transient failure's resubmission is exponential backoff
   with full jitter: a random share of ``min(8 s, 0.25 s × 2^(n-1))`` for the
   n-th failure.
5. The wait after the n-th 429 in a row is exponential backoff with equal
   jitter: half of ``min(30 s, 0.25 s × 2^(n-1))`` plus a random share of
   the other half. It never drops below that half, so n 429s in a row take
   at least ``0.125 s × (2^n − 1)`` (capped at 15 s a step), whatever the
   server says.
6. A server's ``Retry-After`` is a floor under that backoff, never the whole
   wait: ``max(retry_after + up to 10 % jitter, backoff)``. ``Retry-After: 0``
   therefore still backs off (at most ~45 requests per batch in the default
   600 s deadline, not thousands).
7. After a 429 the whole scorer pauses for that wait (the server's budget is
   spent for every request, not only this one), and no wait runs past the
   job's deadline.

How this composes with the ``zeroentropy`` SDK's own retries: the clients a
scorer builds get ``max_retries=0``, so this policy is the only retry layer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Failure", "backoff", "parse_retry_after"]

_BACKOFF_BASE_S = 0.25
_BACKOFF_CAP_S = 8.0
_RATE_LIMIT_BACKOFF_BASE_S = 0.25
_RATE_LIMIT_BACKOFF_CAP_S = 30.0


@dataclass(frozen=True)
class Failure:
    """How the engine should treat an exception a request raised.

    ``rate_limited``: a 429; wait ``retry_after`` seconds (when the server
    said) and resubmit until the deadline. ``transient``: resubmit up to
    ``max_retries`` times with backoff.
    """

    kind: Literal["rate_limited", "transient"]
    retry_after: float | None = None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``retry-after`` (or ``retry-after-ms``-converted) header value."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


# --------------------------------------------------------------------------- planning


def backoff(failure: Failure, *, attempt: int, jitter: Callable[[float], float]) -> float:
    """Seconds to wait before resending after the ``attempt``-th failure of this kind in a row.

    ``jitter(high)`` draws uniformly from ``[0, high]``. See the module's rules 4–6.
    """
    step = 2.0 ** max(attempt - 1, 0)
    if failure.kind == "transient":
        return jitter(min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * step))
    cap = min(_RATE_LIMIT_BACKOFF_CAP_S, _RATE_LIMIT_BACKOFF_BASE_S * step)
    delay = cap / 2 + jitter(cap / 2)
    if failure.retry_after is not None:
        # Requests the server refused together should not all come back together.
        floor = failure.retry_after + jitter(0.1 * failure.retry_after + 0.05)
        delay = max(delay, floor)
    return delay
