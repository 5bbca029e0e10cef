"""Labels → calibrated probabilities → decisions, with one meaning for every router.

A :class:`LabelClassifier` scores inputs against label descriptions with any
scorer. The label description is the *query* and the input is the *document*;
both framework routers (LangChain's ``ZeRankClassifier``, LlamaIndex's
``ZeRankSelector``) and ``zerank classify`` go through it, so the same labels
give the same probabilities everywhere. An input gets the same probabilities,
and so the same labels, alone or in any batch, with every backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field, model_validator

from zerank_core.errors import ConfigurationError
from zerank_core.scorers.base import (
    Scale,
    ScoreItem,
    Scorer,
    ascore_many,
    check_scores,
    is_blank,
    require_scorer,
    score_many,
)

__all__ = ["Classification", "LabelClassifier"]


class Classification(BaseModel):
    """One input's result: a frozen value that pickles, dumps to JSON and loads back.

    ``probabilities`` holds every label's calibrated probability, in the order
    the labels were given. ``labels`` are the chosen labels, best first: one at
    most for single-label classification, any number for multi-label.
    ``label`` is the best chosen label (``None`` when nothing passed and no
    default is set); ``is_default`` tells whether it is the fallback.

    ``model_dump_json()`` writes ``label`` too; ``model_validate_json()``
    reads such a dump back (``label`` is recomputed, not read). LangGraph's
    checkpoint serializer stores it as a pydantic model, so a graph whose
    state holds a classification can run with a checkpointer.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    probabilities: dict[str, float]
    labels: tuple[str, ...]
    is_default: bool = False

    @model_validator(mode="before")
    @classmethod
    def _drop_computed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "label" in data:
            return {key: value for key, value in data.items() if key != "label"}
        return data

    @model_validator(mode="after")
    def _check_labels(self) -> Classification:
        if self.is_default and len(self.labels) != 1:
            raise ValueError(f"a default classification has exactly one label, got {self.labels}")
        if not self.is_default:
            unknown = [name for name in self.labels if name not in self.probabilities]
            if unknown:
                raise ValueError(f"chosen labels {unknown} have no probability")
        return self

    @computed_field  # type: ignore[prop-decorator]
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

    A scorer whose score of a pair depends on the other texts of its call
    (``pairwise = False``: the BM25 baseline takes IDF and its max scaling
    from the call's texts) would give an input different probabilities in
    different batches. Such a scorer is called once per input instead, with
    the input as the query and the label descriptions as the texts: the
    texts of every call are then the same labels, and an input's
    probabilities depend on that input alone. For BM25 this means the
    best-matching label scores 1.0 and a label sharing no term with the
    input 0.0 (uncalibrated scores, not probabilities).
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
        """Classify each text; one scorer call per label (per text for a non-pairwise scorer)."""
        texts = list(texts)
        if not texts:
            return []
        if not self.pairwise:
            return self._decide_rows(score_many(self.scorer, self._items_by_text(texts)))
        names = list(self.labels)
        results = score_many(self.scorer, self._items(texts))
        return self._decide(dict(zip(names, results, strict=True)), len(texts))

    async def aclassify(self, texts: Sequence[str]) -> list[Classification]:
        """Async :meth:`classify`; the calls run concurrently (bounded)."""
        texts = list(texts)
        if not texts:
            return []
        if not self.pairwise:
            return self._decide_rows(await ascore_many(self.scorer, self._items_by_text(texts)))
        names = list(self.labels)
        results = await ascore_many(self.scorer, self._items(texts))
        return self._decide(dict(zip(names, results, strict=True)), len(texts))

    @property
    def pairwise(self) -> bool:
        """Whether the scorer's score of a pair depends on that pair alone.

        The scorer's own ``pairwise`` attribute when it declares one, else
        true unless its scale is uncalibrated.
        """
        declared = getattr(self.scorer, "pairwise", None)
        if isinstance(declared, bool):
            return declared
        return Scale(self.scorer.scale) is not Scale.UNCALIBRATED

    def _items(self, texts: list[str]) -> list[ScoreItem]:
        # One job of M label queries: a remote scorer plans and bounds them together.
        return [ScoreItem(d, texts, self.instruction) for d in self.labels.values()]

    def _items_by_text(self, texts: list[str]) -> list[ScoreItem]:
        for index, text in enumerate(texts):
            if isinstance(text, str) and is_blank(text):
                raise ConfigurationError(
                    f"input {index} is blank ({text!r:.40}): {self.scorer.model} scores "
                    "each input as the query against the label descriptions, and a query "
                    "must have some text"
                )
        descriptions = list(self.labels.values())
        return [ScoreItem(text, descriptions, self.instruction) for text in texts]

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
            probabilities={n: probabilities[n] for n in self.labels},
            labels=tuple(passing),
            is_default=is_default,
        )

    def _decide_rows(self, rows: list[list[float]]) -> list[Classification]:
        names = list(self.labels)
        results = []
        for index, row in enumerate(rows):
            checked = check_scores(
                row, len(names), context=f"input {index}", items="labels", names=names
            )
            results.append(self.decide(dict(zip(names, checked, strict=True))))
        return results

    def _decide(self, columns: Mapping[str, list[float]], n: int) -> list[Classification]:
        checked = {
            name: check_scores(column, n, context=f"label {name!r}")
            for name, column in columns.items()
        }
        return [self.decide({name: checked[name][i] for name in checked}) for i in range(n)]
