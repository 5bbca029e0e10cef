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
from pydantic import BaseModel, SecretStr

from zerank_core.components import (
    BACKEND_SETTINGS,
    BackendSettings,
    aclose_built,
    build_scorer,
    check_arguments,
    check_top_n,
    close_built,
    merge_alias,
    rebuild_scorer,
)
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
from zerank_core.scorers.base import Scorer, check_scores
from zerank_core.select import Selection, SelectionPolicy

__all__ = [
    "DUPLICATES_KEY",
    "PASSAGES_KEY",
    "RELEVANCE_SCORE_KEY",
    "RETRIEVAL_SCORE_KEY",
    "ZeRankPostprocessor",
]

RELEVANCE_SCORE_KEY = "relevance_score"
RETRIEVAL_SCORE_KEY = "retrieval_score"
DUPLICATES_KEY = "duplicates"
PASSAGES_KEY = "passages"

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

    The scorer is ``scorer=`` when given, else the backend that ``model``,
    ``device``, ``api_key``, ``base_url``, ``server_url`` and ``backend``
    name, then the environment, resolved when the postprocessor is built by
    :func:`zerank_core.scorers.auto.resolve_backend` (the rules are in its
    module). With nothing configured, construction raises an error naming
    every option: BM25 is used only when asked for (``model="bm25"`` or
    ``ZERANK_BACKEND=lexical``). Pickles and copies keep an explicit scorer
    and never hold the API key; see :mod:`zerank_core.components`.
    """

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(
        default=0.5,
        description="Keep nodes whose calibrated probability is at least this (None: no floor).",
    )
    top_n: int | None = Field(
        default=None,
        description="Keep at most this many nodes, >= 1 (with threshold: top-N with a floor); "
        "top_k is accepted as an alias.",
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
    passages: bool = Field(
        default=False,
        description="Trim each kept node to its evidence passages: its text is cut into "
        "sentences or short windows, scored against the query in one more scorer call, and "
        "the node copy's text becomes the kept passages in order, one a line; "
        "metadata['passages'] lists them as {start, end, score, text}, offsets into the "
        "original text. Node id and relationships are kept.",
    )
    passage_threshold: float | None = Field(
        default=DEFAULT_PASSAGE_POLICY.threshold,
        description="Keep passages scoring at least this, in [0, 1] (None: no floor).",
    )
    passage_top_k: int | None = Field(
        default=DEFAULT_PASSAGE_POLICY.top_k,
        description="Keep at most this many passages of each kept node (None: no limit).",
    )
    passage_max_chars: int | None = Field(
        default=None,
        description="Character budget over the passages of all kept nodes, best first.",
    )
    passage_min_keep: int = Field(
        default=DEFAULT_PASSAGE_POLICY.min_keep,
        description="Each kept node keeps at least this many of its best passages.",
    )
    passage_chars: int = Field(
        default=DEFAULT_PASSAGE_CHARS,
        description="The longest passage in characters; longer sentences are cut between words.",
    )
    model: str | None = Field(
        default=None,
        description="Model: a ZeroEntropy API name ('zerank-2': hosted with a key, or served at "
        "server_url), a Hugging Face id or folder (open weights in-process, needs the 'local' "
        "extra), or 'bm25' for the offline, uncalibrated lexical baseline.",
    )
    device: str | None = Field(
        default=None,
        description="Device for open weights in-process ('cpu', 'cuda', 'mps'); implies local.",
    )
    base_url: str | None = Field(
        default=None,
        description="Base URL of ZeroEntropy's API (regional or self-hosted ZeroEntropy), as "
        "ZEROENTROPY_BASE_URL; implies the hosted backend.",
    )
    server_url: str | None = Field(
        default=None,
        description="Your rerank server's endpoint (vLLM, llama.cpp), e.g. "
        "http://localhost:8000/v1/rerank, as ZERANK_SERVER_URL.",
    )
    backend: str | None = Field(
        default=None,
        description="Force a backend: 'hosted', 'server', 'local' or 'lexical' (default "
        "ZERANK_BACKEND, then the settings above and the environment).",
    )
    scale: Literal["logit", "sigmoid", "probability"] | None = Field(
        default=None,
        description="What the model's numbers are: with server_url, what the server returns "
        "(default ZERANK_SERVER_SCALE, else 'probability'); with open weights in-process, "
        "declares model to be another sentence-transformers cross-encoder (not zerank) whose "
        "head returns this scale ('logit' for MiniLM and bge rerankers), uncalibrated until a "
        "calibrator is fitted. Refused for the hosted API and BM25.",
    )
    timeout: float | None = Field(
        default=None,
        description="Seconds one request may take, > 0 (hosted API and rerank servers).",
    )
    max_retries: int | None = Field(
        default=None,
        description="Resends of a request that failed transiently (connection error, timeout, "
        "408/409/5xx), >= 0 (default 2); 429s are waited out until the deadline.",
    )
    max_concurrency: int | None = Field(
        default=None, description="Most requests in flight at once, >= 1 (default 16)."
    )
    requests_per_minute: float | None = Field(
        default=None, description="Requests a minute, > 0, paced on the client side."
    )
    bytes_per_minute: float | None = Field(
        default=None,
        description="Request bytes a minute, > 0 (150 + len(query) + len(document) per "
        "document, UTF-8).",
    )
    tokens_per_minute: float | None = Field(
        default=None, description="Tokens a minute, > 0 (estimated, then as reported)."
    )
    max_batch_size: int | None = Field(
        default=None,
        description="Most nodes in one request (hosted default 256, server 32) or one forward "
        "pass of open weights (default 256), >= 1. The throughput settings are checked "
        "whatever the backend; the network ones do not affect open weights in-process, and "
        "none affects BM25.",
    )

    _scorer: Scorer = PrivateAttr()
    _scorer_given: bool = PrivateAttr(default=False)
    _api_key: SecretStr | None = PrivateAttr(default=None)

    def __init__(
        self,
        *,
        scorer: Scorer | None = None,
        api_key: str | SecretStr | None = None,
        **data: Any,
    ) -> None:
        merge_alias(data, "top_n", "top_k", "ZeRankPostprocessor")
        check_arguments(
            "ZeRankPostprocessor", data, [*type(self).model_fields, "scorer", "api_key"]
        )
        super().__init__(**data)
        check_top_n(self.top_n)
        _ = self.policy  # the core validates the selection options now, not at the first query
        _ = self.passage_policy
        self._api_key = (
            api_key if api_key is None or isinstance(api_key, SecretStr) else SecretStr(api_key)
        )
        self._scorer = build_scorer(scorer, self._settings(), framework="llamaindex")
        self._scorer_given = scorer is not None

    @classmethod
    def class_name(cls) -> str:
        return "ZeRankPostprocessor"

    @property
    def top_k(self) -> int | None:
        """The core's name for :attr:`top_n`."""
        return self.top_n

    def __getstate__(self) -> dict[Any, Any]:
        # Not BaseComponent's: it silently drops what does not pickle (an
        # explicit scorer among them) and rebuilds through __init__.
        state = dict(BaseModel.__getstate__(self))
        private = dict(state.get("__pydantic_private__") or {})
        private.pop("_api_key", None)
        if not self._scorer_given:
            private.pop("_scorer", None)
        state["__pydantic_private__"] = private
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        BaseModel.__setstate__(self, state)
        self._api_key = None
        if not self._scorer_given:
            self._scorer = rebuild_scorer(
                self._settings(), "ZeRankPostprocessor", framework="llamaindex"
            )

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        # Copies share the scorer: it is a resource (clients, weights, locks), not a value.
        memo = {} if memo is None else memo
        memo[id(self._scorer)] = self._scorer
        return super().__deepcopy__(memo)

    def _settings(self) -> BackendSettings:
        values = {name: getattr(self, name) for name in BACKEND_SETTINGS if name != "api_key"}
        return BackendSettings(**values, api_key=self._api_key)

    @property
    def policy(self) -> SelectionPolicy:
        """The core selection policy these fields describe."""
        return SelectionPolicy.from_attributes(self)

    @property
    def passage_policy(self) -> PassagePolicy:
        """The core passage policy the ``passage_*`` fields describe."""
        return PassagePolicy.from_attributes(self)

    @property
    def scorer(self) -> Scorer:
        """The scorer in use: ``scorer=``, or the one the settings resolved to."""
        return self._scorer

    def close(self) -> None:
        """Close the scorer this postprocessor built (a ``scorer=`` passed in stays open)."""
        close_built(self._scorer, built=not self._scorer_given)

    async def aclose(self) -> None:
        """Async :meth:`close`: also closes this event loop's async client."""
        await aclose_built(self._scorer, built=not self._scorer_given)

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
            scores = self._checked(nodes, scorer.score(query, texts, instruction=self.instruction))
            duplicates = find_duplicates(
                self.dedupe, self.duplicate_detector, _contents(nodes), scores
            )
            kept = self._keep(nodes, scores, duplicates)
            if self.passages and kept:
                chosen = score_passages(
                    scorer, query, _texts(kept), self.passage_policy, instruction=self.instruction
                )
                kept = [_trimmed(n, c) for n, c in zip(kept, chosen, strict=True)]
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
            scores = self._checked(
                nodes, await scorer.ascore(query, texts, instruction=self.instruction)
            )
            duplicates = await afind_duplicates(
                self.dedupe, self.duplicate_detector, _contents(nodes), scores
            )
            kept = self._keep(nodes, scores, duplicates)
            if self.passages and kept:
                chosen = await ascore_passages(
                    scorer, query, _texts(kept), self.passage_policy, instruction=self.instruction
                )
                kept = [_trimmed(n, c) for n, c in zip(kept, chosen, strict=True)]
            event.on_end(payload={EventPayload.NODES: kept})
        return self._end_event(kept)

    def _start_event(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None, scorer: Scorer
    ) -> None:
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle,
                nodes=nodes,
                top_n=self.top_n if self.top_n is not None else len(nodes),
                model_name=scorer.model,
            )
        )

    @staticmethod
    def _end_event(kept: list[NodeWithScore]) -> list[NodeWithScore]:
        dispatcher.event(ReRankEndEvent(nodes=kept))
        return kept

    def _payload(self, nodes: list[NodeWithScore], query: str, scorer: Scorer) -> dict[str, Any]:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: scorer.model,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self.top_n if self.top_n is not None else len(nodes),
        }

    def _checked(self, nodes: list[NodeWithScore], scores: Sequence[float]) -> list[float]:
        return check_scores(
            scores, len(nodes), context=f"scorer {self.scorer.model!r}", items="nodes"
        )

    def _keep(
        self,
        nodes: list[NodeWithScore],
        scores: list[float],
        duplicates: Duplicates | None,
    ) -> list[NodeWithScore]:
        lengths = [len(n.node.get_content(metadata_mode=MetadataMode.LLM)) for n in nodes]
        selection: Selection = self.policy.select(scores, lengths=lengths, duplicates=duplicates)
        ids = [n.node.node_id for n in nodes]
        return [
            self._rescored(nodes[i], scores[i], selection.duplicate_records(i, ids))
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


def _texts(nodes: list[NodeWithScore]) -> list[str]:
    # Passages are cut from the node's own text, so offsets point into it.
    return [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]


def _trimmed(scored: NodeWithScore, passages: list[ScoredCut]) -> NodeWithScore:
    """``scored``'s node copy (already a copy) with its text cut down to ``passages``."""
    node = scored.node
    original = node.get_content(metadata_mode=MetadataMode.NONE)
    records = [
        {"start": start, "end": end, "score": score, "text": original[start:end]}
        for start, end, score in passages
    ]
    metadata = {**node.metadata, PASSAGES_KEY: records}
    copy = node.model_copy(
        update={
            "metadata": metadata,
            "excluded_llm_metadata_keys": _with_keys(
                node.excluded_llm_metadata_keys, [PASSAGES_KEY]
            ),
            "excluded_embed_metadata_keys": _with_keys(
                node.excluded_embed_metadata_keys, [PASSAGES_KEY]
            ),
            "relationships": dict(node.relationships),
        }
    )
    copy.set_content("\n".join(str(r["text"]) for r in records))
    return NodeWithScore(node=copy, score=scored.score)


def _with_keys(existing: list[str], added: list[str]) -> list[str]:
    return [*existing, *(key for key in added if key not in existing)]
