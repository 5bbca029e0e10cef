"""The one place that turns settings into a scorer: adapters, CLI and library all call it.

:func:`resolve_backend` reads explicit settings (``backend``, ``model``,
``device``, ``api_key``, ``base_url``, ``server_url``) and then the
environment, and builds the scorer at once, so a missing or contradictory
setting is an error where the component is built, not at its first query.

Rules, in order:

1. ``backend`` (or ``ZERANK_BACKEND``) names one of ``hosted``, ``server``,
   ``local``, ``lexical``, or an alias users type (``bm25`` for ``lexical``,
   ``zeroentropy`` for ``hosted``: :data:`BACKEND_ALIASES`); ``model="bm25"``
   means ``lexical``.
2. Otherwise an explicit endpoint decides: ``server_url`` → a rerank server
   (vLLM, llama.cpp, Infinity; ``api_key`` is then its bearer token);
   ``api_key`` or ``base_url`` → ZeroEntropy's API (``base_url`` is the API's
   base, as ``ZEROENTROPY_BASE_URL``: a regional endpoint or a self-hosted
   ZeroEntropy deployment); ``device`` or a model folder → open weights
   in-process.
3. Otherwise ``model`` and the environment: a Hugging Face id (``org/name``)
   is served by ``ZERANK_SERVER_URL`` when set, else loaded in-process; a
   plain name (``zerank-2``) is a ZeroEntropy API model, served by the API
   (``ZEROENTROPY_API_KEY``) or by ``ZERANK_SERVER_URL``; without a model the
   order is ``ZEROENTROPY_API_KEY`` → ``ZERANK_SERVER_URL`` →
   ``ZERANK_LOCAL_MODEL`` (or zerank-2's weights already on disk with the
   ``local`` extra installed).
4. Nothing configured: the uncalibrated BM25 baseline when
   ``allow_lexical=True`` (the command line's offline default), else
   :class:`ConfigurationError` with one message naming every option. The
   framework adapters never fall back to BM25 unless asked by name.

Throughput settings (``timeout``, ``max_retries``, ``max_concurrency``,
``requests_per_minute``, ``bytes_per_minute``, ``tokens_per_minute``,
``max_batch_size``; see :class:`Throughput`) are checked here whatever the
backend, and go to the backend chosen where they mean something: all of them
to the hosted API and to a rerank server; ``max_batch_size`` to open weights
in-process; none to BM25, which sends no request. A setting that does not
apply is accepted and has no effect, so one configuration works whichever
backend the environment picks. The limits among them (``max_concurrency``
and the per-minute budgets) left unset are read from the environment
(``ZERANK_MAX_CONCURRENCY``, ``ZERANK_REQUESTS_PER_MINUTE``,
``ZERANK_BYTES_PER_MINUTE``, ``ZERANK_TOKENS_PER_MINUTE``; see
:mod:`zerank_core.limits`). ``framework`` tags every request's
User-Agent (``zerank-gate/<version> langchain``).

``scale`` declares what a model's numbers are: for a rerank server, what it
returns (as ``ZERANK_SERVER_SCALE``); for open weights in-process, that the
model is not a zerank reranker but any sentence-transformers cross-encoder
whose head returns this scale (see :class:`~zerank_core.scorers.local.LocalScorer`);
such a model's scores are uncalibrated until a calibrator is fitted.

Error messages speak the caller's language through a :class:`Vocabulary`:
keyword arguments for the library (:data:`LIBRARY`), flags for the command
line (the CLI passes its own).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from zerank_core._version import user_agent
from zerank_core.errors import ConfigurationError, MissingDependencyError
from zerank_core.limits import limits_from_env
from zerank_core.redaction import redact
from zerank_core.scorers.base import Scale, Scorer, check_count, check_timeout
from zerank_core.scorers.engine import RateLimits

__all__ = [
    "BACKENDS",
    "BACKEND_ALIASES",
    "LEXICAL_MODELS",
    "LIBRARY",
    "THROUGHPUT_SETTINGS",
    "BackendChoice",
    "Throughput",
    "Vocabulary",
    "resolve_backend",
    "scorer_from_env",
]

BACKENDS = ("hosted", "server", "local", "lexical")

#: Other names users give the backends, and the backend each means.
BACKEND_ALIASES = {
    "bm25": "lexical",
    "zeroentropy": "hosted",
    "api": "hosted",
    "rerank-server": "server",
    "open-weights": "local",
}

#: ``model=`` values that name the lexical baseline instead of a model.
LEXICAL_MODELS = ("bm25", "lexical")

#: ZeroEntropy API model names and the open weights they correspond to.
OPEN_WEIGHTS = {
    "zerank-2": "zeroentropy/zerank-2-reranker",
    "zerank-1-small": "zeroentropy/zerank-1-small",
    "zerank-1": "zeroentropy/zerank-1",
}


@dataclass(frozen=True)
class BackendChoice:
    """The scorer picked and a one-line description of why."""

    name: str
    scorer: Scorer
    reason: str

    def __post_init__(self) -> None:
        # A reason may name a server URL; it is printed and logged, so never with credentials.
        object.__setattr__(self, "reason", redact(self.reason))


@dataclass(frozen=True)
class Throughput:
    """How a backend paces its requests; ``None`` leaves the backend's default.

    ``timeout``: seconds one request may take (> 0). ``max_retries``: how many
    times a request that failed transiently is sent again (>= 0).
    ``max_concurrency``: most requests in flight at once (>= 1).
    ``requests_per_minute``, ``bytes_per_minute``, ``tokens_per_minute``:
    budgets kept on the client side (> 0). ``max_batch_size``: most texts in
    one request, or in one forward pass of open weights (>= 1).

    Every value is checked at construction, whatever the backend; the module
    docstring says which backend uses which.
    """

    timeout: float | None = None
    max_retries: int | None = None
    max_concurrency: int | None = None
    requests_per_minute: float | None = None
    bytes_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_batch_size: int | None = None

    def __post_init__(self) -> None:
        check_timeout(self.timeout)
        for name, minimum in (("max_retries", 0), ("max_concurrency", 1), ("max_batch_size", 1)):
            value = getattr(self, name)
            if value is not None:
                check_count(value, name, minimum)
        RateLimits(self.requests_per_minute, self.bytes_per_minute, self.tokens_per_minute)

    def given(self) -> dict[str, Any]:
        """The settings that were set, by name."""
        return {name: value for name, value in asdict(self).items() if value is not None}

    def for_backend(self, name: str) -> dict[str, Any]:
        """The constructor arguments of backend ``name``'s scorer that these settings give."""
        given = self.given()
        if name in ("hosted", "server"):
            return given
        if name == "local":
            return {k: v for k, v in given.items() if k == "max_batch_size"}
        return {}


