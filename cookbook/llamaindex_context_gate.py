"""Gate a LlamaIndex query engine's context with ZeRankPostprocessor.

A VectorStoreIndex retrieves eight chunks of an employee handbook; the
postprocessor keeps only those whose score passes the policy, and the script
prints the nodes before and after and the characters the LLM no longer reads.

Runs offline: the embedding model and the LLM are LlamaIndex's mocks (the mock
embedding ranks every chunk alike, the worst retriever a gate can get), and the
scorer is whatever ``scorer_from_env`` finds, the BM25 baseline when nothing
is configured. BM25 scores are uncalibrated (the best chunk gets 1.0); set
ZEROENTROPY_API_KEY, ZERANK_SERVER_URL or ZERANK_LOCAL_MODEL for zerank-2's
calibrated probabilities.

    python cookbook/llamaindex_context_gate.py
"""

from __future__ import annotations

import asyncio

from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

from llamaindex_zerank import ZeRankPostprocessor
from zerank_core import scorer_from_env

HANDBOOK = {
    "leave": "Employees receive 25 days of paid annual leave. Unused leave days carry over "
    "until March 31 of the following year and are then forfeited.",
    "sick": "Sick leave requires a doctor's note from the third day of absence. Notify your "
    "manager before 10:00 on the first day you are sick.",
    "expenses": "Submit expense reports within 30 days through the finance portal. Receipts "
    "are required for every item above 25 euros.",
    "travel": "Book business travel through the travel desk. Economy class is the default for "
    "flights under six hours; trains are preferred for trips under four hours.",
    "security": "Lock your screen whenever you leave your desk. Report lost laptops or badges "
    "to the security team within one hour.",
    "remote": "Remote work is allowed up to three days a week with your manager's approval. "
    "Core hours are 10:00 to 15:00 in your local time zone.",
    "parental": "Parental leave is 16 weeks at full pay for every parent, to be taken within "
    "the first year after birth or adoption.",
    "equipment": "Each employee gets a laptop and a monitor. A home-office allowance of 300 "
    "euros is paid once, after the probation period.",
}
QUESTIONS = [
    "How many days of annual leave do I get, and do unused leave days carry over?",
    "Which receipts do I need for my expense report?",
]


def llm_chars(nodes: list[NodeWithScore]) -> int:
    """Characters of context the LLM reads for these nodes."""
    return sum(len(n.node.get_content(metadata_mode=MetadataMode.LLM)) for n in nodes)


def show(title: str, score_name: str, nodes: list[NodeWithScore]) -> None:
    print(f"  {title}: {len(nodes)} nodes, {llm_chars(nodes)} characters ({score_name})")
    for n in nodes:
        score = "   -  " if n.score is None else f"{n.score:6.3f}"
        print(f"    {score}  {n.node.node_id:<10} {n.node.get_content()[:60]}...")


async def main() -> None:
    choice = scorer_from_env()
    print(f"scorer: {choice.reason}")
    nodes = [
        TextNode(id_=name, text=text, metadata={"section": name}) for name, text in HANDBOOK.items()
    ]
    index = VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=16))
    retriever = index.as_retriever(similarity_top_k=len(nodes))
    gate = ZeRankPostprocessor(scorer=choice.scorer, threshold=0.5, top_n=3)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(), node_postprocessors=[gate])
    print(f"policy: {gate.policy}\n")

    total_before = total_after = 0
    for question in QUESTIONS:
        print(f"Q: {question}")
        before = retriever.retrieve(question)
        response = await engine.aquery(question)
        after = response.source_nodes
        sync_ids = [n.node.node_id for n in engine.query(question).source_nodes]
        assert sync_ids == [n.node.node_id for n in after], "sync and async paths disagree"
        show("retrieved", "retrieval score", before)
        show("kept", "gate score", after)
        saved = llm_chars(before) - llm_chars(after)
        print(
            f"  characters saved: {saved} of {llm_chars(before)} ({saved / llm_chars(before):.0%})"
        )
        print()
        total_before += llm_chars(before)
        total_after += llm_chars(after)

    saved = total_before - total_after
    print(
        f"over {len(QUESTIONS)} questions: {total_before} -> {total_after} characters, "
        f"{saved} saved ({saved / total_before:.0%})"
    )


if __name__ == "__main__":
    asyncio.run(main())
