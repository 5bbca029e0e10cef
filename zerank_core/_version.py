"""The package's version, and the User-Agent its requests to model servers carry."""

from __future__ import annotations

__all__ = ["FRAMEWORKS", "__version__", "user_agent"]

__version__ = "0.1.0"

#: Where a request can come from, as its User-Agent names it.
FRAMEWORKS = ("langchain", "llamaindex", "cli")


def user_agent(framework: str | None = None) -> str:
    """``zerank-gate/<version>``, plus the framework that built the scorer when there is one.

    Sent as the User-Agent of every request to ZeroEntropy's API and to a
    rerank server, so that a server's logs tell which integration called it:
    ``zerank-gate/0.1.0 langchain``, ``zerank-gate/0.1.0 llamaindex``,
    ``zerank-gate/0.1.0 cli``, or ``zerank-gate/0.1.0`` from the library.
    """
    if framework is not None and framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {', '.join(FRAMEWORKS)}, got {framework!r}")
    product = f"zerank-gate/{__version__}"
    return product if framework is None else f"{product} {framework}"
