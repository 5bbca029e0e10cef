"""The package's own exceptions, in one small tree.

    ZeRankError                            ``criterion``: the criterion being scored, if any
    ├── ConfigurationError (ValueError)    bad argument, input or missing setting
    ├── MissingDependencyError (ImportError)  an optional extra is not installed
    ├── BackendError                       a request for one batch failed: HTTP status,
    │   │                                  timeout, connection or SDK error
    │   ├── BatchesFailedError             several batches of one call failed after
    │   │                                  their retries; the others were scored
    │   └── InvalidResponseError           a backend answered, but not with a valid
    │       │                              score for every input
    │       └── ScorerOutputError          a scorer's call returned the wrong number
    │                                      of scores, or a value that is no number
    └── DocumentError (ValueError)         an input document cannot be read

Errors of the ``zeroentropy`` SDK and of ``httpx`` raised while scoring a batch
become :class:`BackendError` (or :class:`InvalidResponseError` for a body that
cannot be read), with the original kept as ``__cause__``: one ``except
ZeRankError`` catches every expected failure. Every message goes through
:func:`zerank_core.redaction.redact`, so no credential is ever in one.
"""

from __future__ import annotations

import sys
from typing import Any

from zerank_core.redaction import redact, redact_url

__all__ = [
    "BackendError",
    "BatchesFailedError",
    "ConfigurationError",
    "DocumentError",
    "InvalidResponseError",
    "MissingDependencyError",
    "ScorerOutputError",
    "ZeRankError",
    "as_backend_error",
]


class ZeRankError(Exception):
    """Base class of every error this package raises itself.

    ``criterion`` is set (by :meth:`in_criterion`) when the error happened
    while scoring one criterion of a page gate; the message then names it.
    """

    criterion: str | None = None

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))

    def _detail(self) -> str:
        return super().__str__()

    def __str__(self) -> str:
        detail = self._detail()
        if self.criterion is None:
            return detail
        return f"criterion {self.criterion!r}, {detail}"

    def in_criterion(self, criterion: str) -> ZeRankError:
        """Name the criterion whose scoring failed (kept if one is already named)."""
        if self.criterion is None:
            self.criterion = criterion
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # The default rebuilds with ``cls(*args)``, which keyword-only
        # parameters break; restore the arguments and attributes as they are.
        return (_restore, (type(self), self.args, dict(self.__dict__)))


def _restore(
    cls: type[ZeRankError], args: tuple[object, ...], state: dict[str, Any]
) -> ZeRankError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class ConfigurationError(ZeRankError, ValueError):
    """An argument, input or setting is invalid or missing; the message names it."""


class MissingDependencyError(ZeRankError, ImportError):
    """An optional dependency is missing; the message gives the install command."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is required for this feature: pip install 'zerank-gate[{extra}]'"
        )
        self.package = package
        self.extra = extra


class BackendError(ZeRankError):
    """A request for one batch failed before a valid answer came back.

    ``batch`` is the zero-based number of the failing request among those the
    scorer planned for one call (``None`` when unknown), ``batch_size`` its
    number of texts, ``status_code`` the HTTP status when there was one. The
    SDK's or HTTP client's exception is the ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        batch: int | None = None,
        batch_size: int | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.batch = batch
        self.batch_size = batch_size
        self.status_code = status_code

    def _detail(self) -> str:
        message = super()._detail()
        if self.batch is None:
            return message
        return f"batch {self.batch} ({self.batch_size} texts): {message}"


class BatchesFailedError(BackendError):
    """Several requests of one call failed after their retries; every other one was scored.

    ``errors`` holds each failed request's error in batch order (each a
    :class:`BackendError` naming its batch), ``requests`` the call's number of
    requests. The message names every failed batch. ``status_code`` is the
    failures' common HTTP status, if they share one. The first error is the
    ``__cause__``.
    """

    #: How many failed batches the message describes in full; the rest are listed by number.
    DESCRIBED = 10

    def __init__(self, errors: list[BackendError], *, requests: int) -> None:
        statuses = {e.status_code for e in errors}
        super().__init__(
            f"{len(errors)} of {requests} requests failed after their retries",
            status_code=statuses.pop() if len(statuses) == 1 else None,
        )
        self.errors = errors
        self.requests = requests

    @property
    def batches(self) -> list[int | None]:
        """The failed batches' numbers."""
        return [e.batch for e in self.errors]

    def _detail(self) -> str:
        shown = "; ".join(str(e) for e in self.errors[: self.DESCRIBED])
        rest = self.errors[self.DESCRIBED :]
        more = f"; and batches {', '.join(str(e.batch) for e in rest)}" if rest else ""
        done = self.requests - len(self.errors)
        return (
            f"{len(self.errors)} of {self.requests} requests failed after their retries "
            f"(the other {done} were scored): {shown}{more}"
        )