#: The throughput settings, by the names the scorers' constructors use.
THROUGHPUT_SETTINGS = tuple(Throughput.__dataclass_fields__)

SETTINGS = (
    "backend",
    "model",
    "device",
    "api_key",
    "base_url",
    "server_url",
    "scale",
    "scorer",
    *THROUGHPUT_SETTINGS,
)

_METAVARS = {"backend": "NAME", "model": "MODEL", "device": "DEVICE", "server_url": "URL"}


@dataclass(frozen=True)
class Vocabulary:
    """How error messages name each setting: keyword arguments, or command-line flags.

    ``names`` maps a setting (``"api_key"``, ``"server_url"``, ...) to the
    caller's name for it (``"api_key"``, ``"--server-url"``), or to ``None``
    when the caller has no such argument, so that only the environment
    variable is named. ``flags=True`` phrases advice as "use --flag VALUE"
    instead of "pass name=...".
    """

    names: Mapping[str, str | None]
    flags: bool = False

    def spell(self, setting: str) -> str:
        """The setting's name as the caller knows it (``api_key``, ``--backend``)."""
        return self.names.get(setting) or setting

    def advice(self, setting: str) -> str | None:
        """How to give the setting ("pass api_key=...", "use --server-url URL"), or None."""
        name = self.names.get(setting)
        if name is None:
            return None
        if self.flags:
            return f"use {name} {_METAVARS.get(setting, 'VALUE')}"
        return f"pass {name}=..."


