"""Results travel: pickle, JSON and LangGraph checkpoints, in memory and in SQLite.

A classification kept in a LangGraph state, and the documents the compressor
keeps, are stored by the graph's checkpointer and read back intact when a
thread resumes, also by a new process (a new saver on the same SQLite file).
LlamaIndex's results round-trip too: a selector's result every way, its
nodes by pickle and by LlamaIndex's own docstore JSON.
"""

from __future__ import annotations

import inspect
import json
import pickle
import sqlite3
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langchain_core.documents import Document
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from llama_index.core.base.base_selector import SelectorResult, SingleSelection
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.core.storage.docstore.utils import doc_to_json, json_to_doc
from llama_index.core.tools.types import ToolMetadata
from pydantic import ValidationError

from langchain_zerank import Classification, ZeRankClassifier, ZeRankCompressor
from llamaindex_zerank import ZeRankPostprocessor, ZeRankSelector
from tests.extras import needs_datasketch

LABELS = {
    "billing": "a question about invoices, charges or refunds",
    "technical": "a bug report or an error in the product",
}
TICKET = "The charges on my invoices are wrong"
DOCUMENTS = [
    "Refunds for wrong charges are paid within 5 days.",
    "Invoices are sent on the first day of the month.",
    "The office is closed on public holidays.",
]


class TicketState(TypedDict, total=False):
    ticket: str
    classification: Classification
    evidence: list[Document]
    answer: str


def serde(*types: type) -> JsonPlusSerializer:
    """LangGraph's serializer, told to load classifications back where it asks to be told.

    langgraph-checkpoint 4 warns on (and, with ``LANGGRAPH_STRICT_MSGPACK``,
    refuses) a type not named in ``allowed_msgpack_modules``; 3 has no such list.
    """
    if "allowed_msgpack_modules" in inspect.signature(JsonPlusSerializer).parameters:
        return JsonPlusSerializer(allowed_msgpack_modules=[Classification, *types])
    return JsonPlusSerializer()


def router() -> ZeRankClassifier:
    return ZeRankClassifier(model="bm25", labels=LABELS, threshold=0.6, default="general")


def support_graph(checkpointer: BaseCheckpointSaver[Any]) -> Any:
    """triage → (pause) → billing/technical/general: the pause is where a thread resumes."""
    classifier = router()
    compressor = ZeRankCompressor(model="bm25", top_n=2, threshold=0.5, min_keep=1)

    def triage(state: TicketState) -> TicketState:
        evidence = compressor.compress_documents(
            [Document(text, id=f"doc-{i}") for i, text in enumerate(DOCUMENTS)], state["ticket"]
        )
        return {"classification": classifier.invoke(state["ticket"]), "evidence": list(evidence)}

    def answer(state: TicketState) -> TicketState:
        chosen = state["classification"]
        assert isinstance(chosen, Classification)
        return {"answer": f"{chosen.label}:{chosen.probabilities[chosen.label or 'billing']:.2f}"}

    graph = StateGraph(TicketState)
    graph.add_node("triage", triage)
    for name in ("billing", "technical", "general"):
        graph.add_node(name, answer)
        graph.add_edge(name, END)
    graph.add_edge(START, "triage")
    graph.add_conditional_edges(
        "triage",
        lambda state: state["classification"].label,
        {"billing": "billing", "technical": "technical", "general": "general"},
    )
    return graph.compile(
        checkpointer=checkpointer, interrupt_before=["billing", "technical", "general"]
    )


def check_resume(first: Any, second: Any) -> None:
    """Run ``first`` to the pause, then read and resume the thread with ``second``."""
    config = {"configurable": {"thread_id": "ticket-1"}}
    paused = first.invoke({"ticket": TICKET}, config)
    expected = router().invoke(TICKET)
    assert paused["classification"] == expected

    stored = second.get_state(config)
    assert stored.next == ("billing",)
    classification = stored.values["classification"]
    assert isinstance(classification, Classification)
    assert classification == expected
    assert classification.label == "billing"
    assert classification.probabilities == expected.probabilities
    evidence = stored.values["evidence"]
    assert [d.id for d in evidence] == [d.id for d in paused["evidence"]]
    assert [d.metadata["relevance_score"] for d in evidence] == [
        d.metadata["relevance_score"] for d in paused["evidence"]
    ]

    done = second.invoke(None, config)
    assert done["answer"] == f"billing:{expected.probabilities['billing']:.2f}"
    assert done["classification"] == expected


def test_classification_pickles_and_round_trips_json() -> None:
    result = router().invoke(TICKET)

    assert pickle.loads(pickle.dumps(result)) == result
    text = result.model_dump_json()
    assert json.loads(text)["label"] == "billing"
    assert Classification.model_validate_json(text) == result
    assert Classification.model_validate(json.loads(json.dumps(result.model_dump()))) == result
    assert "probabilities" in Classification.model_json_schema()["properties"]


