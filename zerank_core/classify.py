"""Labels → calibrated probabilities → decisions, with one meaning for every router.

A :class:`LabelClassifier` scores inputs against label descriptions with any
scorer. The label description is the *query* and the input is the *document*;
both framework routers (LangChain's ``ZeRankClassifier``, LlamaIndex's
``ZeRankSelector``) and ``zerank classify`` go through it, so the same labels
give the same probabilities everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from zerank_core.errors import ConfigurationError
from zerank_core.scorers.base import (
    ScoreItem,
    Scorer,
    ascore_many,
    check_scores,
    require_scorer,
    score_many,
)

__all__ = ["Classification", "LabelClassifier"]


@dataclass(frozen=True)
class Classification:
    """One input's result.

    ``probabilities`` holds every label's calibrated probability, in the order
    the labels were given. ``labels`` are the chosen labels, best first: one at
    most for single-label classification, any number for multi-label.
    ``label`` is the best chosen label (``None`` when nothing passed and no
    default is set); ``is_default`` tells whether it is the fallback.
    """

    probabilities: Mapping[str, float]
    labels: tuple[str, ...]
    is_default: bool = False

    @property
    def label(self) -> str | None:
        return self.labels[0] if self.labels else None


class LabelClassifier:
    """Route inputs on calibrated label probabilities.

    ``labels`` maps a label name to its description. ``threshold`` is one
    floor for all labels or one per label (labels missing from the mapping
    use 0.5). With ``multi_label=False`` the best label at or above its floor
    wins; otherwise every such label is chosen, best first, at most
    ``max_labels``. When nothing passes, ``default`` (if set; it need not be
    one of the labels) is chosen.

    Direction: the label description is scored as the query and each input as
    the document. zerank's score is not symmetric, so this is fixed once,
    here, for three reasons: the document side is the one the model reads in
    full (32k tokens) while the query side is meant to be a short question,
    and inputs (tickets, e-mails, pages) are the long side; a description
    written as the question the label answers ("is this about an invoice or a
    payment?") is what zerank was trained to read as a query; and N inputs
    against M labels take M scorer calls (one per description, all inputs as
    its documents), not N × M.
    """

    def __init__(
        self,
        scorer: Scorer,
        labels: Mapping[str, str],
        *,
        threshold: float | Mapping[str, float] = 0.5,
        multi_label: bool = False,
        max_labels: int | None = None,
        default: str | None = None,
        instruction: str | None = None,
    ) -> None:
        scorer = require_scorer(scorer)
        if max_labels is not None and (
            isinstance(max_labels, bool) or not isinstance(max_labels, int) or max_labels < 1
        ):
            raise ConfigurationError(f"max_labels must be an integer >= 1, got {max_labels!r}")
        if default is not None and (not isinstance(default, str) or not default):
            raise ConfigurationError(f"default must be a non-empty label name, got {default!r}")
        if not labels:
            raise ConfigurationError("labels must name at least one label")
        for name, description in labels.items():
            if not isinstance(description, str) or not description.strip():
                raise ConfigurationError(f"label {name!r} needs a non-empty description")
        if isinstance(threshold, Mapping):
            unknown = sorted(set(threshold) - set(labels))
            if unknown:
                raise ConfigurationError(f"threshold names unknown labels: {unknown}")
            thresholds = {name: float(threshold.get(name, 0.5)) for name in labels}
        else:
            thresholds = dict.fromkeys(labels, float(threshold))
        for name, value in thresholds.items():
            if math.isnan(value) or not 0.0 <= value <= 1.0:
                raise ConfigurationError(f"threshold for {name!r} must be in [0, 1], got {value}")
        self.scorer = scorer
        self.labels = MappingProxyType(dict(labels))
        self.thresholds = MappingProxyType(thresholds)
        self.multi_label = multi_label
        self.max_labels = max_labels
        self.default = default
        self.instruction = instruction

    def classify(self, texts: Sequence[str]) -> list[Classification]:
        """Classify each text; one scorer call per label."""
        texts = list(texts)
        if not texts:
            return []
        names = list(self.labels)
        results = score_many(self.scorer, self._items(texts))
        return self._decide(dict(zip(names, results, strict=True)), len(texts))

    async def aclassify(self, texts: Sequence[str]) -> list[Classification]:
        """Async :meth:`classify`; the per-label calls run concurrently (bounded)."""
        texts = list(texts)
        if not texts:
            return []
        names = list(self.labels)
        results = await ascore_many(self.scorer, self._items(texts))
        return self._decide(dict(zip(names, results, strict=True)), len(texts))

    def _items(self, texts: list[str]) -> list[ScoreItem]:
        # One job of M label queries: a remote scorer plans and bounds them together.
        return [ScoreItem(d, texts, self.instruction) for d in self.labels.values()]

    def decide(self, probabilities: Mapping[str, float]) -> Classification:
        """Turn one input's label probabilities into a :class:`Classification`."""
        passing = [name for name in self.labels if probabilities[name] >= self.thresholds[name]]
        passing.sort(key=lambda name: -probabilities[name])
        if not self.multi_label:
            passing = passing[:1]
        elif self.max_labels is not None:
            passing = passing[: self.max_labels]
        is_default = False
        if not passing and self.default is not None:
            passing, is_default = [self.default], True
        return Classification(
            probabilities=MappingProxyType({n: probabilities[n] for n in self.labels}),
            labels=tuple(passing),
            is_default=is_default,
        )

    def _decide(self, columns: Mapping[str, list[float]], n: int) -> list[Classification]:
        checked = {
            name: check_scores(column, n, context=f"label {name!r}")
            for name, column in columns.items()
        }
        return [self.decide({name: checked[name][i] for name in checked}) for i in range(n)]
