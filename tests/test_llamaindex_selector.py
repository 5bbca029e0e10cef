"""ZeRankSelector driving real LlamaIndex routers: RouterQueryEngine and RouterRetriever."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from typing import Any

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.base.base_selector import SelectorResult
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RouterQueryEngine
from llama_index.core.retrievers import RouterRetriever
from llama_index.core.schema import TextNode
from llama_index.core.tools import QueryEngineTool, RetrieverTool, ToolMetadata

from llamaindex_zerank import ZeRankSelector
from tests.fake_servers import FakeRerankServer
from zerank_core.errors import ConfigurationError, InvalidResponseError
from zerank_core.scorers.base import Scale
from zerank_core.scorers.lexical import BM25Scorer

KEY = "sk-zerank-selector-key-9876543210"


class OverlapScorer:
    """0.05 + 0.9 × the share of the text's words found in the query; records its calls.

    The selector scores each choice's description as the query and the
    user's query as the text, so this is the share of the user's words that
    the description covers. ``fixed`` gives each choice of ``CHOICES`` a
    fixed score instead, in their order.
    """

    model = "overlap"
    scale = Scale.PROBABILITY
    usage = None

    def __init__(self, fixed: Sequence[float] | None = None) -> None:
        self.fixed = None if fixed is None else dict(zip(DESCRIPTIONS, fixed, strict=False))
        self.calls: list[tuple[str, list[str], str | None]] = []

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        self.calls.append((query, list(texts), instruction))
        if self.fixed is not None:
            return [self.fixed[query] for _ in texts] if query in self.fixed else []
        described = set(re.findall(r"\w+", query.lower()))
        scores = []
        for text in texts:
            words = set(re.findall(r"\w+", text.lower()))
            scores.append(0.05 + 0.9 * len(words & described) / len(words))
        return scores

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        await asyncio.sleep(0)
        return self.score(query, texts, instruction=instruction)


ROUTES = {
    "paris": (
        "Questions about Paris: museums, monuments and the history of the city.",
        ["The Louvre is the most visited museum in Paris.", "The Eiffel Tower opened in 1889."],
    ),
    "bananas": (
        "Questions about bananas and fruit nutrition.",
        ["Bananas are rich in potassium.", "A banana has about 100 calories."],
    ),
    "plants": (
        "Questions about plants, photosynthesis and biology.",
        ["Photosynthesis turns light into chemical energy.", "Plants breathe through stomata."],
    ),
}
CHOICES = [ToolMetadata(name=name, description=desc) for name, (desc, _) in ROUTES.items()]
DESCRIPTIONS = [desc for desc, _ in ROUTES.values()]


def route_index(name: str) -> VectorStoreIndex:
    nodes = [TextNode(id_=f"{name}-{i}", text=t) for i, t in enumerate(ROUTES[name][1])]
    return VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))


def router_engine(selector: ZeRankSelector) -> RouterQueryEngine:
    tools = [
        QueryEngineTool.from_defaults(
            query_engine=route_index(name).as_query_engine(llm=MockLLM(), similarity_top_k=2),
            name=name,
            description=description,
        )
        for name, (description, _) in ROUTES.items()
    ]
    return RouterQueryEngine(selector=selector, query_engine_tools=tools, llm=MockLLM())


def router_retriever(selector: ZeRankSelector) -> RouterRetriever:
    tools = [
        RetrieverTool.from_defaults(
            retriever=route_index(name).as_retriever(similarity_top_k=2),
            name=name,
            description=description,
        )
        for name, (description, _) in ROUTES.items()
    ]
    return RouterRetriever(selector=selector, retriever_tools=tools, llm=MockLLM())


def selected(response: Any) -> SelectorResult:
    """The selector's result that RouterQueryEngine puts into the response."""
    assert response.metadata is not None
    result: SelectorResult = response.metadata["selector_result"]
    return result


# --- routers ---------------------------------------------------------------------------------


def test_router_query_engine_routes_to_the_best_choice() -> None:
    response = router_engine(ZeRankSelector(OverlapScorer())).query("museums in Paris")

    result = selected(response)
    assert result.inds == [0]
    assert "overlap probability 0.650" in result.reason
    assert "'paris'" in result.reason
    assert ROUTES["paris"][1][0] in str(response)
    assert ROUTES["bananas"][1][0] not in str(response)


