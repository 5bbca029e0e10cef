"""A LlamaIndex node postprocessor that keeps only the nodes passing a selection policy.

It scores each node's text against the query with a calibrated zerank scorer
and hands the scores to :class:`zerank_core.SelectionPolicy`; this module only
translates ``NodeWithScore`` to text and back and emits LlamaIndex's events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import llama_index.core.instrumentation as instrument
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from pydantic import SecretStr

from llamaindex_zerank._backend import as_secret, check_scorer_arg, model_name, resolve_scorer
from zerank_core.dedupe import Duplicates, afind_duplicates, find_duplicates
from zerank_core.errors import ConfigurationError
from zerank_core.scorers.base import Scorer
from zerank_core.select import Selection, SelectionPolicy

__all__ = [
    "DUPLICATES_KEY",
    "RELEVANCE_SCORE_KEY",
    "RETRIEVAL_SCORE_KEY",
    "ZeRankPostprocessor",
]

RELEVANCE_SCORE_KEY = "relevance_score"
RETRIEVAL_SCORE_KEY = "retrieval_score"
DUPLICATES_KEY = "duplicates"

# llama-index-core re-exports get_dispatcher without marking it public (no __all__).
dispatcher = instrument.get_dispatcher(__name__)  # type: ignore[attr-defined]


class ZeRankPostprocessor(BaseNodePostprocessor):
    """Context gate for LlamaIndex: keep the nodes whose zerank score passes a policy.

    Each node's ``get_content(metadata_mode)`` is scored against the query
    (with ``instruction`` appended by zerank's convention). The kept nodes are
    new ``NodeWithScore`` objects whose ``score`` is the calibrated probability;
    their node copies keep id and relationships and carry
    ``metadata["relevance_score"]`` and, unless ``keep_retrieval_score=False``,
    ``metadata["retrieval_score"]``, both hidden from the LLM and embedding
    views. The input nodes are never modified.

    The scorer is ``scorer=`` when given, else the hosted API when ``api_key``
    is given, else whatever the environment configures (see
    :func:`zerank_core.scorer_from_env`); it is resolved on first use.
    """

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(
        default=0.5,
        description="Keep nodes whose calibrated probability is at least this (None: no floor).",
    )
    top_k: int | None = Field(
        default=None,
        description="Keep at most this many nodes (with threshold: top-K with a floor).",
    )
    max_chars: int | None = Field(
        default=None,
        description="Character budget over the kept nodes' LLM-visible text, best first.",
    )
    max_tokens: int | None = Field(
        default=None,
        description="Token budget over the kept nodes (estimated at 4 characters a token).",
    )
    min_keep: int = Field(
        default=0,
        description="Never return fewer nodes than this, adding the best remaining ones.",
    )
    order: Literal["score", "original"] = Field(
        default="score",
        description="Output order: 'score' (best first) or 'original' (retrieval order).",
    )
    neighbors: int = Field(
        default=0,
        description="Also keep this many nodes before and after each kept node (input order).",
    )
    dedupe: bool = Field(
        default=False,
        description="Keep one of each set of near-duplicate nodes: a duplicate of a better "
        "kept node is dropped before top_k and budgets, freeing its slot; kept nodes name "
        "the dropped ones in metadata['duplicates'] (node id, similarity, method).",
    )
    duplicate_detector: Any = Field(
        default=None,
        exclude=True,
        description="How dedupe finds duplicates: None for zerank_core.dedupe.LexicalDetector() "
        "(needs zerank-gate[dedupe]) or a ModelDetector(scorer).",
    )
    instruction: str | None = Field(
        default=None, description="Instruction appended to the query for the reranker."
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED,
        description="Which metadata get_content includes in the text that is scored.",
    )
    keep_retrieval_score: bool = Field(
        default=True,
        description="Copy the retriever's score into metadata['retrieval_score'].",
    )
    model: str = Field(
        default="zerank-2", description="ZeroEntropy model used when api_key is given."
    )
    base_url: str | None = Field(
        default=None, description="ZeroEntropy API base URL used when api_key is given."
    )

    _scorer: Scorer | None = PrivateAttr(default=None)
    _scorer_given: bool = PrivateAttr(default=False)
    _api_key: SecretStr | None = PrivateAttr(default=None)

    def __init__(
        self,
        *,
        scorer: Scorer | None = None,
        api_key: str | SecretStr | None = None,
        **data: Any,
    ) -> None:
        super().__init__(**data)
        self._api_key = as_secret(api_key)
        self._scorer = check_scorer_arg(scorer, self._api_key)
        self._scorer_given = scorer is not None
        _ = self.policy  # the core validates the selection options now, not at the first query

    @classmethod
    def class_name(cls) -> str:
        return "ZeRankPostprocessor"

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        private = state.get("__pydantic_private__") or {}
        # A pickle is a serialisation too: the key and a scorer built from it stay out.
        private.pop("_api_key", None)
        if not self._scorer_given:
            private.pop("_scorer", None)
        return state

    @property
    def policy(self) -> SelectionPolicy:
        """The core selection policy these fields describe."""
        return SelectionPolicy.from_attributes(self)

    @property
    def scorer(self) -> Scorer:
        """The scorer in use, resolved on first access."""
        if self._scorer is None:
            self._scorer = resolve_scorer(self._api_key, self.model, self.base_url)
        return self._scorer

    @dispatcher.span
    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        query = _query_str(query_bundle)
        scorer = self.scorer
        self._start_event(nodes, query_bundle, scorer)
        if not nodes:
            return self._end_event([])
        texts = [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]
        with self.callback_manager.event(
            CBEventType.RERANKING, payload=self._payload(nodes, query, scorer)
        ) as event:
            scores = scorer.score(query, texts, instruction=self.instruction)
            duplicates = find_duplicates(
                self.dedupe, self.duplicate_detector, _contents(nodes), scores
            )
            kept = self._keep(nodes, scores, duplicates)
            event.on_end(payload={EventPayload.NODES: kept})
        return self._end_event(kept)

    @dispatcher.span
    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        query = _query_str(query_bundle)
        scorer = self.scorer
        self._start_event(nodes, query_bundle, scorer)
        if not nodes:
            return self._end_event([])
        texts = [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]
        with self.callback_manager.event(
            CBEventType.RERANKING, payload=self._payload(nodes, query, scorer)
        ) as event:
            scores = await scorer.ascore(query, texts, instruction=self.instruction)
            duplicates = await afind_duplicates(
                self.dedupe, self.duplicate_detector, _contents(nodes), scores
            )
            kept = self._keep(nodes, scores, duplicates)
            event.on_end(payload={EventPayload.NODES: kept})
        return self._end_event(kept)

    def _start_event(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None, scorer: Scorer
    ) -> None:
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle,
                nodes=nodes,
                top_n=self.top_k if self.top_k is not None else len(nodes),
                model_name=model_name(scorer),
            )
        )

    @staticmethod
    def _end_event(kept: list[NodeWithScore]) -> list[NodeWithScore]:
        dispatcher.event(ReRankEndEvent(nodes=kept))
        return kept

    def _payload(self, nodes: list[NodeWithScore], query: str, scorer: Scorer) -> dict[str, Any]:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: model_name(scorer),
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self.top_k if self.top_k is not None else len(nodes),
        }

    def _keep(
        self,
        nodes: list[NodeWithScore],
        scores: Sequence[float],
        duplicates: Duplicates | None,
    ) -> list[NodeWithScore]:
        if len(scores) != len(nodes):
            raise ConfigurationError(
                f"scorer {model_name(self.scorer)!r} returned {len(scores)} scores "
                f"for {len(nodes)} nodes"
            )
        lengths = [len(n.node.get_content(metadata_mode=MetadataMode.LLM)) for n in nodes]
        selection: Selection = self.policy.select(scores, lengths=lengths, duplicates=duplicates)
        return [
            self._rescored(
                nodes[i],
                scores[i],
                [
                    {
                        "id": nodes[d.index].node.node_id,
                        "similarity": d.similarity,
                        "method": d.method,
                    }
                    for d in selection.duplicates_of(i)
                ],
            )
            for i in selection.indices
        ]

    def _rescored(
        self, original: NodeWithScore, score: float, duplicates: list[dict[str, Any]]
    ) -> NodeWithScore:
        node = original.node
        metadata = dict(node.metadata)
        metadata[RELEVANCE_SCORE_KEY] = score
        added = [RELEVANCE_SCORE_KEY]
        if duplicates:
            metadata[DUPLICATES_KEY] = duplicates
            added.append(DUPLICATES_KEY)
        # A node the retriever left unscored gets no retrieval_score: None is not 0.0.
        if self.keep_retrieval_score and original.score is not None:
            metadata[RETRIEVAL_SCORE_KEY] = original.score
            added.append(RETRIEVAL_SCORE_KEY)
        copy = node.model_copy(
            update={
                "metadata": metadata,
                "excluded_llm_metadata_keys": _with_keys(node.excluded_llm_metadata_keys, added),
                "excluded_embed_metadata_keys": _with_keys(
                    node.excluded_embed_metadata_keys, added
                ),
                "relationships": dict(node.relationships),
            }
        )
        return NodeWithScore(node=copy, score=score)


def _query_str(query_bundle: QueryBundle | None) -> str:
    if query_bundle is None:
        raise ConfigurationError(
            "ZeRankPostprocessor needs a query: pass query_bundle=... or query_str=..."
        )
    if not query_bundle.query_str.strip():
        raise ConfigurationError(f"query_str must not be empty, got {query_bundle.query_str!r}")
    return query_bundle.query_str


def _contents(nodes: list[NodeWithScore]) -> list[str]:
    # Copies of one passage often differ only in metadata (file name, page
    # label): duplicates are judged on the text alone.
    return [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]


def _with_keys(existing: list[str], added: list[str]) -> list[str]:
    return [*existing, *(key for key in added if key not in existing)]
