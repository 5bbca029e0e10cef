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
from dataclasses import asdict
from typing import Any, ClassVar, Literal

from langchain_core.callbacks import AsyncCallbackManager, CallbackManager, Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field

from langchain_zerank._scorer import ScorerSettings
from zerank_core.components import check_top_n
from zerank_core.dedupe import Duplicates, afind_duplicates, find_duplicates
from zerank_core.errors import ConfigurationError
from zerank_core.passages import (
    DEFAULT_PASSAGE_CHARS,
    DEFAULT_PASSAGE_POLICY,
    PassagePolicy,
    ScoredCut,
    ascore_passages,
    score_passages,
)
from zerank_core.scorers.base import Usage, check_scores
from zerank_core.select import SelectionPolicy

__all__ = ["ZeRankCompressor", "ZeroEntropyRerank"]


class ZeRankCompressor(ScorerSettings, BaseDocumentCompressor):
    """Keep the retrieved documents that pass a selection policy on zerank scores.

    Returns copies of the kept documents (ids kept, metadata deep-copied) with
    ``metadata["relevance_score"]`` set; the input is never modified. By
    default every document scoring at least 0.5 is returned, best first.
    Each call is reported to the callbacks it receives (a LangSmith or
    Phoenix trace, any callback handler) as a child run named
    ``ZeRankCompressor`` whose outputs hold the scores, the kept and dropped
    counts, the policy and the usage.

    Example:
        .. code-block:: python

            from langchain_classic.retrievers import ContextualCompressionRetriever
            from langchain_zerank import ZeRankCompressor

            compressor = ZeRankCompressor(model="zeroentropy/zerank-2-reranker", top_n=5)
            retriever = ContextualCompressionRetriever(
                base_compressor=compressor, base_retriever=vector_store.as_retriever(k=30)
            )
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    aliases: ClassVar[dict[str, str]] = {"top_k": "top_n"}

    threshold: float | None = 0.5
    """Keep documents whose score is at least this probability, in [0, 1]
    (``None``: no floor). The default matches the LlamaIndex postprocessor and
    the command line: keep what is at least even odds to be relevant."""

    top_n: int | None = None
    """Keep at most this many documents, >= 1 (with ``threshold``: top-N with a
    floor). ``top_k`` is accepted as an alias."""

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
    better-scoring kept document is dropped before ``top_n`` and the budgets
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

    passages: bool = False
    """Trim each kept document to its evidence passages (the calibrated,
    reranker-based counterpart of ``LLMChainExtractor``): the kept documents
    are cut into sentences or short windows, those are scored against the
    query in one more scorer call, and each copy's ``page_content`` becomes
    its kept passages in order, one a line. ``metadata["passages"]`` lists
    them as ``{"start", "end", "score", "text"}``, offsets into the original
    ``page_content``. The ``passage_*`` options say which passages to keep."""

    passage_threshold: float | None = DEFAULT_PASSAGE_POLICY.threshold
    """Keep passages scoring at least this, in [0, 1] (``None``: no floor)."""

    passage_top_k: int | None = DEFAULT_PASSAGE_POLICY.top_k
    """Keep at most this many passages of each kept document (``None``: no limit)."""

    passage_max_chars: int | None = None
    """Character budget over the passages of all kept documents, best first."""

    passage_min_keep: int = DEFAULT_PASSAGE_POLICY.min_keep
    """Each kept document keeps at least this many of its best passages,
    whatever the floor and budget say (default 1: never an empty document)."""

    passage_chars: int = DEFAULT_PASSAGE_CHARS
    """The longest passage, in characters: longer sentences are cut between words."""

    def model_post_init(self, context: Any, /) -> None:
        check_top_n(self.top_n)
        self._policy()  # validates the selection options now, not at the first query
        self._passage_policy()
        super().model_post_init(context)

    @property
    def top_k(self) -> int | None:
        """The core's name for :attr:`top_n`."""
        return self.top_n

    def _policy(self) -> SelectionPolicy:
        return SelectionPolicy.from_attributes(self)

    def _passage_policy(self) -> PassagePolicy:
        return PassagePolicy.from_attributes(self)

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
        run = CallbackManager.configure(inheritable_callbacks=callbacks).on_chain_start(
            None, self._trace_inputs(documents, query), name=type(self).__name__
        )
        try:
            scorer = self.get_scorer()
            before = scorer.usage
            texts = [document.page_content for document in documents]
            scores = self._checked(scorer.score(query, texts, instruction=self.instruction), texts)
            duplicates = find_duplicates(self.dedupe, self.duplicate_detector, texts, scores)
            kept, outputs = self._select(documents, scores, duplicates, before)
            if self.passages and kept:
                originals = [texts[i] for i in outputs["kept_indices"]]
                chosen = score_passages(
                    scorer,
                    query,
                    originals,
                    self._passage_policy(),
                    instruction=self.instruction,
                )
                kept = self._trimmed(kept, originals, chosen, outputs, before)
        except BaseException as exc:
            run.on_chain_error(exc)
            raise
        run.on_chain_end(outputs)
        return kept

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
        run = await AsyncCallbackManager.configure(inheritable_callbacks=callbacks).on_chain_start(
            None, self._trace_inputs(documents, query), name=type(self).__name__
        )
        try:
            scorer = self.get_scorer()
            before = scorer.usage
            texts = [document.page_content for document in documents]
            scores = self._checked(
                await scorer.ascore(query, texts, instruction=self.instruction), texts
            )
            duplicates = await afind_duplicates(self.dedupe, self.duplicate_detector, texts, scores)
            kept, outputs = self._select(documents, scores, duplicates, before)
            if self.passages and kept:
                originals = [texts[i] for i in outputs["kept_indices"]]
                chosen = await ascore_passages(
                    scorer,
                    query,
                    originals,
                    self._passage_policy(),
                    instruction=self.instruction,
                )
                kept = self._trimmed(kept, originals, chosen, outputs, before)
        except BaseException as exc:
            await run.on_chain_error(exc)
            raise
        await run.on_chain_end(outputs)
        return kept

    @staticmethod
    def _trace_inputs(documents: list[Document], query: str) -> dict[str, Any]:
        # Ids and a count, not the texts: the parent retriever run already holds them.
        return {"query": query, "documents": len(documents), "ids": [d.id for d in documents]}

    def _checked(self, scores: Sequence[float], texts: list[str]) -> list[float]:
        return check_scores(
            scores, len(texts), context=f"scorer {self.get_scorer().model!r}", items="documents"
        )

    def _select(
        self,
        documents: list[Document],
        scores: list[float],
        duplicates: Duplicates | None,
        before: Usage | None,
    ) -> tuple[list[Document], dict[str, Any]]:
        policy = self._policy()
        selection = policy.select(
            scores,
            lengths=[len(document.page_content) for document in documents],
            duplicates=duplicates,
        )
        ids = [document.id for document in documents]
        kept = []
        for i in selection.indices:
            copied = _scored_copy(documents[i], scores[i])
            if selection.duplicates_of(i):
                copied.metadata["duplicates"] = selection.duplicate_records(i, ids)
            kept.append(copied)
        scorer = self.get_scorer()
        after = scorer.usage
        outputs = {
            "model": scorer.model,
            "scale": scorer.scale.value,
            "scores": scores,
            "kept": len(kept),
            "dropped": len(documents) - len(kept),
            "kept_indices": list(selection.indices),
            "policy": asdict(policy),
            "usage": None if after is None else asdict(after if before is None else after - before),
        }
        return kept, outputs

    def _trimmed(
        self,
        kept: list[Document],
        originals: list[str],
        chosen: list[list[ScoredCut]],
        outputs: dict[str, Any],
        before: Usage | None,
    ) -> list[Document]:
        """The kept copies cut down to their passages; the trace gets the passage counts."""
        trimmed = []
        for document, original, passages in zip(kept, originals, chosen, strict=True):
            records = [
                {"start": start, "end": end, "score": score, "text": original[start:end]}
                for start, end, score in passages
            ]
            document.metadata["passages"] = records
            content = "\n".join(str(r["text"]) for r in records)
            trimmed.append(document.model_copy(update={"page_content": content}))
        outputs["passage_policy"] = asdict(self._passage_policy())
        outputs["passages_kept"] = [len(p) for p in chosen]
        after = self.get_scorer().usage
        outputs["usage"] = (
            None if after is None else asdict(after if before is None else after - before)
        )
        return trimmed


