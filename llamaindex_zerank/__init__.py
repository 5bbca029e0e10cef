"""LlamaIndex adapters for zerank-gate: a context-gating postprocessor and a router selector.

>>> from llamaindex_zerank import ZeRankPostprocessor, ZeRankSelector
>>> engine = index.as_query_engine(node_postprocessors=[ZeRankPostprocessor(threshold=0.5)])
"""

from __future__ import annotations

from zerank_core.errors import MissingDependencyError

try:
    import llama_index.core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("llama-index-core", "llamaindex") from exc

from llamaindex_zerank.postprocessor import (
    RELEVANCE_SCORE_KEY,
    RETRIEVAL_SCORE_KEY,
    ZeRankPostprocessor,
)
from llamaindex_zerank.selector import ZeRankSelector

__all__ = [
    "RELEVANCE_SCORE_KEY",
    "RETRIEVAL_SCORE_KEY",
    "ZeRankPostprocessor",
    "ZeRankSelector",
]
