"""ZeRankPostprocessor inside real LlamaIndex objects: index, retriever, query engine, events."""

from __future__ import annotations

import asyncio
import itertools
import math
import pickle
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import root_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import (
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)
from pydantic import SecretStr, ValidationError

from llamaindex_zerank import ZeRankPostprocessor
from tests.fake_servers import FakeRerankServer
from zerank_core.errors import ConfigurationError, InvalidResponseError
from zerank_core.scorers.base import Scale
from zerank_core.scorers.lexical import BM25Scorer

KEY = "sk-zerank-test-key-0123456789"


class TableScorer:
    """Scores each text from a fixed table; records what it was asked."""

    model = "table-scorer"
    scale = Scale.PROBABILITY
    usage = None

    def __init__(self, table: Mapping[str, float]) -> None:
        self.table = dict(table)
        self.calls: list[tuple[str, list[str], str | None]] = []

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        self.calls.append((query, list(texts), instruction))
        return [self.table[text] for text in texts]

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        await asyncio.sleep(0)
        return self.score(query, texts, instruction=instruction)


class ShortScorer(TableScorer):
    """Drops the last score, as a broken backend would."""

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return super().score(query, texts, instruction=instruction)[:-1]


class RerankEvents(BaseEventHandler):
    """Collects ReRank events from the root dispatcher."""

    events: list[Any]

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, ReRankStartEvent | ReRankEndEvent):
            self.events.append(event)


TEXTS = {
    "a": "The Eiffel Tower is in Paris and opened in 1889.",
    "b": "Bananas are rich in potassium.",
    "c": "Paris is the capital of France.",
    "d": "The Louvre is the most visited museum in Paris.",
    "e": "Photosynthesis turns light into chemical energy.",
}
SCORES = {TEXTS["a"]: 0.9, TEXTS["b"]: 0.1, TEXTS["c"]: 0.7, TEXTS["d"]: 0.5, TEXTS["e"]: 0.2}


@pytest.fixture
def rerank_events() -> Iterator[RerankEvents]:
    handler = RerankEvents(events=[])
    root_dispatcher.add_event_handler(handler)
    try:
        yield handler
    finally:
        root_dispatcher.event_handlers.remove(handler)


def make_nodes() -> list[NodeWithScore]:
    """Five scored nodes in retrieval order, chained by PREVIOUS/NEXT and one source."""
    nodes = [
        TextNode(id_=f"node-{name}", text=text, metadata={"source": f"{name}.txt"})
        for name, text in TEXTS.items()
    ]
    for prev, nxt in itertools.pairwise(nodes):
        prev.relationships[NodeRelationship.NEXT] = RelatedNodeInfo(node_id=nxt.node_id)
        nxt.relationships[NodeRelationship.PREVIOUS] = RelatedNodeInfo(node_id=prev.node_id)
    for node in nodes:
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id="doc-1")
    return [NodeWithScore(node=n, score=0.8 - 0.1 * i) for i, n in enumerate(nodes)]


def text_only(nodes: list[NodeWithScore]) -> list[NodeWithScore]:
    """Nodes without metadata, so the scored text is exactly the table's key."""
    return [
        NodeWithScore(node=TextNode(id_=n.node.node_id, text=n.node.get_content()), score=n.score)
        for n in nodes
    ]


def gate(table: Mapping[str, float] = SCORES, **options: Any) -> ZeRankPostprocessor:
    options.setdefault("metadata_mode", MetadataMode.NONE)
    return ZeRankPostprocessor(scorer=TableScorer(table), **options)


def kept_texts(nodes: list[NodeWithScore]) -> list[str]:
    return [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]


def make_index() -> VectorStoreIndex:
    return VectorStoreIndex([n.node for n in make_nodes()], embed_model=MockEmbedding(embed_dim=8))


# --- inside a real query engine -------------------------------------------------------------


def engine_with(postprocessor: ZeRankPostprocessor) -> RetrieverQueryEngine:
    retriever = make_index().as_retriever(similarity_top_k=5)
    return RetrieverQueryEngine.from_args(
        retriever, llm=MockLLM(), node_postprocessors=[postprocessor]
    )