class ZeroEntropyRerank(ZeRankCompressor):
    """Drop-in for the ``ZeroEntropyRerank`` of PyPI's ``langchain-zerank`` 0.1.

    Same name, arguments and defaults: ``model="zerank-1-small"``,
    ``top_n=3``, ``api_key`` (else ``ZEROENTROPY_API_KEY``) and an optional
    SDK ``client``; it keeps the ``top_n`` best documents whatever their
    score (``threshold=None``), best first, with ``metadata["relevance_score"]``.
    Unlike 0.1 it returns copies instead of modifying the caller's
    documents, and it takes every option of :class:`ZeRankCompressor`.
    """

    model: str | None = "zerank-1-small"
    """ZeroEntropy API model name (see :attr:`ZeRankCompressor.model`)."""

    top_n: int | None = 3
    """Keep the ``top_n`` best documents."""

    threshold: float | None = None
    """No floor by default, as in ``langchain-zerank`` 0.1."""

    client: Any = Field(default=None, exclude=True, repr=False)
    """A ``zeroentropy.ZeroEntropy`` client to send requests with."""

    def __init__(self, **data: Any) -> None:
        client = data.get("client")
        if client is not None and data.get("scorer") is None:
            from zerank_core.scorers.auto import THROUGHPUT_SETTINGS
            from zerank_core.scorers.zeroentropy import ZeroEntropyScorer

            if data.get("timeout") is not None:
                raise ConfigurationError(
                    "ZeroEntropyRerank: timeout applies to the clients this package builds; "
                    "set it on the client passed in (ZeroEntropy(timeout=...))"
                )
            # The client carries its own key and base URL: it is this component's
            # scorer, and the engine settings given go to that scorer.
            engine = {k: data.pop(k) for k in THROUGHPUT_SETTINGS if data.get(k) is not None}
            model = data.pop("model", None) or "zerank-1-small"
            data["scorer"] = ZeroEntropyScorer(model=model, client=client, **engine)
            data["model"] = None
        super().__init__(**data)


def _scored_copy(document: Document, score: float) -> Document:
    metadata = copy.deepcopy(document.metadata)
    metadata["relevance_score"] = score
    return document.model_copy(update={"metadata": metadata})
