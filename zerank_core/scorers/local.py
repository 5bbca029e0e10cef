"""zerank's open weights in-process, through sentence-transformers' ``CrossEncoder``.

The model is loaded the way its card documents (``CrossEncoder(model_id)``:
a causal LM, the chat template with the query as system turn and the document
as user turn, and a ``LogitScore`` head that reads the logit of "Yes"). This
module adds what a context gate needs around it: device and dtype selection,
batches filled to a token budget from length-sorted inputs, windows for texts
longer than the model's context, and zerank's calibration ``sigmoid(logit / 5)``.

Any other sentence-transformers ``CrossEncoder`` (a MiniLM or bge reranker)
runs here too when its output scale is declared (``scale="logit"``,
``"sigmoid"`` or ``"probability"``): its scores are then uncalibrated
(:attr:`LocalScorer.calibrated` is False, its ``scale`` is
``Scale.UNCALIBRATED``, as BM25's) until a calibrator is fitted on labelled
data (``zerank calibrate --calibrator``, :class:`~zerank_core.calibrate.CalibratedScorer`).

Loaded weights are shared within the process: scorers built with the same
load settings (model, revision, device, dtype, max_length, fast path and
compile options) use one loaded model, held by weak reference, so that
building another component for the same model costs no second load, and
dropping every scorer that holds a model frees its memory.

By default the scores are computed on a faster path than ``CrossEncoder.predict``
with the same numbers: the prompts are rendered by the CrossEncoder itself, the
base model runs on length-sorted batches with no padding mask (so attention
takes the fused causal kernel; shorter prompts are padded at their end, which
causal attention keeps out of their positions), and only the "Yes" row of the
output head is applied at each prompt's last position. ``compile=True`` adds ``torch.compile``.

Needs the ``local`` extra (``pip install 'zerank-gate[local]'``); torch,
transformers and sentence-transformers are imported only when a scorer is built.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zerank_core.errors import ConfigurationError, InvalidResponseError, MissingDependencyError
from zerank_core.scorers.base import (
    INSTRUCTION_CONVENTION,
    Scale,
    Usage,
    UsageMeter,
    check_query,
    check_texts,
    fingerprint,
    is_blank,
    query_with_instruction,
    rebuild,
    to_probability,
)

__all__ = [
    "DEFAULT_MODEL",
    "LocalScorer",
    "LocalScores",
    "LocalStats",
    "plan_padded_batches",
    "plan_token_batches",
    "select_device",
    "weights_available",
]

DEFAULT_MODEL = "zeroentropy/zerank-2-reranker"

#: The token whose logit zerank's calibration is defined on.
YES_TOKEN = "Yes"

_DTYPE_NAMES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}

# Tokens kept free between the measured prompt length and max_length: a window
# is cut from the document's own tokenization, and re-tokenizing it inside the
# template can merge or split a token at its edges.
_EDGE_MARGIN = 4

# A batch on the fast path takes a prompt only if it is at most this share
# shorter than the batch's longest, which bounds the pad tokens (that cost as
# much compute as real ones) to this share of the batch.
_MAX_PADDING = 0.125

# Prompts rendered per call of the CrossEncoder's preprocessing on the fast path.
_RENDER_CHUNK = 256

# The pair the fast path is checked on at load time (from zerank's model card).
_CHECK_PAIR = ("What is 2+2?", "The answer is definitely 1 million")
# Checked in one batch with the pair above: a shorter prompt is padded at its
# end, which leaves its logit unchanged only under causal attention.
_CHECK_SHORT = ("What is 2+2?", "4")


def weights_available(model: str, *, cache_dir: str | Path | None = None) -> bool:
    """Whether ``model`` can be loaded without downloading anything.

    True for a local folder holding a ``config.json``, or for a Hugging Face
    model id whose configuration and weight files (every shard of a sharded
    checkpoint) are already in the local Hugging Face cache (``cache_dir``,
    default ``HF_HUB_CACHE``). Makes no network call.
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        return (folder / "config.json").is_file()
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False

    def cached(filename: str) -> str | None:
        try:
            found = try_to_load_from_cache(model, filename, cache_dir=cache_dir)
        except ValueError:  # not a valid repo id
            return None
        return found if isinstance(found, str) else None

    if cached("config.json") is None:
        return False
    if cached("model.safetensors") is not None:
        return True
    index = cached("model.safetensors.index.json")
    if index is None:
        return False
    try:
        shards = set(json.loads(Path(index).read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, AttributeError):
        return False
    return bool(shards) and all(cached(shard) is not None for shard in shards)


def select_device(device: str | None = None) -> str:
    """The device to run on: ``device`` if given (checked), else CUDA, Apple MPS, then CPU."""
    torch = _import_torch()
    if device is None:
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ConfigurationError(
            "device must be a torch device such as 'cuda', 'cuda:1', 'mps' or 'cpu'; "
            f"got {device!r}"
        ) from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"device {device!r} requested, but torch sees no CUDA device")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigurationError(f"device {device!r} requested, but Apple MPS is not available")
    return str(device)


def _select_dtype(dtype: Any, device: str) -> Any:
    """bf16 on CUDA (fp16 where bf16 is unsupported), fp16 on MPS, fp32 on CPU."""
    torch = _import_torch()
    if dtype is None:
        kind = torch.device(device).type
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if kind == "mps":
            return torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ConfigurationError(f"dtype must be a floating-point type, got {dtype}")
        return dtype
    name = _DTYPE_NAMES.get(str(dtype).lower()) if isinstance(dtype, str) else None
    if name is None:
        raise ConfigurationError(
            f"dtype must be one of {', '.join(sorted(_DTYPE_NAMES))} or a torch.dtype; "
            f"got {dtype!r}"
        )
    return getattr(torch, name)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError("torch", "local") from exc
    return torch


