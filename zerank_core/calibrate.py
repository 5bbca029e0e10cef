"""Choose thresholds on purpose and check that scores read as probabilities.

Four tools, for zerank or any other scorer, fitted on your own labelled data:

- thresholds for a recall target: :func:`empirical_threshold` (the highest
  threshold whose mean recall on the labelled queries reaches the target) and
  :func:`conformal_threshold` (conformal risk control, Angelopoulos et al.,
  2024: a finite-sample guarantee on the expected recall of a new query);
- calibration diagnostics: :func:`reliability_bins` and
  :func:`expected_calibration_error`;
- recalibration: :class:`PlattCalibrator` and :class:`IsotonicCalibrator`
  (scikit-learn contract), and :class:`CalibratedScorer`, which wraps any
  scorer with a fitted calibrator and meets the scorer contract;
- policies: :func:`fit_policy` fits a global threshold and, optionally, one
  per criterion, into a :class:`ThresholdPolicy` that ``zerank calibrate``
  writes as JSON and ``zerank compress --policy`` applies. A policy may carry
  the calibrator its thresholds are on (``zerank calibrate --calibrator``):
  the model that turns an uncalibrated scorer's numbers (BM25, a MiniLM or
  bge cross-encoder) into probabilities; both calibrators write themselves
  as JSON (:meth:`PlattCalibrator.to_dict`, :func:`calibrator_from_dict`).

scikit-learn is needed only for the calibrators (``pip install
'zerank-gate[eval]'``); it is imported when one is fitted.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol, Self

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from zerank_core.errors import ConfigurationError, MissingDependencyError
from zerank_core.evaluate import LabelledQuery
from zerank_core.scorers.base import Scale, Scorer, Usage, fingerprint, require_scorer
from zerank_core.select import SelectionPolicy

__all__ = [
    "CalibratedScorer",
    "Calibrator",
    "IsotonicCalibrator",
    "PlattCalibrator",
    "PolicyFile",
    "ReliabilityBins",
    "ThresholdFit",
    "ThresholdPolicy",
    "calibrator_from_dict",
    "conformal_threshold",
    "empirical_threshold",
    "expected_calibration_error",
    "fit_policy",
    "reliability_bins",
]

# Mean recalls are sums of fractions 1 / (n * m); a risk that equals the
# target level exactly must not fail the comparison through rounding.
_TOLERANCE = 1e-9


# --- thresholds for a recall target -------------------------------------------------


@dataclass(frozen=True)
class ThresholdFit:
    """A threshold fitted for a recall target, and what it did on the fitting set.

    ``n_queries`` counts the queries that have at least one relevant unit:
    only they carry a loss (the share of their relevant units missed), so
    queries with nothing relevant are left out of the fit. ``n`` is the
    number of exchangeable items the risk is averaged over: those queries,
    or their groups when ``groups`` was given. ``recall`` is the mean recall
    at ``threshold`` over them and ``corrected_risk`` the conformal bound
    ``(n * (1 - recall) + 1) / (n + 1)``.
    """

    method: Literal["empirical", "conformal"]
    target: float
    threshold: float
    n_queries: int
    n: int
    recall: float
    corrected_risk: float

    def policy(self, **options: Any) -> SelectionPolicy:
        """A :class:`SelectionPolicy` keeping scores >= this threshold (plus ``options``)."""
        return SelectionPolicy(threshold=self.threshold, **options)


def empirical_threshold(
    queries: Sequence[LabelledQuery],
    target: float,
    *,
    candidates: npt.ArrayLike | None = None,
    groups: Sequence[Hashable] | None = None,
) -> ThresholdFit:
    """The highest threshold whose mean recall on ``queries`` is >= ``target``.

    Recall is per query (share of its relevant units with score >= threshold),
    averaged over the queries that have relevant units. ``candidates``
    restricts the answer to given values (for instance a grid of round
    numbers); by default it is one of the relevant units' scores, where mean
    recall changes. It meets the target on the fitting set only: for a
    guarantee on new queries use :func:`conformal_threshold`. ``groups``
    works as there.
    """
    return _fit("empirical", queries, target, candidates, groups)


def conformal_threshold(
    queries: Sequence[LabelledQuery],
    target: float,
    *,
    candidates: npt.ArrayLike | None = None,
    groups: Sequence[Hashable] | None = None,
) -> ThresholdFit:
    """Conformal risk control: the highest ``t`` with ``(n·R̂(t) + 1)/(n + 1) <= 1 - target``.

    The loss of a query is the share of its relevant units scored below
    ``t`` (bounded by B = 1); ``R̂(t)`` is its mean over the ``n`` queries that
    have relevant units. If the queries are exchangeable with a new one that
    has relevant units, that query's expected recall at the returned
    threshold is at least ``target`` (Angelopoulos et al., "Conformal Risk
    Control", ICLR 2024). It is never higher than :func:`empirical_threshold`.
    With fewer than ``1 / (1 - target) - 1`` such queries no threshold
    qualifies and :class:`ConfigurationError` says how many are needed.

    ``groups`` (one key per query, e.g. its document id) makes the group the
    exchangeable unit: a group's loss is the mean loss of its queries with
    relevant units, ``n`` counts groups, and the guarantee is about a new
    group (a new document read against all its criteria). Use it when the
    queries of one document are not independent of each other.
    """
    return _fit("conformal", queries, target, candidates, groups)


def _fit(
    method: Literal["empirical", "conformal"],
    queries: Sequence[LabelledQuery],
    target: float,
    candidates: npt.ArrayLike | None,
    groups: Sequence[Hashable] | None,
) -> ThresholdFit:
    if (
        isinstance(target, bool)
        or not isinstance(target, int | float)
        or math.isnan(target)
        or not 0.0 < target <= 1.0
    ):
        raise ConfigurationError(f"target must be a recall in (0, 1], got {target!r}")
    alpha = 1.0 - float(target)
    queries = list(queries)
    for index, query in enumerate(queries):
        if not isinstance(query, LabelledQuery):
            raise ConfigurationError(
                f"queries[{index}] must be a LabelledQuery, got {type(query).__name__}"
            )
    keys: list[Hashable] = list(range(len(queries))) if groups is None else list(groups)
    if len(keys) != len(queries):
        raise ConfigurationError(f"groups has {len(keys)} entries for {len(queries)} queries")
    used = [(q, key) for q, key in zip(queries, keys, strict=True) if q.relevant]
    if not used:
        raise ConfigurationError("no query has a relevant unit: cannot fit a recall threshold")
    size = Counter(key for _, key in used)
    n = len(size)
    # Mean recall at t is a weighted count of relevant units scored >= t, each
    # weighing 1 / (n * its group's number of queries * its query's number of
    # relevant units): every group, and every query within it, counts equally.
    scores = np.array([q.scores[i] for q, _ in used for i in sorted(q.relevant)], dtype=float)
    weights = np.array(
        [1.0 / (n * size[key] * len(q.relevant)) for q, key in used for _ in q.relevant]
    )
    order = np.argsort(scores, kind="stable")
    ascending = scores[order]
    missed_below = np.concatenate([[0.0], np.cumsum(weights[order])])

    if candidates is None:
        grid = np.unique(scores)
    else:
        grid = _finite_array(candidates, "candidates")
        if grid.size == 0:
            raise ConfigurationError("candidates is empty")
        grid = np.unique(grid)
    risk = missed_below[np.searchsorted(ascending, grid, side="left")]
    corrected = (n * risk + 1.0) / (n + 1.0)
    criterion = risk if method == "empirical" else corrected
    ok = criterion <= alpha + _TOLERANCE
    if not ok.any():
        if method == "conformal" and 1.0 / (n + 1.0) > alpha + _TOLERANCE:
            needed = math.ceil(1.0 / alpha - 1.0 - _TOLERANCE) if alpha > 0 else None
            if needed is None:
                raise ConfigurationError(
                    "conformal risk control cannot guarantee a recall of 1.0; lower the target"
                )
            raise ConfigurationError(
                f"conformal risk control for target {target} needs at least {needed} "
                f"{'queries with relevant units' if groups is None else 'groups'}, got {n}"
            )
        raise ConfigurationError(
            f"no candidate threshold reaches a recall of {target}: the lowest, "
            f"{float(grid[0])}, gives {1.0 - risk[0]:.4f} ({method})"
        )
    best = int(np.flatnonzero(ok)[-1])
    return ThresholdFit(
        method=method,
        target=float(target),
        threshold=float(grid[best]),
        n_queries=len(used),
        n=n,
        recall=float(1.0 - risk[best]),
        corrected_risk=float(corrected[best]),
    )


# --- threshold policies ------------------------------------------------------------

POLICY_FORMAT: Literal["zerank-gate/threshold-policy"] = "zerank-gate/threshold-policy"
POLICY_VERSION: Literal[1] = 1
#: A policy with a calibrator: a reader that ignored it would apply the
#: thresholds to uncalibrated scores, so such files carry a version of their own.
CALIBRATED_POLICY_VERSION: Literal[2] = 2


class _FitRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    n_queries: int
    n: int
    recall: float
    corrected_risk: float


class _CriterionRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float
    n_queries: int
    n: int
    recall: float


class PolicyFile(BaseModel):
    """The JSON shape of a threshold policy file, the one serialiser for it.

    :meth:`ThresholdPolicy.save` writes it and :meth:`ThresholdPolicy.load`
    reads it back; its JSON Schema is committed beside the result schemas
    (``zerank_core/schema/threshold-policy.schema.json``). ``version`` is 2
    exactly when the file carries a ``calibrator`` (the thresholds are on the
    calibrator's probabilities, so a reader that ignored it would be wrong).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["zerank-gate/threshold-policy"]
    version: Literal[1, 2]
    method: Literal["empirical", "conformal"]
    target: float
    #: ``1 - target``, written for readers; derived again when absent.
    alpha: float | None = None
    threshold: float
    thresholds: dict[str, float] = Field(default_factory=dict)
    grouped_by: Literal["query", "document"] = "query"
    fit: _FitRecord
    criteria: dict[str, _CriterionRecord] = Field(default_factory=dict)
    fallback: dict[str, str] = Field(default_factory=dict)
    backend: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    calibrator: dict[str, Any] | None = None
    #: What ``zerank calibrate`` adds: recall against characters kept at each
    #: candidate threshold, and what the fitted policy did on the fitting set.
    recall_curve: list[dict[str, float]] | None = None
    on_fitting_set: dict[str, float] | None = None

    def dump(self) -> dict[str, Any]:
        """The file's content (optional parts that are absent are left out)."""
        return self.model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True)
class CriterionFit:
    """One criterion's own threshold, and what it did on that criterion's queries."""

    threshold: float
    n_queries: int
    n: int
    recall: float


@dataclass(frozen=True)
class ThresholdPolicy:
    """Thresholds fitted for a recall target: one global, optionally one per criterion.

    ``fit`` is the global fit over every query. ``criteria`` holds the
    criteria that got their own threshold; ``fallback`` maps the others that
    were asked for to the reason they use the global one (too few labelled
    queries for the target). ``grouped_by`` is ``"query"`` or ``"document"``:
    the exchangeable unit of the conformal guarantee. ``backend`` and
    ``data`` record what produced the scores (a threshold is only meaningful
    for the scorer it was fitted on). ``calibrator``, when set, is the fitted
    calibrator the thresholds are on: apply it to the backend's scores first
    (:meth:`calibrated`).
    """

    fit: ThresholdFit
    criteria: Mapping[str, CriterionFit] = field(default_factory=dict)
    fallback: Mapping[str, str] = field(default_factory=dict)
    grouped_by: Literal["query", "document"] = "query"
    backend: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    calibrator: PlattCalibrator | IsotonicCalibrator | None = None

    def __post_init__(self) -> None:
        for name in ("criteria", "fallback", "backend", "data"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        if self.calibrator is not None and not _is_fitted(self.calibrator):
            raise ConfigurationError("a policy's calibrator must be fitted")

    def calibrated(self, scorer: Scorer) -> Scorer:
        """``scorer`` with this policy's calibrator applied (itself when there is none)."""
        if self.calibrator is None:
            return scorer
        return CalibratedScorer(scorer, self.calibrator)

    @property
    def target(self) -> float:
        return self.fit.target

    @property
    def alpha(self) -> float:
        """The tolerated expected share of evidence missed: ``1 - target``."""
        return 1.0 - self.fit.target

    @property
    def threshold(self) -> float:
        """The global threshold (for every criterion without its own)."""
        return self.fit.threshold

    def threshold_for(self, criterion: str | None) -> float:
        """``criterion``'s own threshold, else the global one."""
        own = self.criteria.get(criterion) if criterion is not None else None
        return own.threshold if own is not None else self.fit.threshold

    def to_dict(self) -> dict[str, Any]:
        """The policy file's content, through :class:`PolicyFile`."""
        record = PolicyFile(
            format=POLICY_FORMAT,
            version=POLICY_VERSION if self.calibrator is None else CALIBRATED_POLICY_VERSION,
            method=self.fit.method,
            target=self.fit.target,
            alpha=round(self.alpha, 12),
            threshold=self.fit.threshold,
            thresholds={k: v.threshold for k, v in self.criteria.items()},
            grouped_by=self.grouped_by,
            fit=_FitRecord(
                n_queries=self.fit.n_queries,
                n=self.fit.n,
                recall=self.fit.recall,
                corrected_risk=self.fit.corrected_risk,
            ),
            criteria={
                k: _CriterionRecord(
                    threshold=v.threshold, n_queries=v.n_queries, n=v.n, recall=v.recall
                )
                for k, v in self.criteria.items()
            },
            fallback=dict(self.fallback),
            backend=dict(self.backend),
            data=dict(self.data),
            calibrator=None if self.calibrator is None else self.calibrator.to_dict(),
        )
        return record.dump()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the policy as JSON (no document text: thresholds, counts, names)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "policy") -> ThresholdPolicy:
        """Read :meth:`to_dict`'s output back; a wrong or damaged file is named."""
        if not isinstance(data, Mapping) or data.get("format") != POLICY_FORMAT:
            raise ConfigurationError(f"{source} is not a zerank threshold policy ({POLICY_FORMAT})")
        version = data.get("version")
        if version not in (POLICY_VERSION, CALIBRATED_POLICY_VERSION):
            raise ConfigurationError(
                f"{source}: policy version {version!r} is not supported "
                f"(expected {POLICY_VERSION} or {CALIBRATED_POLICY_VERSION})"
            )
        if (version == CALIBRATED_POLICY_VERSION) != ("calibrator" in data):
            raise ConfigurationError(
                f"{source} is a damaged threshold policy: version {version} "
                + ("needs" if version == CALIBRATED_POLICY_VERSION else "cannot have")
                + " a calibrator"
            )
        try:
            record = PolicyFile.model_validate(data)
            fit = ThresholdFit(
                method=record.method,
                target=record.target,
                threshold=_finite(record.threshold, f"{source}: threshold"),
                n_queries=record.fit.n_queries,
                n=record.fit.n,
                recall=record.fit.recall,
                corrected_risk=record.fit.corrected_risk,
            )
            criteria = {
                k: CriterionFit(
                    threshold=_finite(v.threshold, f"{source}: threshold of {k}"),
                    n_queries=v.n_queries,
                    n=v.n,
                    recall=v.recall,
                )
                for k, v in record.criteria.items()
            }
            return cls(
                fit=fit,
                criteria=criteria,
                fallback=record.fallback,
                grouped_by=record.grouped_by,
                backend=record.backend,
                data=record.data,
                calibrator=(
                    calibrator_from_dict(record.calibrator, f"{source}: calibrator")
                    if record.calibrator is not None
                    else None
                ),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigurationError(f"{source} is a damaged threshold policy: {exc!r}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ThresholdPolicy:
        """Read a policy file that :meth:`save` (or ``zerank calibrate``) wrote."""
        file = Path(path)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigurationError(f"policy file not found: {file}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigurationError(f"cannot read the policy file {file}: {exc}") from exc
        return cls.from_dict(data, str(file))


def fit_policy(
    queries: Sequence[LabelledQuery],
    target: float,
    *,
    method: Literal["empirical", "conformal"] = "conformal",
    criteria: Sequence[str | None] | None = None,
    per_criterion: bool = False,
    groups: Sequence[Hashable] | None = None,
    backend: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
) -> ThresholdPolicy:
    """Fit a global threshold and, with ``per_criterion``, one per criterion.

    ``criteria`` names each query's criterion (required with
    ``per_criterion``). A criterion whose queries are too few for the target
    (or that has no relevant unit) keeps the global threshold; the reason is
    recorded in ``fallback``. ``groups`` works as in :func:`conformal_threshold`.
    """
    if method not in ("empirical", "conformal"):
        raise ConfigurationError(f"method must be 'empirical' or 'conformal', got {method!r}")
    fit = _fit(method, queries, target, None, groups)
    own: dict[str, CriterionFit] = {}
    fallback: dict[str, str] = {}
    if per_criterion:
        if criteria is None or len(criteria) != len(queries):
            raise ConfigurationError("per_criterion needs one criterion name per query")
        names = sorted({c for c in criteria if c is not None})
        if not names:
            raise ConfigurationError("per_criterion: no query names a criterion")
        for name in names:
            picked = [i for i, c in enumerate(criteria) if c == name]
            subset = [queries[i] for i in picked]
            subgroups = None if groups is None else [groups[i] for i in picked]
            try:
                one = _fit(method, subset, target, None, subgroups)
            except ConfigurationError as exc:
                fallback[name] = str(exc)
                continue
            own[name] = CriterionFit(one.threshold, one.n_queries, one.n, one.recall)
    return ThresholdPolicy(
        fit=fit,
        criteria=own,
        fallback=fallback,
        grouped_by="query" if groups is None else "document",
        backend=backend or {},
        data=data or {},
    )


def _finite(value: Any, name: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


# --- calibration diagnostics -------------------------------------------------------


@dataclass(frozen=True)
class ReliabilityBins:
    """Predicted probability against observed frequency, bin by bin.

    ``edges`` has one more entry than the other fields. A bin holds the
    probabilities in ``(edges[i], edges[i + 1]]`` (the first also holds its
    lower edge), as scikit-learn's ``calibration_curve`` bins them.
    ``mean_predicted`` and ``observed`` are ``None`` for an empty bin.
    """

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    mean_predicted: tuple[float | None, ...]
    observed: tuple[float | None, ...]

    @property
    def ece(self) -> float:
        """Expected calibration error: ``sum(count / n * |observed - predicted|)``."""
        total = sum(self.counts)
        return float(
            sum(
                c / total * abs(o - p)
                for c, p, o in zip(self.counts, self.mean_predicted, self.observed, strict=True)
                if c and p is not None and o is not None
            )
        )


def reliability_bins(
    probabilities: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    n_bins: int = 10,
    strategy: Literal["uniform", "quantile"] = "uniform",
) -> ReliabilityBins:
    """Bin probabilities and compare each bin's mean with its share of positives.

    ``strategy="uniform"`` uses equal-width bins on [0, 1]; ``"quantile"``
    puts about the same number of predictions in each bin.
    """
    p = _finite_array(probabilities, "probabilities")
    y = _binary_labels(labels, len(p))
    if p.size == 0:
        raise ConfigurationError("probabilities is empty")
    outside = np.flatnonzero((p < 0.0) | (p > 1.0))
    if outside.size:
        i = int(outside[0])
        raise ConfigurationError(
            f"probabilities[{i}] is {p[i]}, outside [0, 1]: calibrate the scores first"
        )
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ConfigurationError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.percentile(p, np.linspace(0.0, 100.0, n_bins + 1))
    else:
        raise ConfigurationError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    ids = np.searchsorted(edges[1:-1], p, side="left")
    counts = np.bincount(ids, minlength=n_bins)
    sum_p = np.bincount(ids, weights=p, minlength=n_bins)
    sum_y = np.bincount(ids, weights=y, minlength=n_bins)
    return ReliabilityBins(
        edges=tuple(float(e) for e in edges),
        counts=tuple(int(c) for c in counts),
        mean_predicted=tuple(
            float(s / c) if c else None for s, c in zip(sum_p, counts, strict=True)
        ),
        observed=tuple(float(s / c) if c else None for s, c in zip(sum_y, counts, strict=True)),
    )


def expected_calibration_error(
    probabilities: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    n_bins: int = 10,
    strategy: Literal["uniform", "quantile"] = "uniform",
) -> float:
    """ECE: the count-weighted mean gap between predicted and observed, over bins."""
    return reliability_bins(probabilities, labels, n_bins=n_bins, strategy=strategy).ece


# --- recalibration -----------------------------------------------------------------


class Calibrator(Protocol):
    """Maps raw scores to probabilities; fitted on (score, relevant?) pairs."""

    def fit(self, scores: npt.ArrayLike, labels: npt.ArrayLike) -> Self: ...

    def predict_proba(self, scores: npt.ArrayLike) -> np.ndarray: ...


class _CalibratorBase:
    """Shared scikit-learn plumbing: parameters, fitted check, probability columns."""

    classes_: np.ndarray

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters (what ``sklearn.base.clone`` copies)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Self:
        """Set constructor parameters by name."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ConfigurationError(f"{type(self).__name__} has no parameter {name!r}")
            setattr(self, name, value)
        return self

    def _param_names(self) -> tuple[str, ...]:
        return ()

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    def _positive(self, scores: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, scores: npt.ArrayLike) -> np.ndarray:
        """Shape ``(n, 2)``: probability of not relevant, then of relevant."""
        if not _is_fitted(self):
            raise ConfigurationError(f"{type(self).__name__} is not fitted: call fit() first")
        positive = np.clip(self._positive(_finite_array(scores, "scores")), 0.0, 1.0)
        return np.column_stack([1.0 - positive, positive])

    def predict(self, scores: npt.ArrayLike) -> np.ndarray:
        """1 where the probability of relevance is at least 0.5, else 0."""
        return (self.predict_proba(scores)[:, 1] >= 0.5).astype(int)


class PlattCalibrator(_CalibratorBase):
    """Platt scaling: ``p = sigmoid(a * score + b)``, fitted by maximum likelihood.

    As in Platt (1999), the targets are smoothed to ``(N+ + 1) / (N+ + 2)``
    and ``1 / (N- + 2)``, which keeps ``a`` finite on separable data; the
    logistic fit itself is scikit-learn's unpenalised ``LogisticRegression``
    (the smoothed targets enter as sample weights). Learned: ``coef_`` (a),
    ``intercept_`` (b), ``classes_``.
    """

    coef_: float
    intercept_: float

    def __init__(self, *, max_iter: int = 1000) -> None:
        self.max_iter = max_iter

    def _param_names(self) -> tuple[str, ...]:
        return ("max_iter",)

    def fit(self, scores: npt.ArrayLike, labels: npt.ArrayLike) -> Self:
        """Fit on raw scores and 0/1 relevance labels; returns ``self``."""
        linear_model = _sklearn("linear_model")
        x = _finite_array(scores, "scores")
        y = _binary_labels(labels, len(x))
        _both_classes(y)
        positives = int(y.sum())
        negatives = len(y) - positives
        soft = np.where(y == 1, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))
        features = np.concatenate([x, x]).reshape(-1, 1)
        targets = np.concatenate([np.ones(len(x)), np.zeros(len(x))])
        weights = np.concatenate([soft, 1.0 - soft])
        model = linear_model.LogisticRegression(C=np.inf, max_iter=self.max_iter)
        model.fit(features, targets, sample_weight=weights)
        self.coef_ = float(model.coef_[0, 0])
        self.intercept_ = float(model.intercept_[0])
        self.classes_ = np.array([0, 1])
        return self

    def _positive(self, scores: np.ndarray) -> np.ndarray:
        z = self.coef_ * scores + self.intercept_
        return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))

    def to_dict(self) -> dict[str, Any]:
        """The fitted map as JSON: ``{"method": "platt", "coef": a, "intercept": b}``."""
        if not _is_fitted(self):
            raise ConfigurationError("PlattCalibrator is not fitted: call fit() first")
        return {"method": "platt", "coef": self.coef_, "intercept": self.intercept_}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlattCalibrator:
        """A fitted calibrator from :meth:`to_dict`'s output (no refit, no scikit-learn)."""
        calibrator = cls()
        calibrator.coef_ = _finite(data["coef"], "coef")
        calibrator.intercept_ = _finite(data["intercept"], "intercept")
        calibrator.classes_ = np.array([0, 1])
        return calibrator


class IsotonicCalibrator(_CalibratorBase):
    """Isotonic recalibration: the best non-decreasing step map from score to frequency.

    scikit-learn's ``IsotonicRegression`` (bounded to [0, 1], clipped outside
    the fitted range). More flexible than Platt, needs more data, and turns
    score ranges into ties. Learned: ``isotonic_`` (the fitted regressor),
    ``x_thresholds_`` and ``y_thresholds_`` (the map's knots: it is linear
    between them and flat outside), ``classes_``.
    """

    isotonic_: Any
    x_thresholds_: np.ndarray
    y_thresholds_: np.ndarray

    def _param_names(self) -> tuple[str, ...]:
        return ()

    def fit(self, scores: npt.ArrayLike, labels: npt.ArrayLike) -> Self:
        """Fit on raw scores and 0/1 relevance labels; returns ``self``."""
        isotonic = _sklearn("isotonic")
        x = _finite_array(scores, "scores")
        y = _binary_labels(labels, len(x))
        _both_classes(y)
        model = isotonic.IsotonicRegression(
            y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip"
        )
        self.isotonic_ = model.fit(x, y.astype(float))
        self.x_thresholds_ = np.asarray(model.X_thresholds_, dtype=float)
        self.y_thresholds_ = np.asarray(model.y_thresholds_, dtype=float)
        self.classes_ = np.array([0, 1])
        return self

    def _positive(self, scores: np.ndarray) -> np.ndarray:
        # What IsotonicRegression.predict computes with out_of_bounds="clip".
        return np.asarray(np.interp(scores, self.x_thresholds_, self.y_thresholds_), dtype=float)

    def to_dict(self) -> dict[str, Any]:
        """The fitted map as JSON: ``{"method": "isotonic", "x": [...], "y": [...]}``."""
        if not _is_fitted(self):
            raise ConfigurationError("IsotonicCalibrator is not fitted: call fit() first")
        return {
            "method": "isotonic",
            "x": [float(v) for v in self.x_thresholds_],
            "y": [float(v) for v in self.y_thresholds_],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IsotonicCalibrator:
        """A fitted calibrator from :meth:`to_dict`'s output (no refit, no scikit-learn)."""
        x = _finite_array(data["x"], "x")
        y = _finite_array(data["y"], "y")
        if len(x) == 0 or len(x) != len(y):
            raise ValueError(f"x and y must be non-empty and of one length, got {len(x)}, {len(y)}")
        if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
            raise ValueError("x and y must be non-decreasing")
        if y[0] < 0 or y[-1] > 1:
            raise ValueError("y must be in [0, 1]")
        calibrator = cls()
        calibrator.x_thresholds_ = x
        calibrator.y_thresholds_ = y
        calibrator.classes_ = np.array([0, 1])
        return calibrator


def calibrator_from_dict(
    data: Mapping[str, Any], source: str = "calibrator"
) -> PlattCalibrator | IsotonicCalibrator:
    """A fitted calibrator from its ``to_dict()``; a damaged one is named by ``source``."""
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{source} must be an object, got {type(data).__name__}")
    method = data.get("method")
    kinds: dict[str, type[PlattCalibrator] | type[IsotonicCalibrator]] = {
        "platt": PlattCalibrator,
        "isotonic": IsotonicCalibrator,
    }
    if method not in kinds:
        raise ConfigurationError(f"{source}: method must be 'platt' or 'isotonic', got {method!r}")
    try:
        return kinds[method].from_dict(data)
    except (KeyError, TypeError, ValueError, ConfigurationError) as exc:
        raise ConfigurationError(f"{source} is damaged: {exc}") from exc


class CalibratedScorer:
    """A scorer whose scores pass through a fitted calibrator: probabilities.

    Meets the :class:`~zerank_core.scorers.base.Scorer` contract, so it plugs
    into every adapter and selection policy. ``model`` and ``usage`` are the
    wrapped scorer's. Its ``cache_identity`` holds the wrapped scorer's and a
    digest of the fitted calibrator, so a cache never serves scores of an
    earlier fit.
    """

    def __init__(self, scorer: Scorer, calibrator: Calibrator) -> None:
        scorer = require_scorer(scorer)
        if not callable(getattr(calibrator, "predict_proba", None)):
            raise ConfigurationError(
                f"calibrator must have predict_proba(), got {type(calibrator).__name__}"
            )
        if not _is_fitted(calibrator):
            raise ConfigurationError(
                f"calibrator {type(calibrator).__name__} is not fitted: call fit() first"
            )
        self.scorer = scorer
        self.calibrator = calibrator

    @property
    def scale(self) -> Scale:
        return Scale.PROBABILITY

    @property
    def model(self) -> str:
        return self.scorer.model

    @property
    def pairwise(self) -> bool:
        """Whether a score depends on its pair alone: as for the wrapped scorer."""
        declared = getattr(self.scorer, "pairwise", None)
        if isinstance(declared, bool):
            return declared
        return Scale(getattr(self.scorer, "scale", Scale.PROBABILITY)) is not Scale.UNCALIBRATED

    @property
    def cache_identity(self) -> str:
        """The wrapped scorer's identity (else its model) and the fitted calibrator's digest."""
        inner = getattr(self.scorer, "cache_identity", None) or self.model
        try:
            fitted = pickle.dumps(self.calibrator)
        except (pickle.PicklingError, TypeError, AttributeError):
            fitted = repr(sorted(vars(self.calibrator).items())).encode()
        digest = hashlib.sha256(fitted).hexdigest()
        return fingerprint("calibrated", scorer=inner, calibrator=digest)

    @property
    def usage(self) -> Usage | None:
        return self.scorer.usage

    def __repr__(self) -> str:
        return f"CalibratedScorer({self.scorer!r}, {self.calibrator!r})"

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Calibrated probabilities of the wrapped scorer's scores, in input order."""
        return self._calibrate(self.scorer.score(query, texts, instruction=instruction))

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Async :meth:`score`."""
        return self._calibrate(await self.scorer.ascore(query, texts, instruction=instruction))

    def _calibrate(self, raw: list[float]) -> list[float]:
        if not raw:
            return []
        probabilities = np.asarray(self.calibrator.predict_proba(raw), dtype=float)
        return [float(p) for p in probabilities[:, 1]]


# --- helpers ------------------------------------------------------------------------


def _sklearn(module: str) -> Any:
    try:
        if module == "linear_model":
            import sklearn.linear_model as found
        else:
            import sklearn.isotonic as found
    except ImportError as exc:
        raise MissingDependencyError("scikit-learn", "eval") from exc
    return found


def _is_fitted(estimator: object) -> bool:
    return any(name.endswith("_") and not name.startswith("__") for name in vars(estimator))


def _finite_array(values: npt.ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, str):
        raise ConfigurationError(f"{name} must be a sequence of numbers, got a str")
    try:
        out = np.array(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{name} must be a sequence of numbers: {exc}") from exc
    if out.ndim != 1:
        raise ConfigurationError(f"{name} must be one-dimensional, got shape {out.shape}")
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        i = int(bad[0])
        raise ConfigurationError(f"{name}[{i}] must be a finite number, got {out[i]}")
    return out


def _binary_labels(labels: npt.ArrayLike, n: int) -> np.ndarray:
    values = np.asarray(labels, dtype=object)
    if values.ndim != 1:
        raise ConfigurationError(f"labels must be one-dimensional, got shape {values.shape}")
    if len(values) != n:
        raise ConfigurationError(f"labels has {len(values)} entries for {n} scores")
    for index, value in enumerate(values):
        if not isinstance(value, int | bool | np.integer | np.bool_) or value not in (0, 1):
            raise ConfigurationError(f"labels[{index}] must be 0 or 1, got {value!r}")
    return values.astype(int)


def _both_classes(y: np.ndarray) -> None:
    present = set(int(v) for v in np.unique(y))
    if present != {0, 1}:
        raise ConfigurationError(
            f"labels must contain both relevant (1) and irrelevant (0) examples, got only {present}"
        )
