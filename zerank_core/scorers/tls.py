"""One TLS context per process for the HTTP clients the scorers build.

Building an ``httpx`` client loads the CA bundle into a fresh
``ssl.SSLContext``, about 50 ms of CPU, even for a plain-``http`` server. A
scorer builds a client per event loop (each ``asyncio.run`` is a new loop), so
without sharing, that cost came back on every run. An ``SSLContext`` may be
shared by any number of clients, threads and loops; this one is built the way
``httpx`` builds its default (certifi, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``
when set) and rebuilt if either variable changes.
"""

from __future__ import annotations

import functools
import os
import ssl

import httpx

__all__ = ["shared_ssl_context"]


def shared_ssl_context() -> ssl.SSLContext:
    """The process's verifying TLS context, as ``httpx``'s default would build it."""
    return _context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    # The arguments are the cache key: httpx reads the same variables itself.
    return httpx.create_ssl_context()