def _import_sentence_transformers() -> tuple[Any, Any]:
    """``(CrossEncoder, LogitScore)``; LogitScore exists from sentence-transformers 5.4 on."""
    try:
        from sentence_transformers import CrossEncoder
        from sentence_transformers.cross_encoder.modules import LogitScore
    except ImportError as exc:
        raise MissingDependencyError("sentence-transformers>=5.4", "local") from exc
    return CrossEncoder, LogitScore


def plan_token_batches(
    lengths: Sequence[int], *, batch_tokens: int, max_batch_size: int, overhead: int = 0
) -> list[list[int]]:
    """Group item indices into batches, longest first, within a padded-token budget.

    Items are sorted by length (descending; ties keep input order) and a batch
    grows while ``len(batch) * (longest + overhead)`` — the tokens a padded
    batch really computes — stays within ``batch_tokens`` and the batch has at
    most ``max_batch_size`` items. An item over the budget on its own gets a
    batch of one. Callers put results back by the returned indices.
    """
    if batch_tokens < 1:
        raise ConfigurationError(f"batch_tokens must be >= 1, got {batch_tokens}")
    if max_batch_size < 1:
        raise ConfigurationError(f"max_batch_size must be >= 1, got {max_batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for index in order:
        if current and (
            len(current) >= max_batch_size or (len(current) + 1) * width > batch_tokens
        ):
            batches.append(current)
            current = []
        if not current:
            width = lengths[index] + overhead
        current.append(index)
    if current:
        batches.append(current)
    return batches


def _window_starts(n_tokens: int, window: int, overlap: int) -> list[int]:
    """Starts of ``window``-token windows sharing ``overlap`` tokens; the last ends at the end."""
    if n_tokens <= window:
        return [0]
    step = window - overlap
    starts = list(range(0, n_tokens - window + 1, step))
    if starts[-1] + window < n_tokens:
        starts.append(n_tokens - window)
    return starts


@dataclass(eq=False)
class _LoadedModel:
    """One load of a model, shared by every :class:`LocalScorer` with the same load settings.

    ``lock`` serialises every use of the model, whichever scorer makes it:
    the tokenizer and a compiled graph are not safe to run from two threads.
    """

    cross_encoder: Any
    max_length: int
    fast: _FastPath | None
    fast_problem: str | None
    compile_seconds: float | None
    lock: threading.Lock
    not_zerank: tuple[str, ...] = ()


# Weak values: a model stays loaded while some scorer holds it, and no longer.
_LOADED: weakref.WeakValueDictionary[Hashable, _LoadedModel] = weakref.WeakValueDictionary()
# One lock per model being loaded, so that threads asking for it at once load it once
# while other models load in parallel.
_LOADING: dict[Hashable, threading.Lock] = {}
_REGISTRY_LOCK = threading.Lock()


def _shared_model(key: Hashable | None, load: Callable[[], _LoadedModel]) -> _LoadedModel:
    """The model loaded under ``key``, loading it with ``load`` if no scorer holds it now.

    ``key=None`` (settings that cannot be compared) loads a private copy. A
    failed load is not remembered: the next scorer tries again.
    """
    if key is None:
        return load()
    with _REGISTRY_LOCK:
        found = _LOADED.get(key)
        if found is not None:
            return found
        gate = _LOADING.setdefault(key, threading.Lock())
    with gate:
        with _REGISTRY_LOCK:
            found = _LOADED.get(key)
        if found is not None:
            return found
        try:
            loaded = load()
            with _REGISTRY_LOCK:
                _LOADED[key] = loaded
        finally:
            with _REGISTRY_LOCK:
                if _LOADING.get(key) is gate:
                    del _LOADING[key]
    return loaded


def _frozen(value: Any) -> Hashable:
    """``value`` as a hashable key, mappings and sequences as tuples.

    Raises ``TypeError`` for a value that has none (then nothing is shared).
    """
    if isinstance(value, Mapping):
        items = ((str(k), _frozen(v)) for k, v in value.items())
        return ("mapping", tuple(sorted(items, key=lambda item: item[0])))
    if isinstance(value, list | tuple):
        return ("sequence", tuple(_frozen(v) for v in value))
    hash(value)
    # The type keeps True and 1 (equal, same hash) apart.
    return (type(value).__qualname__, value)


def _where(model: str) -> Hashable:
    """What names the weights: a folder's absolute path and its files' sizes and times, or the id.

    The files' stamps make a folder whose weights were replaced load anew
    instead of sharing the model loaded before.
    """
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return model
    stamps = []
    # Subfolders too: some sentence-transformers layouts keep the weights in
    # a module's folder (0_Transformer/).
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            try:
                stat = os.stat(path)
            except OSError:  # a dangling link: loading will say what is missing
                continue
            stamps.append((os.path.relpath(path, folder), stat.st_size, stat.st_mtime_ns))
    return (str(folder.resolve()), tuple(stamps))


@dataclass(frozen=True)
class LocalScores:
    """What one :meth:`LocalScorer.score_detailed` call computed, in input order.

    ``probabilities`` are zerank's calibrated scores; ``logits`` the raw
    "Yes" logits they come from (the highest over windows); ``windows`` how
    many windows each text was split into (1 when it fit the context).
    """

    probabilities: tuple[float, ...]
    logits: tuple[float, ...]
    windows: tuple[int, ...]


@dataclass(frozen=True)
class LocalStats:
    """How a :class:`LocalScorer` has run so far.

    ``fast`` is whether scores come from the fast path (else from
    ``CrossEncoder.predict``, and ``fast_off_because`` says why);
    ``compile_seconds`` is the time ``torch.compile`` took at load (``None``
    without ``compile``). The counts are the fast path's: ``equal_length_batches``
    held prompts of one length, ``padded_batches`` prompts of several lengths
    (padded at their end), ``padding_tokens`` counts the pad tokens those
    carried and ``prompt_tokens`` the tokens of every prompt scored (windows
    counted). No batch needs a padding mask.
    """

    fast: bool
    fast_off_because: str | None
    compile_seconds: float | None
    equal_length_batches: int
    padded_batches: int
    prompt_tokens: int
    padding_tokens: int


class LocalScorer:
    """Score with zerank's open weights in this process.

    ``model`` is a Hugging Face id or a local folder; it must load as a
    sentence-transformers ``CrossEncoder`` with a "Yes" ``LogitScore`` head and
    the generation prompt, as ``zeroentropy/zerank-2-reranker`` (default, 4B,
    32k context) and ``zeroentropy/zerank-1-small`` (1.7B) do. Licences
    differ: zerank-2-reranker is CC-BY-NC-4.0 (non-commercial; ZeroEntropy
    sells commercial licences), zerank-1-small is Apache-2.0.

    ``device`` defaults to CUDA, then Apple MPS, then CPU; ``dtype`` to
    bfloat16 on CUDA (float16 where unsupported), float16 on MPS, float32 on
    CPU. ``max_length`` caps the tokens of one prompt (default: the model's
    own limit). Texts are sorted by token count and grouped so that each
    padded batch holds at most ``batch_tokens`` tokens and ``max_batch_size``
    texts; scores come back in input order.

    A text too long for ``max_length`` once the query and template are counted
    is split into windows of whole tokens that share ``window_overlap`` tokens;
    each window is scored and the text gets the highest score (a relevant
    passage anywhere makes the text relevant). :meth:`score_detailed` reports
    the window count per text.

    ``local_files_only`` (default: True when :func:`weights_available`) stops
    sentence-transformers from contacting the Hub. ``model_kwargs`` go to
    ``from_pretrained``, e.g. ``{"attn_implementation": "flash_attention_2"}``.

    ``fast`` picks how the model runs. The fast path (default, ``None``: when
    the model supports it) takes the CrossEncoder's own rendered prompts, runs
    the base model on length-sorted batches with no padding mask (SDPA's fused
    causal kernel: a shorter prompt is padded at its end, where causal
    attention keeps the pad tokens out of its positions) and applies only the
    "Yes" row of the output head to each prompt's last real position. It is
    checked against ``CrossEncoder.predict`` at load, on two prompts of
    different lengths in one batch. ``False`` scores through
    ``CrossEncoder.predict``; ``True`` insists on the fast path.
    ``compile=True`` runs the fast path's batches under
    ``torch.compile(dynamic=True)`` (a mapping gives ``torch.compile``'s
    keyword arguments instead); it compiles at load, and :attr:`stats`
    reports how long that took.

    The model is used under a lock, so one scorer can be shared by threads;
    :meth:`ascore` runs in a worker thread and does not block the event loop.

    Scorers built in one process with the same load settings (``model`` —
    a folder by its absolute path and its files' times —, ``revision``,
    ``device``, ``dtype``, ``max_length``, ``local_files_only``,
    ``cache_folder``, ``model_kwargs``, whether the fast path is allowed,
    ``compile``) share one loaded model and take turns on it; it is freed
    when the last of them is. A pickle holds the settings, not the weights.

    Other cross-encoders: a model that does not load as a zerank reranker is
    refused, unless ``scale`` declares what its head returns (the output of
    ``CrossEncoder.predict`` with an identity activation): ``"logit"`` for
    the usual one-label classification head (MiniLM, bge rerankers), or
    ``"sigmoid"`` / ``"probability"`` for a head whose numbers are already in
    [0, 1]. Such a model's scores are ``sigmoid(logit)`` (or the head's value,
    checked to be in [0, 1]): they order texts, but a threshold on them means
    nothing until a calibrator is fitted, so :attr:`scale` is
    ``Scale.UNCALIBRATED`` and :attr:`calibrated` is False. They run through
    ``CrossEncoder.predict`` (the fast path is zerank's). A zerank reranker
    keeps its calibrated scale; declaring ``scale="logit"`` for it changes
    nothing, another scale is refused.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        device: str | None = None,
        dtype: Any = None,
        max_length: int | None = None,
        batch_tokens: int = 16_384,
        max_batch_size: int = 256,
        window_overlap: int = 64,
        local_files_only: bool | None = None,
        revision: str | None = None,
        cache_folder: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        fast: bool | None = None,
        compile: bool | Mapping[str, Any] = False,
        scale: Scale | str | None = None,
    ) -> None:
        declared = _declared_scale(scale)
        if not isinstance(model, str | os.PathLike) or not os.fspath(model):
            raise ConfigurationError(f"model must be a model id or a folder, got {model!r}")
        model = os.fspath(model)
        if batch_tokens < 1:
            raise ConfigurationError(f"batch_tokens must be >= 1, got {batch_tokens}")
        if max_batch_size < 1:
            raise ConfigurationError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if window_overlap < 0:
            raise ConfigurationError(f"window_overlap must be >= 0, got {window_overlap}")
        if max_length is not None and max_length < 1:
            raise ConfigurationError(f"max_length must be >= 1, got {max_length}")
        if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().is_dir():
            raise ConfigurationError(f"model folder {model!r} does not exist")
        if fast is not None and not isinstance(fast, bool):
            raise ConfigurationError(f"fast must be True, False or None, got {fast!r}")
        if not isinstance(compile, bool | Mapping):
            raise ConfigurationError(
                f"compile must be a bool or a mapping of torch.compile arguments, got {compile!r}"
            )
        if compile is not False and fast is False:
            raise ConfigurationError("compile needs the fast path; leave fast=None or True")

        # What a pickle holds: the arguments as given, so that another process
        # picks its own device and dtype where they were left to the defaults.
        self._arguments: dict[str, Any] = {
            "model": model,
            "device": device,
            "dtype": dtype,
            "max_length": max_length,
            "batch_tokens": batch_tokens,
            "max_batch_size": max_batch_size,
            "window_overlap": window_overlap,
            "local_files_only": local_files_only,
            "revision": revision,
            "cache_folder": cache_folder,
            "model_kwargs": None if model_kwargs is None else dict(model_kwargs),
            "fast": fast,
            "compile": dict(compile) if isinstance(compile, Mapping) else compile,
            "scale": None if declared is None else declared.value,
        }
        _import_sentence_transformers()
        torch = _import_torch()
        self.model = model
        self.device = select_device(device)
        self.dtype = _select_dtype(dtype, self.device)
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.window_overlap = window_overlap
        self._revision = revision
        if local_files_only is None:
            local_files_only = weights_available(model, cache_dir=cache_folder)
        self._identity = torch.nn.Identity()
        self._meter = UsageMeter()
        self._batches = {"equal_length": 0, "padded": 0, "prompt_tokens": 0, "padding_tokens": 0}

        # Everything that goes into loading the model or changes the loaded
        # object; batch_tokens, max_batch_size and window_overlap only plan work.
        key: Hashable | None
        try:
            key = (
                _where(model),
                revision,
                self.device,
                self.dtype,
                max_length,
                local_files_only,
                cache_folder,
                _frozen(model_kwargs or {}),
                fast is not False,
                None if compile is False else _frozen(compile if compile is not True else {}),
            )
        except TypeError:  # model_kwargs that cannot be compared: load a private copy
            key = None
        loaded = _shared_model(
            key,
            lambda: self._load(
                max_length=max_length,
                local_files_only=local_files_only,
                revision=revision,
                cache_folder=cache_folder,
                model_kwargs=model_kwargs,
                fast=fast,
                compile=compile,
            ),
        )
        # Held for as long as this scorer lives: the shared model is freed with its last holder.
        self._loaded = loaded
        self._cross_encoder = loaded.cross_encoder
        self._tokenizer = loaded.cross_encoder.tokenizer
        self.max_length: int = loaded.max_length
        self._lock = loaded.lock
        self._fast: _FastPath | None = loaded.fast
        self._fast_problem: str | None = loaded.fast_problem
        self._compile_seconds: float | None = loaded.compile_seconds
        problems = loaded.not_zerank
        if problems and declared is None:
            raise ConfigurationError(
                f"{model!r} does not load as a zerank reranker: {'; '.join(problems)}. "
                "A zerank model needs the sentence-transformers configuration zerank's "
                "repositories ship (modules.json, sentence_bert_config.json, 1_LogitScore); "
                "update the download. For another cross-encoder, declare what its head "
                "returns: scale='logit' (most rerankers), 'sigmoid' or 'probability'; its "
                "scores are then uncalibrated until a calibrator is fitted"
            )
        if not problems and declared not in (None, Scale.LOGIT):
            raise ConfigurationError(
                f"{model!r} is a zerank reranker, whose head returns the raw logit: leave "
                f"scale unset (or 'logit'), got {declared.value!r}"
            )
        self.calibrated: bool = not problems
        """Whether scores are zerank's calibrated probabilities (False: another
        cross-encoder, uncalibrated until a calibrator is fitted)."""
        self.output_scale: Scale = Scale.LOGIT if declared is None or not problems else declared
        """What the model's head returns: the raw logit for zerank, else the declared scale."""
        if fast and self._fast is None:
            raise ConfigurationError(
                f"the fast path does not support {model!r}: {self._fast_problem}; "
                "pass fast=False (or leave fast unset)"
            )

    def _load(
        self,
        *,
        max_length: int | None,
        local_files_only: bool,
        revision: str | None,
        cache_folder: str | None,
        model_kwargs: Mapping[str, Any] | None,
        fast: bool | None,
        compile: bool | Mapping[str, Any],
    ) -> _LoadedModel:
        """Load the model, check whether it is a zerank reranker, build and check the fast path.

        The fast path is built for zerank rerankers only; another cross-encoder
        loads with what makes it not one recorded in ``not_zerank``.
        """
        cross_encoder_cls, logit_score_cls = _import_sentence_transformers()
        torch = _import_torch()
        model = self.model
        try:
            self._cross_encoder = cross_encoder_cls(
                model,
                device=self.device,
                model_kwargs={**(model_kwargs or {}), "dtype": self.dtype},
                activation_fn=torch.nn.Identity(),  # raw logit; calibrated below
                local_files_only=local_files_only,
                revision=revision,
                cache_folder=cache_folder,
            )
        except OSError as exc:
            where = "on this machine" if local_files_only else "on this machine or downloadable"
            raise ConfigurationError(
                f"cannot load {model!r}: its weights are not {where} ({exc}). "
                f"Download them with `hf download {model}`, or pass a local folder"
            ) from exc
        not_zerank = tuple(self._zerank_problems(logit_score_cls))

        limit = self._cross_encoder.max_seq_length
        if max_length is not None:
            if limit is not None and max_length > limit:
                raise ConfigurationError(
                    f"max_length must be <= {limit}, the limit of {model!r}; got {max_length}"
                )
            self._cross_encoder.max_seq_length = max_length
            limit = max_length
        if limit is None:
            raise ConfigurationError(f"{model!r} declares no maximum length; pass max_length=...")
        self.max_length = int(limit)
        self._tokenizer = self._cross_encoder.tokenizer
        compile_seconds: float | None = None
        self._fast = None
        problem: str | None = "fast=False was passed"
        if not_zerank:
            problem = "the fast path runs zerank rerankers only"
        elif fast is not False:
            built = _FastPath.build(self._cross_encoder)
            if isinstance(built, str):
                problem = built
            else:
                self._fast = built
                problem = self._check_fast_path()
                if problem is not None:
                    self._fast = None
        if compile is not False:
            if self._fast is None:
                raise ConfigurationError(
                    f"compile needs the fast path, which {model!r} does not support: {problem}"
                )
            options = dict(compile) if isinstance(compile, Mapping) else {}
            compile_seconds = self._fast.compile(options)
        return _LoadedModel(
            cross_encoder=self._cross_encoder,
            max_length=self.max_length,
            fast=self._fast,
            fast_problem=problem,
            compile_seconds=compile_seconds,
            lock=threading.Lock(),
            not_zerank=not_zerank,
        )

    def _zerank_problems(self, logit_score_cls: Any) -> list[str]:
        """What makes the loaded model not a zerank reranker (empty: it is one).

        A folder that loads as some other scorer gives plausible-looking
        numbers on another scale, so it is refused unless its scale is declared.
        """
        modules = list(self._cross_encoder)
        transformer, head = modules[0], modules[-1]
        problems = []
        if getattr(transformer, "transformer_task", None) != "text-generation":
            problems.append("it is not a causal language model")
        if not isinstance(head, logit_score_cls) or head.false_token_id is not None:
            problems.append(f"its head is {head!r}, not a LogitScore on {YES_TOKEN!r} alone")
        else:
            token = self._cross_encoder.tokenizer.convert_ids_to_tokens(head.true_token_id)
            if token != YES_TOKEN:
                problems.append(f"its LogitScore reads token {token!r}, not {YES_TOKEN!r}")
        chat = (getattr(transformer, "processing_kwargs", None) or {}).get("chat_template", {})
        if not chat.get("add_generation_prompt"):
            problems.append("its chat template is not rendered with the generation prompt")
        return problems

    @property
    def scale(self) -> Scale:
        """zerank's calibrated probabilities, or ``UNCALIBRATED`` for another cross-encoder."""
        return Scale.PROBABILITY if self.calibrated else Scale.UNCALIBRATED

    @property
    def usage(self) -> Usage:
        """Calls, texts and prompt tokens (template, query and text; windows counted) so far."""
        return self._meter.usage

    @property
    def stats(self) -> LocalStats:
        """Which path scores, the compile time, and the batches run so far."""
        with self._lock:
            counts = dict(self._batches)
        return LocalStats(
            fast=self._fast is not None,
            fast_off_because=self._fast_problem,
            compile_seconds=self._compile_seconds,
            equal_length_batches=counts["equal_length"],
            padded_batches=counts["padded"],
            prompt_tokens=counts["prompt_tokens"],
            padding_tokens=counts["padding_tokens"],
        )

    @property
    def cross_encoder(self) -> Any:
        """The underlying sentence-transformers ``CrossEncoder`` (returns raw logits).

        Shared with every scorer of the same load settings: changing it changes them all.
        """
        return self._cross_encoder

    @property
    def cache_identity(self) -> str:
        """The settings that change this scorer's scores: weights, precision, windows.

        A model folder is named by its path: after replacing the weights in
        the same folder, clear the cache.
        """
        settings: dict[str, object] = {
            "model": self.model,
            "revision": self._revision,
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_length": self.max_length,
            "window_overlap": self.window_overlap,
            "instruction": INSTRUCTION_CONVENTION,
        }
        if not self.calibrated:
            settings["output_scale"] = self.output_scale.value
        return fingerprint("local", **settings)

    def __reduce__(self) -> tuple[Any, ...]:
        # A pickle holds the settings, never the weights: unpickled in this
        # process the scorer shares the loaded model, elsewhere it loads it.
        return (rebuild, (type(self), dict(self._arguments)))

    def __repr__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        declared = "" if self.calibrated else f", scale={self.output_scale.value!r}"
        return (
            f"LocalScorer(model={self.model!r}, device={self.device!r}, dtype={dtype!r}{declared})"
        )

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """One calibrated probability per text, in input order; see :class:`LocalScorer`."""
        return list(self.score_detailed(query, texts, instruction=instruction).probabilities)

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Async :meth:`score`, run in a worker thread."""
        return await asyncio.to_thread(self.score, query, texts, instruction=instruction)

    def score_detailed(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> LocalScores:
        """Probabilities, raw logits and window counts per text, in input order.

        A blank text is not run through the model: probability 0.0, logit
        ``-inf``, 0 windows.
        """
        return self._detailed_many([(query, texts, instruction)])[0]

    def score_many(
        self,
        items: Sequence[Any],
        *,
        on_batch: Callable[[int, Sequence[int], Sequence[float]], None] | None = None,
    ) -> list[list[float]]:
        """Several queries' texts as one job: their prompts share the model's batches.

        ``items`` are ``(query, texts)`` or ``(query, texts, instruction)``
        tuples, or objects with ``query``, ``texts`` and ``instruction``
        attributes. Returns one probability list per item, as :meth:`score`
        would. ``on_batch(item, indices, scores)`` is called once per item
        when the job is done.
        """
        results = self._detailed_many(items)
        out = [list(r.probabilities) for r in results]
        if on_batch is not None:
            for position, scores in enumerate(out):
                on_batch(position, range(len(scores)), scores)
        return out

    async def ascore_many(
        self,
        items: Sequence[Any],
        *,
        on_batch: Callable[[int, Sequence[int], Sequence[float]], None] | None = None,
    ) -> list[list[float]]:
        """Async :meth:`score_many`, run in a worker thread."""
        return await asyncio.to_thread(self.score_many, items, on_batch=on_batch)

    def _detailed_many(self, items: Sequence[Any]) -> list[LocalScores]:
        if isinstance(items, str | bytes) or not isinstance(items, Sequence):
            raise ConfigurationError(
                f"items must be a sequence of (query, texts) items, got {type(items).__name__}"
            )
        jobs: list[tuple[str, list[str]]] = []
        kept: list[list[int]] = []
        sizes: list[int] = []
        for position, item in enumerate(items):
            query, texts, instruction = _unpack_item(item, position)
            query = check_query(query)
            texts = check_texts(texts)
            keep = [i for i, text in enumerate(texts) if not is_blank(text)]
            jobs.append((query_with_instruction(query, instruction), [texts[i] for i in keep]))
            kept.append(keep)
            sizes.append(len(texts))
        with self._lock:
            scored = self._score_locked([job for job in jobs if job[1]])
        results: list[LocalScores] = []
        done = iter(scored)
        for (_, texts), keep, n in zip(jobs, kept, sizes, strict=True):
            one = next(done) if texts else LocalScores((), (), ())
            if len(keep) == n:
                results.append(one)
                continue
            probabilities, logits, windows = [0.0] * n, [-math.inf] * n, [0] * n
            for position, index in enumerate(keep):
                probabilities[index] = one.probabilities[position]
                logits[index] = one.logits[position]
                windows[index] = one.windows[position]
            results.append(LocalScores(tuple(probabilities), tuple(logits), tuple(windows)))
        return results

    def windows(self, query: str, text: str, *, instruction: str | None = None) -> list[str]:
        """The pieces ``text`` is scored as with this query: ``[text]`` when it fits.

        Longer texts become windows of whole tokens, ``window_overlap`` tokens
        shared between neighbours, the last one ending at the text's end.
        """
        if not isinstance(text, str):
            raise ConfigurationError(f"text must be a str, got {type(text).__name__}")
        full_query = query_with_instruction(query, instruction)
        with self._lock:
            return self._split(full_query, [text])[1]

    def _split(self, query: str, texts: list[str]) -> tuple[int, list[str], list[int], list[int]]:
        """``(prompt overhead, pieces, piece token counts, owning text of each piece)``."""
        overhead = self._prompt_tokens(query, "")
        window = self.max_length - overhead - _EDGE_MARGIN
        if window < 1:
            raise ConfigurationError(
                f"the query takes {overhead} tokens with the chat template, which leaves no room "
                f"for a text within max_length={self.max_length}; shorten the query or instruction"
            )
        if self.window_overlap >= window:
            raise ConfigurationError(
                f"window_overlap must be smaller than the {window}-token text window left by "
                f"max_length={self.max_length} and this query; got {self.window_overlap}"
            )
        # One tokenization measures every text and gives the character offsets
        # that windows are cut at.
        encoded = self._tokenizer(
            texts,
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            verbose=False,
        )
        pieces: list[str] = []
        lengths: list[int] = []
        owners: list[int] = []
        for index, (text, ids, offsets) in enumerate(
            zip(texts, encoded["input_ids"], encoded["offset_mapping"], strict=True)
        ):
            n = len(ids)
            if n <= window:
                pieces.append(text)
                lengths.append(n)
                owners.append(index)
                continue
            for start in _window_starts(n, window, self.window_overlap):
                end = start + window
                pieces.append(text[offsets[start][0] : offsets[end - 1][1]])
                lengths.append(window)
                owners.append(index)
        return overhead, pieces, lengths, owners

    def _score_locked(self, jobs: list[tuple[str, list[str]]]) -> list[LocalScores]:
        """Score every (query, texts) job; all their prompts go through one batch plan."""
        queries: list[str] = []
        pieces: list[str] = []
        lengths: list[int] = []
        owners: list[tuple[int, int]] = []
        for number, (query, texts) in enumerate(jobs):
            overhead, job_pieces, job_lengths, job_owners = self._split(query, texts)
            queries += [query] * len(job_pieces)
            pieces += job_pieces
            # Whole-prompt lengths, so that prompts of different queries plan together.
            lengths += [n + overhead for n in job_lengths]
            owners += [(number, owner) for owner in job_owners]
        pairs = list(zip(queries, pieces, strict=True))
        if self._fast is not None:
            values, batch_of, sizes, tokens = self._fast_logits(pairs, lengths)
        else:
            values, batch_of, sizes = self._predict_logits(pairs, lengths)
            tokens = list(lengths)
        # Max-pooling over windows; every text has at least one piece, so no
        # -inf survives.
        logits = [[-math.inf] * len(texts) for _, texts in jobs]
        windows = [[0] * len(texts) for _, texts in jobs]
        used = [0] * len(jobs)
        for piece, value in enumerate(values):
            job, owner = owners[piece]
            self._check_output(value, owner, batch_of[piece], sizes[batch_of[piece]])
            logits[job][owner] = max(logits[job][owner], value)
            windows[job][owner] += 1
            used[job] += tokens[piece]

        results = []
        for job, (_, texts) in enumerate(jobs):
            probabilities = tuple(self._to_score(x) for x in logits[job])
            self._meter.add(texts=len(texts), total_tokens=used[job])
            results.append(LocalScores(probabilities, tuple(logits[job]), tuple(windows[job])))
        return results

    def _to_score(self, value: float) -> float:
        """One head output (checked by :meth:`_check_output`) as this scorer's score."""
        if self.calibrated:
            # zerank's calibration, in its one place: p = sigmoid(logit / 5).
            return to_probability(value, Scale.LOGIT)
        if self.output_scale is Scale.LOGIT:
            # Another cross-encoder: sigmoid(logit) orders texts in [0, 1], uncalibrated.
            return 1.0 / (1.0 + math.exp(-value)) if value >= 0 else _sigmoid_negative(value)
        return value

    def _check_output(self, value: float, owner: int, batch: int, batch_size: int) -> None:
        """Refuse a head output that is not finite, or not on the declared scale."""
        if not math.isfinite(value):
            raise InvalidResponseError(
                f"logit for text {owner} is {value} (numeric overflow? try dtype='float32')",
                batch=batch,
                batch_size=batch_size,
            )
        if self.output_scale is not Scale.LOGIT and not 0.0 <= value <= 1.0:
            raise InvalidResponseError(
                f"the model returned {value} for text {owner}, outside [0, 1], which its "
                f"declared {self.output_scale.value!r} scale cannot be; declare scale='logit' "
                "for a head that returns logits",
                batch=batch,
                batch_size=batch_size,
            )

    def _predict_logits(
        self, pairs: list[tuple[str, str]], lengths: list[int]
    ) -> tuple[list[float], list[int], list[int]]:
        """Raw logits per prompt through ``CrossEncoder.predict``; also each prompt's batch."""
        batches = plan_token_batches(
            lengths, batch_tokens=self.batch_tokens, max_batch_size=self.max_batch_size
        )
        values = [math.nan] * len(pairs)
        batch_of = [0] * len(pairs)
        for number, batch in enumerate(batches):
            out = self._cross_encoder.predict(
                [pairs[i] for i in batch],
                batch_size=len(batch),
                activation_fn=self._identity,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
            if len(out) != len(batch):
                raise InvalidResponseError(
                    f"the model returned {len(out)} scores", batch=number, batch_size=len(batch)
                )
            for piece, raw in zip(batch, out.tolist(), strict=True):
                values[piece] = float(raw)
                batch_of[piece] = number
        return values, batch_of, [len(b) for b in batches]

    def _render(self, pairs: list[tuple[str, str]], lengths: list[int]) -> list[Any]:
        """Each pair's prompt token ids (a 1-D tensor), rendered by the CrossEncoder itself.

        Going through ``preprocess`` keeps the prompt exactly the one
        ``predict`` builds (chat template, roles, generation prompt). Pairs
        are rendered in length order, so the padding stripped here is small.
        """
        order = sorted(range(len(pairs)), key=lambda i: -lengths[i])
        prompts: list[Any] = [None] * len(pairs)
        for start in range(0, len(order), _RENDER_CHUNK):
            chunk = order[start : start + _RENDER_CHUNK]
            features = self._cross_encoder.preprocess([pairs[i] for i in chunk])
            ids = features["input_ids"]
            counts = features["attention_mask"].sum(dim=1).tolist()
            width = ids.shape[1]
            # Padding is on the left (sentence-transformers enforces it).
            for row, index in enumerate(chunk):
                prompts[index] = ids[row, width - int(counts[row]) :]
        return prompts

    def _fast_logits(
        self, pairs: list[tuple[str, str]], lengths: list[int]
    ) -> tuple[list[float], list[int], list[int], list[int]]:
        """Raw logits per pair on the fast path, each pair's batch, batch sizes, prompt tokens."""
        fast = self._fast
        assert fast is not None
        torch = _import_torch()
        prompts = self._render(pairs, lengths)
        sizes = [int(p.shape[0]) for p in prompts]
        plan = plan_padded_batches(
            sizes, batch_tokens=self.batch_tokens, max_batch_size=self.max_batch_size
        )
        batch_of = [0] * len(pairs)
        outputs = []
        padding = padded = 0
        with torch.inference_mode():
            for number, batch in enumerate(plan):
                width = max(sizes[i] for i in batch)
                # Pad at the end, no mask: under causal attention a prompt's
                # positions never see the pad tokens after it.
                ids = torch.full((len(batch), width), fast.pad_id, dtype=torch.long)
                for row, index in enumerate(batch):
                    batch_of[index] = number
                    ids[row, : sizes[index]] = prompts[index]
                last = torch.tensor([sizes[i] - 1 for i in batch], dtype=torch.long)
                pads = len(batch) * width - sum(sizes[i] for i in batch)
                padding += pads
                padded += pads > 0
                outputs.append(
                    fast.logits(
                        ids.to(fast.device, non_blocking=True),
                        last.to(fast.device, non_blocking=True),
                    )
                )
            # One transfer at the end: the device never waits for the host between batches.
            flat = torch.cat(outputs).tolist() if outputs else []
        values = [math.nan] * len(pairs)
        for value, index in zip(flat, (i for batch in plan for i in batch), strict=True):
            values[index] = float(value)
        self._batches["equal_length"] += len(plan) - padded
        self._batches["padded"] += padded
        self._batches["prompt_tokens"] += sum(sizes)
        self._batches["padding_tokens"] += padding
        return values, batch_of, [len(b) for b in plan], sizes

    def _check_fast_path(self) -> str | None:
        """Why the fast path disagrees with ``CrossEncoder.predict``, or None.

        Two pairs of different lengths share one batch, so the shorter is
        padded at its end: a model whose attention is not causal fails here.
        """
        pairs = [_CHECK_PAIR, _CHECK_SHORT]
        torch = _import_torch()
        fast = self._fast_logits(pairs, [2, 1])[0]
        self._batches = dict.fromkeys(self._batches, 0)
        for pair, got in zip(pairs, fast, strict=True):
            reference = float(
                self._cross_encoder.predict(
                    [pair],
                    activation_fn=self._identity,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                )[0]
            )
            # Loose in half precision, where the two paths round differently; a
            # wrong head, a post-head transform or non-causal attention is off by far more.
            tolerance = 1e-3 if self.dtype == torch.float32 else 0.05 + 0.02 * abs(reference)
            if abs(got - reference) > tolerance:
                return (
                    f"it gives the logit {got:.4f} where CrossEncoder.predict gives "
                    f"{reference:.4f} on {pair!r}"
                )
        return None

    def _prompt_tokens(self, query: str, text: str) -> int:
        """Tokens of the full prompt for one pair, as the model will see it."""
        features = self._cross_encoder.preprocess([(query, text)])
        return int(features["input_ids"].shape[-1])


def _sigmoid_negative(value: float) -> float:
    e = math.exp(value)
    return e / (1.0 + e)


def _declared_scale(scale: object) -> Scale | None:
    """``scale`` as a :class:`Scale` a model's head can return, or None when not declared."""
    if scale is None:
        return None
    try:
        declared = Scale(str(scale))
    except ValueError:
        declared = None
    if declared is None or declared is Scale.UNCALIBRATED:
        raise ConfigurationError(
            f"scale must be 'logit', 'sigmoid' or 'probability' (what the model's head "
            f"returns), got {scale!r}"
        )
    return declared


def _unpack_item(item: Any, position: int) -> tuple[Any, Any, str | None]:
    """``(query, texts, instruction)`` of one :meth:`LocalScorer.score_many` item."""
    if isinstance(item, tuple) and len(item) in (2, 3):
        return item[0], item[1], item[2] if len(item) == 3 else None
    if hasattr(item, "query") and hasattr(item, "texts"):
        return item.query, item.texts, getattr(item, "instruction", None)
    raise ConfigurationError(
        f"items[{position}] must be a (query, texts[, instruction]) tuple or have query and "
        f"texts attributes, got {type(item).__name__}"
    )


def plan_padded_batches(
    lengths: Sequence[int], *, batch_tokens: int, max_batch_size: int
) -> list[list[int]]:
    """Batches of prompt indices for the fast path, longest first.

    Prompts sorted by length (ties in input order) fill a batch while its
    padded size (prompts x longest) stays within ``batch_tokens`` and it holds
    at most ``max_batch_size`` prompts, each at most 12.5 % shorter than the
    batch's longest, so that pad tokens stay under 12.5 % of a batch. A
    prompt longer than ``batch_tokens`` gets a batch of its own.
    """
    if batch_tokens < 1:
        raise ConfigurationError(f"batch_tokens must be >= 1, got {batch_tokens}")
    if max_batch_size < 1:
        raise ConfigurationError(f"max_batch_size must be >= 1, got {max_batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    plan: list[list[int]] = []
    current: list[int] = []
    width = 0
    for index in order:
        if current and (
            len(current) >= max_batch_size
            or (len(current) + 1) * width > batch_tokens
            or lengths[index] < width * (1 - _MAX_PADDING)
        ):
            plan.append(current)
            current = []
        if not current:
            width = lengths[index]
        current.append(index)
    if current:
        plan.append(current)
    return plan


class _FastPath:
    """A causal LM's base model and the "Yes" row of its output head.

    Running the base model and taking one dot product at the last position
    gives the same logit as the full model's head, without computing (or
    keeping) the other vocabulary entries.
    """

    # Config fields of architectures that transform logits after the head; the
    # fast path would skip that step, so such models use the reference path.
    _POST_HEAD = ("final_logit_softcapping", "logit_scale", "logits_scaling")

    def __init__(self, decoder: Any, yes_row: Any, yes_bias: Any, pad_id: int, device: Any):
        self.decoder = decoder
        self.yes_row = yes_row
        self.yes_bias = yes_bias
        self.pad_id = pad_id
        self.device = device
        self._torch = _import_torch()
        self._compiled: Any = None

    @classmethod
    def build(cls, cross_encoder: Any) -> _FastPath | str:
        """The fast path for this CrossEncoder, or why it cannot have one."""
        torch = _import_torch()
        transformer, head = cross_encoder[0], cross_encoder[-1]
        model = getattr(transformer, "model", None)
        get_decoder = getattr(model, "get_decoder", None)
        get_head = getattr(model, "get_output_embeddings", None)
        if not callable(get_decoder) or not callable(get_head):
            return "its model has no separate decoder and output head"
        decoder, output = get_decoder(), get_head()
        if decoder is None or not isinstance(output, torch.nn.Linear):
            return f"its output head is {type(output).__name__}, not a linear layer"
        config = getattr(model, "config", None)
        for name in cls._POST_HEAD:
            value = getattr(config, name, None)
            if value not in (None, 1, 1.0):
                return f"its configuration transforms logits after the head ({name}={value!r})"
        yes = int(head.true_token_id)
        with torch.no_grad():
            # float32 for the one dot product: cheap, and no extra rounding.
            row = output.weight[yes].detach().float()
            bias = None if output.bias is None else output.bias[yes].detach().float()
        pad = cross_encoder.tokenizer.pad_token_id
        return cls(decoder, row, bias, int(pad) if pad is not None else 0, row.device)

    def _last_logit(self, ids: Any, last: Any) -> Any:
        hidden = self.decoder(input_ids=ids, use_cache=False).last_hidden_state
        rows = hidden[self._torch.arange(ids.shape[0], device=ids.device), last]
        logit = rows.float() @ self.yes_row
        return logit if self.yes_bias is None else logit + self.yes_bias

    def logits(self, ids: Any, last: Any) -> Any:
        """The "Yes" logit at position ``last[i]`` of row ``i``; no mask (causal attention)."""
        if self._compiled is not None:
            return self._compiled(ids, last)
        return self._last_logit(ids, last)

    def compile(self, options: dict[str, Any]) -> float:
        """Compile :meth:`logits`; returns the seconds compiling took.

        The warm-up compiles a dynamic graph and the batch of one that torch
        specialises (sizes 0 and 1), so later batches reuse them.
        """
        torch = _import_torch()
        compiled = torch.compile(self._last_logit, **{"dynamic": True, **options})
        start = time.perf_counter()
        with torch.inference_mode():
            for batch, length in ((2, 16), (1, 16)):
                ids = torch.full((batch, length), self.pad_id, dtype=torch.long)
                last = torch.full((batch,), length - 1, dtype=torch.long)
                compiled(ids.to(self.device), last.to(self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._compiled = compiled
        return time.perf_counter() - start
