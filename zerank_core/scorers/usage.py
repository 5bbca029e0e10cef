"""What a scorer has spent: requests, texts, bytes, tokens and retries."""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["Usage", "UsageMeter"]


@dataclass(frozen=True)
class Usage:
    """What a scorer has spent since it was created (or since ``reset``).

    ``total_tokens`` is ``None`` when the backend does not report tokens.
    ``retries`` counts requests sent again after a failure, ``rate_limited``
    the 429s among those failures (absorbed, not raised).
    """

    requests: int = 0
    texts: int = 0
    total_bytes: int = 0
    total_tokens: int | None = None
    retries: int = 0
    rate_limited: int = 0

    def __sub__(self, other: Usage) -> Usage:
        tokens = None
        if self.total_tokens is not None:
            tokens = self.total_tokens - (other.total_tokens or 0)
        return Usage(
            requests=self.requests - other.requests,
            texts=self.texts - other.texts,
            total_bytes=self.total_bytes - other.total_bytes,
            total_tokens=tokens,
            retries=self.retries - other.retries,
            rate_limited=self.rate_limited - other.rate_limited,
        )


class UsageMeter:
    """Thread-safe accumulator behind a scorer's ``usage`` property."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._usage = Usage()

    def add(self, *, texts: int, total_bytes: int = 0, total_tokens: int | None = None) -> None:
        with self._lock:
            current = self._usage
            tokens = current.total_tokens
            if total_tokens is not None:
                tokens = (tokens or 0) + total_tokens
            self._usage = Usage(
                requests=current.requests + 1,
                texts=current.texts + texts,
                total_bytes=current.total_bytes + total_bytes,
                total_tokens=tokens,
                retries=current.retries,
                rate_limited=current.rate_limited,
            )

    def add_retry(self, *, rate_limited: bool) -> None:
        with self._lock:
            current = self._usage
            self._usage = Usage(
                requests=current.requests,
                texts=current.texts,
                total_bytes=current.total_bytes,
                total_tokens=current.total_tokens,
                retries=current.retries + 1,
                rate_limited=current.rate_limited + int(rate_limited),
            )

    @property
    def usage(self) -> Usage:
        return self._usage

    def reset(self) -> None:
        with self._lock:
            self._usage = Usage()
