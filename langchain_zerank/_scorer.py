"""The scorer settings both LangChain adapters share, and how they become a scorer.

A scorer is built on first use, not at construction: building one may load
open weights or open clients, and a component that is only configured,
serialised or printed should do neither. The API key lives in a ``SecretStr``
field and the scorer is kept out of ``repr`` and ``model_dump``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

from langchain_core.utils import secret_from_env
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from zerank_core.scorers.auto import scorer_from_env
from zerank_core.scorers.base import Scorer

__all__ = ["DeferredScorer", "ScorerSettings"]


class DeferredScorer:
    """A :class:`Scorer` that builds the real one on its first call.

    The build runs once even when the first calls arrive from several threads.
    """

    def __init__(self, build: Callable[[], Scorer]) -> None:
        self._build = build
        self._scorer: Scorer | None = None
        self._lock = threading.Lock()

    def get(self) -> Scorer:
        """The scorer, built now if this is the first use."""
        if self._scorer is None:
            with self._lock:
                if self._scorer is None:
                    self._scorer = self._build()
        return self._scorer

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return self.get().score(query, texts, instruction=instruction)

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        return await self.get().ascore(query, texts, instruction=instruction)


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

    def _deferred_scorer(self) -> DeferredScorer:
        """A scorer for this configuration, built when first called."""
        scorer = self.scorer
        api_key = self.api_key if "api_key" in self.model_fields_set else None

        def build() -> Scorer:
            if scorer is not None:
                return scorer
            if api_key is not None:
                from zerank_core.scorers.zeroentropy import ZeroEntropyScorer

                model = os.environ.get("ZERANK_MODEL", "zerank-2")
                return ZeroEntropyScorer(model=model, api_key=api_key)
            return scorer_from_env(allow_lexical=False).scorer

        return DeferredScorer(build)
