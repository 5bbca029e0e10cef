"""Hosted ZeroEntropy API backend, through the official ``zeroentropy`` SDK.

Requests run through the scorer's engine (:mod:`zerank_core.scorers.engine`):
one concurrency bound, client-side rate limits, 429s waited out until the
deadline. Retries compose with the SDK's as follows: the clients this scorer
builds get ``max_retries=0``, so the engine is the only retry layer and
``max_retries`` here counts engine retries of transient failures (connection
errors, timeouts, 408/409/5xx, unreadable responses). Clients passed in keep
their own ``max_retries``; the SDK then retries inside each engine attempt.
An SDK error that remains becomes a :class:`~zerank_core.errors.BackendError`
naming the batch, the SDK's exception kept as its ``__cause__``.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import SecretStr

from zerank_core._version import user_agent as default_user_agent
from zerank_core.errors import ConfigurationError, MissingDependencyError
from zerank_core.redaction import (
    deployment_url,
    has_credentials,
    has_userinfo,
    redact_url,
    register_secret,
    register_url_secrets,
    without_credentials,
)
from zerank_core.scorers.base import (
    INSTRUCTION_CONVENTION,
    BatchedScorer,
    BatchResult,
    MalformedResponse,
    PerLoop,
    Scale,
    check_count,
    check_timeout,
    check_url,
    engine_settings,
    fingerprint,
    json_body,
    rebuild,
    results_from_json,
)
from zerank_core.scorers.engine import DEFAULT_DEADLINE_S, Failure, parse_retry_after
from zerank_core.scorers.tls import shared_ssl_context

if TYPE_CHECKING:
    from zeroentropy import AsyncZeroEntropy, ZeroEntropy

__all__ = ["ZeroEntropyScorer"]

MAX_REQUEST_BYTES = 5_000_000
RERANK_PATH = "/models/rerank"


class ZeroEntropyScorer(BatchedScorer):
    """Score with ZeroEntropy's ``/models/rerank`` (hosted or self-deployed).

    ``api_key`` defaults to ``ZEROENTROPY_API_KEY`` and ``base_url`` to
    ``ZEROENTROPY_BASE_URL`` (then the SDK's default); a base URL with userinfo
    (``https://user:pw@host/v1``) is refused, since httpx would send it as
    Basic auth in place of the key. Pass ``client`` /
    ``async_client`` to reuse configured SDK clients; otherwise they are
    created lazily, so an async client is bound to the loop that first uses it.
    Requests hold at most ``max_batch_size`` documents and stay under
    ``max_bytes`` (ZeroEntropy's per-request limit is 5,000,000 bytes, counting
    ``150 + len(query) + len(document)`` per document).

    ``max_concurrency`` bounds the requests in flight for this scorer over all
    its callers; ``requests_per_minute``, ``bytes_per_minute`` and
    ``tokens_per_minute`` set the account's limits, kept on the client side;
    ``deadline`` is how long one call may keep waiting out 429s and retrying
    (seconds; ``None``: no limit). ``close()`` / ``aclose()`` or a ``with`` /
    ``async with`` block close the clients the scorer created.

    Requests from the clients built here carry ``user_agent`` as their
    User-Agent (default ``zerank-gate/<version>``; the adapters add their
    framework); clients passed in keep their own headers.
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
        max_concurrency: int = 16,
        requests_per_minute: float | None = None,
        bytes_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        deadline: float | None = DEFAULT_DEADLINE_S,
        client: ZeroEntropy | None = None,
        async_client: AsyncZeroEntropy | None = None,
        user_agent: str | None = None,
    ) -> None:
        check_count(max_retries, "max_retries", 0)
        super().__init__(
            max_concurrency=max_concurrency,
            max_retries=max_retries,
            requests_per_minute=requests_per_minute,
            bytes_per_minute=bytes_per_minute,
            tokens_per_minute=tokens_per_minute,
            deadline=deadline,
        )
        if latency not in (None, "fast", "slow"):
            raise ConfigurationError(f"latency must be 'fast', 'slow' or None, got {latency!r}")
        if not 0 < max_bytes <= MAX_REQUEST_BYTES:
            raise ConfigurationError(
                f"max_bytes must be in (0, {MAX_REQUEST_BYTES}], got {max_bytes}"
            )
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int):
            raise ConfigurationError(
                f"max_batch_size must be an integer >= 1, got {max_batch_size!r}"
            )
        if max_batch_size < 1:
            raise ConfigurationError(f"max_batch_size must be >= 1, got {max_batch_size}")
        check_timeout(timeout)
        if user_agent is not None and (not isinstance(user_agent, str) or not user_agent.strip()):
            raise ConfigurationError(f"user_agent must be a non-empty string, got {user_agent!r}")
        self._base_url = base_url or os.environ.get("ZEROENTROPY_BASE_URL") or None
        if self._base_url is not None:
            check_url(self._base_url, "base_url")
            register_url_secrets(self._base_url)
            _refuse_userinfo(self._base_url, "base_url" if base_url else "ZEROENTROPY_BASE_URL")
            _refuse_query(self._base_url, "base_url" if base_url else "ZEROENTROPY_BASE_URL")
        for given in (client, async_client):
            if given is not None:
                where = f"the base_url of the {type(given).__name__} client passed in"
                _refuse_userinfo(str(given.base_url), where)
        if isinstance(api_key, str):
            api_key = SecretStr(api_key)
        if api_key is None and "ZEROENTROPY_API_KEY" in os.environ:
            api_key = SecretStr(os.environ["ZEROENTROPY_API_KEY"])
        if api_key is not None:
            if not api_key.get_secret_value().strip():
                raise ConfigurationError(
                    "the ZeroEntropy API key is empty: pass api_key=... or set ZEROENTROPY_API_KEY"
                )
            register_secret(api_key.get_secret_value())
        if api_key is None and client is None and async_client is None:
            raise ConfigurationError(
                "no ZeroEntropy API key: pass api_key=... or set ZEROENTROPY_API_KEY"
            )
        self.model = model
        self.latency = latency
        self.user_agent = user_agent or default_user_agent()
        self.max_batch_size = max_batch_size
        self.max_bytes = max_bytes
        self._api_key = api_key
        self._timeout = timeout
        self._lock = threading.Lock()
        self._client = client
        self._owns_client = client is None
        self._user_async_client = async_client
        self._async_clients: PerLoop[AsyncZeroEntropy] = PerLoop(
            self._new_async_client, _close_async
        )

    def __repr__(self) -> str:
        base_url = None if self._base_url is None else redact_url(self._base_url)
        return f"{type(self).__name__}(model={self.model!r}, base_url={base_url!r})"

    @property
    def cache_identity(self) -> str:
        """Every setting that changes this scorer's scores, without credentials.

        The model, the deployment (base URL without credentials; ``"default"``
        for the SDK's), the latency mode and the instruction convention.
        """
        base_url = self._base_url
        for client in (self._client, self._user_async_client):
            if base_url is None and client is not None:
                base_url = str(client.base_url)
        return fingerprint(
            "hosted",
            model=self.model,
            url=deployment_url(base_url) if base_url else "default",
            latency=self.latency,
            instruction=INSTRUCTION_CONVENTION,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # A pickle keeps the settings, never the key or a client: the rebuilt
        # scorer reads ZEROENTROPY_API_KEY again, and ZEROENTROPY_BASE_URL when
        # this base URL carried secret parameters and it names the same deployment.
        base_url = self._base_url
        for client in (self._client, self._user_async_client):
            if base_url is None and client is not None:
                base_url = str(client.base_url)
        if base_url is not None:
            from_env = os.environ.get("ZEROENTROPY_BASE_URL")
            had_credentials = has_credentials(base_url)
            base_url = without_credentials(base_url)
            if from_env and had_credentials and without_credentials(from_env) == base_url:
                base_url = None
        settings = {
            "model": self.model,
            "base_url": base_url,
            "latency": self.latency,
            "timeout": self._timeout,
            "max_batch_size": self.max_batch_size,
            "max_bytes": self.max_bytes,
            "user_agent": self.user_agent,
            **engine_settings(self),
        }
        return (rebuild, (type(self), settings))

    def _client_options(self) -> dict[str, Any]:
        # The engine is the retry layer for clients built here (module docstring).
        options: dict[str, Any] = {
            "max_retries": 0,
            "default_headers": {"User-Agent": self.user_agent},
        }
        if self._api_key is not None:
            options["api_key"] = self._api_key.get_secret_value()
        if self._base_url is not None:
            options["base_url"] = self._base_url
        if self._timeout is not None:
            options["timeout"] = self._timeout
        return options

    @property
    def client(self) -> ZeroEntropy:
        """The sync SDK client, created on first use (once, under a lock)."""
        with self._lock:
            if self._client is None:
                try:
                    from zeroentropy import DefaultHttpxClient, ZeroEntropy
                except ImportError as exc:  # pragma: no cover - zeroentropy is a core dependency
                    raise MissingDependencyError("zeroentropy", "all") from exc
                self._client = ZeroEntropy(
                    **self._client_options(),
                    http_client=DefaultHttpxClient(
                        verify=shared_ssl_context(), follow_redirects=False
                    ),
                )
            return self._client

    async def _async_client(self) -> AsyncZeroEntropy:
        """The async SDK client: the one passed in, else one per event loop."""
        if self._user_async_client is not None:
            return self._user_async_client
        return await self._async_clients.get()

    def _take_client(self) -> ZeroEntropy | None:
        with self._lock:
            client = self._client if self._owns_client else None
            if client is not None:
                self._client = None
        return client

    def _failure(self, exc: BaseException) -> Failure | None:
        import zeroentropy

        if isinstance(exc, zeroentropy.RateLimitError):
            retry_after = parse_retry_after(exc.response.headers.get("retry-after"))
            return Failure("rate_limited", retry_after)
        if isinstance(exc, zeroentropy.APIConnectionError | zeroentropy.APIResponseValidationError):
            return Failure("transient")
        if isinstance(exc, zeroentropy.APIStatusError) and (
            exc.status_code in (408, 409) or exc.status_code >= 500
        ):
            return Failure("transient")
        return None

    def _new_async_client(self) -> AsyncZeroEntropy:
        try:
            from zeroentropy import AsyncZeroEntropy, DefaultAsyncHttpxClient
        except ImportError as exc:  # pragma: no cover
            raise MissingDependencyError("zeroentropy", "all") from exc
        # The SDK's own HTTP client schedules its close on whatever loop runs
        # when it is garbage-collected: once its loop has gone (asyncio.run
        # again), that prints "Task exception was never retrieved ... Event loop
        # is closed". Its plain variant, with the same defaults, does not.
        return AsyncZeroEntropy(
            **self._client_options(),
            http_client=DefaultAsyncHttpxClient(
                verify=shared_ssl_context(), follow_redirects=False
            ),
        )

    def _params(self, query: str, texts: list[str]) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.model, "query": query, "documents": texts}
        if self.latency is not None:
            params["latency"] = self.latency
        return params

    # The raw body, not the SDK's parsed model: the SDK casts values before
    # anything checks them (``"relevance_score": true`` would read as 1.0).
    # ``post(..., cast_to=httpx.Response)`` is ``models.rerank`` without that
    # model and without its params transform, a typing walk over every
    # document that was most of the client's CPU per request.
    def _request(self, query: str, texts: list[str]) -> BatchResult:
        response = self.client.post(
            RERANK_PATH, body=self._params(query, texts), cast_to=httpx.Response
        )
        return _batch_result(response)

    async def _arequest(self, query: str, texts: list[str]) -> BatchResult:
        client = await self._async_client()
        response = await client.post(
            RERANK_PATH, body=self._params(query, texts), cast_to=httpx.Response
        )
        return _batch_result(response)


