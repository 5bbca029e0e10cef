"""A LangChain Runnable that classifies inputs on calibrated label probabilities.

:class:`ZeRankClassifier` turns a string, a ``Document``, a message or a
graph state into text and hands it to the core's
:class:`~zerank_core.classify.LabelClassifier`; its output is the core's
:class:`~zerank_core.classify.Classification`. :meth:`ZeRankClassifier.as_router`
gives the form whose output is the label itself, usable as the ``path`` of
LangGraph's ``add_conditional_edges``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, RunnableSerializable
from pydantic import ConfigDict

from langchain_zerank._scorer import ScorerSettings
from zerank_core.classify import Classification, LabelClassifier
from zerank_core.errors import ConfigurationError

__all__ = ["ZeRankClassifier", "input_text"]


class ZeRankClassifier(ScorerSettings, RunnableSerializable[Any, Classification]):
    """Score inputs against label descriptions and pick labels by probability.

    Inputs may be a string, a ``Document`` (its ``page_content``), a message
    (its text), a list of messages (the last one's text), or a mapping / state
    object holding one of these under ``input_key``. ``batch`` and ``abatch``
    make one scorer call per label for the whole batch, not one per input and
    label; every input still gets its own traced run.

    Example:
        .. code-block:: python

            classifier = ZeRankClassifier(
                labels={"billing": "a question about an invoice or a payment",
                        "bug": "a report of software misbehaving"},
                threshold=0.6,
                default="general",
            )
            classifier.invoke("I was charged twice").label  # "billing"
            graph.add_conditional_edges("triage", classifier.as_router(), {...})
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    labels: dict[str, str]
    """Label name → description. The description is scored as the query and
    the input as the document (see :class:`zerank_core.LabelClassifier` for
    why), so write it as the question the label answers."""

    threshold: float | dict[str, float] = 0.5
    """Floor a label's probability must reach: one for all labels, or one per
    label (labels left out of the mapping use 0.5)."""

    multi_label: bool = False
    """Choose every label at or above its floor, best first, instead of the best one."""

    max_labels: int | None = None
    """With ``multi_label``: choose at most this many labels (>= 1)."""

    default: str | None = None
    """Label chosen when no label reaches its floor (it need not be one of ``labels``)."""

    instruction: str | None = None
    """Instruction appended to each label description by zerank's convention."""

    input_key: str = "input"
    """Key (or attribute of a state object) that holds the text in dict inputs."""

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        self._classifier()  # validates labels and thresholds now, not at the first input

    def _classifier(self) -> LabelClassifier:
        return LabelClassifier(
            self.get_scorer(),
            self.labels,
            threshold=self.threshold,
            multi_label=self.multi_label,
            max_labels=self.max_labels,
            default=self.default,
            instruction=self.instruction,
        )

    @property
    def OutputType(self) -> type[Classification]:
        return Classification

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Classification:
        return self._call_with_config(self._classify_one, input, config)

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Classification:
        return await self._acall_with_config(self._aclassify_one, input, config)

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[Classification]:
        return self._batch_with_config(
            self._classify_many, inputs, config, return_exceptions=return_exceptions
        )

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[Classification]:
        return await self._abatch_with_config(
            self._aclassify_many, inputs, config, return_exceptions=return_exceptions
        )

    def as_router(self) -> Runnable[Any, str | list[str]]:
        """This classifier with the label as output, for routing.

        Single-label: the chosen label (a ``default`` is required, so every
        input has a route). Multi-label: the list of chosen labels, for
        fan-out; it holds ``default`` alone when nothing passes, and is empty
        when nothing passes and no default is set.
        """
        if not self.multi_label and self.default is None:
            raise ConfigurationError(
                "a single-label router needs default=... so that an input no label "
                "claims still has a route"
            )
        pick: Callable[[Classification], str | list[str]] = (
            _all_labels if self.multi_label else _first_label
        )
        route: Runnable[Classification, str | list[str]] = RunnableLambda(pick, name="route")
        return (self | route).with_config(run_name=f"{self.get_name()}Router")

    def _classify_one(self, input: Any) -> Classification:
        return self._classifier().classify([input_text(input, self.input_key)])[0]

    async def _aclassify_one(self, input: Any) -> Classification:
        return (await self._classifier().aclassify([input_text(input, self.input_key)]))[0]

    def _classify_many(self, inputs: list[Any]) -> list[Exception | Classification]:
        return list(self._classifier().classify([input_text(i, self.input_key) for i in inputs]))

    async def _aclassify_many(self, inputs: list[Any]) -> list[Exception | Classification]:
        texts = [input_text(i, self.input_key) for i in inputs]
        return list(await self._classifier().aclassify(texts))


def _first_label(result: Classification) -> str:
    return result.labels[0]


def _all_labels(result: Classification) -> list[str]:
    return list(result.labels)


def input_text(value: Any, key: str = "input") -> str:
    """The text a classifier reads from one input.

    A string is itself; a ``Document`` gives its ``page_content``; a message
    its text; a list of messages the last one's text; a mapping or a state
    object the value under ``key`` (one level deep).
    """
    text = _plain_text(value)
    if text is not None:
        return text
    if isinstance(value, Mapping):
        if key not in value:
            raise ConfigurationError(
                f"input has no key {key!r} (keys: {sorted(map(str, value))}); "
                "set input_key to the one holding the text"
            )
        inner = value[key]
    elif hasattr(value, key):
        inner = getattr(value, key)
    else:
        raise ConfigurationError(
            f"cannot classify a {type(value).__name__}: pass a str, a Document, a message, "
            f"or a mapping/state holding one under input_key={key!r}"
        )
    text = _plain_text(inner)
    if text is None:
        raise ConfigurationError(
            f"input[{key!r}] is a {type(inner).__name__}; expected a str, a Document, "
            "a message or a list of messages"
        )
    return text


def _plain_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Document):
        return value.page_content
    if isinstance(value, BaseMessage):
        return value.text
    if isinstance(value, Sequence) and value and isinstance(value[-1], BaseMessage):
        return value[-1].text
    return None