async def test_router_query_engine_async() -> None:
    scorer = OverlapScorer()

    response = await router_engine(ZeRankSelector(scorer)).aquery("bananas nutrition")

    assert selected(response).inds == [1]
    assert ROUTES["bananas"][1][0] in str(response)
    assert len(scorer.calls) == len(CHOICES)


async def test_router_query_engine_multi_selection_combines_routes() -> None:
    engine = router_engine(ZeRankSelector(OverlapScorer(), multi_label=True, threshold=0.3))

    sync_response = engine.query("paris museums bananas")
    async_response = await engine.aquery("paris museums bananas")

    for response in (sync_response, async_response):
        result = selected(response)
        assert result.inds == [0, 1]
        assert [r.split(" for ")[0] for r in result.reasons] == [
            "overlap probability 0.650",
            "overlap probability 0.350",
        ]


async def test_router_retriever_sync_and_async() -> None:
    retriever = router_retriever(ZeRankSelector(OverlapScorer()))

    nodes = retriever.retrieve("photosynthesis in plants")
    anodes = await retriever.aretrieve("photosynthesis in plants")

    assert {n.node.node_id for n in nodes} == {n.node.node_id for n in anodes}
    assert {n.node.node_id for n in nodes} == {"plants-0", "plants-1"}


async def test_router_retriever_multi() -> None:
    retriever = router_retriever(ZeRankSelector(OverlapScorer(), multi_label=True, threshold=0.3))

    nodes = await retriever.aretrieve("paris museums bananas")

    assert {n.node.node_id for n in nodes} == {"paris-0", "paris-1", "bananas-0", "bananas-1"}


def test_router_with_bm25_scores() -> None:
    response = router_engine(ZeRankSelector(BM25Scorer())).query("photosynthesis biology")

    assert selected(response).inds == [2]
    assert selected(response).reason.startswith("bm25 uncalibrated score 1.000 for choice 2")


# --- selection rules -------------------------------------------------------------------------


def test_each_description_is_the_query_and_the_users_query_the_document() -> None:
    scorer = OverlapScorer()

    ZeRankSelector(scorer, instruction="Pick the best data source.").select(CHOICES, "Paris")

    # The core classifier's direction: one call per choice, as for ZeRankClassifier.
    assert scorer.calls == [
        (desc, ["Paris"], "Pick the best data source.") for desc in DESCRIPTIONS
    ]


def test_plain_string_choices() -> None:
    result = ZeRankSelector(OverlapScorer()).select(
        ["recipes with bananas", "history of Paris"], "Paris history"
    )

    assert result.inds == [1]
    assert result.reason == "overlap probability 0.950 for choice 1"


def test_single_below_threshold_falls_back_to_the_best() -> None:
    result = ZeRankSelector(OverlapScorer([0.2, 0.3, 0.1])).select(CHOICES, "q")

    assert result.inds == [1]
    assert "overlap probability 0.300" in result.reason
    assert "no choice reached the threshold 0.5; best choice" in result.reason


@pytest.mark.parametrize("default", [2, "plants"])
def test_single_below_threshold_uses_the_default(default: int | str) -> None:
    result = ZeRankSelector(OverlapScorer([0.2, 0.3, 0.1]), default=default).select(CHOICES, "q")

    assert result.inds == [2]
    assert result.reason.startswith("overlap probability 0.100 for choice 2 ('plants')")
    assert "default choice (best was 1 ('bananas') at 0.300)" in result.reason


def test_default_is_not_used_when_a_choice_passes() -> None:
    result = ZeRankSelector(OverlapScorer([0.2, 0.8, 0.6]), default="plants").select(CHOICES, "q")

    assert result.inds == [1]


def test_single_takes_the_earlier_choice_on_a_tie() -> None:
    result = ZeRankSelector(OverlapScorer([0.7, 0.9, 0.9])).select(CHOICES, "q")

    assert result.inds == [1]


def test_multi_returns_all_passing_best_first_capped_by_max_outputs() -> None:
    scorer = OverlapScorer([0.6, 0.9, 0.7])

    everything = ZeRankSelector(scorer, multi=True).select(CHOICES, "q")
    capped = ZeRankSelector(scorer, multi=True, max_outputs=2).select(CHOICES, "q")
    same = ZeRankSelector(scorer, multi_label=True, max_labels=2).select(CHOICES, "q")

    assert everything.inds == [1, 2, 0]
    assert capped.inds == same.inds == [1, 2]
    assert everything.reasons[0].startswith("overlap probability 0.900 for choice 1")


