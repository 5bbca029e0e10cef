"""A LlamaIndex selector that routes ``RouterQueryEngine`` / ``RouterRetriever`` on zerank scores.

The choices are labels of the core's :class:`~zerank_core.classify.LabelClassifier`,
which decides; this module translates ``ToolMetadata`` and ``QueryBundle``
to it and the decision back to a ``SelectorResult``. The selector never
returns an empty selection, because LlamaIndex routers fail on one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import llama_index.core.instrumentation as instrument
from llama_index.core.base.base_selector import BaseSelector, SelectorResult, SingleSelection
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.schema import QueryBundle
from llama_index.core.tools.types import ToolMetadata
from pydantic import SecretStr

from zerank_core.classify import Classification, LabelClassifier
from zerank_core.components import (
    BackendSettings,
    aclose_built,
    build_scorer,
    check_arguments,
    close_built,
    merge_alias,
    rebuild_scorer,
)
from zerank_core.errors import ConfigurationError
from zerank_core.scorers.base import Scale, Scorer
from zerank_core.select import SelectionPolicy

__all__ = ["ZeRankSelector"]

# llama-index-core re-exports get_dispatcher without marking it public (no __all__).
dispatcher = instrument.get_dispatcher(__name__)  # type: ignore[attr-defined]


class ZeRankSelector(BaseSelector):
    """Pick router choices by the calibrated probability that they fit the query.

    Built on the core's :class:`~zerank_core.classify.LabelClassifier` with
    the same options as LangChain's ``ZeRankClassifier``: each choice's
    description is a label description, scored as the query against the
    user's query as the document (the core's docstring says why), one scorer
    call per choice, concurrent in ``aselect``.

    Single selection (``multi_label=False``) returns the best choice at or
    above ``threshold``; multi selection every such choice, best first, at
    most ``max_labels``. When no choice reaches ``threshold`` the selector
    returns ``default`` (a choice's index or tool name) if set, else the best
    choice anyway: LlamaIndex routers fail on an empty selection. Every
    selection's ``reason`` states its probability (or, for an uncalibrated
    scorer such as BM25, says the number is an uncalibrated score).
    ``multi`` and ``max_outputs`` (LlamaIndex's names) are accepted as aliases.

    The scorer is ``scorer=`` when given, else the backend ``model``,
    ``device``, ``api_key``, ``base_url``, ``server_url`` and ``backend`` name,
    then the environment, resolved at construction by
    :func:`zerank_core.scorers.auto.resolve_backend`. ``scale`` and the
    throughput settings (``timeout``, ``max_retries``, ``max_concurrency``,
    ``requests_per_minute``, ``bytes_per_minute``, ``tokens_per_minute``,
    ``max_batch_size``) are those of ``ZeRankPostprocessor``, checked at
    construction and passed to the backend; requests carry the User-Agent
    ``zerank-gate/<version> llamaindex``.
    """

    def __init__(
        self,
        scorer: Scorer | None = None,
        *,
        threshold: float | Mapping[str, float] = 0.5,
        multi_label: bool = False,
        max_labels: int | None = None,
        default: int | str | None = None,
        instruction: str | None = None,
        model: str | None = None,
        device: str | None = None,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        server_url: str | None = None,
        backend: str | None = None,
        scale: str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        max_concurrency: int | None = None,
        requests_per_minute: float | None = None,
        bytes_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        max_batch_size: int | None = None,
        **aliases: Any,
    ) -> None:
        options: dict[str, Any] = dict(aliases)
        # Set names join the aliases, so that giving a name and its alias is caught.
        if multi_label:
            options["multi_label"] = multi_label
        if max_labels is not None:
            options["max_labels"] = max_labels
        merge_alias(options, "multi_label", "multi", "ZeRankSelector")
        merge_alias(options, "max_labels", "max_outputs", "ZeRankSelector")
        check_arguments("ZeRankSelector", options, ["multi_label", "max_labels"])
        multi_label = bool(options.get("multi_label", multi_label))
        max_labels = options.get("max_labels", max_labels)
        if max_labels is not None and (
            isinstance(max_labels, bool) or not isinstance(max_labels, int) or max_labels < 1
        ):
            raise ConfigurationError(f"max_labels must be an integer >= 1, got {max_labels!r}")
        if default is not None and (
            isinstance(default, bool)
            or not isinstance(default, int | str)
            or (isinstance(default, int) and default < 0)
        ):
            raise ConfigurationError(
                f"default must be a choice index >= 0 or a tool name, got {default!r}"
            )
        self.threshold = threshold
        self.multi_label = multi_label
        self.max_labels = max_labels
        self.default = default
        self.instruction = instruction
        settings = BackendSettings(
            backend=backend,
            model=model,
            device=device,
            api_key=SecretStr(api_key) if isinstance(api_key, str) else api_key,
            base_url=base_url,
            server_url=server_url,
            scale=scale,
            timeout=timeout,
            max_retries=max_retries,
            max_concurrency=max_concurrency,
            requests_per_minute=requests_per_minute,
            bytes_per_minute=bytes_per_minute,
            tokens_per_minute=tokens_per_minute,
            max_batch_size=max_batch_size,
        )
        self._settings = settings.without_key()
        self._api_key = settings.api_key
        self._scorer = build_scorer(scorer, settings, framework="llamaindex")
        self._scorer_given = scorer is not None
        for value in threshold.values() if isinstance(threshold, Mapping) else [threshold]:
            SelectionPolicy(threshold=value)  # the core's check, now rather than at the first query

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(multi_label={self.multi_label}, threshold={self.threshold}, "
            f"max_labels={self.max_labels}, default={self.default!r}, "
            f"scorer={self._scorer.model!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_api_key"] = None
        if not self._scorer_given:
            del state["_scorer"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if not self._scorer_given:
            self._scorer = rebuild_scorer(self._settings, "ZeRankSelector", framework="llamaindex")

    def __deepcopy__(self, memo: dict[int, Any]) -> ZeRankSelector:
        # Copies share the scorer: it is a resource (clients, weights, locks), not a value.
        clone = object.__new__(ZeRankSelector)
        memo[id(self)] = clone
        for name, value in self.__dict__.items():
            clone.__dict__[name] = value if name == "_scorer" else copy.deepcopy(value, memo)
        return clone

    @property
    def scorer(self) -> Scorer:
        """The scorer in use: ``scorer=``, or the one the settings resolved to."""
        return self._scorer

    def close(self) -> None:
        """Close the scorer this selector built (a ``scorer=`` passed in stays open)."""
        close_built(self._scorer, built=not self._scorer_given)

    async def aclose(self) -> None:
        """Async :meth:`close`: also closes this event loop's async client."""
        await aclose_built(self._scorer, built=not self._scorer_given)

    def _get_prompts(self) -> PromptDictType:
        return {}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        """This selector has no prompts."""

    def _classifier(self, choices: Sequence[ToolMetadata]) -> LabelClassifier:
        # Core labels are named "0 ('paris')": unique, and readable in messages.
        keys = [_label(choices, i) for i in range(len(choices))]
        labels = dict(zip(keys, _descriptions(choices), strict=True))
        threshold = self.threshold
        if isinstance(threshold, Mapping):
            names = [choice.name for choice in choices]
            unknown = sorted(set(threshold) - set(names))
            if unknown:
                raise ConfigurationError(
                    f"threshold names {unknown}, which are not among the choices' names {names}"
                )
            threshold = {keys[names.index(name)]: value for name, value in threshold.items()}
        default = self._default_index(choices)
        return LabelClassifier(
            self._scorer,
            labels,
            threshold=threshold,
            multi_label=self.multi_label,
            max_labels=self.max_labels,
            default=None if default is None else keys[default],
            instruction=self.instruction,
        )

    @dispatcher.span
    def _select(self, choices: Sequence[ToolMetadata], query: QueryBundle) -> SelectorResult:
        classifier = self._classifier(choices)
        (result,) = classifier.classify([_query_str(query)])
        return self._result(choices, result)

    @dispatcher.span
    async def _aselect(self, choices: Sequence[ToolMetadata], query: QueryBundle) -> SelectorResult:
        classifier = self._classifier(choices)
        (result,) = await classifier.aclassify([_query_str(query)])
        return self._result(choices, result)

    def _default_index(self, choices: Sequence[ToolMetadata]) -> int | None:
        if self.default is None:
            return None
        if isinstance(self.default, int):
            if self.default >= len(choices):
                raise ConfigurationError(
                    f"default choice {self.default} is out of range for {len(choices)} choices"
                )
            return self.default
        names = [choice.name for choice in choices]
        if self.default not in names:
            raise ConfigurationError(
                f"default choice {self.default!r} is not among the choices' names {names}"
            )
        return names.index(self.default)

    def _result(self, choices: Sequence[ToolMetadata], result: Classification) -> SelectorResult:
        keys = list(result.probabilities)
        scores = list(result.probabilities.values())
        what = _score_name(self._scorer)
        chosen = [keys.index(label) for label in result.labels]
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        if chosen and not result.is_default:
            return SelectorResult(
                selections=[
                    SingleSelection(index=i, reason=_reason(choices, scores, i, what))
                    for i in chosen
                ]
            )
        floor = self.threshold if not isinstance(self.threshold, Mapping) else "per choice"
        if result.is_default:
            index = chosen[0]
            note = (
                f"no choice reached the threshold {floor}; default choice "
                f"(best was {_label(choices, best)} at {scores[best]:.3f})"
            )
        else:
            index = best
            note = f"no choice reached the threshold {floor}; best choice"
        reason = f"{_reason(choices, scores, index, what)}; {note}"
        return SelectorResult(selections=[SingleSelection(index=index, reason=reason)])


def _descriptions(choices: Sequence[ToolMetadata]) -> list[str]:
    if not choices:
        raise ConfigurationError("ZeRankSelector needs at least one choice, got none")
    for index, choice in enumerate(choices):
        if not isinstance(choice.description, str) or not choice.description.strip():
            raise ConfigurationError(
                f"choice {_label(choices, index)} needs a non-empty description to be scored"
            )
    return [choice.description for choice in choices]


def _query_str(query: QueryBundle) -> str:
    if not query.query_str.strip():
        raise ConfigurationError(f"query_str must not be empty, got {query.query_str!r}")
    return query.query_str


def _score_name(scorer: Scorer) -> str:
    """How a reason names the number: a probability unless the scorer says otherwise."""
    if scorer.scale is Scale.UNCALIBRATED:
        return f"{scorer.model} uncalibrated score"
    return f"{scorer.model} probability"


def _label(choices: Sequence[ToolMetadata], index: int) -> str:
    name = choices[index].name
    return f"{index} ({name!r})" if name else str(index)


def _reason(choices: Sequence[ToolMetadata], scores: Sequence[float], index: int, what: str) -> str:
    return f"{what} {scores[index]:.3f} for choice {_label(choices, index)}"
