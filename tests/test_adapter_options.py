"""Throughput settings on the four adapters: checked at construction, seen by the server.

Each adapter takes the core scorers' names (``timeout``, ``max_retries``,
``max_concurrency``, ``requests_per_minute``, ``bytes_per_minute``,
``tokens_per_minute``, ``max_batch_size``) and hands them to the backend it
resolves; a local server records what arrives: the User-Agent, the number of
attempts, the batch sizes and the requests in flight.
"""

from __future__ import annotations

import asyncio
import pickle
from typing import Any

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.core.tools import ToolMetadata

from langchain_zerank import ZeRankClassifier, ZeRankCompressor
from llamaindex_zerank import ZeRankPostprocessor, ZeRankSelector
from tests.cli_run import call
from tests.fake_servers import FakeRerankServer, Recorded
from zerank_core import BackendError, ConfigurationError, __version__, resolve_backend
from zerank_core.scorers import BM25Scorer, RerankServerScorer, ZeroEntropyScorer

KEY = "ze-options-secret-key-5151"
QUERY = "apple banana cherry"
TEXTS = [f"apple {i} banana" if i % 2 else f"plain text {i}" for i in range(10)]
LABELS = {"fruit": "apple banana cherry", "drink": "water smoothie"}

ADAPTERS: dict[str, Any] = {
    "compressor": lambda **kw: ZeRankCompressor(threshold=None, **kw),
    "classifier": lambda **kw: ZeRankClassifier(labels=LABELS, default="other", **kw),
    "postprocessor": lambda **kw: ZeRankPostprocessor(threshold=None, **kw),
    "selector": lambda **kw: ZeRankSelector(**kw),
}
FRAMEWORK = {
    "compressor": "langchain",
    "classifier": "langchain",
    "postprocessor": "llamaindex",
    "selector": "llamaindex",
}


def agent(request: Recorded) -> str | None:
    """The User-Agent a recorded request carried, in whatever case its name was sent."""
    return {k.lower(): v for k, v in request.headers.items()}.get("user-agent")


def scorer_of(adapter: Any) -> Any:
    return adapter.get_scorer() if hasattr(adapter, "get_scorer") else adapter.scorer


def run(name: str, adapter: Any, texts: list[str] = TEXTS) -> None:
    """One call of the adapter the way its framework makes it, scoring ``texts``."""
    if name == "compressor":
        adapter.compress_documents([Document(t) for t in texts], QUERY)
    elif name == "classifier":
        adapter.batch(texts)
    elif name == "postprocessor":
        nodes = [NodeWithScore(node=TextNode(text=t)) for t in texts]
        adapter.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    else:
        choices = [ToolMetadata(description=t, name=f"t{i}") for i, t in enumerate(texts)]
        adapter.select(choices, QUERY)


# --- accepted, and checked at construction ------------------------------------------------------


@pytest.mark.parametrize("name", ADAPTERS)
def test_bm25_accepts_the_throughput_settings(name: str) -> None:
    adapter = ADAPTERS[name](model="bm25", timeout=5, max_retries=1)

    assert isinstance(scorer_of(adapter), BM25Scorer)


@pytest.mark.parametrize("name", ADAPTERS)
@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("timeout", -1, "timeout must be a finite number of seconds > 0, got -1"),
        ("timeout", 0, "timeout must be a finite number of seconds > 0, got 0"),
        ("max_retries", -1, "max_retries must be >= 0, got -1"),
        ("max_concurrency", 0, "max_concurrency must be >= 1, got 0"),
        ("max_batch_size", 0, "max_batch_size must be >= 1, got 0"),
        ("requests_per_minute", 0, "requests_per_minute must be a number > 0, got 0"),
        ("bytes_per_minute", -5, "bytes_per_minute must be a number > 0, got -5"),
        ("tokens_per_minute", float("inf"), "tokens_per_minute must be a number > 0, got inf"),
    ],
)
def test_a_bad_value_is_refused_at_construction_by_name(
    name: str, setting: str, value: float, message: str
) -> None:
    # BM25 sends no request, yet a bad value is still an error: it would be
    # one on the next backend the environment picks.
    with pytest.raises(ConfigurationError, match=message):
        ADAPTERS[name](model="bm25", **{setting: value})


@pytest.mark.parametrize("name", ADAPTERS)
def test_settings_next_to_an_explicit_scorer_are_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match=r"scorer=\.\.\. or backend settings \(timeout\)"):
        ADAPTERS[name](scorer=BM25Scorer(), timeout=5)


def test_the_library_and_the_adapters_share_the_core_names() -> None:
    choice = resolve_backend(
        server_url="http://127.0.0.1:9/v1/rerank",
        timeout=7,
        max_retries=4,
        max_concurrency=3,
        requests_per_minute=120,
        bytes_per_minute=1e6,
        tokens_per_minute=5e4,
        max_batch_size=5,
    )
    scorer = choice.scorer

    assert isinstance(scorer, RerankServerScorer)
    assert (scorer.timeout, scorer.max_retries, scorer.max_concurrency) == (7, 4, 3)
    assert scorer.max_batch_size == 5
    assert (
        scorer.limits.requests_per_minute,
        scorer.limits.bytes_per_minute,
        scorer.limits.tokens_per_minute,
    ) == (120, 1e6, 5e4)
    assert scorer.user_agent == f"zerank-gate/{__version__}"


# --- seen by a rerank server --------------------------------------------------------------------