def test_query_engine_keeps_only_passing_nodes() -> None:
    scorer = TableScorer(SCORES)
    engine = engine_with(ZeRankPostprocessor(scorer=scorer, metadata_mode=MetadataMode.NONE))

    response = engine.query("What is there to see in Paris?")

    assert [n.node.node_id for n in response.source_nodes] == ["node-a", "node-c", "node-d"]
    assert [n.score for n in response.source_nodes] == [0.9, 0.7, 0.5]
    # MockLLM echoes its prompt: only the kept nodes reached the LLM.
    assert TEXTS["a"] in str(response)
    assert TEXTS["d"] in str(response)
    assert TEXTS["b"] not in str(response)
    assert TEXTS["e"] not in str(response)
    assert "relevance_score" not in str(response)
    assert "retrieval_score" not in str(response)
    assert scorer.calls[0][0] == "What is there to see in Paris?"


async def test_query_engine_async_path_uses_ascore() -> None:
    scorer = TableScorer(SCORES)
    engine = engine_with(
        ZeRankPostprocessor(scorer=scorer, metadata_mode=MetadataMode.NONE, top_k=2)
    )

    response = await engine.aquery("What is there to see in Paris?")

    assert [n.node.node_id for n in response.source_nodes] == ["node-a", "node-c"]
    assert len(scorer.calls) == 1


async def test_query_engine_with_bm25_scores() -> None:
    engine = engine_with(ZeRankPostprocessor(scorer=BM25Scorer(), threshold=0.5))

    sync_ids = [n.node.node_id for n in engine.query("capital of France").source_nodes]
    async_ids = [n.node.node_id for n in (await engine.aquery("capital of France")).source_nodes]

    assert sync_ids == async_ids == ["node-c"]


# --- events ---------------------------------------------------------------------------------


def test_rerank_events_carry_query_nodes_and_model(rerank_events: RerankEvents) -> None:
    nodes = text_only(make_nodes())
    debug = LlamaDebugHandler()
    postprocessor = gate(top_k=2, callback_manager=CallbackManager([debug]))
    query = QueryBundle("What is there to see in Paris?")

    kept = postprocessor.postprocess_nodes(nodes, query_bundle=query)

    start, end = rerank_events.events
    assert isinstance(start, ReRankStartEvent)
    assert isinstance(end, ReRankEndEvent)
    assert start.query == query
    assert [n.node.node_id for n in start.nodes] == [n.node.node_id for n in nodes]
    assert start.top_n == 2
    assert start.model_name == "table-scorer"
    assert [n.node.node_id for n in end.nodes] == [n.node.node_id for n in kept]
    [(cb_start, cb_end)] = debug.get_event_pairs(CBEventType.RERANKING)
    assert cb_start.payload is not None
    assert cb_end.payload is not None
    assert cb_start.payload[EventPayload.QUERY_STR] == query.query_str
    assert cb_start.payload[EventPayload.MODEL_NAME] == "table-scorer"
    assert cb_start.payload[EventPayload.TOP_K] == 2
    assert cb_end.payload[EventPayload.NODES] == kept


async def test_async_events_and_top_n_without_top_k(rerank_events: RerankEvents) -> None:
    nodes = text_only(make_nodes())

    kept = await gate().apostprocess_nodes(nodes, query_str="Paris")

    start, end = rerank_events.events
    assert start.top_n == len(nodes)
    assert start.query == QueryBundle("Paris")
    assert len(end.nodes) == len(kept) == 3


def test_empty_input_returns_empty_and_still_reports(rerank_events: RerankEvents) -> None:
    scorer = TableScorer(SCORES)
    postprocessor = ZeRankPostprocessor(scorer=scorer)

    assert postprocessor.postprocess_nodes([], query_str="anything") == []
    assert scorer.calls == []
    assert [type(e) for e in rerank_events.events] == [ReRankStartEvent, ReRankEndEvent]


async def test_empty_input_async() -> None:
    assert await gate().apostprocess_nodes([], query_str="anything") == []


# --- what comes out, and what is left alone ---------------------------------------------------


