"""The self-hosted rerank-server backend, through real httpx against a local server."""

from __future__ import annotations

import math

import pytest

from tests.fake_servers import FakeRerankServer, reference_probability
from zerank_core import BackendError, ConfigurationError, InvalidResponseError, Scale
from zerank_core.scorers import RerankServerScorer
from zerank_core.scorers.base import to_probability

QUERY = "prior authorization for MRI"
TEXTS = ["MRI of the lumbar spine", "prior authorization request", "lunch menu", "MRI prior"]
EXPECTED = [reference_probability(QUERY, t) for t in TEXTS]


@pytest.mark.parametrize("returns", ["probability", "logit", "sigmoid"])
def test_each_server_scale_converts_to_the_calibrated_probability(
    fake_server: FakeRerankServer, returns: str
) -> None:
    fake_server.returns = returns
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank", scale=returns)
    assert scorer.score(QUERY, TEXTS) == pytest.approx(EXPECTED)
    assert scorer.scale is Scale.PROBABILITY
    body = fake_server.requests[0].body
    assert body == {"model": "zerank-2", "query": QUERY, "documents": TEXTS, "top_n": 4}


def test_tei_api(fake_server: FakeRerankServer) -> None:
    fake_server.returns = "logit"
    scorer = RerankServerScorer(
        f"{fake_server.url}/tei/rerank", api="tei", scale="logit", extra_body={"raw_scores": True}
    )
    assert scorer.score(QUERY, TEXTS) == pytest.approx(EXPECTED)
    assert fake_server.requests[0].body == {"query": QUERY, "texts": TEXTS, "raw_scores": True}


async def test_async_many_batches_in_order(fake_server: FakeRerankServer) -> None:
    texts = [f"{TEXTS[i % 4]} {i}" for i in range(500)]
    scorer = RerankServerScorer(f"{fake_server.url}/rerank", max_batch_size=16, max_concurrency=4)
    scores = await scorer.ascore(QUERY, texts)
    assert scores == pytest.approx([reference_probability(QUERY, t) for t in texts])
    assert len(fake_server.requests) == math.ceil(500 / 16)
    assert scorer.usage.requests == 32
    assert scorer.score(QUERY, texts) == scores


def test_retries_429_and_503_then_succeeds(fake_server: FakeRerankServer) -> None:
    fake_server.faults.extend(["429", "429"])
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank", max_retries=2)
    assert scorer.score(QUERY, TEXTS) == pytest.approx(EXPECTED)
    assert len(fake_server.requests) == 3


def test_429_surfaces_only_past_the_deadline(fake_server: FakeRerankServer) -> None:
    fake_server.faults.extend(["429"] * 1000)
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank", max_retries=0, deadline=1.0)
    with pytest.raises(BackendError, match=r"batch 0 .* HTTP 429") as info:
        scorer.score(QUERY, TEXTS)
    assert info.value.status_code == 429
    # 429s are not counted against max_retries=0: they were resubmitted until the deadline.
    assert len(fake_server.requests) > 2


def test_server_error_is_retried_up_to_max_retries(fake_server: FakeRerankServer) -> None:
    fake_server.faults.extend(["500", "500"])
    with pytest.raises(BackendError, match=r"batch 0 .* HTTP 500"):
        RerankServerScorer(f"{fake_server.url}/v1/rerank", max_retries=1).score(QUERY, TEXTS)
    assert len(fake_server.requests) == 2


def test_client_error_is_not_retried(fake_server: FakeRerankServer) -> None:
    with pytest.raises(BackendError, match=r"HTTP 404"):
        RerankServerScorer(f"{fake_server.url}/no/such/route").score(QUERY, TEXTS)
    assert len(fake_server.requests) == 1


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("malformed", "not JSON"),
        ("wrong_shape", "unexpected body shape"),
        ("missing", "no score for indices"),
        ("duplicate", "more than once"),
        ("nan", "not finite"),
        ("out_of_range", "outside"),
    ],
)
async def test_invalid_responses_raise_sync_and_async(
    fake_server: FakeRerankServer, fault: str, message: str
) -> None:
    # max_retries=0: a bad response is otherwise sent again (see test_engine.py).
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank", max_batch_size=2, max_retries=0)
    fake_server.faults.append(fault)
    with pytest.raises(InvalidResponseError, match=message):
        scorer.score(QUERY, TEXTS[:2])
    fake_server.faults.append(fault)
    with pytest.raises(InvalidResponseError, match=message):
        await scorer.ascore(QUERY, TEXTS[:2])


def test_logit_scale_accepts_values_outside_unit_interval(fake_server: FakeRerankServer) -> None:
    fake_server.returns = "logit"
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank", scale=Scale.LOGIT)
    assert all(0 < s < 1 for s in scorer.score(QUERY, TEXTS))


def test_key_headers_and_env(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZERANK_SERVER_URL", f"{fake_server.url}/v1/rerank")
    monkeypatch.setenv("ZERANK_SERVER_API_KEY", "server-secret")
    monkeypatch.setenv("ZERANK_SERVER_MODEL", "polaria-tech/zerank-2-reranker-vllm")
    scorer = RerankServerScorer(headers={"X-Tenant": "t1"})
    scorer.score(QUERY, ["x"])
    request = fake_server.requests[0]
    assert request.headers["Authorization"] == "Bearer server-secret"
    assert request.headers["X-Tenant"] == "t1"
    assert request.body["model"] == "polaria-tech/zerank-2-reranker-vllm"
    assert "server-secret" not in repr(scorer)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"url": "localhost:8000"}, "http://"),
        ({"url": "http://x", "scale": "percent"}, "percent"),
        ({"url": "http://x", "api": "grpc"}, "grpc"),
        ({"url": "http://x", "max_batch_size": 0}, "max_batch_size"),
    ],
)
def test_bad_configuration_names_the_value(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        RerankServerScorer(**kwargs)


def test_missing_url_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="ZERANK_SERVER_URL"):
        RerankServerScorer()


@pytest.mark.parametrize(
    ("value", "scale", "expected"),
    [
        (5.41, Scale.LOGIT, 0.74687),
        (-4.5, Scale.LOGIT, 0.28905),
        (1 / (1 + math.exp(-5.41)), Scale.SIGMOID, 0.74687),
        (0.0, Scale.SIGMOID, 0.0),
        (1.0, Scale.SIGMOID, 1.0),
        (0.42, Scale.PROBABILITY, 0.42),
        (-2000.0, Scale.LOGIT, 0.0),
    ],
)
def test_the_one_place_scales_are_converted(value: float, scale: Scale, expected: float) -> None:
    assert to_probability(value, scale) == pytest.approx(expected, abs=1e-4)


def test_async_clients_follow_the_event_loop(fake_server: FakeRerankServer) -> None:
    """asyncio.run twice with one scorer: a client bound to a closed loop would fail."""
    import asyncio

    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank")
    first = asyncio.run(scorer.ascore(QUERY, TEXTS))
    assert asyncio.run(scorer.ascore(QUERY, TEXTS)) == first


async def test_concurrency_is_bounded_sync_and_async(fake_server: FakeRerankServer) -> None:
    fake_server.latency_s = 0.05
    texts = [f"MRI {i}" for i in range(24)]
    scorer = RerankServerScorer(f"{fake_server.url}/rerank", max_batch_size=2, max_concurrency=3)
    await scorer.ascore(QUERY, texts)
    assert 1 < fake_server.max_in_flight <= 3
    fake_server.max_in_flight = 0
    scorer.score(QUERY, texts)
    assert 1 < fake_server.max_in_flight <= 3
