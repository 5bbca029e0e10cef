"""Route a LlamaIndex RouterQueryEngine with ZeRankSelector.

Three query engines (IT support, finance, HR policies) each answer from their
own VectorStoreIndex; the selector scores each engine's description against
the question and the router sends the question where the score is highest.
A question no route covers goes to the configured default route, and a
multi-selection router sends a question that spans two topics to both.

Runs offline with LlamaIndex's mock embedding and mock LLM; the scorer is
whatever ``scorer_from_env`` finds (the uncalibrated BM25 baseline when
nothing is configured: set ZEROENTROPY_API_KEY, ZERANK_SERVER_URL or
ZERANK_LOCAL_MODEL for zerank-2's calibrated probabilities).

    python cookbook/llamaindex_router.py
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from llama_index.core import VectorStoreIndex
from llama_index.core.base.base_selector import SelectorResult
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RouterQueryEngine
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.core.tools import QueryEngineTool

from llamaindex_zerank import ZeRankSelector
from zerank_core import Scorer, scorer_from_env

ROUTES = {
    "it": (
        "IT support: laptops, passwords, VPN access, printers and security incidents.",
        ["Reset your password at id.example.com.", "The VPN needs the client version 5."],
    ),
    "finance": (
        "Finance: expense reports, receipts, invoices, travel costs and reimbursements.",
        ["Expense reports are due within 30 days.", "Receipts are needed above 25 euros."],
    ),
    "hr": (
        "HR policies: annual leave, sick leave, parental leave, remote work and benefits.",
        ["Employees receive 25 days of paid annual leave.", "Parental leave is 16 weeks."],
    ),
}
QUESTIONS = [
    "How do I reset my VPN password?",
    "When is my expense report due and which receipts are needed?",
    "How many weeks of parental leave do I get?",
    "What is on the canteen menu today?",
]
MIXED_QUESTION = "Can I expense a new laptop and how do I set up the VPN on it?"


def router(selector: ZeRankSelector) -> RouterQueryEngine:
    tools = []
    for name, (description, texts) in ROUTES.items():
        nodes = [TextNode(id_=f"{name}-{i}", text=text) for i, text in enumerate(texts)]
        index = VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=16))
        engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=2)
        tools.append(QueryEngineTool.from_defaults(engine, name=name, description=description))
    return RouterQueryEngine(selector=selector, query_engine_tools=tools, llm=MockLLM())


def show(question: str, result: SelectorResult, source_ids: list[str]) -> None:
    names = list(ROUTES)
    print(f"Q: {question}")
    print(f"  routed to: {', '.join(names[i] for i in result.inds)}")
    for reason in result.reasons:
        print(f"    {reason}")
    print(f"  answered from nodes: {', '.join(source_ids)}\n")


async def main() -> None:
    choice = scorer_from_env()
    scorer: Scorer = choice.scorer
    print(f"scorer: {choice.reason}\n")

    single = router(ZeRankSelector(scorer, threshold=0.5, default="hr"))
    for question in QUESTIONS:
        response = await single.aquery(question)
        assert response.metadata is not None
        show(question, response.metadata["selector_result"], _ids(response.source_nodes))

    print("multi-selection (every route scoring at least 0.5):")
    multi = router(ZeRankSelector(scorer, multi=True, threshold=0.5))
    response = await multi.aquery(MIXED_QUESTION)
    assert response.metadata is not None
    show(MIXED_QUESTION, response.metadata["selector_result"], _ids(response.source_nodes))


def _ids(nodes: Sequence[NodeWithScore]) -> list[str]:
    return sorted(n.node.node_id for n in nodes)


if __name__ == "__main__":
    asyncio.run(main())