def test_input_nodes_are_not_modified() -> None:
    nodes = make_nodes()
    before = [n.model_dump() for n in nodes]
    metadata_objects = [n.node.metadata for n in nodes]

    kept = ZeRankPostprocessor(scorer=TableScorer(_with_metadata(SCORES))).postprocess_nodes(
        nodes, query_str="Paris"
    )

    assert [n.model_dump() for n in nodes] == before
    assert all(n.node.metadata is m for n, m in zip(nodes, metadata_objects, strict=True))
    assert all(k is not n for k in kept for n in nodes)
    assert all(k.node is not n.node for k in kept for n in nodes)


def test_ids_relationships_and_scores_are_kept() -> None:
    nodes = make_nodes()
    by_id = {n.node.node_id: n for n in nodes}

    kept = ZeRankPostprocessor(scorer=TableScorer(_with_metadata(SCORES))).postprocess_nodes(
        nodes, query_str="Paris"
    )

    assert [n.node.node_id for n in kept] == ["node-a", "node-c", "node-d"]
    for node in kept:
        original = by_id[node.node.node_id]
        assert node.node.relationships == original.node.relationships
        assert node.node.metadata["relevance_score"] == node.score
        assert node.node.metadata["retrieval_score"] == original.score
        assert node.node.metadata["source"] == original.node.metadata["source"]
        for mode in (MetadataMode.LLM, MetadataMode.EMBED):
            content = node.node.get_content(metadata_mode=mode)
            assert "relevance_score" not in content
            assert "retrieval_score" not in content
            assert "source:" in content


def test_retrieval_score_opt_out_and_unscored_nodes() -> None:
    nodes = text_only(make_nodes())
    unscored = [NodeWithScore(node=n.node, score=None) for n in nodes]

    opted_out = gate(keep_retrieval_score=False).postprocess_nodes(nodes, query_str="Paris")
    from_unscored = gate().postprocess_nodes(unscored, query_str="Paris")

    assert all("retrieval_score" not in n.node.metadata for n in opted_out)
    assert all("retrieval_score" not in n.node.metadata for n in from_unscored)
    assert all("relevance_score" in n.node.metadata for n in opted_out + from_unscored)


def test_metadata_mode_decides_the_scored_text() -> None:
    nodes = make_nodes()[:1]
    embed, none = TableScorer({}), TableScorer({})
    embed.table = {nodes[0].node.get_content(metadata_mode=MetadataMode.EMBED): 0.9}
    none.table = {TEXTS["a"]: 0.9}

    ZeRankPostprocessor(scorer=embed).postprocess_nodes(nodes, query_str="q")
    ZeRankPostprocessor(scorer=none, metadata_mode="none").postprocess_nodes(nodes, query_str="q")

    assert "source: a.txt" in embed.calls[0][1][0]
    assert none.calls[0][1] == [TEXTS["a"]]


def test_instruction_reaches_the_scorer() -> None:
    scorer = TableScorer(SCORES)
    postprocessor = ZeRankPostprocessor(
        scorer=scorer, instruction="Prefer museums.", metadata_mode="none"
    )

    postprocessor.postprocess_nodes(text_only(make_nodes()), query_str="Paris")

    assert scorer.calls[0][2] == "Prefer museums."


# --- selection semantics (the core's policy, seen through the adapter) -------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, ["a", "c", "d"]),
        ({"threshold": 0.6}, ["a", "c"]),
        ({"threshold": None}, ["a", "c", "d", "e", "b"]),
        ({"threshold": None, "top_k": 2}, ["a", "c"]),
        ({"threshold": 0.8, "top_k": 3}, ["a"]),
        ({"threshold": 0.95, "top_k": 3}, []),
        ({"threshold": 0.95, "min_keep": 1}, ["a"]),
        ({"threshold": 0.6, "min_keep": 3}, ["a", "c", "d"]),
        ({"order": "original"}, ["a", "c", "d"]),
        ({"threshold": 0.6, "order": "original", "neighbors": 1}, ["a", "b", "c", "d"]),
        ({"threshold": None, "top_n": 1}, ["a"]),
        ({"threshold": None, "top_n": 2}, ["a", "c"]),
    ],
)
def test_selection_options(options: dict[str, Any], expected: list[str]) -> None:
    kept = gate(**options).postprocess_nodes(text_only(make_nodes()), query_str="Paris")

    assert [n.node.node_id for n in kept] == [f"node-{name}" for name in expected]


