"""The execution engine: planning, one concurrency bound per scorer, pacing, retries.

Everything runs against the local fake server over real HTTP (httpx and the
``zeroentropy`` SDK); nothing here patches the code it checks.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator

import pytest

from tests.fake_servers import (
    RANDOM_FAULTS,
    FakeRerankServer,
    hashed_probability,
    reference_probability,
)
from zerank_core import ConfigurationError
from zerank_core.classify import LabelClassifier
from zerank_core.scorers import RerankServerScorer, ZeroEntropyScorer
from zerank_core.scorers.base import ScoreItem, score_many
from zerank_core.scorers.engine import (
    PACING_HEADROOM,
    Pacer,
    RateLimits,
    Slots,
    plan_requests,
)


@pytest.fixture
def slow_server() -> Iterator[FakeRerankServer]:
    server = FakeRerankServer(latency_s=0.05)
    try:
        yield server
    finally:
        server.close()


# --------------------------------------------------------------------------- planning


def _covered(batches: list, sizes: list[int]) -> None:
    seen = [[0] * n for n in sizes]
    for batch in batches:
        for index in batch.indices:
            seen[batch.item][index] += 1
    assert all(count == 1 for row in seen for count in row)


def test_small_job_is_spread_over_every_slot() -> None:
    pages = [f"page {i}" for i in range(150)]
    batches = plan_requests(["q"] * 4, [pages] * 4, slots=16, max_batch_size=256)
    assert len(batches) == 16
    assert {len(b.indices) for b in batches} == {37, 38}
    _covered(batches, [150] * 4)


def test_big_job_uses_the_fewest_requests_that_fill_every_slot_evenly() -> None:
    pages = [f"page {i}" for i in range(150)]
    batches = plan_requests(["q"] * 80, [pages] * 80, slots=16, max_batch_size=256)
    # 80 requests of 150 are five full rounds on 16 slots: cutting them smaller
    # only adds rounds of per-request overhead.
    assert len(batches) == 80
    _covered(batches, [150] * 80)
    uneven = plan_requests(["q"] * 18, [pages] * 18, slots=16, max_batch_size=256)
    # 18 whole criteria would leave 14 slots idle for a second round: split them.
    assert len(uneven) > 18
    _covered(uneven, [150] * 18)


def test_plan_respects_size_bytes_and_the_rate_limit_preference() -> None:
    texts = ["x" * 1000] * 100
    batches = plan_requests(["q"], [texts], slots=4, max_batch_size=30, max_bytes=10_000)
    assert all(len(b.indices) <= 30 for b in batches)
    assert all(sum(150 + 1 + 1000 for _ in b.indices) <= 10_000 for b in batches)
    _covered(batches, [100])
    fewest = plan_requests(["q"], [texts], slots=4, max_batch_size=30, fewest_requests=True)
    assert len(fewest) == 4  # ceil(100 / 30)
    with pytest.raises(ConfigurationError, match="text 0 needs"):
        plan_requests(["q"], [["x" * 20_000]], slots=1, max_batch_size=1, max_bytes=10_000)


def test_small_calls_stay_one_request() -> None:
    batches = plan_requests(["q"], [["a", "b", "c", "d"]], slots=16, max_batch_size=256)
    assert [b.indices for b in batches] == [(0, 1, 2, 3)]


# --------------------------------------------------------------------------- pacing


def test_token_buckets_space_requests_by_their_cost() -> None:
    now = [100.0]
    pacer = Pacer(RateLimits(requests_per_minute=60, bytes_per_minute=6000), clock=lambda: now[0])
    second = 1.0 / PACING_HEADROOM  # paced a little under each limit
    assert pacer.reserve(bytes_=100) == 0.0  # 1 s of requests, 1 s of bytes
    assert pacer.reserve(bytes_=300) == pytest.approx(second)
    # the bytes budget now binds: 300 bytes at 100 bytes/s
    assert pacer.reserve(bytes_=10) == pytest.approx(4 * second)
    now[0] = 200.0  # long idle: no burst is banked
    assert pacer.reserve(bytes_=10) == 0.0
    assert pacer.reserve(bytes_=10) == pytest.approx(second)
    pacer.pause(30.0)
    assert pacer.reserve() == pytest.approx(30.0)


def test_token_budget_is_corrected_by_what_the_backend_reports() -> None:
    now = [0.0]
    pacer = Pacer(RateLimits(tokens_per_minute=6000), clock=lambda: now[0])
    second = 1.0 / PACING_HEADROOM
    assert pacer.reserve(tokens=100) == 0.0  # 100 tokens at 100 tokens/s
    pacer.charge_tokens(200)  # the response reported 200 more than estimated
    assert pacer.reserve(tokens=100) == pytest.approx(3 * second)
    pacer.charge_tokens(-50)  # an overestimate is not refunded
    assert pacer.reserve(tokens=100) == pytest.approx(4 * second)


@pytest.mark.parametrize(
    "bad", [{"requests_per_minute": 0}, {"bytes_per_minute": -1}, {"tokens_per_minute": math.nan}]
)
def test_bad_rate_limits_are_named(bad: dict[str, float]) -> None:
    name = next(iter(bad))
    with pytest.raises(ConfigurationError, match=name):
        RerankServerScorer("http://localhost:1/rerank", **bad)  # type: ignore[arg-type]


def test_bad_concurrency_and_retries_are_named() -> None:
    with pytest.raises(ConfigurationError, match="max_concurrency must be >= 1, got 0"):
        RerankServerScorer("http://localhost:1/rerank", max_concurrency=0)
    with pytest.raises(ConfigurationError, match="max_retries must be >= 0, got -1"):
        ZeroEntropyScorer(api_key="k", max_retries=-1)
    with pytest.raises(ConfigurationError, match="deadline"):
        ZeroEntropyScorer(api_key="k", deadline=-5)


def test_a_request_limit_is_kept_and_429s_never_surface() -> None:
    """The server allows 8 requests per 0.5 s; the client is told 960/min and stays inside."""
    server = FakeRerankServer(requests_per_minute=960, window_s=0.5)
    try:
        scorer = RerankServerScorer(
            f"{server.url}/rerank", max_batch_size=4, requests_per_minute=960
        )
        texts = [f"prior authorization {i}" for i in range(48)]
        scores = scorer.score("prior authorization", texts)
        assert scores == [reference_probability("prior authorization", t) for t in texts]
        assert scorer.usage.requests == 12
        assert scorer.usage.rate_limited == server.rate_limited
    finally:
        server.close()


async def test_without_a_client_limit_429s_are_waited_out() -> None:
    server = FakeRerankServer(requests_per_minute=1200, window_s=0.25)  # 5 per 0.25 s
    try:
        scorer = RerankServerScorer(f"{server.url}/rerank", max_batch_size=2, max_retries=0)
        texts = [f"MRI {i}" for i in range(60)]
        scores = await scorer.ascore("MRI", texts)
        assert scores == [reference_probability("MRI", t) for t in texts]
        assert server.rate_limited > 0
        assert scorer.usage.rate_limited == server.rate_limited
        assert scorer.usage.requests == 30
    finally:
        server.close()


# --------------------------------------------------------------------------- one bound per scorer


def test_slots_are_shared_by_threads_and_event_loops() -> None:
    slots = Slots(2)
    held = []
    peak = [0]
    lock = threading.Lock()

    def hold() -> None:
        with lock:
            held.append(1)
            peak[0] = max(peak[0], len(held))
        threading.Event().wait(0.01)
        with lock:
            held.pop()

    def thread_user() -> None:
        for _ in range(20):
            slots.acquire()
            try:
                hold()
            finally:
                slots.release()

    async def loop_user() -> None:
        async def one() -> None:
            await slots.aacquire()
            try:
                await asyncio.to_thread(hold)
            finally:
                slots.release()

        await asyncio.gather(*(one() for _ in range(20)))

    workers = [threading.Thread(target=thread_user) for _ in range(2)]
    workers += [threading.Thread(target=asyncio.run, args=(loop_user(),)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert peak[0] == 2
    assert slots.in_use == 0


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    slots = Slots(1)
    await slots.aacquire()
    waiter = asyncio.ensure_future(slots.aacquire())
    await asyncio.sleep(0)
    waiter.cancel()
    slots.release()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(slots.aacquire(), timeout=1)
    slots.release()
    assert slots.in_use == 0


@pytest.mark.parametrize("backend", ["server", "hosted"])
def test_two_concurrent_callers_never_exceed_max_concurrency(
    slow_server: FakeRerankServer, backend: str
) -> None:
    if backend == "server":
        scorer: RerankServerScorer | ZeroEntropyScorer = RerankServerScorer(
            f"{slow_server.url}/rerank", max_batch_size=2, max_concurrency=3
        )
    else:
        scorer = ZeroEntropyScorer(
            api_key="k", base_url=f"{slow_server.url}/v1", max_batch_size=2, max_concurrency=3
        )
    texts = [f"MRI {i}" for i in range(40)]
    results: dict[str, list[float]] = {}

    def sync_caller() -> None:
        results["sync"] = scorer.score("MRI", texts)

    def async_caller() -> None:
        async def both() -> list[list[float]]:
            return list(
                await asyncio.gather(scorer.ascore("MRI", texts), scorer.ascore("x", texts))
            )

        results["async"], results["other"] = asyncio.run(both())

    callers = [threading.Thread(target=sync_caller), threading.Thread(target=async_caller)]
    callers.append(threading.Thread(target=sync_caller))
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert slow_server.max_in_flight == 3
    assert results["sync"] == results["async"] == [reference_probability("MRI", t) for t in texts]
    scorer.close()


async def test_the_classifier_is_bounded_by_its_scorer(slow_server: FakeRerankServer) -> None:
    scorer = RerankServerScorer(f"{slow_server.url}/rerank", max_concurrency=2)
    labels = {f"label{i}": f"topic {i}" for i in range(10)}
    results = await LabelClassifier(scorer, labels).aclassify(["topic 3 text", "other"])
    assert len(results) == 2
    assert slow_server.max_in_flight == 2
    assert len(slow_server.requests) == 10  # one request per label, never N × M
    await scorer.aclose()


def test_score_many_falls_back_to_score_for_plain_scorers() -> None:
    class Plain:
        def __init__(self) -> None:
            self.calls = 0

        def score(
            self, query: str, texts: list[str], *, instruction: str | None = None
        ) -> list[float]:
            self.calls += 1
            return [reference_probability(query, t) for t in texts]

        async def ascore(
            self, query: str, texts: list[str], *, instruction: str | None = None
        ) -> list[float]:
            return self.score(query, texts, instruction=instruction)

    plain = Plain()
    seen: list[int] = []
    out = score_many(
        plain,
        [ScoreItem("a", ["a", "b"]), ("b", ["b"])],
        on_batch=lambda item, indices, scores: seen.append(item),
    )
    assert out == [plain.score("a", ["a", "b"]), plain.score("b", ["b"])]
    assert plain.calls == 4  # two from score_many, two above
    assert sorted(seen) == [0, 1]


# --------------------------------------------------------------------------- fault soak

SOAK_FAULTS = 0.15


def _soak_server() -> FakeRerankServer:
    return FakeRerankServer(
        fault_rate=SOAK_FAULTS, seed=11, slow_s=0.6, score_fn=hashed_probability
    )


def _assert_soak(server: FakeRerankServer, expected: list[float], got: list[float]) -> None:
    dropped = sum(1 for value in got if not math.isfinite(value))
    misassigned = sum(
        1
        for want, value in zip(expected, got, strict=True)
        if math.isfinite(value) and value != want
    )
    assert (len(got), dropped, misassigned) == (len(expected), 0, 0)
    injected = sum(server.faults_injected.values())
    assert injected >= 0.1 * len(server.requests)
    # Every kind of fault was drawn (the seeded draws do not depend on timing).
    assert set(server.faults_injected) == set(RANDOM_FAULTS)


def test_fault_soak_through_the_page_gate() -> None:
    from zerank_core.criteria import Criterion
    from zerank_core.gate import PageGate
    from zerank_core.loaders import Document

    server = _soak_server()
    try:
        pages = [f"page {p}: clause {p * 7 % 31} of section {p % 9}" for p in range(100)]
        criteria = [Criterion(f"C{c}", f"criterion {c} about section {c % 9}") for c in range(100)]
        scorer = ZeroEntropyScorer(
            api_key="k",
            base_url=f"{server.url}/v1",
            max_batch_size=20,
            timeout=0.3,
            max_retries=12,
        )
        with scorer:
            result = PageGate(scorer).run(Document.from_texts(pages), criteria)
        expected = [hashed_probability(c.text, p) for c in criteria for p in pages]
        got = [
            result.results[c].scores[number]
            for c in range(len(criteria))
            for number in range(1, len(pages) + 1)
        ]
        _assert_soak(server, expected, got)
        assert scorer.usage.retries > 0
    finally:
        server.close()


async def test_fault_soak_through_ascore() -> None:
    server = _soak_server()
    try:
        texts = [f"text {i} mentions item {i % 97} and item {i % 13}" for i in range(10_000)]
        async with RerankServerScorer(
            f"{server.url}/v1/rerank", max_batch_size=20, timeout=0.3, max_retries=12
        ) as scorer:
            got = await scorer.ascore("which item", texts)
        _assert_soak(server, [hashed_probability("which item", t) for t in texts], got)
    finally:
        server.close()