@pytest.mark.parametrize(("default", "expected"), [(None, [1]), ("paris", [0])])
def test_multi_never_returns_an_empty_selection(default: str | None, expected: list[int]) -> None:
    result = ZeRankSelector(OverlapScorer([0.1, 0.2, 0.1]), multi=True, default=default).select(
        CHOICES, "q"
    )

    assert result.inds == expected
    assert "no choice reached the threshold" in result.reason


async def test_aselect_applies_the_same_rules() -> None:
    selector = ZeRankSelector(OverlapScorer([0.2, 0.3, 0.1]), default="plants")

    result = await selector.aselect(CHOICES, "q")

    assert result.inds == [2]


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 1.2}, "threshold must be in \\[0, 1\\], got 1.2"),
        ({"max_outputs": 0}, "max_labels must be an integer >= 1, got 0"),
        ({"max_labels": 0}, "max_labels must be an integer >= 1, got 0"),
        ({"multi": True, "multi_label": True}, "multi_label=... or its alias multi=..., not both"),
        ({"multi_lable": True}, "unknown argument 'multi_lable'; did you mean 'multi_label'\\?"),
        ({"threshold": {"paris": 1.5}}, "threshold must be in \\[0, 1\\], got 1.5"),
        ({"default": -1}, "default must be a choice index >= 0 or a tool name, got -1"),
        ({"default": 1.5}, "default must be a choice index >= 0 or a tool name, got 1.5"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ZeRankSelector(OverlapScorer(), **kwargs)  # type: ignore[arg-type]


def test_bad_choices_and_defaults_are_named() -> None:
    selector = ZeRankSelector(OverlapScorer())
    with pytest.raises(ConfigurationError, match="at least one choice"):
        selector.select([], "q")
    with pytest.raises(ConfigurationError, match="choice 1 \\('empty'\\) needs a non-empty"):
        selector.select([CHOICES[0], ToolMetadata(name="empty", description=" ")], "q")
    with pytest.raises(ConfigurationError, match="query_str must not be empty"):
        selector.select(CHOICES, "")
    with pytest.raises(ConfigurationError, match="'nowhere' is not among the choices' names"):
        ZeRankSelector(OverlapScorer(), default="nowhere").select(CHOICES, "q")
    with pytest.raises(ConfigurationError, match="default choice 5 is out of range for 3"):
        ZeRankSelector(OverlapScorer(), default=5).select(CHOICES, "q")


def test_a_missing_or_nan_score_is_an_error() -> None:
    with pytest.raises(
        InvalidResponseError, match="returned 0 scores for 1 texts \\(label \"2 \\('plants'\\)\"\\)"
    ):
        ZeRankSelector(OverlapScorer([0.9, 0.8])).select(CHOICES, "q")
    with pytest.raises(InvalidResponseError, match="returned nan as score 0"):
        ZeRankSelector(OverlapScorer([0.9, math.nan, 0.1])).select(CHOICES, "q")


def test_threshold_per_choice_by_tool_name() -> None:
    selector = ZeRankSelector(OverlapScorer([0.6, 0.7, 0.9]), threshold={"plants": 0.95})

    assert selector.select(CHOICES, "q").inds == [1]
    with pytest.raises(ConfigurationError, match="\\['rivers'\\], which are not among"):
        ZeRankSelector(OverlapScorer(), threshold={"rivers": 0.5}).select(CHOICES, "q")


def test_no_backend_configured_fails_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="ZERANK_SERVER_URL"):
        ZeRankSelector()


def test_scorer_and_api_key_together_are_rejected() -> None:
    with pytest.raises(ConfigurationError, match="either scorer"):
        ZeRankSelector(OverlapScorer(), api_key=KEY)


# --- the hosted API over real HTTP -----------------------------------------------------------


def test_api_key_routes_through_the_sdk_across_event_loops(fake_server: FakeRerankServer) -> None:
    selector = ZeRankSelector(api_key=KEY, base_url=f"{fake_server.url}/v1")

    first = asyncio.run(selector.aselect(CHOICES, "photosynthesis biology"))
    second = asyncio.run(selector.aselect(CHOICES, "photosynthesis biology"))
    synced = selector.select(CHOICES, "photosynthesis biology")

    assert first.inds == second.inds == synced.inds == [2]
    assert all(r.headers["Authorization"] == f"Bearer {KEY}" for r in fake_server.requests)
    assert KEY not in repr(selector)
    assert KEY not in str(vars(selector))
