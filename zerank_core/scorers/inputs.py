"""Checks of what callers pass in: queries, texts, URLs, timeouts and counts."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

from zerank_core.errors import ConfigurationError

__all__ = [
    "check_count",
    "check_query",
    "check_texts",
    "check_timeout",
    "check_url",
    "is_blank",
    "without_blanks",
]

_SURROGATE = re.compile("[\ud800-\udfff]")
# Whitespace and control characters (NUL included): nothing a model can read.
_BLANK = re.compile(r"[\s\x00-\x1f\x7f-\x9f]*")


def _check_unicode(text: str, name: str) -> None:
    found = _SURROGATE.search(text)
    if found is not None:
        raise ConfigurationError(
            f"{name} holds a lone surrogate ({found.group()!r}) at character {found.start()}: "
            "it is not valid Unicode and cannot be sent; decode the source with "
            "errors='replace' (or fix its encoding)"
        )


def is_blank(text: str) -> bool:
    """True for a text with nothing to read: empty, whitespace or control characters only."""
    return _BLANK.fullmatch(text) is not None


def check_query(query: object) -> str:
    """``query`` if it is a non-blank string of valid Unicode; else an error naming it."""
    if not isinstance(query, str):
        raise ConfigurationError(f"query must be a str, got {type(query).__name__}: {query!r:.80}")
    if is_blank(query):
        raise ConfigurationError(f"query is empty or whitespace only: {query!r:.80}")
    _check_unicode(query, "query")
    return query


def check_texts(texts: object) -> list[str]:
    """``texts`` as a list of valid-Unicode strings; else an error naming the bad item.

    Blank texts pass: scorers give them 0.0 without a model call (see
    :func:`without_blanks`).
    """
    if isinstance(texts, str | bytes):
        raise ConfigurationError(
            f"texts must be a sequence of strings, got a single {type(texts).__name__}"
        )
    if not isinstance(texts, Iterable):
        raise ConfigurationError(
            f"texts must be a sequence of strings, got {type(texts).__name__}: {texts!r:.80}"
        )
    out = list(texts)
    for index, text in enumerate(out):
        if not isinstance(text, str):
            raise ConfigurationError(f"texts[{index}] must be a str, got {type(text).__name__}")
        _check_unicode(text, f"texts[{index}]")
    return out


def check_url(url: object, name: str = "url") -> str:
    """An ``http(s)://host...`` URL that httpx can use; else an error naming it (redacted)."""
    import httpx

    from zerank_core.redaction import redact_url

    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        shown = redact_url(url) if isinstance(url, str) else url
        raise ConfigurationError(f"{name} must start with http:// or https://, got {shown!r}")
    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL as exc:
        raise ConfigurationError(
            f"{name} is not a valid URL: {redact_url(url)!r} ({exc})"
        ) from None
    if not host:
        raise ConfigurationError(f"{name} has no host: {redact_url(url)!r}")
    return url


def check_timeout(timeout: object, name: str = "timeout") -> None:
    """A timeout must be a finite number of seconds > 0 (or ``None`` for the default)."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds, got {timeout!r}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigurationError(f"{name} must be a finite number of seconds > 0, got {timeout}")


def check_count(value: object, name: str, minimum: int) -> None:
    """An integer setting such as ``max_retries`` must be an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")


def without_blanks(texts: list[str]) -> tuple[list[str], Callable[[list[float]], list[float]]]:
    """The texts worth scoring, and a function that puts 0.0 back at the blank ones.

    A blank text (:func:`is_blank`) has no evidence to find: it scores 0.0
    without a model call, instead of whatever a model makes of an empty prompt.
    """
    kept = [i for i, text in enumerate(texts) if not is_blank(text)]
    if len(kept) == len(texts):
        return texts, lambda scores: scores

    def restore(scores: list[float]) -> list[float]:
        out = [0.0] * len(texts)
        for index, value in zip(kept, scores, strict=True):
            out[index] = value
        return out

    return [texts[i] for i in kept], restore
