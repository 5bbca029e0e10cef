"""The scorer settings both LangChain adapters share, and how they become a scorer.

A default scorer is built on first use, not at construction: building one may
load open weights or open clients, and a component that is only configured,
serialised or printed should do neither. The API key lives in a ``SecretStr``
field and the scorer is kept out of ``repr`` and ``model_dump``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.utils import secret_from_env
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr

from zerank_core.scorers.auto import scorer_from_env
from zerank_core.scorers.base import Scorer

__all__ = ["DeferredScorer", "ScorerSettings"]

# Taken only while a default scorer is built, so that concurrent first calls
# build one scorer, not several.
_BUILD_LOCK = threading.Lock()


class DeferredScorer:
    """A :class:`Scorer` that asks ``resolve`` for the real one at each call.

    Lets core objects that need a scorer be built (and validate their
    settings) before any backend exists.
    """

    def __init__(self, resolve: Callable[[], Scorer]) -> None:
        self._resolve = resolve

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return self._resolve().score(query, texts, instruction=instruction)

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return await self._resolve().ascore(query, texts, instruction=instruction)


class ScorerSettings(BaseModel):
    """Which scorer an adapter uses: ``scorer``, else ``api_key``, else the environment."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    scorer: Scorer | None = Field(default=None, exclude=True, repr=False)
    """Any object with the core's ``score``/``ascore`` contract (a
    ``zerank_core`` backend, a cache wrapper, your own). When unset, the
    scorer is built on first use: a ``ZeroEntropyScorer`` if ``api_key`` was
    passed, otherwise ``zerank_core.scorer_from_env(allow_lexical=False)``
    (``ZEROENTROPY_API_KEY`` → ``ZERANK_SERVER_URL`` → ``ZERANK_LOCAL_MODEL``;
    ``ZERANK_BACKEND`` overrides the order), which raises an error naming
    these options when none is set."""

    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("ZEROENTROPY_API_KEY", default=None)
    )
    """ZeroEntropy API key for the hosted API. Read from ``ZEROENTROPY_API_KEY``
    when not passed; never shown in ``repr``, logs or serialised output."""

    _default_scorer: Scorer | None = PrivateAttr(default=None)

    def get_scorer(self) -> Scorer:
        """The scorer in use (``scorer``, or the default one, built now if needed)."""
        if self.scorer is not None:
            return self.scorer
        if self._default_scorer is None:
            with _BUILD_LOCK:
                if self._default_scorer is None:
                    self._default_scorer = self._build_default_scorer()
        return self._default_scorer

    def _build_default_scorer(self) -> Scorer:
        if self.api_key is not None and "api_key" in self.model_fields_set:
            from zerank_core.scorers.zeroentropy import ZeroEntropyScorer

            model = os.environ.get("ZERANK_MODEL", "zerank-2")
            return ZeroEntropyScorer(model=model, api_key=self.api_key)
        return scorer_from_env(allow_lexical=False).scorer

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        # A scorer is a resource (clients, connection pools, locks), not a
        # value: copies of an adapter share it.
        memo = {} if memo is None else memo
        for scorer in (self.scorer, self._default_scorer):
            if scorer is not None:
                memo[id(scorer)] = scorer
        return super().__deepcopy__(memo)
