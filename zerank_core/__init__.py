"""zerank-gate's framework-free core: calibrated scorers, selection, classification.

>>> from zerank_core import SelectionPolicy, scorer_from_env
>>> scorer = scorer_from_env().scorer
>>> scores = scorer.score("When is the deadline?", pages)
>>> kept = SelectionPolicy(threshold=0.5, top_k=5).select(scores).indices
"""

from __future__ import annotations

from zerank_core.classify import Classification, LabelClassifier
from zerank_core.errors import (
    ConfigurationError,
    DocumentError,
    InvalidResponseError,
    MissingDependencyError,
    ZeRankError,
)
from zerank_core.scorers import (
    BackendChoice,
    Scale,
    Scorer,
    Usage,
    check_scorer,
    scorer_from_env,
)
from zerank_core.select import Selection, SelectionPolicy, estimate_tokens

__all__ = [
    "BackendChoice",
    "Classification",
    "ConfigurationError",
    "DocumentError",
    "InvalidResponseError",
    "LabelClassifier",
    "MissingDependencyError",
    "Scale",
    "Scorer",
    "Selection",
    "SelectionPolicy",
    "Usage",
    "ZeRankError",
    "check_scorer",
    "estimate_tokens",
    "scorer_from_env",
]
__version__ = "0.1.0"
