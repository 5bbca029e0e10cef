"""ZeRankCompressor under real LangChain retrievers, pipelines and chains."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.load import dumps
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_text_splitters import CharacterTextSplitter
from pydantic import SecretStr

from langchain_zerank import ZeRankCompressor
from tests.fake_servers import FakeRerankServer
from zerank_core import ConfigurationError, InvalidResponseError, Scale
from zerank_core.scorers import BM25Scorer, RerankServerScorer, ZeroEntropyScorer

QUERY = "apple banana cherry date"
TEXTS = [
    "apple pie recipe",  # 0.25
    "banana cherry smoothie",  # 0.5
    "plain water",  # 0.0
    "apple banana cherry date salad",  # 1.0
    "cherry date jam",  # 0.5
    "apple banana cherry tart",  # 0.75
]


class OverlapScorer:
    """Share of the query's words found in the text: a real, deterministic scorer.

    It records every call as ``(mode, query, number of texts, instruction)``.
    """

    model = "overlap"
    scale = Scale.PROBABILITY
    usage = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, str | None]] = []

    @staticmethod
    def overlap(query: str, text: str) -> float:
        words = set(re.findall(r"\w+", query.lower()))
        return len(words & set(re.findall(r"\w+", text.lower()))) / len(words)

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        self.calls.append(("sync", query, len(texts), instruction))
        return [self.overlap(query, t) for t in texts]

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        self.calls.append(("async", query, len(texts), instruction))
        return [self.overlap(query, t) for t in texts]


def make_documents() -> list[Document]:
    return [
        Document(text, id=f"doc-{i}", metadata={"position": i, "tags": ["fruit", str(i)]})
        for i, text in enumerate(TEXTS)
    ]


def contents(documents: Sequence[Document]) -> list[str]:
    return [d.page_content for d in documents]


def indices(documents: Sequence[Document]) -> list[int]:
    return [TEXTS.index(d.page_content) for d in documents]


def retriever_over(compressor: ZeRankCompressor) -> ContextualCompressionRetriever:
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    store.add_documents(make_documents())
    base = store.as_retriever(search_kwargs={"k": len(TEXTS)})
    return ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)


def test_retriever_keeps_passing_chunks_with_scores_and_ids() -> None:
    scorer = OverlapScorer()
    retriever = retriever_over(ZeRankCompressor(scorer=scorer, threshold=0.5))

    kept = retriever.invoke(QUERY)

    assert indices(kept) == [3, 5, 1, 4]
    assert [d.id for d in kept] == ["doc-3", "doc-5", "doc-1", "doc-4"]
    assert [d.metadata["relevance_score"] for d in kept] == [1.0, 0.75, 0.5, 0.5]
    assert kept[0].metadata["tags"] == ["fruit", "3"]
    assert scorer.calls == [("sync", QUERY, 6, None)]


async def test_retriever_async_uses_the_scorers_own_ascore() -> None:
    scorer = OverlapScorer()
    retriever = retriever_over(ZeRankCompressor(scorer=scorer, top_k=2, instruction="be strict"))

    kept = await retriever.ainvoke(QUERY)

    assert indices(kept) == [3, 5]
    assert [d.id for d in kept] == ["doc-3", "doc-5"]
    assert scorer.calls == [("async", QUERY, 6, "be strict")]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, [3, 5, 1, 4]),
        ({"threshold": None}, [3, 5, 1, 4, 0, 2]),
        ({"threshold": 0.0}, [3, 5, 1, 4, 0, 2]),
        ({"threshold": None, "top_k": 2}, [3, 5]),
        ({"threshold": None, "top_n": 2}, [3, 5]),
        ({"top_n": 1}, [3]),
        ({"threshold": 0.5, "top_k": 3}, [3, 5, 1]),
        ({"threshold": 0.9, "top_k": 3}, [3]),
        ({"threshold": 0.5, "order": "original"}, [1, 3, 4, 5]),
        ({"threshold": 0.9, "min_keep": 2}, [3, 5]),
        ({"threshold": 1.0, "min_keep": 1}, [3]),
        ({"threshold": 0.9, "neighbors": 1, "order": "original"}, [2, 3, 4]),
        ({"threshold": None, "max_chars": len(TEXTS[3]) + len(TEXTS[1])}, [3, 1]),
        ({"threshold": None, "max_tokens": 14}, [3, 5]),
        ({"threshold": 0.5, "max_tokens": 12}, [3, 4]),
        ({"threshold": 0.5, "max_chars": 5, "min_keep": 1}, [3]),
    ],
)
def test_selection_options(options: dict[str, object], expected: list[int]) -> None:
    compressor = ZeRankCompressor(scorer=OverlapScorer(), **options)  # type: ignore[arg-type]

    kept = compressor.compress_documents(make_documents(), QUERY)

    assert indices(kept) == expected
    for document in kept:
        assert document.metadata["relevance_score"] == OverlapScorer.overlap(
            QUERY, document.page_content
        )


async def test_async_selection_matches_sync() -> None:
    compressor = ZeRankCompressor(scorer=OverlapScorer(), threshold=0.5, order="original")

    sync = compressor.compress_documents(make_documents(), QUERY)
    asynchronous = await compressor.acompress_documents(make_documents(), QUERY)

    assert asynchronous == sync


async def test_inputs_are_never_modified() -> None:
    documents = [
        Document(text, id=f"doc-{i}", metadata={"relevance_score": -1.0, "nested": {"n": [i]}})
        for i, text in enumerate(TEXTS)
    ]
    before = copy.deepcopy(documents)
    compressor = ZeRankCompressor(scorer=OverlapScorer(), threshold=0.5)

    kept = list(compressor.compress_documents(documents, QUERY))
    kept += await compressor.acompress_documents(documents, QUERY)
    for document in kept:
        document.metadata["nested"]["n"].append("changed downstream")

    assert documents == before
    assert all(d.metadata["relevance_score"] == -1.0 for d in documents)


async def test_empty_input_makes_no_call() -> None:
    scorer = OverlapScorer()
    compressor = ZeRankCompressor(scorer=scorer, min_keep=3)

    assert compressor.compress_documents([], QUERY) == []
    assert await compressor.acompress_documents([], QUERY) == []
    assert scorer.calls == []


async def test_pipeline_after_a_splitter_sync_and_async() -> None:
    scorer = OverlapScorer()
    pipeline = DocumentCompressorPipeline(
        transformers=[
            CharacterTextSplitter(separator="\n", chunk_size=31, chunk_overlap=0),
            ZeRankCompressor(scorer=scorer, threshold=0.75),
            ZeRankCompressor(scorer=scorer, top_k=1),
        ]
    )
    long_document = Document("\n".join(TEXTS), id="handbook", metadata={"source": "h.txt"})

    kept = pipeline.compress_documents([long_document], QUERY)
    akept = await pipeline.acompress_documents([long_document], QUERY)

    assert contents(kept) == contents(akept) == [TEXTS[3]]
    assert kept[0].metadata["source"] == "h.txt"
    assert kept[0].metadata["relevance_score"] == 1.0
    assert [mode for mode, *_ in scorer.calls] == ["sync", "sync", "async", "async"]
    # the splitter made one chunk per line; the second compressor saw what passed the first
    assert [n for *_, n, _ in scorer.calls] == [6, 2, 6, 2]


def test_lcel_chain_puts_only_kept_chunks_in_the_prompt() -> None:
    retriever = retriever_over(ZeRankCompressor(scorer=OverlapScorer(), threshold=0.75))
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer from this context:\n{context}"), ("human", "{question}")]
    )
    chain = {
        "context": retriever | RunnableLambda(lambda docs: "\n".join(contents(docs))),
        "question": RunnableLambda(lambda question: question),
    } | prompt

    messages = chain.invoke(QUERY).to_messages()

    assert messages[0].content == f"Answer from this context:\n{TEXTS[3]}\n{TEXTS[5]}"
    assert messages[1].content == QUERY


def test_core_lexical_scorer_drives_the_compressor() -> None:
    compressor = ZeRankCompressor(scorer=BM25Scorer(), top_k=2)

    kept = compressor.compress_documents(make_documents(), "cherry date salad")

    assert indices(kept) == [3, 4]
    assert kept[0].metadata["relevance_score"] == 1.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 1.5}, "threshold must be in \\[0, 1\\], got 1.5"),
        ({"top_k": -1}, "top_n must be an integer >= 1 \\(or None for no cap\\), got -1"),
        ({"top_n": 0}, "top_n must be an integer >= 1 \\(or None for no cap\\), got 0"),
        ({"top_n": 2, "top_k": 2}, "pass top_n=... or its alias top_k=..., not both"),
        ({"top_m": 3}, "unknown argument 'top_m'; did you mean 'top_n'\\?"),
        ({"treshold": 0.5}, "unknown argument 'treshold'; did you mean 'threshold'\\?"),
        ({"max_chars": -5}, "max_chars must be an integer >= 0, got -5"),
        ({"neighbors": -1}, "neighbors must be an integer >= 0, got -1"),
        ({"order": "random"}, "order"),
        ({"scorer": "not a scorer"}, "scorer str lacks score, ascore, model, scale, usage"),
    ],
)
def test_bad_options_are_named(options: dict[str, object], message: str) -> None:
    # pydantic reports field errors as ValidationError, the package as
    # ConfigurationError: both are ValueErrors naming the bad value.
    with pytest.raises(ValueError, match=message):
        ZeRankCompressor(**{"scorer": OverlapScorer(), **options})  # type: ignore[arg-type]


def test_copies_share_the_scorer_and_follow_their_own_settings() -> None:
    scorer = OverlapScorer()
    compressor = ZeRankCompressor(scorer=scorer, threshold=0.5)

    deep = copy.deepcopy(compressor)
    stricter = compressor.model_copy(update={"threshold": 0.75})

    assert deep.get_scorer() is stricter.get_scorer() is scorer
    assert indices(deep.compress_documents(make_documents(), QUERY)) == [3, 5, 1, 4]
    assert indices(stricter.compress_documents(make_documents(), QUERY)) == [3, 5]


def test_wrong_number_of_scores_is_an_error() -> None:
    class ShortScorer(OverlapScorer):
        def score(
            self, query: str, texts: Sequence[str], *, instruction: str | None = None
        ) -> list[float]:
            return super().score(query, texts)[:-1]

    compressor = ZeRankCompressor(scorer=ShortScorer())
    with pytest.raises(InvalidResponseError, match="5 scores for 6 documents"):
        compressor.compress_documents(make_documents(), QUERY)


def test_no_backend_configured_fails_at_construction_naming_the_options() -> None:
    with pytest.raises(ConfigurationError) as caught:
        ZeRankCompressor(threshold=0.5)

    for option in ("scorer=", "ZEROENTROPY_API_KEY", "ZERANK_SERVER_URL", "ZERANK_LOCAL_MODEL"):
        assert option in str(caught.value)
    assert "model='bm25' or set ZERANK_BACKEND=lexical" in str(caught.value)


async def test_default_scorer_is_the_rerank_server_from_the_environment(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZERANK_SERVER_URL", f"{fake_server.url}/v1/rerank")
    compressor = ZeRankCompressor(threshold=0.5)

    kept = compressor.compress_documents(make_documents(), QUERY)
    akept = await compressor.acompress_documents(make_documents(), QUERY)

    assert indices(kept) == indices(akept) == [3, 5, 1, 4]
    assert [r.path for r in fake_server.requests] == ["/v1/rerank", "/v1/rerank"]
    assert kept[0].metadata["relevance_score"] == pytest.approx(0.95)
    server_scorer = compressor.get_scorer()
    assert isinstance(server_scorer, RerankServerScorer)
    assert server_scorer.usage.requests == 2
    assert copy.deepcopy(compressor).get_scorer() is server_scorer


async def test_api_key_goes_to_the_sdk_and_nowhere_else(
    fake_server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "ze-very-secret-key"
    monkeypatch.setenv("ZEROENTROPY_BASE_URL", f"{fake_server.url}/v1")
    compressor = ZeRankCompressor(api_key=SecretStr(secret), top_k=1)

    kept = compressor.compress_documents(make_documents(), QUERY)
    akept = await compressor.acompress_documents(make_documents(), QUERY)

    assert indices(kept) == indices(akept) == [3]
    assert [r.path for r in fake_server.requests] == ["/v1/models/rerank"] * 2
    assert all(r.headers["Authorization"] == f"Bearer {secret}" for r in fake_server.requests)
    for shown in (
        repr(compressor),
        str(compressor),
        str(compressor.model_dump()),
        compressor.model_dump_json(),
        dumps(compressor),
    ):
        assert secret not in shown


def test_api_key_is_read_from_the_environment_as_a_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ZEROENTROPY_API_KEY", "ze-from-env")
    compressor = ZeRankCompressor()

    # The resolver reads the key; the field keeps only a key the caller chose.
    assert isinstance(compressor.get_scorer(), ZeroEntropyScorer)
    assert compressor.api_key is None
    assert "ze-from-env" not in repr(compressor) + dumps(compressor)