@pytest.mark.parametrize("name", ADAPTERS)
def test_a_rerank_server_sees_user_agent_batches_and_concurrency(name: str) -> None:
    server = FakeRerankServer(latency_s=0.05)
    try:
        adapter = ADAPTERS[name](
            server_url=f"{server.url}/v1/rerank",
            timeout=5,
            max_retries=1,
            max_concurrency=2,
            max_batch_size=3,
        )
        run(name, adapter)
    finally:
        server.close()

    assert server.requests
    agents = {agent(r) for r in server.requests}
    assert agents == {f"zerank-gate/{__version__} {FRAMEWORK[name]}"}
    assert max(len(r.body["documents"]) for r in server.requests) <= 3
    assert server.max_in_flight <= 2
    assert scorer_of(adapter).timeout == 5


@pytest.mark.parametrize("name", ADAPTERS)
def test_max_retries_sets_the_number_of_attempts(name: str) -> None:
    server = FakeRerankServer()
    server.faults.extend(["500"] * 20)
    try:
        adapter = ADAPTERS[name](server_url=f"{server.url}/v1/rerank", max_retries=1)
        with pytest.raises(BackendError):
            run(name, adapter, TEXTS[:2])
        attempts: dict[str, int] = {}
        for request in server.requests:
            attempts[request.body["query"]] = attempts.get(request.body["query"], 0) + 1
    finally:
        server.close()

    # Each request is sent once and again once (the classifier and the
    # selector make one request per label; the first to fail ends the call).
    assert max(attempts.values()) == 2


def test_async_calls_carry_the_same_user_agent(fake_server: FakeRerankServer) -> None:
    compressor = ZeRankCompressor(server_url=f"{fake_server.url}/v1/rerank", threshold=None)

    asyncio.run(compressor.acompress_documents([Document(t) for t in TEXTS], QUERY))

    assert {agent(r) for r in fake_server.requests} == {f"zerank-gate/{__version__} langchain"}


def test_a_user_agent_in_headers_wins(fake_server: FakeRerankServer) -> None:
    scorer = RerankServerScorer(f"{fake_server.url}/v1/rerank", headers={"user-agent": "mine/1"})

    scorer.score(QUERY, TEXTS[:2])

    assert agent(fake_server.requests[-1]) == "mine/1"


@pytest.mark.parametrize("name", ["compressor", "postprocessor", "selector", "classifier"])
def test_a_pickled_adapter_keeps_its_settings(name: str, fake_server: FakeRerankServer) -> None:
    adapter = ADAPTERS[name](
        server_url=f"{fake_server.url}/v1/rerank", timeout=3, max_retries=0, max_batch_size=2
    )

    restored = pickle.loads(pickle.dumps(adapter))
    run(name, restored, TEXTS[:4])

    scorer = scorer_of(restored)
    assert (scorer.timeout, scorer.max_retries, scorer.max_batch_size) == (3, 0, 2)
    assert agent(fake_server.requests[-1]).endswith(FRAMEWORK[name])


# --- seen by ZeroEntropy's API, through the SDK ------------------------------------------------


@pytest.mark.parametrize("name", ADAPTERS)
def test_the_hosted_api_sees_user_agent_batches_and_attempts(
    name: str, fake_server: FakeRerankServer
) -> None:
    adapter = ADAPTERS[name](
        api_key=KEY, base_url=f"{fake_server.url}/v1", timeout=4, max_retries=1, max_batch_size=3
    )
    scorer = scorer_of(adapter)
    assert isinstance(scorer, ZeroEntropyScorer)

    run(name, adapter)
    fake_server.faults.extend(["503", "503"])
    with pytest.raises(BackendError):
        scorer.score(QUERY, TEXTS[:2])

    hosted = [r for r in fake_server.requests if r.path == "/v1/models/rerank"]
    assert {agent(r) for r in hosted} == {f"zerank-gate/{__version__} {FRAMEWORK[name]}"}
    assert max(len(r.body["documents"]) for r in hosted) <= 3
    assert [len(r.body["documents"]) for r in hosted[-2:]] == [2, 2]  # one retry, then give up
    assert scorer.client.timeout == 4
    assert scorer.client.max_retries == 0  # the engine is the one retry layer


# --- the command line --------------------------------------------------------------------------


def test_the_command_line_names_itself(fake_server: FakeRerankServer, tmp_path: Any) -> None:
    document = tmp_path / "doc.txt"
    document.write_text("apple banana\fplain water\fcherry pie", encoding="utf-8")
    criteria = tmp_path / "criteria.yaml"
    criteria.write_text("- id: fruit\n  text: apple banana cherry\n", encoding="utf-8")

    code, _, err = call(
        "compress",
        str(document),
        "--criteria",
        str(criteria),
        "--server-url",
        f"{fake_server.url}/v1/rerank",
        "--no-cache",
        "-o",
        str(tmp_path / "out.json"),
    )

    assert code == 0, err
    assert {agent(r) for r in fake_server.requests} == {f"zerank-gate/{__version__} cli"}


def test_zero_entropy_rerank_with_a_client_takes_the_engine_settings(
    fake_server: FakeRerankServer,
) -> None:
    from zeroentropy import ZeroEntropy

    from langchain_zerank import ZeroEntropyRerank

    client = ZeroEntropy(api_key=KEY, base_url=f"{fake_server.url}/v1", max_retries=0)
    reranker = ZeroEntropyRerank(client=client, max_batch_size=2, max_retries=0, top_n=10)

    reranker.compress_documents([Document(t) for t in TEXTS[:5]], QUERY)

    sizes = [len(r.body["documents"]) for r in fake_server.requests]
    assert sum(sizes) == 5
    assert max(sizes) <= 2
    with pytest.raises(ConfigurationError, match="set it on the client passed in"):
        ZeroEntropyRerank(client=client, timeout=5)
