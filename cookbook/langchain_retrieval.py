"""LangChain: gate a retriever's chunks with ZeRankCompressor before the LLM reads them.

Run it:  python cookbook/langchain_retrieval.py
Needs:   pip install 'zerank-gate[langchain]' langchain-classic

A vector store retrieves eight handbook chunks per question; a
``ContextualCompressionRetriever`` with :class:`ZeRankCompressor` keeps only
those that pass the selection policy, and an LCEL chain puts them in the
prompt. The script prints chunks in, chunks out and characters saved per
question, sync and async.

Offline it scores with the BM25 baseline of ``zerank_core`` (uncalibrated, so
its threshold is relative to the best chunk); set ``ZEROENTROPY_API_KEY``,
``ZERANK_SERVER_URL`` or ``ZERANK_LOCAL_MODEL`` to gate on zerank's calibrated
probabilities instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from pathlib import Path

from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_zerank import ZeRankCompressor
from zerank_core import Scale, scorer_from_env

DATA = Path(__file__).parent / "data" / "handbook.json"
RETRIEVED = 8


class HashedWordEmbeddings(Embeddings):
    """Bag of hashed word stems: an offline stand-in for a real embedding model.

    A word's first six letters stand for its stem, so "reimbursed" meets
    "reimbursement" as a real embedding model would let it.
    """

    def __init__(self, size: int = 512) -> None:
        self.size = size

    def _embed(self, text: str) -> list[float]:
        vector = [0.0] * self.size
        for word in re.findall(r"[a-z]{3,}", text.lower()):
            stem = word[:6].encode()
            bucket = int.from_bytes(hashlib.blake2b(stem, digest_size=4).digest())
            vector[bucket % self.size] += 1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._embed(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._embed(text)


def join(documents: list[Document]) -> str:
    return "\n\n".join(d.page_content for d in documents)


def characters(documents: list[Document]) -> int:
    return sum(len(d.page_content) for d in documents)


def main() -> None:
    data = json.loads(DATA.read_text())
    store = InMemoryVectorStore(HashedWordEmbeddings())
    store.add_documents(
        [Document(chunk, id=f"handbook-{i}") for i, chunk in enumerate(data["chunks"])]
    )
    base = store.as_retriever(search_kwargs={"k": RETRIEVED})

    choice = scorer_from_env()
    print(f"backend: {choice.name} — {choice.reason}")
    if choice.scorer.scale is Scale.UNCALIBRATED:
        # BM25 is max-scaled per question: keep the best few within 40 % of the best.
        compressor = ZeRankCompressor(scorer=choice.scorer, threshold=0.4, top_n=3, min_keep=1)
    else:
        # Calibrated: keep what is at least 50 % likely to be relevant.
        compressor = ZeRankCompressor(scorer=choice.scorer, threshold=0.5, top_n=4, min_keep=1)
    gated = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)

    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer only from this context:\n\n{context}"), ("human", "{question}")]
    )
    chain = {"context": gated | RunnableLambda(join), "question": RunnablePassthrough()} | prompt
    print(f"policy: {compressor!r}\n")

    for question in data["questions"]:
        retrieved = base.invoke(question)
        kept = gated.invoke(question)
        saved = 1 - characters(kept) / characters(retrieved)
        print(f"Q: {question}")
        for document in kept:
            score = document.metadata["relevance_score"]
            print(f"  [{score:.2f}] {document.id:<12} {document.page_content[:72]}…")
        print(
            f"  chunks in: {len(retrieved)}, chunks out: {len(kept)}, characters: "
            f"{characters(retrieved):,} → {characters(kept):,} ({saved:.0%} saved)"
        )
        prompt_chars = len(chain.invoke(question).to_messages()[0].content)
        print(f"  prompt sent to the LLM: {prompt_chars:,} characters\n")

    async def gate_all() -> list[list[Document]]:
        return await gated.abatch(data["questions"])

    batches = asyncio.run(gate_all())
    total_in = RETRIEVED * len(batches)
    total_out = sum(len(kept) for kept in batches)
    print(f"async, all questions at once: chunks in: {total_in}, chunks out: {total_out}")


if __name__ == "__main__":
    main()
