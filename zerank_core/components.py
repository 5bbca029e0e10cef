"""What the LangChain and LlamaIndex components share, with no framework imported.

Argument spelling (the ``top_n`` / ``top_k`` alias, a suggestion for a
misspelt name), the backend settings every component accepts and how they
become a scorer (always through :func:`~zerank_core.scorers.auto.resolve_backend`),
and what a pickled component holds.

Pickling and copying a component:

- an explicit ``scorer=`` is kept: pickled as it is, shared (not copied) by
  ``copy.deepcopy``, since a scorer is a resource (clients, pools, weights);
- a scorer built from settings is never pickled: the settings are, without
  the API key, and unpickling builds the scorer again from them and the
  unpickling process's environment (so the key comes from
  ``ZEROENTROPY_API_KEY`` there). Without a key there, unpickling a
  component that needs one raises :class:`ConfigurationError` saying so.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field, fields, replace

from pydantic import SecretStr

from zerank_core.errors import ConfigurationError
from zerank_core.redaction import has_credentials, redact_url
from zerank_core.scorers.auto import SETTINGS, resolve_backend
from zerank_core.scorers.base import Scale, Scorer, require_scorer

__all__ = [
    "BACKEND_SETTINGS",
    "BackendSettings",
    "aclose_built",
    "build_scorer",
    "check_arguments",
    "check_top_n",
    "close_built",
    "merge_alias",
    "rebuild_scorer",
]

#: The settings every component takes to choose and pace its backend, besides ``scorer``.
BACKEND_SETTINGS = tuple(name for name in SETTINGS if name != "scorer")


def check_arguments(owner: str, given: Iterable[str], accepted: Iterable[str]) -> None:
    """Refuse an unknown argument, suggesting the closest accepted name."""
    accepted = sorted(set(accepted))
    for name in given:
        if name in accepted:
            continue
        close = difflib.get_close_matches(name, accepted, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"accepted: {', '.join(accepted)}"
        raise ConfigurationError(f"{owner} got an unknown argument {name!r}; {hint}")


def merge_alias(data: MutableMapping[str, object], name: str, alias: str, owner: str) -> None:
    """Move ``data[alias]`` to ``data[name]``; giving both is an error."""
    if alias not in data:
        return
    if name in data:
        raise ConfigurationError(f"{owner}: pass {name}=... or its alias {alias}=..., not both")
    data[name] = data.pop(alias)


def check_top_n(value: object, name: str = "top_n") -> None:
    """``top_n`` is ``None`` (no cap) or an integer >= 1: a cap of 0 would keep nothing."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"{name} must be an integer >= 1 (or None for no cap), got {value!r}"
        )


@dataclass(frozen=True)
class BackendSettings:
    """The backend a component was asked for; see :func:`resolve_backend`."""

    backend: str | None = None
    model: str | None = None
    device: str | None = None
    api_key: SecretStr | None = field(default=None, repr=False)
    base_url: str | None = None
    server_url: str | None = None
    scale: Scale | str | None = None
    timeout: float | None = None
    max_retries: int | None = None
    max_concurrency: int | None = None
    requests_per_minute: float | None = None
    bytes_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_batch_size: int | None = None

    def given(self) -> list[str]:
        """Names of the settings that were set."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def without_key(self) -> BackendSettings:
        """The settings a pickle may hold."""
        return replace(self, api_key=None)


def close_built(scorer: Scorer, *, built: bool) -> None:
    """Close a component's scorer if the component built it; one passed in stays open.

    A remote scorer opens new clients if it is used again after this.
    """
    close = getattr(scorer, "close", None)
    if built and callable(close):
        close()


async def aclose_built(scorer: Scorer, *, built: bool) -> None:
    """Async :func:`close_built`: also closes this event loop's async client."""
    if not built:
        return
    aclose = getattr(scorer, "aclose", None)
    if callable(aclose):
        await aclose()
    else:
        close_built(scorer, built=built)


def build_scorer(
    scorer: object | None, settings: BackendSettings, *, framework: str | None = None
) -> Scorer:
    """``scorer`` itself (checked against the contract), else the one ``settings`` resolve to.

    ``framework`` (``"langchain"``, ``"llamaindex"``) is named in the
    User-Agent of the requests a built scorer sends. Raises at once when
    nothing is configured: a component never falls back to the BM25 baseline
    unless asked for it by name (``model="bm25"``, ``backend="lexical"`` or
    ``ZERANK_BACKEND=lexical``).
    """
    if scorer is not None:
        given = settings.given()
        if given:
            raise ConfigurationError(
                f"pass either scorer=... or backend settings ({', '.join(given)}), not both"
            )
        return require_scorer(scorer)
    for name in ("base_url", "server_url"):
        url = getattr(settings, name)
        if isinstance(url, str) and has_credentials(url):
            # A component's settings are what it shows and serialises (repr,
            # pickles, dumpd, to_dict): a secret must not be one of them.
            env = "ZEROENTROPY_BASE_URL" if name == "base_url" else "ZERANK_SERVER_URL"
            raise ConfigurationError(
                f"{name} {redact_url(url)!r} carries credentials, and a component's settings "
                f"are serialised with it: set {env} in the environment instead, or pass "
                "scorer=... built with the URL"
            )
    values = {f.name: getattr(settings, f.name) for f in fields(settings)}
    return resolve_backend(**values, framework=framework).scorer


def rebuild_scorer(
    settings: BackendSettings, owner: str, *, framework: str | None = None
) -> Scorer:
    """Build an unpickled component's scorer from its settings and this environment."""
    try:
        return build_scorer(None, settings.without_key(), framework=framework)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"cannot unpickle {owner}: its scorer is rebuilt from its settings and this "
            f"process's environment, and API keys are never pickled ({exc})"
        ) from exc