def _refuse_userinfo(url: str, where: str) -> None:
    """Refuse a base URL with userinfo: it would replace the API key on the wire.

    The SDK always sends the key as ``Authorization: Bearer``, and httpx
    replaces that header with HTTP Basic auth built from a URL's userinfo, so
    the API would get the URL's credential instead of the key, silently.
    """
    if has_userinfo(url):
        raise ConfigurationError(
            f"{where} carries user:password@, which would be sent as HTTP basic auth in "
            "place of the API key (the ZeroEntropy API authenticates with the key, as a "
            f"bearer token, and the one Authorization header holds one credential): remove "
            f"user:password@ from {where} and give the key as api_key or ZEROENTROPY_API_KEY"
        )


def _refuse_query(url: str, where: str) -> None:
    """Refuse a base URL with a query string: the SDK would put it before the request path.

    The SDK appends ``/models/rerank`` to the base URL's raw path, query
    included, so ``https://host/v1?region=eu`` would be sent to
    ``/v1?region=eu/models/rerank`` (a 404 at best).
    """
    if httpx.URL(url).query:
        raise ConfigurationError(
            f"{where} carries a query string ({redact_url(url)!r}), which the ZeroEntropy SDK "
            "would send before the request path (…?…/models/rerank): remove it; the API key "
            "goes in api_key or ZEROENTROPY_API_KEY"
        )


async def _close_async(client: AsyncZeroEntropy) -> None:
    await client.close()


def _batch_result(response: httpx.Response) -> BatchResult:
    """The scores of one ``/models/rerank`` answer, read from its JSON as sent."""
    where = f"the ZeroEntropy API ({redact_url(str(response.request.url))})"
    payload = json_body(response.content, where=where)
    if not isinstance(payload, dict):
        raise MalformedResponse(
            f"{where} returned an unexpected body shape: expected an object with 'results', "
            f"got {type(payload).__name__}"
        )
    return results_from_json(payload, where=where)
