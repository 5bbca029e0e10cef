"""Reliability under abuse: polite retries, the concurrency cap, partial failures.

Against the local fake server over real HTTP; every assertion is a bound or a
count that does not depend on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_servers import FakeRerankServer, reference_probability
from zerank_core.errors import BackendError, BatchesFailedError
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


# --------------------------------------------------------------------------- partial failures


def test_a_failed_batch_does_not_stop_the_others_and_every_failure_is_named(
    fake_server: FakeRerankServer,
) -> None:
    # One request at a time, so the first two requests are batches 0 and 1.
    fake_server.faults.extend(["500", "503"])
    texts = [f"MRI {i}" for i in range(10)]
    scorer = RerankServerScorer(
        f"{fake_server.url}/v1/rerank", max_retries=0, max_batch_size=2, max_concurrency=1
    )
    with scorer, pytest.raises(BatchesFailedError) as failed:
        scorer.score("MRI", texts)
    error = failed.value
    assert error.batches == [0, 1]
    assert error.requests == 5
    assert str(error).startswith("2 of 5 requests failed after their retries (the other 3 were ")
    assert "batch 0 (2 texts): the server answered HTTP 500" in str(error)
    assert "batch 1 (2 texts): the server answered HTTP 503" in str(error)
    assert len(fake_server.requests) == 5  # every batch was sent
    partial = error.partial_scores[0]  # type: ignore[attr-defined]
    assert [math.isnan(v) for v in partial] == [True] * 4 + [False] * 6
    assert partial[4:] == [reference_probability("MRI", t) for t in texts[4:]]


async def test_a_single_failed_batch_is_its_own_error_after_the_others_ran(
    fake_server: FakeRerankServer,
) -> None:
    fake_server.faults.extend(["500"])
    scorer = RerankServerScorer(
        f"{fake_server.url}/v1/rerank", max_retries=0, max_batch_size=2, max_concurrency=1
    )
    async with scorer:
        with pytest.raises(BackendError) as failed:
            await scorer.ascore("MRI", [f"MRI {i}" for i in range(6)])
    assert type(failed.value) is BackendError
    assert failed.value.status_code == 500
    assert len(fake_server.requests) == 3


def test_a_refusal_stops_the_job_at_once(fake_server: FakeRerankServer) -> None:
    fake_server.faults.extend(["401"] * 10)
    scorer = RerankServerScorer(
        f"{fake_server.url}/v1/rerank", max_retries=0, max_batch_size=2, max_concurrency=1
    )
    with scorer, pytest.raises(BackendError) as failed:
        scorer.score("MRI", [f"MRI {i}" for i in range(10)])
    assert failed.value.status_code == 401
    assert len(fake_server.requests) == 1


def test_the_page_gate_names_the_criterion_of_every_failed_batch(
    fake_server: FakeRerankServer,
) -> None:
    from zerank_core.criteria import Criterion
    from zerank_core.gate import PageGate
    from zerank_core.loaders import Document

    fake_server.faults.extend(["500", "500"])
    scorer = RerankServerScorer(
        f"{fake_server.url}/v1/rerank", max_retries=0, max_batch_size=4, max_concurrency=1
    )
    criteria = [Criterion("A", "renewal"), Criterion("B", "invoice")]
    with scorer, pytest.raises(BatchesFailedError) as failed:
        PageGate(scorer).run(Document.from_texts([f"page {i}" for i in range(4)]), criteria)
    message = str(failed.value)
    assert "criterion 'A', batch 0" in message
    assert "criterion 'B', batch 1" in message


def test_the_cli_without_a_cache_keeps_what_came_back_and_resumes(
    fake_server: FakeRerankServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import tempfile

    from zerank_core.cli import main

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    document = tmp_path / "packet.json"
    document.write_text(json.dumps([f"page {i} renewal" for i in range(40)]), encoding="utf-8")
    criteria = tmp_path / "criteria.txt"
    criteria.write_text("renewal deadline\ninvoice amount\n", encoding="utf-8")
    url = f"{fake_server.url}/v1/rerank"
    argv = ["compress", str(document), "-c", str(criteria), "--server-url", url, "-o", "-"]
    # Every request for the second criterion fails, whatever its retries.
    fake_server.fail_query = "invoice"
    out, err = io.StringIO(), io.StringIO()
    code = main([*argv, "--no-cache"], stdout=out, stderr=err)
    assert code == 2, err.getvalue()
    line = err.getvalue().strip().splitlines()[-1]
    assert line.startswith("zerank: error: ")
    assert "rerun with --cache " in line
    kept = Path(line.rpartition("rerun with --cache ")[2].split(" ")[0])
    assert kept.exists()
    assert "criterion 'C2'" in line
    assert "criterion 'C1'" not in line
    fake_server.fail_query = None
    sent_before = fake_server.documents_served
    code = main([*argv, "--cache", str(kept)], stdout=io.StringIO(), stderr=err)
    assert code == 0, err.getvalue()
    # Only the failed criterion's pages went out again.
    assert fake_server.documents_served - sent_before == 40
    # A run that succeeds leaves no temporary cache behind.
    code = main([*argv, "--no-cache"], stdout=io.StringIO(), stderr=io.StringIO())
    assert code == 0
    assert [p for p in (tmp_path / "tmp").iterdir() if p != kept.parent] == []


# --------------------------------------------------------------------------- planning under load


async def test_concurrent_small_calls_are_not_split_over_slots_others_hold(
    fake_server: FakeRerankServer,
) -> None:
    # Alone, a 20-text call is split over free slots (2 requests of 10 finish
    # sooner than one of 20); twenty at once share the slots, one request each.
    texts = [[f"MRI {call} {i}" for i in range(20)] for call in range(20)]
    async with RerankServerScorer(f"{fake_server.url}/v1/rerank", max_concurrency=4) as scorer:
        alone = await scorer.ascore("MRI", texts[0])
        assert len(fake_server.requests) == 2
        fake_server.requests.clear()
        together = await asyncio.gather(*(scorer.ascore("MRI", t) for t in texts))
    assert alone == together[0]
    assert together == [[reference_probability("MRI", x) for x in t] for t in texts]
    # The first two calls see a share of 4 and 2 slots; every later one gets 1.
    assert len(fake_server.requests) == 22


def test_a_job_alone_plans_for_every_slot_and_one_among_others_for_its_share() -> None:
    from zerank_core.scorers.planning import planning_slots

    assert planning_slots(16, free=16, running_jobs=0) == 16
    assert planning_slots(16, free=16, running_jobs=1) == 8
    assert planning_slots(16, free=3, running_jobs=1) == 3
    assert planning_slots(16, free=0, running_jobs=40) == 1
