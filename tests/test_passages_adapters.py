"""Evidence passages in the adapters: a LangChain retrieval chain, a LlamaIndex query engine."""

from __future__ import annotations

import copy
import re

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_core.vectorstores import InMemoryVectorStore
from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import (
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    RelatedNodeInfo,
    TextNode,
)

from langchain_zerank import ZeRankCompressor
from llamaindex_zerank import ZeRankPostprocessor
from tests.fake_servers import FakeRerankServer
from zerank_core.errors import ConfigurationError
from zerank_core.scorers.server import RerankServerScorer

QUERY = "When is the invoice due and what interest applies to late payment?"
TEXTS = {
    "pay": "Payment terms apply to every order placed under this agreement. "
    "The invoice is due within thirty days of delivery. "
    "Late payment bears interest at two percent a month. "
    "Deliveries are made on weekdays between eight and five.",
    "lobby": "The lobby is open from seven in the morning. "
    "Visitors sign in at the front desk and wear a badge at all times.",
    "renew": "This agreement renews each year unless either party gives notice. "
    "An invoice for the renewal fee is sent sixty days before the renewal date.",
}


def server_scorer(fake_server: FakeRerankServer) -> RerankServerScorer:
    return RerankServerScorer(f"{fake_server.url}/v1/rerank")


def check_passage_records(original: str, content: str, records: list[dict[str, object]]) -> None:
    assert records
    for record in records:
        start, end = record["start"], record["end"]
        assert isinstance(start, int)
        assert isinstance(end, int)
        assert original[start:end] == record["text"]
        assert 0.0 <= float(record["score"]) <= 1.0  # type: ignore[arg-type]
    assert content == "\n".join(str(r["text"]) for r in records)
    assert [r["start"] for r in records] == sorted(r["start"] for r in records)


# --- LangChain ----------------------------------------------------------------------------


def langchain_documents() -> list[Document]:
    return [
        Document(text, id=f"doc-{key}", metadata={"key": key, "tags": ["contract"]})
        for key, text in TEXTS.items()
    ]


def retriever_over(compressor: ZeRankCompressor) -> ContextualCompressionRetriever:
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    store.add_documents(langchain_documents())
    base = store.as_retriever(search_kwargs={"k": len(TEXTS)})
    return ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)


def test_retrieval_chain_reads_only_the_evidence_passages(fake_server: FakeRerankServer) -> None:
    compressor = ZeRankCompressor(
        scorer=server_scorer(fake_server),
        threshold=0.3,
        passages=True,
        passage_top_k=2,
        passage_threshold=0.25,
    )
    retriever = retriever_over(compressor)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer from this context:\n{context}"), ("human", "{question}")]
    )
    chain = {
        "context": retriever | RunnableLambda(lambda d: "\n\n".join(x.page_content for x in d)),
        "question": RunnableLambda(lambda question: question),
    } | prompt

    kept = retriever.invoke(QUERY)
    system = chain.invoke(QUERY).to_messages()[0].content

    by_id = {d.id: d for d in kept}
    assert "doc-pay" in by_id
    pay = by_id["doc-pay"]
    check_passage_records(TEXTS["pay"], pay.page_content, pay.metadata["passages"])
    assert "The invoice is due within thirty days of delivery." in pay.page_content
    assert "Late payment bears interest at two percent a month." in pay.page_content
    assert "Deliveries are made on weekdays" not in pay.page_content
    assert pay.metadata["key"] == "pay"
    assert pay.metadata["relevance_score"] > 0.3
    assert "Deliveries are made on weekdays" not in system
    assert "The invoice is due within thirty days of delivery." in system
    # Stage 2 sent only passages of the kept documents.
    passages_sent = [
        d for r in fake_server.requests for d in r.body["documents"] if d not in TEXTS.values()
    ]
    assert all(any(p in TEXTS[d.metadata["key"]] for d in kept) for p in passages_sent)


async def test_async_compressor_trims_like_sync_and_never_mutates(
    fake_server: FakeRerankServer,
) -> None:
    compressor = ZeRankCompressor(
        scorer=server_scorer(fake_server), threshold=0.3, passages=True, passage_top_k=1
    )
    documents = langchain_documents()
    before = copy.deepcopy(documents)
    sync = compressor.compress_documents(documents, QUERY)
    asynchronous = await compressor.acompress_documents(documents, QUERY)
    assert [d.page_content for d in sync] == [d.page_content for d in asynchronous]
    assert [d.metadata for d in sync] == [d.metadata for d in asynchronous]
    assert documents == before
    for document in sync:
        assert len(document.metadata["passages"]) == 1
        assert document.id in {d.id for d in documents}


