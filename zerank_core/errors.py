"""The package's own exceptions, in one small tree.

    ZeRankError
    ├── ConfigurationError (ValueError)   bad argument or missing setting
    ├── MissingDependencyError (ImportError)  an optional extra is not installed
    ├── InvalidResponseError               a backend answered, but not with a
    │                                      valid score for every input
    └── DocumentError (ValueError)         an input document cannot be read

Errors raised by the ``zeroentropy`` SDK or by ``httpx`` pass through unchanged.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DocumentError",
    "InvalidResponseError",
    "MissingDependencyError",
    "ZeRankError",
]


class ZeRankError(Exception):
    """Base class of every error this package raises itself."""


class ConfigurationError(ZeRankError, ValueError):
    """An argument or setting is invalid or missing; the message names it."""


class MissingDependencyError(ZeRankError, ImportError):
    """An optional dependency is missing; the message gives the install command."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is required for this feature: pip install 'zerank-gate[{extra}]'"
        )
        self.package = package
        self.extra = extra


class InvalidResponseError(ZeRankError):
    """A backend's response does not hold exactly one valid score per input.

    ``batch`` is the zero-based number of the failing request among those the
    scorer planned for one call, and ``batch_size`` its number of texts.
    """

    def __init__(self, message: str, *, batch: int, batch_size: int) -> None:
        super().__init__(f"batch {batch} ({batch_size} texts): {message}")
        self.batch = batch
        self.batch_size = batch_size


class DocumentError(ZeRankError, ValueError):
    """A document could not be read (corrupt, encrypted or unsupported)."""