LIBRARY = Vocabulary({setting: setting for setting in SETTINGS})


def _ask(vocabulary: Vocabulary, setting: str, value: str) -> str:
    """'pass model='bm25'' or 'use --model bm25'."""
    name = vocabulary.spell(setting)
    return f"use {name} {value}" if vocabulary.flags else f"pass {name}={value!r}"


def _how(vocabulary: Vocabulary, setting: str, env: str | None) -> str:
    """'pass api_key=... or set ZEROENTROPY_API_KEY', in the caller's words."""
    parts = [p for p in (vocabulary.advice(setting), f"set {env}" if env else None) if p]
    return " or ".join(parts)


def nothing_configured(vocabulary: Vocabulary = LIBRARY) -> str:
    """The one message for 'no backend is configured', in the caller's words."""
    options = []
    if vocabulary.advice("scorer"):
        options.append(f"{vocabulary.advice('scorer')} (any scorer object)")
    options.append(
        f"{_how(vocabulary, 'model', 'ZERANK_LOCAL_MODEL')} (open weights in-process, e.g. "
        "zeroentropy/zerank-2-reranker; needs pip install 'zerank-gate[local]')"
    )
    options.append(f"{_how(vocabulary, 'api_key', 'ZEROENTROPY_API_KEY')} (ZeroEntropy API)")
    options.append(
        f"{_how(vocabulary, 'server_url', 'ZERANK_SERVER_URL')} (a rerank server such as "
        "vLLM or llama.cpp)"
    )
    lexical = "set ZERANK_BACKEND=lexical"
    if vocabulary.names.get("model"):
        lexical = f"{_ask(vocabulary, 'model', 'bm25')} or {lexical}"
    return (
        "no zerank backend is configured. Either "
        + "; or ".join(options)
        + f". For the uncalibrated BM25 baseline (offline, no model), {lexical}"
    )


