"""The one rule for hiding credentials in text the package shows: reprs, errors, logs.

A credential can reach text three ways: as the userinfo of a URL
(``https://user:token@host/``), as a query parameter (``?api_key=…``, but also
``?subscription-key=…``, ``?code=…``, ``?X-Amz-Security-Token=…``: gateways
name them as they like), or as an API key value itself. :func:`redact`
replaces all three with ``***``; :func:`redact_url` does the same for one URL.
Query parameters and request headers are judged by an allow-list, not a
deny-list: every value is a secret unless its name is on
:data:`HARMLESS_PARAMETERS` / :data:`HARMLESS_HEADERS`.
API keys become known to the rule when a scorer is built with one
(:func:`register_secret`), so a key echoed back by a server or an SDK error is
hidden too. :func:`install_log_filter` applies the rule to every record of this
package's loggers and of the HTTP clients it drives (``httpx``, ``httpcore``,
the ``zeroentropy`` SDK), which log request URLs at INFO and DEBUG.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import unquote_plus, urlsplit, urlunsplit

__all__ = [
    "HARMLESS_HEADERS",
    "HARMLESS_PARAMETERS",
    "MASK",
    "RedactingFilter",
    "deployment_url",
    "has_credentials",
    "has_userinfo",
    "install_log_filter",
    "is_secret_header",
    "redact",
    "redact_url",
    "register_secret",
    "register_url_secrets",
    "without_credentials",
]

MASK = "***"

#: Query-string parameter names whose values are shown and kept (compared
#: lower-case); every other parameter's value is treated as a credential.
HARMLESS_PARAMETERS = frozenset(
    {
        "api-version",
        "api_version",
        "version",
        "v",
        "model",
        "deployment",
        "region",
        "format",
        "lang",
        "language",
        "locale",
        "raw_scores",
        "return_documents",
        "top_n",
        "timeout",
    }
)

#: Request header names whose values may be shown and pickled (compared
#: lower-case); every other header's value is treated as a credential.
HARMLESS_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "content-type",
        "user-agent",
        "x-request-id",
        "x-correlation-id",
    }
)

# userinfo: everything between "scheme://" and the last "@" before the host's end.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s?#]+)@")
# Any "?name=value" / "&name=value" (";" too): the name decides in _mask_parameter.
_PARAMETER = re.compile(r"(?P<name>[?&;](?P<key>[A-Za-z0-9_.~%+\[\]-]+)=)(?P<value>[^&;#\s'\"]*)")
_BEARER = re.compile(r"(?P<scheme>\b(?:Bearer|Basic|Token)\s+)(?P<value>[A-Za-z0-9._~+/=-]+)")

# Secrets shorter than this are too likely to be ordinary words to be masked everywhere.
_MIN_SECRET_LENGTH = 6
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Make :func:`redact` hide ``value`` wherever it appears (an API key, a token)."""
    if value and len(value) >= _MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(value)


def register_url_secrets(url: str | None) -> None:
    """Register the password and secret query values a URL carries (see :func:`register_secret`)."""
    if not url:
        return
    try:
        parts = urlsplit(url)
        register_secret(parts.password)
    except ValueError:
        return
    for pair in parts.query.split("&"):
        if _is_secret_parameter(pair):
            register_secret(unquote_plus(pair.partition("=")[2]))
            register_secret(pair.partition("=")[2])


def redact(text: str) -> str:
    """``text`` with URL userinfo, secret query parameters, bearer tokens and known keys masked."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _PARAMETER.sub(_mask_parameter, text)
    text = _BEARER.sub(lambda m: f"{m['scheme']}{MASK}", text)
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_url(url: str) -> str:
    """``url`` without credentials: userinfo becomes ``***`` and so do secret parameters.

    What remains (scheme, host, port, path) names the deployment.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = _PARAMETER.sub(_mask_parameter, f"?{parts.query}")[1:]
    return redact(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def deployment_url(url: str) -> str:
    """``url`` with credentials removed, not masked: what identifies a deployment.

    Two URLs that differ only in their credentials name the same server.
    """
    cleaned = without_credentials(url)
    try:
        parts = urlsplit(cleaned)
    except ValueError:  # without_credentials could not split it either: already redacted
        return cleaned
    return urlunsplit((parts.scheme, parts.netloc.lower(), parts.path, parts.query, ""))


def has_credentials(url: str) -> bool:
    """True when ``url`` carries userinfo or a query parameter not on the allow-list."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url) != url
    return "@" in parts.netloc or any(_is_secret_parameter(p) for p in parts.query.split("&"))


def has_userinfo(url: str) -> bool:
    """True when ``url`` carries a user name or password (``https://user:pw@host/``).

    httpx sends such userinfo as HTTP Basic auth, in the ``Authorization``
    header, replacing any header of that name the client was given.
    """
    try:
        parts = urlsplit(url)
        return bool(parts.username or parts.password)
    except ValueError:
        return False


def without_credentials(url: str) -> str:
    """``url`` without userinfo and query parameters not on the allow-list (not masked)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    netloc = parts.netloc.rpartition("@")[2]
    pairs = [p for p in parts.query.split("&") if p and not _is_secret_parameter(p)]
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(pairs), parts.fragment))


def is_secret_header(name: str) -> bool:
    """True for a header whose value may be a credential: any not on :data:`HARMLESS_HEADERS`."""
    return name.strip().lower() not in HARMLESS_HEADERS


def _is_harmless_parameter(name: str) -> bool:
    return unquote_plus(name).lower() in HARMLESS_PARAMETERS


def _is_secret_parameter(pair: str) -> bool:
    name, _, value = pair.partition("=")
    return bool(name or value) and not _is_harmless_parameter(name)


def _mask_parameter(match: re.Match[str]) -> str:
    if _is_harmless_parameter(match["key"]) or not match["value"]:
        return match[0]
    return f"{match['name']}{MASK}"


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (and traceback text) through :func:`redact`.

    The message is formatted once here, so a URL passed as an argument
    (``log.info("HTTP Request: %s", url)``) is masked too. The SDK's DEBUG
    dump of request options is dropped: it holds the documents' text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's to report
            return True
        if record.name == "zeroentropy._base_client" and message.startswith("Request options:"):
            # The SDK logs the request's JSON at DEBUG: the query and every document.
            message = "Request options: (omitted: they hold the query and the documents)"
        record.msg = redact(message)
        record.args = None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


#: Loggers that may carry a URL or a key. A logger's filter applies only to
#: records created on that very logger, so the HTTP clients' module loggers are
#: listed one by one.
LOGGERS = (
    "zerank_core",
    "langchain_zerank",
    "llamaindex_zerank",
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "zeroentropy",
    "zeroentropy._base_client",
    "zeroentropy._response",
)

_FILTER = RedactingFilter()


def install_log_filter(*names: str) -> None:
    """Attach the redacting filter to :data:`LOGGERS` and to ``names`` (idempotent)."""
    for name in (*LOGGERS, *names):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


install_log_filter()