def test_whole_documents_without_passages(fake_server: FakeRerankServer) -> None:
    compressor = ZeRankCompressor(scorer=server_scorer(fake_server), threshold=0.3)
    kept = compressor.compress_documents(langchain_documents(), QUERY)
    assert kept
    assert all(d.page_content in TEXTS.values() for d in kept)
    assert all("passages" not in d.metadata for d in kept)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"passage_threshold": 2.0}, "passage threshold must be in [0, 1], got 2.0"),
        ({"passage_top_k": -1}, "passage top_k must be an integer >= 0, got -1"),
        ({"passage_chars": 0}, "passage_chars must be an integer >= 1, got 0"),
    ],
)
def test_bad_passage_options_are_refused(
    fake_server: FakeRerankServer, options: dict[str, object], message: str
) -> None:
    scorer = server_scorer(fake_server)
    # pydantic reports the core's ConfigurationError as a ValidationError: both are ValueErrors.
    with pytest.raises(ValueError, match=re.escape(message)):
        ZeRankCompressor(scorer=scorer, passages=True, **options)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        ZeRankPostprocessor(scorer=scorer, passages=True, **options)


# --- LlamaIndex ---------------------------------------------------------------------------


def llama_nodes() -> list[TextNode]:
    nodes = [
        TextNode(text=text, id_=f"node-{key}", metadata={"key": key}) for key, text in TEXTS.items()
    ]
    nodes[0].relationships[NodeRelationship.NEXT] = RelatedNodeInfo(node_id=nodes[1].node_id)
    nodes[1].relationships[NodeRelationship.PREVIOUS] = RelatedNodeInfo(node_id=nodes[0].node_id)
    return nodes


def engine_with(postprocessor: ZeRankPostprocessor) -> RetrieverQueryEngine:
    index = VectorStoreIndex(llama_nodes(), embed_model=MockEmbedding(embed_dim=8))
    return RetrieverQueryEngine.from_args(
        index.as_retriever(similarity_top_k=len(TEXTS)),
        llm=MockLLM(),
        node_postprocessors=[postprocessor],
    )


def test_query_engine_reads_only_the_evidence_passages(fake_server: FakeRerankServer) -> None:
    postprocessor = ZeRankPostprocessor(
        scorer=server_scorer(fake_server),
        threshold=0.3,
        passages=True,
        passage_top_k=2,
        passage_threshold=0.25,
    )
    response = engine_with(postprocessor).query(QUERY)

    by_id = {n.node.node_id: n for n in response.source_nodes}
    pay = by_id["node-pay"].node
    records = pay.metadata["passages"]
    check_passage_records(TEXTS["pay"], pay.get_content(MetadataMode.NONE), records)
    assert NodeRelationship.NEXT in pay.relationships
    # MockLLM echoes its prompt: the LLM read the passages, not the whole node.
    assert "The invoice is due within thirty days of delivery." in str(response)
    assert "Deliveries are made on weekdays" not in str(response)
    assert "'passages'" not in str(response)
    assert "relevance_score" not in str(response)


async def test_async_query_engine_trims_nodes(fake_server: FakeRerankServer) -> None:
    postprocessor = ZeRankPostprocessor(
        scorer=server_scorer(fake_server), threshold=0.3, passages=True, passage_top_k=1
    )
    response = await engine_with(postprocessor).aquery(QUERY)
    assert response.source_nodes
    for scored in response.source_nodes:
        assert len(scored.node.metadata["passages"]) == 1
    assert "Deliveries are made on weekdays" not in str(response)


def test_postprocessor_keeps_ids_relationships_and_never_mutates(
    fake_server: FakeRerankServer,
) -> None:
    nodes = [NodeWithScore(node=n, score=0.1) for n in llama_nodes()]
    before = [n.model_copy(deep=True) for n in nodes]
    postprocessor = ZeRankPostprocessor(
        scorer=server_scorer(fake_server), threshold=0.3, passages=True, passage_min_keep=1
    )
    kept = postprocessor.postprocess_nodes(nodes, query_str=QUERY)
    assert [n.node.get_content() for n in nodes] == [n.node.get_content() for n in before]
    assert [n.node.metadata for n in nodes] == [n.node.metadata for n in before]
    for scored in kept:
        original = next(n for n in nodes if n.node.node_id == scored.node.node_id)
        assert scored.node.relationships == original.node.relationships
        assert scored.node.metadata["key"] == original.node.metadata["key"]
        assert scored.node.metadata["retrieval_score"] == 0.1
        assert scored.node.get_content(MetadataMode.NONE) != ""