def test_classification_is_frozen_and_checked() -> None:
    result = router().invoke(TICKET)
    with pytest.raises(ValidationError):
        result.labels = ("technical",)  # type: ignore[misc]
    with pytest.raises(ValidationError, match="no probability"):
        Classification(probabilities={"a": 0.5}, labels=("b",))
    with pytest.raises(ValidationError, match="finite"):
        Classification(probabilities={"a": float("nan")}, labels=())
    with pytest.raises(ValidationError, match="exactly one label"):
        Classification(probabilities={"a": 0.1}, labels=(), is_default=True)


def test_langgraph_serializer_round_trips_the_classification() -> None:
    result = router().invoke(TICKET)
    assert serde().loads_typed(serde().dumps_typed(result)) == result


def test_graph_resumes_from_memory_with_the_classification_intact() -> None:
    saver = InMemorySaver(serde=serde())
    check_resume(support_graph(saver), support_graph(saver))


def test_graph_resumes_from_sqlite_in_a_new_connection(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    first = sqlite3.connect(path, check_same_thread=False)
    try:
        check_resume(
            support_graph(SqliteSaver(first, serde=serde())),
            support_graph(SqliteSaver(first, serde=serde())),
        )
    finally:
        first.close()

    # A new process: a new connection to the same file reads the finished thread.
    second = sqlite3.connect(path, check_same_thread=False)
    try:
        graph = support_graph(SqliteSaver(second, serde=serde()))
        state = graph.get_state({"configurable": {"thread_id": "ticket-1"}})
        assert isinstance(state.values["classification"], Classification)
        assert state.values["classification"] == router().invoke(TICKET)
        assert state.values["answer"].startswith("billing:")
    finally:
        second.close()


async def test_async_sqlite_checkpointer_round_trips_the_classification(tmp_path: Path) -> None:
    aiosqlite_saver = pytest.importorskip("langgraph.checkpoint.sqlite.aio")
    async with aiosqlite_saver.AsyncSqliteSaver.from_conn_string(
        str(tmp_path / "checkpoints.sqlite")
    ) as saver:
        saver.serde = serde()
        graph = support_graph(saver)
        config = {"configurable": {"thread_id": "ticket-async"}}
        await graph.ainvoke({"ticket": TICKET}, config)
        stored = await graph.aget_state(config)
        assert stored.values["classification"] == await router().ainvoke(TICKET)
        done = await graph.ainvoke(None, config)
        assert done["answer"].startswith("billing:")


@pytest.mark.parametrize(
    "dedupe", [False, pytest.param(True, marks=needs_datasketch)], ids=["plain", "dedupe"]
)
def test_compressor_documents_travel(dedupe: bool) -> None:
    compressor = ZeRankCompressor(model="bm25", top_n=2, threshold=0.5, min_keep=1, dedupe=dedupe)
    docs = [Document(text, id=f"doc-{i}") for i, text in enumerate([*DOCUMENTS, DOCUMENTS[0]])]
    kept = list(compressor.compress_documents(docs, TICKET))
    assert all("relevance_score" in d.metadata for d in kept)
    if dedupe:
        assert any(d.metadata.get("duplicates") for d in kept)

    assert pickle.loads(pickle.dumps(kept)) == kept
    assert serde().loads_typed(serde().dumps_typed(kept)) == kept
    as_json = json.loads(json.dumps([d.model_dump() for d in kept]))
    assert [Document.model_validate(d) for d in as_json] == kept


def test_llamaindex_results_travel() -> None:
    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}")) for i, t in enumerate(DOCUMENTS)]
    kept = ZeRankPostprocessor(model="bm25", top_n=2, min_keep=1).postprocess_nodes(
        nodes, query_bundle=QueryBundle(TICKET)
    )
    choices = [ToolMetadata(description=d, name=n) for n, d in LABELS.items()]
    selection = ZeRankSelector(model="bm25").select(choices, QueryBundle(TICKET))
    assert kept
    assert selection.selections

    assert pickle.loads(pickle.dumps(kept)) == kept
    assert pickle.loads(pickle.dumps(selection)) == selection
    allowed = serde(SelectorResult, SingleSelection)
    assert allowed.loads_typed(allowed.dumps_typed(selection)) == selection
    assert SelectorResult.model_validate_json(selection.model_dump_json()) == selection
    # NodeWithScore's node field is LlamaIndex's abstract BaseNode, which no JSON
    # loader of its own rebuilds; its docstore's helpers store the node, and the
    # score is a plain float beside it.
    stored = json.dumps([{"node": doc_to_json(n.node), "score": n.score} for n in kept])
    loaded = [
        NodeWithScore(node=json_to_doc(r["node"]), score=r["score"]) for r in json.loads(stored)
    ]
    assert loaded == kept
    assert [n.node.metadata["relevance_score"] for n in loaded] == [n.score for n in kept]
