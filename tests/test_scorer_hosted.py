"""The hosted ZeroEntropy backend, through the real SDK against a local server."""

from __future__ import annotations

import asyncio

import pytest
import zeroentropy
from pydantic import SecretStr

from tests.fake_servers import FakeRerankServer, reference_probability
from zerank_core import BackendError, ConfigurationError, InvalidResponseError
from zerank_core.scorers import ZeroEntropyScorer

QUERY = "termination notice period"


def make_scorer(server: FakeRerankServer, **kwargs: object) -> ZeroEntropyScorer:
    options: dict[str, object] = {"api_key": "ze-test-key", "base_url": f"{server.url}/v1"}
    options.update(kwargs)
    return ZeroEntropyScorer(**options)  # type: ignore[arg-type]


def test_scores_come_back_in_input_order(fake_server: FakeRerankServer) -> None:
    texts = ["notice period", "termination", "unrelated", "termination notice period"]
    scores = make_scorer(fake_server).score(QUERY, texts)
    assert scores == pytest.approx([reference_probability(QUERY, t) for t in texts])
    body = fake_server.requests[0].body
    assert body["model"] == "zerank-2"
    assert body["documents"] == texts
    assert fake_server.requests[0].headers["Authorization"] == "Bearer ze-test-key"


def test_thousand_texts_across_many_batches_keep_input_order(
    fake_server: FakeRerankServer,
) -> None:
    texts = [
        f"document {i} " + ("notice " if i % 3 == 0 else "other ") * (i % 7) for i in range(1000)
    ]
    scorer = make_scorer(fake_server, max_batch_size=64, max_concurrency=4)
    scores = scorer.score(QUERY, texts)
    assert scores == pytest.approx([reference_probability(QUERY, t) for t in texts])
    assert len(fake_server.requests) == 16
    assert scorer.usage.requests == 16
    assert scorer.usage.texts == 1000
    assert scorer.usage.total_tokens is not None
    assert scorer.usage.total_tokens > 0


async def test_async_matches_sync(fake_server: FakeRerankServer) -> None:
    texts = [f"termination clause {i}" if i % 2 else f"notice {i}" for i in range(300)]
    scorer = make_scorer(fake_server, max_batch_size=50, max_concurrency=3)
    assert await scorer.ascore(QUERY, texts) == scorer.score(QUERY, texts)


def test_instruction_is_appended_to_the_query(fake_server: FakeRerankServer) -> None:
    make_scorer(fake_server).score("deadline", ["x"], instruction="Prefer contract clauses")
    query = fake_server.requests[0].body["query"]
    assert query == "<query>deadline</query>\n<instruction>Prefer contract clauses</instruction>"


def test_latency_mode_is_sent(fake_server: FakeRerankServer) -> None:
    make_scorer(fake_server, latency="slow").score(QUERY, ["x"])
    assert fake_server.requests[0].body["latency"] == "slow"


def test_batches_stay_under_the_byte_limit(fake_server: FakeRerankServer) -> None:
    texts = ["n" * 400_000 for _ in range(30)]
    scorer = make_scorer(fake_server, max_batch_size=1000)
    scores = scorer.score(QUERY, texts)
    assert len(scores) == 30
    sizes = [
        sum(150 + len(r.body["query"]) + len(d) for d in r.body["documents"])
        for r in fake_server.requests
    ]
    assert len(sizes) == 3
    assert max(sizes) <= 5_000_000


def test_a_text_over_the_byte_limit_is_a_clear_error(fake_server: FakeRerankServer) -> None:
    with pytest.raises(ConfigurationError, match="text 1 needs"):
        make_scorer(fake_server).score(QUERY, ["ok", "x" * 5_000_000])
    assert fake_server.requests == []


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("missing", "no score for indices"),
        ("duplicate", "more than once"),
        ("nan", "not finite"),
        ("out_of_range", "outside"),
    ],
)
def test_invalid_responses_raise_and_name_the_batch(
    fake_server: FakeRerankServer, fault: str, message: str
) -> None:
    # max_retries=0: a bad response is otherwise sent again (see test_engine.py).
    scorer = make_scorer(fake_server, max_batch_size=2, max_concurrency=1, max_retries=0)
    fake_server.faults.extend([None, fault])  # type: ignore[list-item]
    with pytest.raises(InvalidResponseError, match=message) as info:
        scorer.score(QUERY, ["a", "b", "c notice", "d termination"])
    assert info.value.batch == 1
    assert info.value.batch_size == 2
    assert "batch 1" in str(info.value)


