"""``dedupe`` in both adapters, inside real LangChain retrievers and LlamaIndex query engines.

Scores come from the real rerank-server client against the local server, so
the re-sent copies of a lab report score as high as the original and, without
``dedupe``, fill the top-K.
"""

from __future__ import annotations

import copy

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore
from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode, QueryBundle, TextNode

from langchain_zerank import ZeRankCompressor
from llamaindex_zerank import ZeRankPostprocessor
from tests.extras import needs_datasketch
from tests.fake_servers import FakeRerankServer
from tests.test_dedupe import FAXED_LAB, LAB, OTHER_LAB
from zerank_core.dedupe import ModelDetector
from zerank_core.scorers import RerankServerScorer

QUERY = "negative tuberculosis screening result"
XRAY = """RADIOLOGY REPORT. XR chest PA and lateral, pre-biologic screening. The lungs are
clear; no nodules, cavitation or calcified granulomas. Impression: no radiographic evidence
of active or prior tuberculosis."""
PA_FORM = """PRIOR AUTHORIZATION REQUEST FORM. Drug: adalimumab-adaz 40 mg every 14 days.
Clinical question 3: TB screening date and result: 08/21/2026, QFT-Plus negative (attached)."""
SKIN_TEST = """OCCUPATIONAL HEALTH RECORD 2019. Tuberculin skin test (Mantoux) read at 48
hours: induration 0 mm, negative. Symptom questionnaire negative."""
# The lab report three times (the original, re-faxed under a header, and the
# same page from a second retriever), then the distinct evidence.
TEXTS = [LAB, FAXED_LAB, OTHER_LAB, LAB, XRAY, PA_FORM, SKIN_TEST]
NAMES = ["lab", "lab-faxed", "cbc", "lab-again", "xray", "pa-form", "skin-test"]
LAB_COPIES = {"lab", "lab-faxed", "lab-again"}


def check_named_copies(kept_id: str, named: dict[str, dict[str, object]]) -> None:
    """The kept copy of the lab report names the other two, each with its similarity."""
    assert kept_id in LAB_COPIES
    assert set(named) == LAB_COPIES - {kept_id}
    for other, entry in named.items():
        # LangChain and LlamaIndex name a copy with the same record
        assert set(entry) == {"index", "id", "similarity", "method"}
        assert isinstance(entry["index"], int)
        exact = {kept_id, other} == {"lab", "lab-again"}
        assert entry["method"] == ("exact" if exact else "lexical")
        similarity = entry["similarity"]
        assert isinstance(similarity, float)
        assert similarity == 1.0 if exact else 0.7 <= similarity < 1.0


def scorer_for(server: FakeRerankServer) -> RerankServerScorer:
    return RerankServerScorer(f"{server.url}/v1/rerank")


# --- LangChain ------------------------------------------------------------------------------


def make_documents() -> list[Document]:
    return [
        Document(text, id=name, metadata={"source": f"{name}.pdf", "nested": {"seen": [i]}})
        for i, (name, text) in enumerate(zip(NAMES, TEXTS, strict=True))
    ]


def retriever_over(
    compressor: ZeRankCompressor, documents: list[Document]
) -> ContextualCompressionRetriever:
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    store.add_documents(documents)
    base = store.as_retriever(search_kwargs={"k": len(documents)})
    return ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)


def test_langchain_top_k_keeps_copies_without_dedupe(fake_server: FakeRerankServer) -> None:
    compressor = ZeRankCompressor(scorer=scorer_for(fake_server), top_k=3)
    kept = retriever_over(compressor, make_documents()).invoke(QUERY)
    assert sorted(d.id or "" for d in kept) == ["lab", "lab-again", "lab-faxed"]
    assert all("duplicates" not in d.metadata for d in kept)


@needs_datasketch
async def test_langchain_dedupe_gives_the_slots_to_distinct_evidence(
    fake_server: FakeRerankServer,
) -> None:
    documents = make_documents()
    before = copy.deepcopy(documents)
    compressor = ZeRankCompressor(scorer=scorer_for(fake_server), top_k=3, dedupe=True)
    retriever = retriever_over(compressor, documents)

    kept = retriever.invoke(QUERY)
    again = await retriever.ainvoke(QUERY)

    # one copy of the lab report (whichever the retriever listed first), then distinct pages
    assert [d.id for d in kept[1:]] == ["pa-form", "xray"]
    assert [d.id for d in again] == [d.id for d in kept]
    lab = kept[0]
    assert lab.metadata["relevance_score"] == pytest.approx(0.95)
    check_named_copies(lab.id or "", {d["id"]: d for d in lab.metadata["duplicates"]})
    assert "duplicates" not in kept[1].metadata
    # The retriever's documents, the dropped copies included, are untouched.
    assert documents == before


