"""A LlamaIndex selector that routes ``RouterQueryEngine`` / ``RouterRetriever`` on zerank scores.

Each choice's description is scored against the query in one scorer call;
:class:`zerank_core.SelectionPolicy` decides which choices pass. The selector
never returns an empty selection, because LlamaIndex routers fail on one.
"""

from __future__ import annotations

from collections.abc import Sequence

import llama_index.core.instrumentation as instrument
from llama_index.core.base.base_selector import BaseSelector, SelectorResult, SingleSelection
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.schema import QueryBundle
from llama_index.core.tools.types import ToolMetadata
from pydantic import SecretStr

from llamaindex_zerank._backend import as_secret, check_scorer_arg, model_name, resolve_scorer
from zerank_core.errors import ConfigurationError
from zerank_core.scorers.base import Scale, Scorer
from zerank_core.select import SelectionPolicy

__all__ = ["ZeRankSelector"]

# llama-index-core re-exports get_dispatcher without marking it public (no __all__).
dispatcher = instrument.get_dispatcher(__name__)  # type: ignore[attr-defined]


class ZeRankSelector(BaseSelector):
    """Pick router choices by the calibrated probability that they fit the query.

    Single selection (``multi=False``) returns the best choice. Multi selection
    returns every choice at or above ``threshold``, best first, at most
    ``max_outputs``. When nothing reaches ``threshold`` the selector falls back
    to ``default`` (a choice's index or tool name) if set, else to the best
    choice; in single mode the same fallback applies when the best choice is
    below ``threshold`` and a ``default`` is set. Every selection's ``reason``
    states its probability (or, for an uncalibrated scorer such as BM25, says
    that the number is an uncalibrated score).

    The scorer is ``scorer=`` when given, else the hosted API when ``api_key``
    is given, else whatever the environment configures; it is resolved on
    first use.
    """

    def __init__(
        self,
        scorer: Scorer | None = None,
        *,
        multi: bool = False,
        threshold: float = 0.5,
        max_outputs: int | None = None,
        default: int | str | None = None,
        instruction: str | None = None,
        api_key: str | SecretStr | None = None,
        model: str = "zerank-2",
        base_url: str | None = None,
    ) -> None:
        if max_outputs is not None and (
            isinstance(max_outputs, bool) or not isinstance(max_outputs, int) or max_outputs < 1
        ):
            raise ConfigurationError(f"max_outputs must be an integer >= 1, got {max_outputs!r}")
        if default is not None and (
            isinstance(default, bool)
            or not isinstance(default, int | str)
            or (isinstance(default, int) and default < 0)
        ):
            raise ConfigurationError(
                f"default must be a choice index >= 0 or a tool name, got {default!r}"
            )
        self.multi = multi
        self.threshold = threshold
        self.max_outputs = max_outputs
        self.default = default
        self.instruction = instruction
        self.model = model
        self.base_url = base_url
        self._policy = SelectionPolicy(threshold=threshold, top_k=max_outputs if multi else 1)
        self._api_key = as_secret(api_key)
        self._scorer = check_scorer_arg(scorer, self._api_key)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(multi={self.multi}, threshold={self.threshold}, "
            f"max_outputs={self.max_outputs}, default={self.default!r})"
        )

    @property
    def scorer(self) -> Scorer:
        """The scorer in use, resolved on first access."""
        if self._scorer is None:
            self._scorer = resolve_scorer(self._api_key, self.model, self.base_url)
        return self._scorer

    def _get_prompts(self) -> PromptDictType:
        return {}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        """This selector has no prompts."""

    @dispatcher.span
    def _select(self, choices: Sequence[ToolMetadata], query: QueryBundle) -> SelectorResult:
        descriptions = _descriptions(choices)
        default = self._default_index(choices)
        scores = self.scorer.score(_query_str(query), descriptions, instruction=self.instruction)
        return self._result(choices, scores, default)

    @dispatcher.span
    async def _aselect(self, choices: Sequence[ToolMetadata], query: QueryBundle) -> SelectorResult:
        descriptions = _descriptions(choices)
        default = self._default_index(choices)
        scores = await self.scorer.ascore(
            _query_str(query), descriptions, instruction=self.instruction
        )
        return self._result(choices, scores, default)

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

    def _result(
        self, choices: Sequence[ToolMetadata], scores: Sequence[float], default: int | None
    ) -> SelectorResult:
        if len(scores) != len(choices):
            raise ConfigurationError(
                f"scorer {model_name(self.scorer)!r} returned {len(scores)} scores "
                f"for {len(choices)} choices"
            )
        indices = self._policy.select(scores).indices
        what = _score_name(self.scorer)
        if indices:
            return SelectorResult(
                selections=[
                    SingleSelection(index=i, reason=_reason(choices, scores, i, what))
                    for i in indices
                ]
            )
        best = SelectionPolicy(top_k=1).select(scores).indices[0]
        if default is None:
            index = best
            note = f"no choice reached the threshold {self.threshold}; best choice"
        else:
            index = default
            note = (
                f"no choice reached the threshold {self.threshold}; default choice "
                f"(best was {_label(choices, best)} at {scores[best]:.3f})"
            )
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
    name = model_name(scorer)
    if getattr(scorer, "scale", Scale.PROBABILITY) is Scale.UNCALIBRATED:
        return f"{name} uncalibrated score"
    return f"{name} probability"


def _label(choices: Sequence[ToolMetadata], index: int) -> str:
    name = choices[index].name
    return f"{index} ({name!r})" if name else str(index)


def _reason(choices: Sequence[ToolMetadata], scores: Sequence[float], index: int, what: str) -> str:
    return f"{what} {scores[index]:.3f} for choice {_label(choices, index)}"
