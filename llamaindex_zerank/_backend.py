"""How the LlamaIndex adapters find their scorer: given, from an API key, or from the environment.

Resolution happens on first use, not at construction, so building a
postprocessor or selector never opens a client (an async client made in one
event loop and used in another is a known LlamaIndex failure).
"""

from __future__ import annotations

from pydantic import SecretStr

from zerank_core.errors import ConfigurationError
from zerank_core.scorers.auto import scorer_from_env
from zerank_core.scorers.base import Scorer

__all__ = ["as_secret", "check_scorer_arg", "model_name", "resolve_scorer"]


def as_secret(api_key: str | SecretStr | None) -> SecretStr | None:
    """Wrap a plain-string key so it never shows in a repr or a log line."""
    if api_key is None or isinstance(api_key, SecretStr):
        return api_key
    if isinstance(api_key, str):
        if not api_key.strip():
            raise ConfigurationError("api_key must not be empty")
        return SecretStr(api_key)
    raise ConfigurationError(f"api_key must be a str or SecretStr, got {type(api_key).__name__}")


def check_scorer_arg(scorer: object, api_key: SecretStr | None) -> Scorer | None:
    """Validate an explicit ``scorer=`` argument against the scorer contract."""
    if scorer is None:
        return None
    if api_key is not None:
        raise ConfigurationError("pass either scorer=... or api_key=..., not both")
    if not isinstance(scorer, Scorer):
        raise ConfigurationError(
            f"scorer must have score() and ascore() methods, got {type(scorer).__name__}"
        )
    return scorer


def resolve_scorer(api_key: SecretStr | None, model: str, base_url: str | None) -> Scorer:
    """Build the default scorer: the hosted API for a key, otherwise the environment's.

    Without a key this is :func:`scorer_from_env` with ``allow_lexical=False``:
    an adapter never silently falls back to the uncalibrated BM25 baseline.
    """
    if api_key is not None:
        from zerank_core.scorers.zeroentropy import ZeroEntropyScorer

        return ZeroEntropyScorer(model=model, api_key=api_key, base_url=base_url)
    return scorer_from_env(allow_lexical=False).scorer


def model_name(scorer: Scorer) -> str:
    """The name events report for a scorer (its ``model``, else its class)."""
    name = getattr(scorer, "model", None)
    return name if isinstance(name, str) else type(scorer).__name__