def test_original_order_differs_from_score_order() -> None:
    table = {TEXTS["a"]: 0.6, TEXTS["b"]: 0.1, TEXTS["c"]: 0.9, TEXTS["d"]: 0.1, TEXTS["e"]: 0.7}

    by_score = gate(table).postprocess_nodes(text_only(make_nodes()), query_str="q")
    by_input = gate(table, order="original").postprocess_nodes(
        text_only(make_nodes()), query_str="q"
    )

    assert kept_texts(by_score) == [TEXTS["c"], TEXTS["e"], TEXTS["a"]]
    assert kept_texts(by_input) == [TEXTS["a"], TEXTS["c"], TEXTS["e"]]


def test_character_budget_counts_what_the_llm_sees() -> None:
    nodes = text_only(make_nodes())
    budget = len(TEXTS["a"]) + len(TEXTS["c"]) - 1

    kept = gate(threshold=None, max_chars=budget).postprocess_nodes(nodes, query_str="Paris")

    # After "a", the next best ("c") no longer fits, nor do "d" and "e"; the shorter "b" does.
    assert len(TEXTS["b"]) < len(TEXTS["c"]) < len(TEXTS["d"])
    assert kept_texts(kept) == [TEXTS["a"], TEXTS["b"]]
    assert sum(len(t) for t in kept_texts(kept)) <= budget


def test_token_budget() -> None:
    nodes = text_only(make_nodes())
    tokens_a = math.ceil(len(TEXTS["a"]) / 4)

    kept = gate(threshold=None, max_tokens=tokens_a).postprocess_nodes(nodes, query_str="Paris")

    assert kept_texts(kept)[0] == TEXTS["a"]
    assert sum(math.ceil(len(t) / 4) for t in kept_texts(kept)) <= tokens_a


def test_ties_keep_the_earlier_node_first() -> None:
    table = dict.fromkeys(TEXTS.values(), 0.6)

    kept = gate(table, top_k=2).postprocess_nodes(text_only(make_nodes()), query_str="q")

    assert [n.node.node_id for n in kept] == ["node-a", "node-b"]


# --- errors ----------------------------------------------------------------------------------


def test_missing_or_empty_query_is_a_clear_error() -> None:
    nodes = text_only(make_nodes())
    with pytest.raises(ConfigurationError, match="needs a query"):
        gate().postprocess_nodes(nodes)
    with pytest.raises(ConfigurationError, match="query_str must not be empty"):
        gate().postprocess_nodes(nodes, query_str="  ")


async def test_missing_query_async() -> None:
    with pytest.raises(ConfigurationError, match="needs a query"):
        await gate().apostprocess_nodes(text_only(make_nodes()))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 1.5}, "threshold must be in \\[0, 1\\], got 1.5"),
        ({"top_k": -1}, "top_n must be an integer >= 1 \\(or None for no cap\\), got -1"),
        ({"top_n": 0}, "top_n must be an integer >= 1 \\(or None for no cap\\), got 0"),
        ({"top_n": 2, "top_k": 2}, "pass top_n=... or its alias top_k=..., not both"),
        ({"top_m": 2}, "unknown argument 'top_m'; did you mean 'top_n'\\?"),
        ({"treshold": 0.5}, "unknown argument 'treshold'; did you mean 'threshold'\\?"),
        ({"max_chars": -5}, "max_chars must be an integer >= 0, got -5"),
        ({"neighbors": -1}, "neighbors must be an integer >= 0, got -1"),
    ],
)
def test_bad_options_fail_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ZeRankPostprocessor(scorer=TableScorer({}), **options)


def test_bad_order_is_rejected() -> None:
    with pytest.raises(ValidationError, match="order"):
        ZeRankPostprocessor(scorer=TableScorer({}), order="random")


def test_scorer_argument_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="object lacks score, ascore, model, scale, usage"):
        ZeRankPostprocessor(scorer=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="either scorer"):
        ZeRankPostprocessor(scorer=TableScorer({}), api_key=KEY)


