"""Self-hosted rerank servers over HTTP (vLLM, llama.cpp, Infinity, TEI).

Two request shapes cover them: ``api="rerank"`` is the Cohere/Jina-style
``{model, query, documents, top_n}`` → ``results[{index, relevance_score}]``
served by vLLM, llama.cpp ``llama-server --reranking`` and Infinity;
``api="tei"`` is Text Embeddings Inference's ``{query, texts, raw_scores}`` →
``[{index, score}]``. ``scale`` says what the server's numbers are, and the
base class converts them to zerank's calibrated probability.

Requests run through the scorer's engine (:mod:`zerank_core.scorers.engine`),
the only retry layer here: 429s wait out ``Retry-After`` and are resubmitted
until the deadline; connection errors, timeouts, 408/409/5xx and unreadable
responses are resubmitted up to ``max_retries`` times. What still fails
becomes a :class:`~zerank_core.errors.BackendError` naming the batch, with
httpx's exception as its ``__cause__``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any, Literal

import httpx
from pydantic import SecretStr

from zerank_core._version import user_agent as default_user_agent
from zerank_core.errors import ConfigurationError
from zerank_core.redaction import (
    deployment_url,
    has_credentials,
    has_userinfo,
    is_secret_header,
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

__all__ = ["RerankServerScorer"]


class RerankServerScorer(BatchedScorer):
    """Score with a rerank server you run yourself.

    ``url`` is the full endpoint, e.g. ``http://localhost:8000/v1/rerank``
    (default ``ZERANK_SERVER_URL``). ``scale`` is what the server returns
    (default ``ZERANK_SERVER_SCALE`` or ``"probability"``); which scale
    fits which server: docs/guides/backends.md. ``api_key`` is sent as a bearer token
    (default ``ZERANK_SERVER_API_KEY``); userinfo in the URL
    (``https://user:pw@host/v1/rerank``, for a gateway with basic auth) is sent
    as HTTP Basic auth. Both go in the one ``Authorization`` header, so a URL
    with userinfo and a key (or an ``Authorization`` in ``headers``) is a
    :class:`~zerank_core.errors.ConfigurationError`: keep one. ``headers``
    and ``extra_body`` are added to every request (e.g. ``{"raw_scores":
    True}`` for Infinity). Requests carry ``user_agent`` as their User-Agent
    (default ``zerank-gate/<version>``; the adapters add their framework)
    unless ``headers`` names one.

    ``max_concurrency`` bounds the requests in flight for this scorer over all
    its callers (set it to the server's parallel slots or more);
    ``requests_per_minute`` / ``bytes_per_minute`` / ``tokens_per_minute`` are
    kept on the client side; ``deadline`` is how long one call may keep
    retrying (seconds; ``None``: no limit). ``close()`` / ``aclose()`` or a
    ``with`` / ``async with`` block close the scorer's HTTP clients.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        model: str | None = None,
        scale: Scale | str | None = None,
        api: Literal["rerank", "tei"] = "rerank",
        api_key: str | SecretStr | None = None,
        headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        max_batch_size: int = 32,
        max_concurrency: int = 16,
        timeout: float = 60.0,
        max_retries: int = 2,
        requests_per_minute: float | None = None,
        bytes_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        deadline: float | None = DEFAULT_DEADLINE_S,
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
        url_source = "url"
        if not url:
            url, url_source = os.environ.get("ZERANK_SERVER_URL"), "ZERANK_SERVER_URL"
        if not url:
            raise ConfigurationError("no rerank server URL: pass url=... or set ZERANK_SERVER_URL")
        url = check_url(url)
        scale = scale or os.environ.get("ZERANK_SERVER_SCALE") or Scale.PROBABILITY
        try:
            self.backend_scale = Scale(scale)
        except ValueError:
            choices = ", ".join(s.value for s in Scale)
            raise ConfigurationError(f"scale must be one of {choices}; got {scale!r}") from None
        if api not in ("rerank", "tei"):
            raise ConfigurationError(f"api must be 'rerank' or 'tei', got {api!r}")
        if max_batch_size < 1:
            raise ConfigurationError(f"max_batch_size must be >= 1, got {max_batch_size}")
        check_timeout(timeout)
        if user_agent is not None and (not isinstance(user_agent, str) or not user_agent.strip()):
            raise ConfigurationError(f"user_agent must be a non-empty string, got {user_agent!r}")
        if isinstance(api_key, str):
            api_key = SecretStr(api_key)
        key_source = "api_key"
        if api_key is None and os.environ.get("ZERANK_SERVER_API_KEY"):
            api_key = SecretStr(os.environ["ZERANK_SERVER_API_KEY"])
            key_source = "ZERANK_SERVER_API_KEY"
        if api_key is not None:
            if not api_key.get_secret_value().strip():
                raise ConfigurationError("api_key is empty: pass a key, or None for no key")
            register_secret(api_key.get_secret_value())
        register_url_secrets(url)
        check_one_credential(
            url,
            url_source,
            key_source if api_key is not None else None,
            next((k for k in headers or {} if k.lower() == "authorization"), None),
        )
        # The URL may carry credentials (userinfo, a gateway's key parameter):
        # kept as a secret, shown and pickled only without them (``url``).
        self._url = SecretStr(url)
        self.model = model or os.environ.get("ZERANK_SERVER_MODEL") or "zerank-2"
        self.api = api
        self.max_batch_size = max_batch_size
        self.timeout = timeout
        self.user_agent = user_agent or default_user_agent()
        self._api_key = api_key
        # Every header value but the harmless ones (User-Agent, Accept, ...) may
        # be a credential, whatever its name: hidden in vars(), errors and pickles.
        self._headers = {name: SecretStr(value) for name, value in (headers or {}).items()}
        for name, value in (headers or {}).items():
            if is_secret_header(name):
                register_secret(value)
        self._extra_body = dict(extra_body or {})
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._async_clients = PerLoop(self._new_async_client, _close_async)

    @property
    def url(self) -> str:
        """The endpoint, its credentials masked (``***``)."""
        return redact_url(self._url.get_secret_value())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(url={self.url!r}, model={self.model!r}, "
            f"scale={self.backend_scale.value!r}, api={self.api!r})"
        )

    @property
    def cache_identity(self) -> str:
        """Every setting that changes this scorer's scores, without credentials.

        The deployment (URL without userinfo or secret parameters), request
        shape, model, the server's scale and extra request fields, and the
        instruction convention: change any and cached scores no longer apply.
        """
        return fingerprint(
            "server",
            url=deployment_url(self._url.get_secret_value()),
            api=self.api,
            model=self.model,
            scale=self.backend_scale.value,
            extra_body=self._extra_body,
            instruction=INSTRUCTION_CONVENTION,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # A pickle keeps the settings, never a credential or a connection; see
        # _unpickle for where the rebuilt scorer finds them again.
        settings: dict[str, Any] = {
            "url": without_credentials(self._url.get_secret_value()),
            "model": self.model,
            "scale": self.backend_scale.value,
            "api": self.api,
            "headers": {
                name: value.get_secret_value()
                for name, value in self._headers.items()
                if not is_secret_header(name)
            },
            "extra_body": self._extra_body,
            "max_batch_size": self.max_batch_size,
            "timeout": self.timeout,
            "user_agent": self.user_agent,
            **engine_settings(self),
        }
        had_credentials = has_credentials(self._url.get_secret_value())
        return (_unpickle, (type(self), settings, had_credentials))

    def _all_headers(self) -> dict[str, str]:
        headers = {"User-Agent": self.user_agent}
        # A User-Agent in headers, in any spelling, replaces the package's.
        if any(name.lower() == "user-agent" for name in self._headers):
            headers = {}
        headers.update({name: value.get_secret_value() for name, value in self._headers.items()})
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        return headers

    @property
    def client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    headers=self._all_headers(), timeout=self.timeout, verify=shared_ssl_context()
                )
            return self._client

    def _new_async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            headers=self._all_headers(), timeout=self.timeout, verify=shared_ssl_context()
        )

    def _take_client(self) -> httpx.Client | None:
        with self._lock:
            client, self._client = self._client, None
        return client

    def _failure(self, exc: BaseException) -> Failure | None:
        if isinstance(exc, httpx.HTTPStatusError):
            status = exc.response.status_code
            if status == 429:
                retry_after = parse_retry_after(exc.response.headers.get("retry-after"))
                return Failure("rate_limited", retry_after)
            if status in (408, 409) or status >= 500:
                return Failure("transient")
            return None
        if isinstance(exc, httpx.TransportError):
            return Failure("transient")
        return None

    def _body(self, query: str, texts: list[str]) -> dict[str, Any]:
        if self.api == "tei":
            body: dict[str, Any] = {"query": query, "texts": texts}
        else:
            body = {"model": self.model, "query": query, "documents": texts, "top_n": len(texts)}
        body.update(self._extra_body)
        return body

    def _request(self, query: str, texts: list[str]) -> BatchResult:
        response = self.client.post(self._url.get_secret_value(), json=self._body(query, texts))
        response.raise_for_status()
        return self._parse(response)

    async def _arequest(self, query: str, texts: list[str]) -> BatchResult:
        client = await self._async_clients.get()
        response = await client.post(self._url.get_secret_value(), json=self._body(query, texts))
        response.raise_for_status()
        return self._parse(response)

    def _parse(self, response: httpx.Response) -> BatchResult:
        where = self.url
        payload = json_body(response.content, where=where)
        if self.api == "tei":
            return results_from_json(payload, key="score", where=where)
        if not isinstance(payload, dict):
            raise MalformedResponse(
                f"{where} returned an unexpected body shape: expected an object with "
                f"'results', got {type(payload).__name__}"
            )
        return results_from_json(payload, where=where)


def _unpickle(
    cls: type[RerankServerScorer], settings: dict[str, Any], had_credentials: bool
) -> RerankServerScorer:
    """Rebuild a pickled scorer with the credentials of the process that loads it.

    It reads ``ZERANK_SERVER_API_KEY`` again and, when the original URL carried
    credentials, takes ``ZERANK_SERVER_URL`` if it names the same server. A
    URL that had none stays so: the variable's userinfo would swap the bearer
    key the original sent for Basic auth.
    """
    from_env = os.environ.get("ZERANK_SERVER_URL")
    if had_credentials and from_env and without_credentials(from_env) == settings["url"]:
        settings = {**settings, "url": None}
    return rebuild(cls, settings)


def check_one_credential(
    url: str, url_name: str, key_name: str | None, header: str | None = None
) -> None:
    """Refuse two credentials for a rerank server's one ``Authorization`` header.

    httpx sends a URL's userinfo as HTTP Basic auth, replacing whatever
    ``Authorization`` header the client carries, and the API key's bearer
    header replaces one passed in ``headers``: the server would get one of
    them, and the caller would not be told which. ``url_name`` and
    ``key_name`` say where the URL and the key came from (an argument, a
    flag or an environment variable; ``key_name`` is ``None`` without a key),
    so the message names each source and never a value.
    """
    given = []
    if has_userinfo(url):
        what = f"the user:password in {url_name} (HTTP basic auth)"
        given.append((what, f"remove user:password@ from {url_name}"))
    if key_name is not None:
        given.append((f"the API key from {key_name} (a bearer token)", _drop(key_name)))
    if header is not None:
        given.append((f"headers[{header!r}]", f"remove {header!r} from headers"))
    if len(given) > 1:
        raise ConfigurationError(
            f"the rerank server would get {('two', 'three')[len(given) - 2]} credentials for "
            "its one Authorization header: "
            + " and ".join(what for what, _ in given)
            + "; only one of them would be sent. Keep one: "
            + ", or ".join(fix for _, fix in given)
        )


def _drop(name: str) -> str:
    return f"unset {name}" if name.isupper() else f"leave out {name}"


async def _close_async(client: httpx.AsyncClient) -> None:
    await client.aclose()
