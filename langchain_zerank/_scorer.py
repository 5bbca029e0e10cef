"""The backend settings both LangChain components share, and how they become a scorer.

The scorer is built when the component is built, through the core's one
resolver (:func:`zerank_core.scorers.auto.resolve_backend`), so a missing
setting fails at construction with the same message as everywhere else.
Pickles and copies follow :mod:`zerank_core.components`: an explicit scorer
is kept, a scorer built from settings is rebuilt, and the API key is never
pickled or serialised.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, SkipValidation

from zerank_core.components import (
    BACKEND_SETTINGS,
    BackendSettings,
    aclose_built,
    build_scorer,
    check_arguments,
    close_built,
    merge_alias,
    rebuild_scorer,
)
from zerank_core.scorers.base import Scorer

__all__ = ["ScorerSettings"]


class ScorerSettings(BaseModel):
    """Which scorer a component uses: ``scorer``, else the backend its settings name.

    With neither ``scorer`` nor a setting, the environment decides
    (``ZEROENTROPY_API_KEY`` → ``ZERANK_SERVER_URL`` → ``ZERANK_LOCAL_MODEL``;
    ``ZERANK_BACKEND`` forces one); with nothing configured construction
    raises an error naming every option. BM25 is used only when asked for by
    name (``model="bm25"``, ``backend="lexical"``, ``ZERANK_BACKEND=lexical``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    #: Accepted spellings mapped to the documented field name.
    aliases: ClassVar[dict[str, str]] = {}

    # Checked by the core's require_scorer, whose message says what a scorer lacks.
    scorer: SkipValidation[Scorer | None] = Field(default=None, exclude=True, repr=False)
    """Any object with the core's scorer contract (``score``, ``ascore``,
    ``model``, ``scale``, ``usage``): a ``zerank_core`` backend, a cache
    wrapper, your own. Excludes every other backend setting."""

    model: str | None = None
    """The model: a ZeroEntropy API name (``"zerank-2"``: the hosted API with
    a key, or the model served at ``server_url``), a Hugging Face id or folder
    (``"zeroentropy/zerank-2-reranker"``: open weights in-process, needs
    ``pip install 'zerank-gate[local]'``), or ``"bm25"`` for the offline,
    uncalibrated lexical baseline."""

    device: str | None = None
    """Device for open weights in-process (``"cpu"``, ``"cuda"``, ``"mps"``);
    implies the local backend. Default: CUDA, then MPS, then CPU."""

    api_key: SecretStr | None = Field(default=None, repr=False)
    """ZeroEntropy API key (or a rerank server's bearer token with
    ``server_url``); never shown in ``repr``, logs, pickles or serialised
    output. When not passed, the backend resolver reads ``ZEROENTROPY_API_KEY``
    itself, so this field holds only a key the caller chose: a copy rebuilt
    from the fields (``configurable_fields``, ``load``) makes the same choice."""

    base_url: str | None = None
    """Base URL of ZeroEntropy's API (a regional endpoint or a self-hosted
    ZeroEntropy deployment), as ``ZEROENTROPY_BASE_URL``; implies the hosted
    backend."""

    server_url: str | None = None
    """Full endpoint of your rerank server (vLLM, llama.cpp, Infinity), e.g.
    ``http://localhost:8000/v1/rerank``, as ``ZERANK_SERVER_URL``."""

    backend: str | None = None
    """Force a backend: ``"hosted"``, ``"server"``, ``"local"`` or ``"lexical"``
    (default ``ZERANK_BACKEND``, then the rules above)."""

    scale: Literal["logit", "sigmoid", "probability"] | None = None
    """What the model's numbers are. With ``server_url``: what the server
    returns (default ``ZERANK_SERVER_SCALE``, else ``"probability"``). With
    open weights in-process: declares that ``model`` is another
    sentence-transformers cross-encoder (not zerank) whose head returns this
    scale (``"logit"`` for MiniLM and bge rerankers); its scores are then
    uncalibrated until a calibrator is fitted. Refused for the hosted API and BM25."""

    timeout: float | None = None
    """Seconds one request may take, > 0 (hosted API and rerank servers;
    default: the backend's own, 60 s for a server)."""

    max_retries: int | None = None
    """How many times a request that failed transiently (connection error,
    timeout, 408/409/5xx) is sent again, >= 0 (default 2). 429s are waited
    out and resent until the call's deadline whatever this says."""

    max_concurrency: int | None = None
    """Most requests in flight at once for this component's scorer, >= 1 (default 16)."""

    requests_per_minute: float | None = None
    """Requests a minute this scorer may send, > 0: paced on the client side."""

    bytes_per_minute: float | None = None
    """Request bytes a minute, > 0, counted as ZeroEntropy counts them
    (``150 + len(query) + len(document)`` UTF-8 bytes per document)."""

    tokens_per_minute: float | None = None
    """Tokens a minute, > 0 (estimated before a request, corrected by what
    the backend reports)."""

    max_batch_size: int | None = None
    """Most documents in one request (hosted default 256, server 32), or in
    one forward pass of open weights in-process (default 256), >= 1.

    The throughput settings are checked at construction whatever the backend;
    the network ones have no effect on open weights in-process and none of
    them on BM25, which sends no request."""

    _scorer: Scorer = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        owner = type(self).__name__
        for alias, name in self.aliases.items():
            merge_alias(data, name, alias, owner)
        check_arguments(owner, data, type(self).model_fields)
        super().__init__(**data)
        # Here rather than in model_post_init, so that pydantic does not wrap
        # the resolver's error: the message is the same as everywhere else.
        self._scorer = build_scorer(
            self.scorer, self._settings(explicit_key=True), framework="langchain"
        )

    def _settings(self, *, explicit_key: bool) -> BackendSettings:
        # Next to an explicit scorer only settings the caller passed count,
        # not a subclass's defaults.
        passed = self.model_fields_set
        values = {
            name: getattr(self, name)
            for name in BACKEND_SETTINGS
            if name in passed or self.scorer is None
        }
        if not explicit_key:
            values.pop("api_key", None)
        return BackendSettings(**values)

    def get_scorer(self) -> Scorer:
        """The scorer in use (``scorer``, or the one the settings resolved to)."""
        return self._scorer

    def close(self) -> None:
        """Close the scorer this component built (a ``scorer=`` passed in stays open)."""
        close_built(self._scorer, built=self.scorer is None)

    async def aclose(self) -> None:
        """Async :meth:`close`: also closes this event loop's async client."""
        await aclose_built(self._scorer, built=self.scorer is None)

    def __getstate__(self) -> dict[Any, Any]:
        state = dict(super().__getstate__())
        values = dict(state["__dict__"])
        values["api_key"] = None
        state["__dict__"] = values
        private = dict(state.get("__pydantic_private__") or {})
        if self.scorer is None:
            private.pop("_scorer", None)
        state["__pydantic_private__"] = private
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        if self.scorer is None:
            self._scorer = rebuild_scorer(
                self._settings(explicit_key=False), type(self).__name__, framework="langchain"
            )

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        # A scorer is a resource (clients, connection pools, weights, locks),
        # not a value: copies of a component share it.
        memo = {} if memo is None else memo
        memo[id(self._scorer)] = self._scorer
        return super().__deepcopy__(memo)