async def test_async_invalid_response_raises(fake_server: FakeRerankServer) -> None:
    fake_server.faults.append("missing")
    with pytest.raises(InvalidResponseError, match="no score"):
        await make_scorer(fake_server, max_retries=0).ascore(QUERY, ["a", "b"])


def test_engine_retries_429_and_500_honouring_retry_after(fake_server: FakeRerankServer) -> None:
    fake_server.faults.extend(["429", "500"])
    scores = make_scorer(fake_server, max_retries=2).score(QUERY, ["notice"])
    assert scores == pytest.approx([reference_probability(QUERY, "notice")])
    assert len(fake_server.requests) == 3


def test_sdk_errors_become_backend_errors_with_the_sdk_error_as_cause(
    fake_server: FakeRerankServer,
) -> None:
    fake_server.faults.append("500")
    with pytest.raises(BackendError, match=r"batch 0 .*HTTP 500") as info:
        make_scorer(fake_server, max_retries=0).score(QUERY, ["notice"])
    assert info.value.status_code == 500
    assert isinstance(info.value.__cause__, zeroentropy.InternalServerError)


def test_user_supplied_clients_are_used(fake_server: FakeRerankServer) -> None:
    client = zeroentropy.ZeroEntropy(api_key="k", base_url=f"{fake_server.url}/v1")
    async_client = zeroentropy.AsyncZeroEntropy(api_key="k", base_url=f"{fake_server.url}/v1")
    scorer = ZeroEntropyScorer(client=client, async_client=async_client)
    assert scorer.client is client
    assert scorer.score(QUERY, ["notice"]) == asyncio.run(scorer.ascore(QUERY, ["notice"]))


def test_key_and_base_url_from_environment(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZEROENTROPY_API_KEY", "env-secret-key")
    monkeypatch.setenv("ZEROENTROPY_BASE_URL", f"{fake_server.url}/v1")
    scorer = ZeroEntropyScorer()
    scorer.score(QUERY, ["x"])
    assert fake_server.requests[0].headers["Authorization"] == "Bearer env-secret-key"
    assert "env-secret-key" not in repr(scorer)


def test_missing_key_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="ZEROENTROPY_API_KEY"):
        ZeroEntropyScorer()


def test_secret_key_is_accepted_and_hidden(fake_server: FakeRerankServer) -> None:
    scorer = make_scorer(fake_server, api_key=SecretStr("hidden-key"))
    scorer.score(QUERY, ["x"])
    assert fake_server.requests[0].headers["Authorization"] == "Bearer hidden-key"
    assert "hidden-key" not in repr(scorer) + str(vars(scorer))


def test_empty_input_makes_no_request(fake_server: FakeRerankServer) -> None:
    assert make_scorer(fake_server).score(QUERY, []) == []
    assert fake_server.requests == []


def test_declares_model_and_scale(fake_server: FakeRerankServer) -> None:
    scorer = make_scorer(fake_server, model="zerank-1-small")
    assert scorer.model == "zerank-1-small"
    assert scorer.scale == "probability"


def test_async_clients_follow_the_event_loop(fake_server: FakeRerankServer) -> None:
    """asyncio.run twice with one scorer: a client bound to a closed loop would fail."""
    scorer = make_scorer(fake_server)
    first = asyncio.run(scorer.ascore(QUERY, ["notice", "x"]))
    assert asyncio.run(scorer.ascore(QUERY, ["notice", "x"])) == first