@needs_datasketch
def test_langchain_dedupe_with_a_budget_and_min_keep(fake_server: FakeRerankServer) -> None:
    documents = make_documents()
    budget = len(LAB) + len(FAXED_LAB) + 50
    plain = ZeRankCompressor(scorer=scorer_for(fake_server), threshold=None, max_chars=budget)
    deduped = ZeRankCompressor(
        scorer=scorer_for(fake_server), threshold=None, max_chars=budget, dedupe=True
    )
    # the copies spend the budget; deduplicated, it goes to three distinct pages
    assert [d.id for d in plain.compress_documents(documents, QUERY)] == ["lab", "lab-faxed"]
    assert [d.id for d in deduped.compress_documents(documents, QUERY)] == [
        "lab",
        "pa-form",
        "xray",
        "skin-test",
    ]

    fail_open = ZeRankCompressor(
        scorer=scorer_for(fake_server), threshold=1.0, min_keep=2, dedupe=True
    )
    assert [d.id for d in fail_open.compress_documents(documents, QUERY)] == ["lab", "pa-form"]


@needs_datasketch
def test_langchain_model_detector(fake_server: FakeRerankServer) -> None:
    scorer = scorer_for(fake_server)
    compressor = ZeRankCompressor(
        scorer=scorer,
        top_k=3,
        dedupe=True,
        duplicate_detector=ModelDetector(scorer, instruction=None),
    )
    kept = compressor.compress_documents(make_documents(), QUERY)
    assert [d.id for d in kept] == ["lab", "pa-form", "xray"]
    methods = {d["id"]: d["method"] for d in kept[0].metadata["duplicates"]}
    assert methods == {"lab-faxed": "model", "lab-again": "exact"}
    # the detector is configuration, not data: it stays out of serialised output
    assert "duplicate_detector" not in compressor.model_dump()


# --- LlamaIndex -----------------------------------------------------------------------------


def make_nodes() -> list[TextNode]:
    return [
        TextNode(id_=name, text=text, metadata={"file_name": f"{name}.pdf"})
        for name, text in zip(NAMES, TEXTS, strict=True)
    ]


def engine_with(postprocessor: ZeRankPostprocessor, nodes: list[TextNode]) -> RetrieverQueryEngine:
    index = VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))
    retriever = index.as_retriever(similarity_top_k=len(nodes))
    return RetrieverQueryEngine.from_args(
        retriever, llm=MockLLM(), node_postprocessors=[postprocessor]
    )


def test_llamaindex_query_engine_without_dedupe_reads_the_copies(
    fake_server: FakeRerankServer,
) -> None:
    postprocessor = ZeRankPostprocessor(
        scorer=scorer_for(fake_server), top_k=3, metadata_mode=MetadataMode.NONE
    )
    response = engine_with(postprocessor, make_nodes()).query(QUERY)
    ids = sorted(n.node.node_id for n in response.source_nodes)
    assert ids == ["lab", "lab-again", "lab-faxed"]


@needs_datasketch
async def test_llamaindex_query_engine_with_dedupe(fake_server: FakeRerankServer) -> None:
    nodes = make_nodes()
    before = [n.model_copy(deep=True) for n in nodes]
    postprocessor = ZeRankPostprocessor(
        scorer=scorer_for(fake_server), top_k=3, dedupe=True, metadata_mode=MetadataMode.NONE
    )
    engine = engine_with(postprocessor, nodes)

    response = engine.query(QUERY)
    again = await engine.aquery(QUERY)

    kept = response.source_nodes
    assert [n.node.node_id for n in kept[1:]] == ["pa-form", "xray"]
    assert [n.node.node_id for n in again.source_nodes] == [n.node.node_id for n in kept]
    lab = kept[0].node
    check_named_copies(lab.node_id, {d["id"]: d for d in lab.metadata["duplicates"]})
    assert "duplicates" not in kept[1].node.metadata
    # the list is for the application, not for the LLM or the embedding
    assert "duplicates" in kept[0].node.excluded_llm_metadata_keys
    assert "duplicates" in kept[0].node.excluded_embed_metadata_keys
    # MockLLM echoes the prompt it was given: one copy of the report, no duplicate list
    assert str(response).count("QUANTIFERON") == 1
    assert "similarity" not in str(response)
    # the index's nodes (the dropped copies included) are untouched
    assert [n.model_dump() for n in nodes] == [n.model_dump() for n in before]


@needs_datasketch
def test_llamaindex_dedupe_judges_text_not_metadata(fake_server: FakeRerankServer) -> None:
    # Scored with each node's own file name in the text (MetadataMode.EMBED),
    # the copies still count as copies: duplicates are judged on the text alone.
    postprocessor = ZeRankPostprocessor(scorer=scorer_for(fake_server), top_k=3, dedupe=True)
    kept = engine_with(postprocessor, make_nodes()).retrieve(QueryBundle(QUERY))
    assert [n.node.node_id for n in kept[1:]] == ["pa-form", "xray"]
    assert kept[0].node.node_id in LAB_COPIES
    assert len(kept[0].node.metadata["duplicates"]) == 2


def test_llamaindex_dedupe_round_trips_through_dict() -> None:
    postprocessor = ZeRankPostprocessor(model="bm25", top_n=3, dedupe=True)
    restored = ZeRankPostprocessor.from_dict(postprocessor.to_dict())
    assert restored.dedupe is True
    assert restored.policy == postprocessor.policy