class InvalidResponseError(BackendError):
    """A backend's response does not hold exactly one valid score per input."""

    def __init__(self, message: str, *, batch: int, batch_size: int) -> None:
        super().__init__(message, batch=batch, batch_size=batch_size)


class ScorerOutputError(InvalidResponseError):
    """A scorer's whole call returned the wrong number of scores, or a non-number.

    Raised by :func:`zerank_core.scorers.base.check_scores`, wherever scores
    from any scorer (a backend, a wrapper, your own) are consumed. The whole
    call is at fault, not one batch: ``batch`` is ``None`` and ``batch_size``
    (also ``expected``) the number of texts sent.
    """

    def __init__(self, message: str, *, expected: int) -> None:
        BackendError.__init__(self, message, batch_size=expected)
        self.expected = expected


class DocumentError(ZeRankError, ValueError):
    """A document could not be read (corrupt, encrypted or unsupported)."""


def as_backend_error(exc: BaseException, *, batch: int, batch_size: int) -> BackendError | None:
    """The :class:`BackendError` an HTTP-client or SDK exception stands for, else ``None``.

    The original's own text is redacted in place, since it stays reachable
    as the new error's ``__cause__``.
    """
    import httpx

    status: int | None = None
    sdk = sys.modules.get("zeroentropy")
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        status = response.status_code
        message = (
            f"the server answered HTTP {status} {response.reason_phrase} "
            f"({redact_url(str(exc.request.url))}){_redirect(response)}"
        )
    elif isinstance(exc, httpx.TimeoutException):
        message = f"the request timed out ({_reason(exc)})"
    elif isinstance(exc, httpx.HTTPError):
        message = f"the request failed ({_reason(exc)})"
    elif sdk is not None and isinstance(exc, sdk.APIResponseValidationError):
        _sanitize(exc)
        return InvalidResponseError(
            f"the ZeroEntropy API returned an unexpected body: {exc}",
            batch=batch,
            batch_size=batch_size,
        )
    elif sdk is not None and isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        hint = " (check the API key)" if status in (401, 403) else _redirect(exc.response)
        message = f"the ZeroEntropy API answered HTTP {status}{hint}: {exc}"
    elif sdk is not None and isinstance(exc, sdk.APITimeoutError):
        message = f"the ZeroEntropy API did not answer in time ({exc})"
    elif sdk is not None and isinstance(exc, sdk.APIConnectionError):
        message = f"cannot reach the ZeroEntropy API ({exc})"
    else:
        return None
    _sanitize(exc)
    return BackendError(message, batch=batch, batch_size=batch_size, status_code=status)


def _redirect(response: object) -> str:
    """What to say about a redirect answer: it is not followed, and where it pointed."""
    import httpx

    if not isinstance(response, httpx.Response) or not response.is_redirect:
        return ""
    location = response.headers.get("location") or "nowhere"
    return (
        f", a redirect to {redact_url(location)!r}, which is not followed: document text goes "
        "only to the URL you gave; give the final URL instead"
    )


#: What a network error without a message of its own means.
_NETWORK_REASONS = {
    "ReadError": "the connection was closed or reset while reading the answer",
    "WriteError": "the connection was closed or reset while sending the request",
    "RemoteProtocolError": "the server closed the connection without a complete answer",
    "ConnectError": "the connection could not be opened",
    "CloseError": "the connection failed while closing",
}


def _reason(exc: BaseException) -> str:
    """``ReadError: <message>``, or what the error means when it has no message of its own.

    httpx's errors often carry an empty message (a reset connection raises
    ``ReadError('')``); the message then says what happened instead of ``()``.
    """
    text = str(exc).strip()
    name = type(exc).__name__
    if text:
        return f"{name}: {text}"
    cause = exc.__cause__ or exc.__context__
    while cause is not None and not str(cause).strip():
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return f"{name}: {type(cause).__name__}: {str(cause).strip()}"
    reason = _NETWORK_REASONS.get(name, "no reason given")
    return f"{name}: {reason}"


def _sanitize(exc: BaseException) -> None:
    exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
    message = getattr(exc, "message", None)
    if isinstance(message, str):
        exc.message = redact(message)  # type: ignore[attr-defined]