def resolve_backend(
    *,
    backend: str | None = None,
    model: str | None = None,
    device: str | None = None,
    api_key: str | SecretStr | None = None,
    base_url: str | None = None,
    server_url: str | None = None,
    scale: Scale | str | None = None,
    timeout: float | None = None,
    max_retries: int | None = None,
    max_concurrency: int | None = None,
    requests_per_minute: float | None = None,
    bytes_per_minute: float | None = None,
    tokens_per_minute: float | None = None,
    max_batch_size: int | None = None,
    framework: str | None = None,
    allow_lexical: bool = False,
    vocabulary: Vocabulary = LIBRARY,
    environ: Mapping[str, str] | None = None,
) -> BackendChoice:
    """Build the scorer these settings and the environment ask for; see the module docstring.

    Raises :class:`ConfigurationError` (in ``vocabulary``'s words) when a
    setting is missing, malformed, or does not apply to the backend chosen,
    and :class:`MissingDependencyError` when the ``local`` extra is needed
    but not installed.
    """
    env = os.environ if environ is None else environ
    say = vocabulary.spell
    for setting, value in (
        ("backend", backend),
        ("model", model),
        ("device", device),
        ("base_url", base_url),
        ("server_url", server_url),
    ):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigurationError(f"{say(setting)} must be a non-empty string, got {value!r}")
    key = _secret(api_key, say("api_key"))
    declared = _scale(scale, say("scale"))
    # Limits left unset here come from the environment (ZERANK_REQUESTS_PER_MINUTE ...).
    limits = limits_from_env(env)
    throughput = Throughput(
        timeout=timeout,
        max_retries=max_retries,
        max_concurrency=_or(max_concurrency, limits.get("max_concurrency")),
        requests_per_minute=_or(requests_per_minute, limits.get("requests_per_minute")),
        bytes_per_minute=_or(bytes_per_minute, limits.get("bytes_per_minute")),
        tokens_per_minute=_or(tokens_per_minute, limits.get("tokens_per_minute")),
        max_batch_size=max_batch_size,
    )
    agent = user_agent(framework)
    for setting, url in (("base_url", base_url), ("server_url", server_url)):
        if url is not None and not url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"{say(setting)} must start with http:// or https://, got {url!r}"
            )
    if base_url is not None and base_url.rstrip("/").endswith(("/rerank", "/invocations")):
        raise ConfigurationError(
            f"{say('base_url')} is the base of ZeroEntropy's API (as ZEROENTROPY_BASE_URL); "
            f"{base_url!r} looks like a rerank server's endpoint: "
            f"{_how(vocabulary, 'server_url', 'ZERANK_SERVER_URL')} instead"
        )

    source = say("backend")
    if backend is None and env.get("ZERANK_BACKEND"):
        backend, source = env["ZERANK_BACKEND"], "ZERANK_BACKEND"
    if backend is not None:
        backend = backend_name(backend, source)
    if model is not None and model.strip().lower() in LEXICAL_MODELS:
        if backend not in (None, "lexical"):
            raise ConfigurationError(
                f"{say('model')}={model!r} names the lexical baseline, but {source} is {backend!r}"
            )
        backend, source, model = "lexical", say("model"), None

    name = backend or _infer(model, device, key, base_url, server_url, env)
    if name is None:
        if allow_lexical:
            name = "lexical"
        else:
            raise ConfigurationError(nothing_configured(vocabulary))
    given = {
        "model": model,
        "device": device,
        "api_key": key,
        "base_url": base_url,
        "server_url": server_url,
        "scale": declared,
    }
    applies = {
        "hosted": ("model", "api_key", "base_url"),
        "server": ("model", "api_key", "server_url", "scale"),
        "local": ("model", "device", "scale"),
        "lexical": (),
    }[name]
    extra = [setting for setting, value in given.items() if value is not None]
    wrong = [setting for setting in extra if setting not in applies]
    if wrong:
        why = f" (chosen by {source})" if backend is not None else ""
        raise ConfigurationError(
            f"{', '.join(say(s) for s in wrong)} does not apply to the {name} backend{why}"
        )
    options = throughput.for_backend(name)
    if name == "hosted":
        return _hosted(model, key, base_url, env, vocabulary, {**options, "user_agent": agent})
    if name == "server":
        options = {**options, "user_agent": agent, "scale": declared}
        return _server(model, key, server_url, env, vocabulary, options)
    if name == "local":
        return _local(model, device, env, vocabulary, {**options, "scale": declared})
    from zerank_core.scorers.lexical import BM25Scorer

    return BackendChoice("lexical", BM25Scorer(), "BM25 lexical baseline (offline, uncalibrated)")


def _or(given: Any, from_env: Any) -> Any:
    return given if given is not None else from_env


