"""Scorers: the only code that talks to a model.

Every scorer has ``score(query, texts, *, instruction=None) -> list[float]``
and ``async ascore(...)``; backends are imported lazily so optional extras are
only needed when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zerank_core.scorers.auto import BackendChoice, resolve_backend, scorer_from_env
from zerank_core.scorers.base import (
    BatchedScorer,
    Scale,
    Scorer,
    Usage,
    plan_batches,
    query_with_instruction,
    to_probability,
)
from zerank_core.scorers.check import check_scorer

if TYPE_CHECKING:
    from zerank_core.scorers.lexical import BM25Scorer
    from zerank_core.scorers.local import LocalScorer
    from zerank_core.scorers.server import RerankServerScorer
    from zerank_core.scorers.zeroentropy import ZeroEntropyScorer

__all__ = [
    "BM25Scorer",
    "BackendChoice",
    "BatchedScorer",
    "LocalScorer",
    "RerankServerScorer",
    "Scale",
    "Scorer",
    "Usage",
    "ZeroEntropyScorer",
    "check_scorer",
    "plan_batches",
    "query_with_instruction",
    "resolve_backend",
    "scorer_from_env",
    "to_probability",
]

_LAZY = {
    "BM25Scorer": "zerank_core.scorers.lexical",
    "LocalScorer": "zerank_core.scorers.local",
    "RerankServerScorer": "zerank_core.scorers.server",
    "ZeroEntropyScorer": "zerank_core.scorers.zeroentropy",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
