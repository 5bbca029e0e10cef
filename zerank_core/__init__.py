"""zerank-gate's framework-free core: calibrated scorers, selection, classification.

>>> from zerank_core import SelectionPolicy, scorer_from_env
>>> scorer = scorer_from_env().scorer
>>> scores = scorer.score("When is the deadline?", pages)
>>> kept = SelectionPolicy(threshold=0.5, top_k=5).select(scores).indices
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zerank_core._version import __version__ as __version__
from zerank_core.classify import Classification, LabelClassifier
from zerank_core.errors import (
    BackendError,
    BatchesFailedError,
    ConfigurationError,
    DocumentError,
    InvalidResponseError,
    MissingDependencyError,
    ScorerOutputError,
    ZeRankError,
)
from zerank_core.scorers import (
    BackendChoice,
    Scale,
    Scorer,
    Usage,
    check_scorer,
    resolve_backend,
    scorer_from_env,
)
from zerank_core.select import Selection, SelectionPolicy, estimate_tokens

if TYPE_CHECKING:
    from zerank_core.cache import CachedScorer
    from zerank_core.calibrate import (
        CalibratedScorer,
        IsotonicCalibrator,
        PlattCalibrator,
        conformal_threshold,
        empirical_threshold,
    )
    from zerank_core.documents import PageGate, load_criteria, load_document

__all__ = [
    "BackendChoice",
    "BackendError",
    "BatchesFailedError",
    "CachedScorer",
    "CalibratedScorer",
    "Classification",
    "ConfigurationError",
    "DocumentError",
    "InvalidResponseError",
    "IsotonicCalibrator",
    "LabelClassifier",
    "MissingDependencyError",
    "PageGate",
    "PlattCalibrator",
    "Scale",
    "Scorer",
    "ScorerOutputError",
    "Selection",
    "SelectionPolicy",
    "Usage",
    "ZeRankError",
    "check_scorer",
    "conformal_threshold",
    "empirical_threshold",
    "estimate_tokens",
    "load_criteria",
    "load_document",
    "resolve_backend",
    "scorer_from_env",
]

# Heavier modules load on first use, so `import zerank_core` stays light.
_LAZY = {
    "CachedScorer": "zerank_core.cache",
    "CalibratedScorer": "zerank_core.calibrate",
    "IsotonicCalibrator": "zerank_core.calibrate",
    "PlattCalibrator": "zerank_core.calibrate",
    "conformal_threshold": "zerank_core.calibrate",
    "empirical_threshold": "zerank_core.calibrate",
    "PageGate": "zerank_core.documents",
    "load_criteria": "zerank_core.documents",
    "load_document": "zerank_core.documents",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
