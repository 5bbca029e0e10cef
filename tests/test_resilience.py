"""Reliability under abuse: polite retries, the concurrency cap, partial failures.

Against the local fake server over real HTTP; every assertion is a bound or a
count that does not depend on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from tests.fake_servers import FakeRerankServer, reference_probability
from zerank_core.errors import BackendError
from zerank_core.scorers import RerankServerScorer, ZeroEntropyScorer
from zerank_core.scorers.retry import Failure, backoff


def _scorer(
    server: FakeRerankServer, backend: str, **kwargs: object
) -> RerankServerScorer | ZeroEntropyScorer:
    if backend == "server":
        return RerankServerScorer(f"{server.url}/v1/rerank", **kwargs)  # type: ignore[arg-type]
    return ZeroEntropyScorer(api_key="k", base_url=f"{server.url}/v1", **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def always_429() -> Iterator[FakeRerankServer]:
    server = FakeRerankServer(always_429="0")
    try:
        yield server
    finally:
        server.close()


# --------------------------------------------------------------------------- retry policy


@pytest.mark.parametrize("retry_after", [None, 0.0, 0.01])
def test_a_retry_after_is_a_floor_under_exponential_backoff(retry_after: float | None) -> None:
    failure = Failure("rate_limited", retry_after)
    least = [backoff(failure, attempt=n, jitter=lambda high: 0.0) for n in range(1, 12)]
    most = [backoff(failure, attempt=n, jitter=lambda high: high) for n in range(1, 12)]
    assert least[:5] == [0.125, 0.25, 0.5, 1.0, 2.0]
    assert least[-1] == 15.0
    assert most[-1] == pytest.approx(30.0)
    assert sum(least) > 60.0  # eleven 429s in a row take over a minute, whatever the server says
    slow = Failure("rate_limited", 20.0)
    assert backoff(slow, attempt=1, jitter=lambda high: 0.0) == 20.0


@pytest.mark.parametrize("backend", ["server", "hosted"])
def test_soak_an_always_429_retry_after_0_server_gets_a_bounded_number_of_requests(
    always_429: FakeRerankServer, backend: str
) -> None:
    # Two seconds of 429s with "retry-after: 0": the waits before resending
    # are at least 0.125, 0.25, 0.5, 1 s ..., so at most 6 requests fit, on any
    # machine (a slower one sends fewer). The old policy sent ~190 in 5 s.
    scorer = _scorer(always_429, backend, deadline=2.0)
    with scorer, pytest.raises(BackendError) as failed:
        scorer.score("q", ["a", "b"])
    assert failed.value.status_code == 429
    assert 2 <= len(always_429.requests) <= 7
    assert scorer.usage.rate_limited == len(always_429.requests) - 1


# --------------------------------------------------------------------------- concurrency cap


@pytest.mark.parametrize("backend", ["server", "hosted"])
def test_the_cap_holds_when_the_servers_threads_are_slow_to_finish(backend: str) -> None:
    # A thread and an event loop share one slot, so their requests take turns
    # on two connections. A server thread that has written its answer but not
    # run since (a loaded machine: here it sleeps) must not count the request as
    # still in flight: the client has its answer, released the slot, and the
    # other caller's request arrives on the other connection meanwhile. Counted
    # after the answer, the server saw 2 in flight with max_concurrency=1.
    server = FakeRerankServer(linger_s=0.2)
    texts = ["MRI a", "b", "MRI c", "d"]
    results: dict[str, list[float]] = {}
    try:
        with _scorer(server, backend, max_concurrency=1, max_batch_size=1) as scorer:

            def sync_caller() -> None:
                results["sync"] = scorer.score("MRI", texts)

            def async_caller() -> None:
                results["async"] = asyncio.run(scorer.ascore("MRI", texts))

            callers = [threading.Thread(target=sync_caller), threading.Thread(target=async_caller)]
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join()
        expected = [reference_probability("MRI", t) for t in texts]
        assert results == {"sync": expected, "async": expected}
        assert len(server.requests) == 8
        assert server.max_in_flight == 1
    finally:
        server.close()
