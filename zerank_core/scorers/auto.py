"""Pick the best backend the environment offers, and say which.

Order: hosted API key (``ZEROENTROPY_API_KEY``) → rerank server
(``ZERANK_SERVER_URL``) → open weights in-process (``ZERANK_LOCAL_MODEL``, or
zerank-2 when its weights are already on disk and the ``local`` extra is
installed) → the lexical BM25 baseline, which needs nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from zerank_core.errors import ConfigurationError, MissingDependencyError
from zerank_core.redaction import redact
from zerank_core.scorers.base import Scorer

__all__ = ["BACKENDS", "BackendChoice", "scorer_from_env"]

BACKENDS = ("hosted", "server", "local", "lexical")


@dataclass(frozen=True)
class BackendChoice:
    """The scorer picked and a one-line description of why."""

    name: str
    scorer: Scorer
    reason: str

    def __post_init__(self) -> None:
        # A reason may name a server URL; it is printed and logged, so never with credentials.
        object.__setattr__(self, "reason", redact(self.reason))


def _local_choice(model: str | None) -> BackendChoice | None:
    """The local backend if configured, or if zerank-2's weights are on disk.

    Named explicitly (``ZERANK_LOCAL_MODEL``), a missing extra is an error; found
    only by looking in the model cache, it is skipped when the extra is missing.
    """
    from zerank_core.scorers.local import DEFAULT_MODEL, LocalScorer, weights_available

    if model is not None:
        return BackendChoice("local", LocalScorer(model), f"open weights in-process ({model})")
    if not weights_available(DEFAULT_MODEL):
        return None
    try:
        scorer = LocalScorer(DEFAULT_MODEL)
    except MissingDependencyError:
        return None
    return BackendChoice("local", scorer, f"open weights in-process ({DEFAULT_MODEL})")


def scorer_from_env(backend: str | None = None, *, allow_lexical: bool = True) -> BackendChoice:
    """Build the first available backend, or the one named by ``backend``.

    ``backend`` is one of ``hosted``, ``server``, ``local``, ``lexical`` (default
    ``ZERANK_BACKEND``, then automatic). Naming a backend whose settings are
    missing is an error that says what to set. With ``allow_lexical=False``
    (what the framework adapters use) the automatic choice never falls back
    to BM25: when no model is configured it raises an error naming the options.
    """
    backend = backend or os.environ.get("ZERANK_BACKEND") or None
    if backend is not None and backend not in BACKENDS:
        raise ConfigurationError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")

    if backend == "hosted" or (backend is None and os.environ.get("ZEROENTROPY_API_KEY")):
        from zerank_core.scorers.zeroentropy import ZeroEntropyScorer

        scorer = ZeroEntropyScorer(model=os.environ.get("ZERANK_MODEL", "zerank-2"))
        return BackendChoice("hosted", scorer, f"ZeroEntropy API ({scorer.model})")

    if backend == "server" or (backend is None and os.environ.get("ZERANK_SERVER_URL")):
        from zerank_core.scorers.server import RerankServerScorer

        server = RerankServerScorer()
        return BackendChoice(
            "server", server, f"rerank server {server.url} ({server.backend_scale.value} scores)"
        )

    if backend == "local" or backend is None:
        choice = _local_choice(os.environ.get("ZERANK_LOCAL_MODEL"))
        if choice is not None:
            return choice
        if backend == "local":
            raise ConfigurationError(
                "the local backend needs the open weights and the 'local' extra: "
                "pip install 'zerank-gate[local]' and set ZERANK_LOCAL_MODEL to a model "
                "id or folder"
            )

    if backend is None and not allow_lexical:
        raise ConfigurationError(
            "no zerank backend is configured. Pass scorer=..., or set one of: "
            "ZEROENTROPY_API_KEY (hosted API), ZERANK_SERVER_URL (a rerank server such "
            "as vLLM or llama.cpp), ZERANK_LOCAL_MODEL (open weights in-process, needs "
            "pip install 'zerank-gate[local]'), or ZERANK_BACKEND=lexical for the "
            "uncalibrated BM25 baseline"
        )

    from zerank_core.scorers.lexical import BM25Scorer

    return BackendChoice("lexical", BM25Scorer(), "BM25 lexical baseline (offline, uncalibrated)")
