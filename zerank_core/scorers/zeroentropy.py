"""Hosted ZeroEntropy API backend, through the official ``zeroentropy`` SDK.

The SDK retries 408/409/429/5xx and connection errors with backoff and honours
``retry-after``; this backend hands it ``max_retries`` and ``timeout`` and adds
no retry layer of its own. SDK errors pass through unchanged.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

from pydantic import SecretStr

from zerank_core.errors import ConfigurationError, MissingDependencyError
from zerank_core.scorers.base import BatchedScorer, BatchResult, PerLoop, Scale

if TYPE_CHECKING:
    from zeroentropy import AsyncZeroEntropy, ZeroEntropy

__all__ = ["ZeroEntropyScorer"]

MAX_REQUEST_BYTES = 5_000_000


class ZeroEntropyScorer(BatchedScorer):
    """Score with ZeroEntropy's ``/models/rerank`` (hosted or self-deployed).

    ``api_key`` defaults to ``ZEROENTROPY_API_KEY`` and ``base_url`` to
    ``ZEROENTROPY_BASE_URL`` (then the SDK's default). Pass ``client`` /
    ``async_client`` to reuse configured SDK clients; otherwise they are
    created lazily, so an async client is bound to the loop that first uses it.
    Requests hold at most ``max_batch_size`` documents and stay under
    ``max_bytes`` (ZeroEntropy's per-request limit is 5,000,000 bytes, counting
    ``150 + len(query) + len(document)`` per document).
    """

    backend_scale = Scale.PROBABILITY

    def __init__(
        self,
        model: str = "zerank-2",
        *,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        latency: Literal["fast", "slow"] | None = None,
        timeout: float | None = None,
        max_retries: int = 2,
        max_batch_size: int = 256,
        max_bytes: int = MAX_REQUEST_BYTES,
        max_concurrency: int = 4,
        client: ZeroEntropy | None = None,
        async_client: AsyncZeroEntropy | None = None,
    ) -> None:
        super().__init__()
        if latency not in (None, "fast", "slow"):
            raise ConfigurationError(f"latency must be 'fast', 'slow' or None, got {latency!r}")
        if not 0 < max_bytes <= MAX_REQUEST_BYTES:
            raise ConfigurationError(
                f"max_bytes must be in (0, {MAX_REQUEST_BYTES}], got {max_bytes}"
            )
        if max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if isinstance(api_key, str):
            api_key = SecretStr(api_key)
        if api_key is None and "ZEROENTROPY_API_KEY" in os.environ:
            api_key = SecretStr(os.environ["ZEROENTROPY_API_KEY"])
        if api_key is None and client is None and async_client is None:
            raise ConfigurationError(
                "no ZeroEntropy API key: pass api_key=... or set ZEROENTROPY_API_KEY"
            )
        self.model = model
        self.latency = latency
        self.max_batch_size = max_batch_size
        self.max_bytes = max_bytes
        self.max_concurrency = max_concurrency
        self._api_key = api_key
        self._base_url = base_url or os.environ.get("ZEROENTROPY_BASE_URL") or None
        self._timeout = timeout
        self._max_retries = max_retries
        self._client = client
        self._user_async_client = async_client
        self._async_clients: PerLoop[AsyncZeroEntropy] = PerLoop(self._new_async_client)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self._base_url!r})"

    def _client_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"max_retries": self._max_retries}
        if self._api_key is not None:
            options["api_key"] = self._api_key.get_secret_value()
        if self._base_url is not None:
            options["base_url"] = self._base_url
        if self._timeout is not None:
            options["timeout"] = self._timeout
        return options

    @property
    def client(self) -> ZeroEntropy:
        """The sync SDK client, created on first use."""
        if self._client is None:
            try:
                from zeroentropy import ZeroEntropy
            except ImportError as exc:  # pragma: no cover - zeroentropy is a core dependency
                raise MissingDependencyError("zeroentropy", "all") from exc
            self._client = ZeroEntropy(**self._client_options())
        return self._client

    @property
    def async_client(self) -> AsyncZeroEntropy:
        """The async SDK client: the one passed in, else one per event loop."""
        if self._user_async_client is not None:
            return self._user_async_client
        return self._async_clients.get()

    def _new_async_client(self) -> AsyncZeroEntropy:
        try:
            from zeroentropy import AsyncZeroEntropy
        except ImportError as exc:  # pragma: no cover
            raise MissingDependencyError("zeroentropy", "all") from exc
        return AsyncZeroEntropy(**self._client_options())

    def _params(self, query: str, texts: list[str]) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.model, "query": query, "documents": texts}
        if self.latency is not None:
            params["latency"] = self.latency
        return params

    def _request(self, query: str, texts: list[str]) -> BatchResult:
        response = self.client.models.rerank(**self._params(query, texts))
        return _batch_result(response)

    async def _arequest(self, query: str, texts: list[str]) -> BatchResult:
        response = await self.async_client.models.rerank(**self._params(query, texts))
        return _batch_result(response)


def _batch_result(response: Any) -> BatchResult:
    results = getattr(response, "results", None) or []
    return BatchResult(
        scores=[(getattr(r, "index", None), getattr(r, "relevance_score", None)) for r in results],
        total_tokens=getattr(response, "total_tokens", None),
    )
