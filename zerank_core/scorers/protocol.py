"""The scorer contract: what a scorer is, the scales its numbers can be on, and the
one check of what a scorer call returned."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

from zerank_core.errors import ConfigurationError, ScorerOutputError

if TYPE_CHECKING:
    from zerank_core.scorers.usage import Usage

__all__ = [
    "INSTRUCTION_CONVENTION",
    "SCORER_MEMBERS",
    "ZERANK_TEMPERATURE",
    "Scale",
    "Scorer",
    "check_scores",
    "fingerprint",
    "query_with_instruction",
    "require_scorer",
    "to_probability",
]


class Scale(StrEnum):
    """What a number coming out of a model or a server means.

    ``PROBABILITY``: zerank's calibrated probability, ``sigmoid(logit / 5)``.
    ``LOGIT``: the raw logit ``x`` of the token "Yes".
    ``SIGMOID``: ``sigmoid(x)``, what most rerank servers apply by default.
    ``UNCALIBRATED``: a score in [0, 1] that orders texts but is not a
    probability (the lexical baseline); fit a calibrator before thresholding.
    """

    PROBABILITY = "probability"
    LOGIT = "logit"
    SIGMOID = "sigmoid"
    UNCALIBRATED = "uncalibrated"


ZERANK_TEMPERATURE = 5.0


def to_probability(value: float, scale: Scale) -> float:
    """Convert one backend value to zerank's calibrated probability.

    ``LOGIT`` → ``sigmoid(x / 5)``; ``SIGMOID`` (``s = sigmoid(x)``) →
    ``1 / (1 + ((1 - s) / s) ** (1 / 5))``, the same quantity without
    recovering ``x`` (``s`` of exactly 0 or 1 maps to 0 or 1: it saturated).
    ``PROBABILITY`` and ``UNCALIBRATED`` pass through.
    """
    if scale is Scale.LOGIT:
        z = value / ZERANK_TEMPERATURE
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return float(e / (1.0 + e))
    if scale is Scale.SIGMOID:
        if value <= 0.0:
            return 0.0
        if value >= 1.0:
            return 1.0
        return float(1.0 / (1.0 + ((1.0 - value) / value) ** (1.0 / ZERANK_TEMPERATURE)))
    return value


#: Names :func:`query_with_instruction`'s format in cache keys: a new format
#: gives every instruction-bearing score a new key.
INSTRUCTION_CONVENTION = "query-tags-v1"


def query_with_instruction(query: str, instruction: str | None) -> str:
    """Append an instruction to the query by zerank's documented convention."""
    if not instruction:
        return query
    return f"<query>{query}</query>\n<instruction>{instruction}</instruction>"


def fingerprint(backend: str, **settings: object) -> str:
    """A scorer's ``cache_identity``: its backend kind and every setting that changes a score.

    Canonical JSON, so equal settings give equal strings. It holds no
    credential: URLs go in as :func:`~zerank_core.redaction.deployment_url`.
    """
    return json.dumps(
        {"backend": backend, **settings}, sort_keys=True, ensure_ascii=False, default=str
    )


@runtime_checkable
class Scorer(Protocol):
    """What every adapter, the gate and the classifier need from a scorer.

    ``score``/``ascore`` return one number per text, in input order, on
    ``scale`` (:attr:`Scale.PROBABILITY` for zerank's calibrated probability).
    ``model`` names the model (it goes into cache keys, reports and traces);
    ``usage`` is what the scorer has spent so far, or ``None`` when it does
    not count its calls. A class attribute or a property satisfies each.
    """

    @property
    def model(self) -> str: ...

    @property
    def scale(self) -> Scale: ...

    @property
    def usage(self) -> Usage | None: ...

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]: ...

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]: ...


SCORER_MEMBERS = ("score", "ascore", "model", "scale", "usage")


def require_scorer(scorer: object, *, name: str = "scorer") -> Scorer:
    """Return ``scorer`` if it fulfils :class:`Scorer`, else say what it lacks.

    Checked where a scorer enters the package (adapters, gate, classifier,
    cache), so a scorer written for an older version fails with the list of
    what to add, not with an ``AttributeError`` in the middle of a job.
    """
    missing = [member for member in SCORER_MEMBERS if not hasattr(scorer, member)]
    if missing:
        raise ConfigurationError(
            f"{name} {type(scorer).__name__} lacks {', '.join(missing)}: a scorer has "
            "score() and ascore(), and declares model (a str), scale (a zerank_core.Scale) "
            "and usage (a zerank_core.Usage, or None if it does not count its calls)"
        )
    checked = cast(Scorer, scorer)
    for member in ("score", "ascore"):
        if not callable(getattr(checked, member)):
            raise ConfigurationError(f"{name} {type(scorer).__name__}.{member} is not callable")
    if not isinstance(checked.model, str) or not checked.model:
        raise ConfigurationError(
            f"{name} {type(scorer).__name__}.model must be a non-empty str, got {checked.model!r}"
        )
    if not isinstance(checked.scale, Scale):
        raise ConfigurationError(
            f"{name} {type(scorer).__name__}.scale must be a zerank_core.Scale, "
            f"got {checked.scale!r}"
        )
    return checked


def check_scores(
    scores: Sequence[object],
    n: int,
    *,
    context: str,
    items: str = "texts",
    names: Sequence[object] | None = None,
) -> list[float]:
    """The one check of a scorer call's output: ``n`` finite numbers, as floats.

    ``context`` says which call it was (``"criterion 'DX'"``, ``"label
    'billing'"``), ``items`` what was scored (``"pages"``), and ``names``
    optionally how to name each item in a message (``["page 1", ...]``). A
    wrong count or a value that is not a finite number raises
    :class:`ScorerOutputError`: a missing score is never read as 0.
    """
    if len(scores) != n:
        raise ScorerOutputError(
            f"scorer returned {len(scores)} scores for {n} {items} ({context})", expected=n
        )
    out = []
    for index, value in enumerate(scores):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            where = f"for {names[index]}" if names is not None else f"as score {index}"
            raise ScorerOutputError(f"scorer returned {value!r} {where} ({context})", expected=n)
        out.append(float(value))
    return out