def backend_name(name: str, source: str = "backend") -> str:
    """The backend ``name`` means (an alias resolved); else an error with a did-you-mean.

    ``source`` is what the name came from, for the message (``--backend``,
    ``ZERANK_BACKEND``).
    """
    lowered = name.strip().lower()
    lowered = BACKEND_ALIASES.get(lowered, lowered)
    if lowered in BACKENDS:
        return lowered
    close = difflib.get_close_matches(lowered, [*BACKENDS, *BACKEND_ALIASES], n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigurationError(
        f"{source} must be one of {', '.join(BACKENDS)} (or bm25 for lexical, zeroentropy "
        f"for hosted); got {name!r}{hint}"
    )


def planned_backend(
    *,
    backend: str | None = None,
    model: str | None = None,
    device: str | None = None,
    server_url: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The backend :func:`resolve_backend` would pick for these settings, without building it.

    ``None``: nothing configured. Errors in the settings are left to
    :func:`resolve_backend`.
    """
    env = os.environ if environ is None else environ
    if backend is None and env.get("ZERANK_BACKEND"):
        backend = env["ZERANK_BACKEND"]
    if backend is not None:
        lowered = backend.strip().lower()
        return BACKEND_ALIASES.get(lowered, lowered)
    if model is not None and model.strip().lower() in LEXICAL_MODELS:
        return "lexical"
    return _infer(model, device, None, None, server_url, env)


def _secret(api_key: object, name: str) -> SecretStr | None:
    if api_key is None:
        return None
    if isinstance(api_key, SecretStr):
        value = api_key.get_secret_value()
    elif isinstance(api_key, str):
        value = api_key
    else:
        raise ConfigurationError(f"{name} must be a str or SecretStr, got {type(api_key).__name__}")
    if not value.strip():
        raise ConfigurationError(f"{name} must not be empty")
    return api_key if isinstance(api_key, SecretStr) else SecretStr(value)


def _scale(scale: object, name: str) -> Scale | None:
    if scale is None:
        return None
    try:
        declared = Scale(str(scale))
    except ValueError:
        declared = None
    if declared is None or declared is Scale.UNCALIBRATED:
        choices = ", ".join(s.value for s in Scale if s is not Scale.UNCALIBRATED)
        raise ConfigurationError(f"{name} must be one of {choices}; got {scale!r}")
    return declared


def _is_folder(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().is_dir()


def _infer(
    model: str | None,
    device: str | None,
    key: SecretStr | None,
    base_url: str | None,
    server_url: str | None,
    env: Mapping[str, str],
) -> str | None:
    """The backend that explicit settings, then the environment, point to (None: nothing)."""
    if server_url is not None:
        return "server"
    if key is not None or base_url is not None:
        return "hosted"
    if device is not None or (model is not None and _is_folder(model)):
        return "local"
    has_key, has_server = bool(env.get("ZEROENTROPY_API_KEY")), bool(env.get("ZERANK_SERVER_URL"))
    if model is not None and "/" in model:
        return "server" if has_server else "local"
    if has_key:
        return "hosted"
    if has_server:
        return "server"
    if model is not None:
        # A plain name is an API model; loading weights for it is left to an explicit id.
        return "hosted"
    if env.get("ZERANK_LOCAL_MODEL") or _default_weights_usable():
        return "local"
    return None


def _default_weights_usable() -> bool:
    """Whether zerank-2's weights are on disk and the ``local`` extra is installed."""
    try:
        from zerank_core.scorers.local import DEFAULT_MODEL, weights_available
    except ImportError:
        return False
    if not weights_available(DEFAULT_MODEL):
        return False
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _hosted(
    model: str | None,
    key: SecretStr | None,
    base_url: str | None,
    env: Mapping[str, str],
    vocabulary: Vocabulary,
    options: Mapping[str, Any],
) -> BackendChoice:
    from zerank_core.scorers.zeroentropy import ZeroEntropyScorer

    if key is None and env.get("ZEROENTROPY_API_KEY"):
        key = SecretStr(env["ZEROENTROPY_API_KEY"])
    if key is None:
        hint = ""
        if model is not None and model in OPEN_WEIGHTS:
            weights = _ask(vocabulary, "model", OPEN_WEIGHTS[model])
            hint = (
                f"; for its open weights in-process, {weights} (pip install 'zerank-gate[local]')"
            )
        what = f"model {model!r} (a ZeroEntropy API model name)" if model else "the hosted backend"
        if model is not None and model not in OPEN_WEIGHTS:
            names = [*OPEN_WEIGHTS, *OPEN_WEIGHTS.values(), *LEXICAL_MODELS]
            close = difflib.get_close_matches(model.lower(), names, n=1, cutoff=0.6)
            if close:
                raise ConfigurationError(
                    f"{vocabulary.spell('model')} {model!r} is no model this package knows; "
                    f"did you mean {close[0]!r}? (a ZeroEntropy API model needs a "
                    f"ZeroEntropy API key: {_how(vocabulary, 'api_key', 'ZEROENTROPY_API_KEY')})"
                )
        raise ConfigurationError(
            f"{what} needs a ZeroEntropy API key: "
            f"{_how(vocabulary, 'api_key', 'ZEROENTROPY_API_KEY')}{hint}"
        )
    model = model or env.get("ZERANK_MODEL") or "zerank-2"
    scorer = ZeroEntropyScorer(model=model, api_key=key, base_url=base_url, **options)
    return BackendChoice("hosted", scorer, f"ZeroEntropy API ({scorer.model})")


def _server(
    model: str | None,
    key: SecretStr | None,
    server_url: str | None,
    env: Mapping[str, str],
    vocabulary: Vocabulary,
    options: Mapping[str, Any],
) -> BackendChoice:
    from zerank_core.scorers.server import RerankServerScorer, check_one_credential

    url = server_url or env.get("ZERANK_SERVER_URL")
    if not url:
        raise ConfigurationError(
            "the server backend needs the rerank endpoint's URL, e.g. "
            "http://localhost:8000/v1/rerank: "
            f"{_how(vocabulary, 'server_url', 'ZERANK_SERVER_URL')}"
        )
    # The scorer checks this too; here the message can use the caller's names
    # (--server-url on the command line) for where each credential came from.
    key_name = vocabulary.spell("api_key") if key is not None else None
    if key_name is None and env.get("ZERANK_SERVER_API_KEY"):
        key_name = "ZERANK_SERVER_API_KEY"
    url_name = vocabulary.spell("server_url") if server_url else "ZERANK_SERVER_URL"
    check_one_credential(url, url_name, key_name)
    server = RerankServerScorer(url, model=model, api_key=key, **options)
    return BackendChoice(
        "server",
        server,
        f"rerank server {server.url} ({server.model}, {server.backend_scale.value} scores)",
    )


def _local(
    model: str | None,
    device: str | None,
    env: Mapping[str, str],
    vocabulary: Vocabulary,
    options: Mapping[str, Any],
) -> BackendChoice:
    try:
        from zerank_core.scorers.local import DEFAULT_MODEL, LocalScorer, weights_available
    except ImportError as exc:  # pragma: no cover - local.py imports torch lazily
        raise MissingDependencyError("sentence-transformers", "local") from exc

    model = model or env.get("ZERANK_LOCAL_MODEL") or None
    if model is None:
        if not weights_available(DEFAULT_MODEL):
            raise ConfigurationError(
                "the local backend needs a model id or folder: "
                f"{_how(vocabulary, 'model', 'ZERANK_LOCAL_MODEL')} (e.g. {DEFAULT_MODEL}; "
                "needs pip install 'zerank-gate[local]')"
            )
        model = DEFAULT_MODEL
    scorer = LocalScorer(model, device=device, **options)
    what = "" if scorer.calibrated else f"; uncalibrated {scorer.output_scale.value} scores"
    return BackendChoice(
        "local", scorer, f"open weights in-process ({model}, {scorer.device}{what})"
    )


def scorer_from_env(backend: str | None = None, *, allow_lexical: bool = True) -> BackendChoice:
    """The environment's backend: :func:`resolve_backend` with only ``backend`` given.

    With ``allow_lexical=True`` (the default, for scripts and the command
    line) nothing configured means the BM25 baseline; with ``False`` it is
    an error naming the options.
    """
    return resolve_backend(backend=backend, allow_lexical=allow_lexical)