def test_a_missing_score_is_an_error_not_zero() -> None:
    postprocessor = ZeRankPostprocessor(scorer=ShortScorer(SCORES), metadata_mode="none")
    with pytest.raises(InvalidResponseError, match="returned 4 scores for 5 nodes"):
        postprocessor.postprocess_nodes(text_only(make_nodes()), query_str="Paris")


def test_a_nan_score_is_an_error_not_zero() -> None:
    table = {**SCORES, TEXTS["b"]: math.nan}
    with pytest.raises(InvalidResponseError, match="returned nan as score 1"):
        gate(table).postprocess_nodes(text_only(make_nodes()), query_str="Paris")


def test_no_backend_configured_fails_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="ZEROENTROPY_API_KEY"):
        ZeRankPostprocessor()


# --- default backends over real HTTP, and secrets ----------------------------------------------


def test_default_scorer_from_the_environment(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZERANK_SERVER_URL", f"{fake_server.url}/v1/rerank")
    postprocessor = ZeRankPostprocessor(threshold=0.5, metadata_mode="none")

    kept = postprocessor.postprocess_nodes(text_only(make_nodes()), query_str="capital of France")

    assert kept_texts(kept) == [TEXTS["c"]]
    assert kept[0].score == pytest.approx(0.95)
    assert [r.path for r in fake_server.requests] == ["/v1/rerank"]


def test_api_key_uses_the_hosted_sdk_across_event_loops(fake_server: FakeRerankServer) -> None:
    postprocessor = ZeRankPostprocessor(
        api_key=SecretStr(KEY), base_url=f"{fake_server.url}/v1", metadata_mode="none"
    )
    nodes = text_only(make_nodes())

    # Each asyncio.run is a new loop, as in notebooks and some servers.
    first = asyncio.run(postprocessor.apostprocess_nodes(nodes, query_str="capital of France"))
    second = asyncio.run(postprocessor.apostprocess_nodes(nodes, query_str="capital of France"))
    synced = postprocessor.postprocess_nodes(nodes, query_str="capital of France")

    assert kept_texts(first) == kept_texts(second) == kept_texts(synced) == [TEXTS["c"]]
    assert {r.path for r in fake_server.requests} == {"/v1/models/rerank"}
    assert all(r.headers["Authorization"] == f"Bearer {KEY}" for r in fake_server.requests)


def test_serialisation_never_contains_the_key(fake_server: FakeRerankServer) -> None:
    postprocessor = ZeRankPostprocessor(
        api_key=KEY, base_url=f"{fake_server.url}/v1", top_k=3, metadata_mode="none"
    )
    postprocessor.postprocess_nodes(text_only(make_nodes()), query_str="Paris")

    as_dict = postprocessor.to_dict()
    for text in (str(as_dict), postprocessor.to_json(), repr(postprocessor), str(postprocessor)):
        assert KEY not in text
    assert KEY.encode() not in pickle.dumps(postprocessor)
    assert as_dict["class_name"] == "ZeRankPostprocessor"
    assert "api_key" not in as_dict
    assert "scorer" not in as_dict


def test_round_trip_through_dict_keeps_the_options() -> None:
    postprocessor = ZeRankPostprocessor(
        model="bm25", threshold=0.3, top_k=4, order="original", instruction="x"
    )
    given = ZeRankPostprocessor(scorer=TableScorer({}), top_n=2)

    restored = ZeRankPostprocessor.from_dict(postprocessor.to_dict())
    # A scorer object is no dict value: it is passed again, as to the constructor.
    restored_given = ZeRankPostprocessor.from_dict(given.to_dict(), scorer=TableScorer({}))

    assert restored.policy == postprocessor.policy
    assert restored.instruction == "x"
    assert restored.top_n == 4
    assert isinstance(restored.scorer, BM25Scorer)
    assert restored_given.top_n == 2
    assert ZeRankPostprocessor.class_name() == "ZeRankPostprocessor"


def _with_metadata(table: Mapping[str, float]) -> dict[str, float]:
    """The table keyed by what make_nodes() nodes show in the EMBED view."""
    out: dict[str, float] = {}
    for node in make_nodes():
        text = node.node.get_content(metadata_mode=MetadataMode.NONE)
        out[node.node.get_content(metadata_mode=MetadataMode.EMBED)] = table[text]
    return out
