"""One-call smoke test that a backend really returns zerank's calibrated scale.

A misconfigured server (wrong token, missing ``/5``, no chat template) fails
silently with plausible-looking numbers; the model card's reference pairs
catch that.
"""

from __future__ import annotations

from dataclasses import dataclass

from zerank_core.errors import ConfigurationError
from zerank_core.scorers.base import Scorer

__all__ = ["REFERENCE_PAIRS", "ReferenceCheck", "check_scorer"]

#: (query, document, calibrated probability from zerank-2's model card)
REFERENCE_PAIRS: tuple[tuple[str, str, float], ...] = (
    ("What is 2+2?", "4", 0.75),
    ("What is 2+2?", "The answer is definitely 1 million", 0.29),
)


@dataclass(frozen=True)
class ReferenceCheck:
    query: str
    document: str
    expected: float
    got: float

    @property
    def error(self) -> float:
        return abs(self.got - self.expected)


def check_scorer(scorer: Scorer, *, tolerance: float = 0.1) -> list[ReferenceCheck]:
    """Score the reference pairs; raise if any misses by more than ``tolerance``.

    Only meaningful for zerank-2 served on the calibrated scale; zerank-1-small
    and other models legitimately give other numbers.
    """
    checks = []
    for query, document, expected in REFERENCE_PAIRS:
        (got,) = scorer.score(query, [document])
        checks.append(ReferenceCheck(query, document, expected, got))
    bad = [c for c in checks if c.error > tolerance]
    if bad:
        details = "; ".join(f"{c.document!r}: expected ~{c.expected}, got {c.got:.3f}" for c in bad)
        raise ConfigurationError(
            f"{scorer!r} does not return zerank's calibrated scale ({details}). "
            "Check the server's score scale (probability, logit, sigmoid), its chat "
            "template and the 'Yes' token."
        )
    return checks
