"""A LangChain document compressor that keeps only the documents worth reading.

:class:`ZeRankCompressor` scores each document against the query with a
calibrated zerank scorer and keeps what the core's
:class:`~zerank_core.select.SelectionPolicy` selects. It translates
``Document`` ↔ text and nothing more: scoring, batching and selection live in
``zerank_core``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field

from langchain_zerank._scorer import ScorerSettings
from zerank_core.dedupe import Duplicates, afind_duplicates, find_duplicates
from zerank_core.errors import ConfigurationError
from zerank_core.select import SelectionPolicy

__all__ = ["ZeRankCompressor"]


class ZeRankCompressor(ScorerSettings, BaseDocumentCompressor):
    """Keep the retrieved documents that pass a selection policy on zerank scores.

    Returns copies of the kept documents (ids kept, metadata deep-copied) with
    ``metadata["relevance_score"]`` set; the input is never modified. By
    default every document scoring at least 0.5 is returned, best first.

    Example:
        .. code-block:: python

            from langchain_classic.retrievers import ContextualCompressionRetriever
            from langchain_zerank import ZeRankCompressor

            compressor = ZeRankCompressor(threshold=0.5, top_k=5)
            retriever = ContextualCompressionRetriever(
                base_compressor=compressor, base_retriever=vector_store.as_retriever(k=30)
            )
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    threshold: float | None = 0.5
    """Keep documents whose score is at least this probability, in [0, 1]
    (``None``: no floor). The default matches the LlamaIndex postprocessor and
    the command line: keep what is at least even odds to be relevant."""

    top_k: int | None = None
    """Keep at most this many documents (with ``threshold``: top-K with a floor)."""

    max_chars: int | None = None
    """Character budget: best documents first, skipping any that would overflow it."""

    max_tokens: int | None = None
    """Token budget, estimated at four characters a token."""

    min_keep: int = 0
    """Never return fewer than this many documents (the best ones), whatever
    the threshold and budgets say."""

    order: Literal["score", "original"] = "score"
    """``"score"``: best first. ``"original"``: the retriever's order, which is
    what an LLM should read when the documents are pages of one document."""

    neighbors: int = 0
    """Also keep the documents up to this many positions before and after each
    selected one (context around a hit, e.g. adjacent pages)."""

    dedupe: bool = False
    """Keep one of each set of near-duplicate documents: a duplicate of a
    better-scoring kept document is dropped before ``top_k`` and the budgets
    apply, so its slot goes to the next distinct document. Kept documents
    name the dropped ones in ``metadata["duplicates"]`` (``index`` in the
    input, ``id``, ``similarity``, ``method``)."""

    duplicate_detector: Any = Field(default=None, exclude=True, repr=False)
    """How ``dedupe`` finds duplicates: ``None`` for
    ``zerank_core.dedupe.LexicalDetector()`` (exact and shingle near-duplicates,
    needs ``zerank-gate[dedupe]``), or a ``ModelDetector(scorer)`` that has
    zerank confirm each candidate pair."""

    instruction: str | None = None
    """Instruction appended to the query by zerank's convention, e.g. "prefer
    primary sources". Lexical scorers ignore it."""

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        self._policy()  # validates the selection options now, not at the first query

    def _policy(self) -> SelectionPolicy:
        return SelectionPolicy.from_attributes(self)

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Score ``documents`` against ``query`` and return the selected copies."""
        documents = list(documents)
        if not documents:
            return []
        texts = [document.page_content for document in documents]
        scores = self.get_scorer().score(query, texts, instruction=self.instruction)
        duplicates = find_duplicates(self.dedupe, self.duplicate_detector, texts, scores)
        return self._select(documents, scores, duplicates)

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`, through the scorer's own ``ascore``."""
        documents = list(documents)
        if not documents:
            return []
        texts = [document.page_content for document in documents]
        scores = await self.get_scorer().ascore(query, texts, instruction=self.instruction)
        duplicates = await afind_duplicates(self.dedupe, self.duplicate_detector, texts, scores)
        return self._select(documents, scores, duplicates)

    def _select(
        self, documents: list[Document], scores: list[float], duplicates: Duplicates | None
    ) -> list[Document]:
        if len(scores) != len(documents):
            raise ConfigurationError(
                f"scorer returned {len(scores)} scores for {len(documents)} documents"
            )
        selection = self._policy().select(
            scores,
            lengths=[len(document.page_content) for document in documents],
            duplicates=duplicates,
        )
        kept = []
        for i in selection.indices:
            copied = _scored_copy(documents[i], scores[i])
            dropped = selection.duplicates_of(i)
            if dropped:
                copied.metadata["duplicates"] = [
                    {
                        "index": d.index,
                        "id": documents[d.index].id,
                        "similarity": d.similarity,
                        "method": d.method,
                    }
                    for d in dropped
                ]
            kept.append(copied)
        return kept


def _scored_copy(document: Document, score: float) -> Document:
    metadata = copy.deepcopy(document.metadata)
    metadata["relevance_score"] = score
    return document.model_copy(update={"metadata": metadata})
