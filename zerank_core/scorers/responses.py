"""Reading a backend's answer: raw results, the checks every batch passes, typed errors."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from zerank_core.errors import InvalidResponseError, ZeRankError, as_backend_error
from zerank_core.scorers.protocol import Scale, to_probability

__all__ = [
    "BatchResult",
    "MalformedResponse",
    "json_body",
    "results_from_json",
    "typed_error",
    "validate_batch",
]


class MalformedResponse(Exception):
    """Raised by a backend's ``_request`` when a body cannot be parsed at all.

    :class:`BatchedScorer` reports it as :class:`InvalidResponseError` with the
    batch number, which the backend does not know.
    """


@dataclass(frozen=True)
class BatchResult:
    """What one backend request returned, before validation.

    ``scores`` pairs each returned index (local to the batch) with its raw value.
    """

    scores: list[tuple[object, object]]
    total_tokens: int | None = None


def validate_batch(result: BatchResult, *, batch: int, size: int, scale: Scale) -> list[float]:
    """Check a batch's scores and return them in batch order on ``scale``.

    Every index in ``range(size)`` must appear exactly once with a finite
    number; probabilities and sigmoid values must lie in [0, 1]. Anything else
    raises :class:`InvalidResponseError`: a missing score is never read as 0.
    """
    values: list[float | None] = [None] * size
    for raw_index, raw_value in result.scores:
        if isinstance(raw_index, bool) or not isinstance(raw_index, int):
            raise InvalidResponseError(
                f"index {raw_index!r} is not an integer", batch=batch, batch_size=size
            )
        if not 0 <= raw_index < size:
            raise InvalidResponseError(
                f"index {raw_index} is out of range", batch=batch, batch_size=size
            )
        if values[raw_index] is not None:
            raise InvalidResponseError(
                f"index {raw_index} appears more than once", batch=batch, batch_size=size
            )
        if isinstance(raw_value, bool) or not isinstance(raw_value, int | float):
            raise InvalidResponseError(
                f"score for index {raw_index} is not a number: {raw_value!r}",
                batch=batch,
                batch_size=size,
            )
        value = float(raw_value)
        if not math.isfinite(value):
            raise InvalidResponseError(
                f"score for index {raw_index} is not finite: {value}",
                batch=batch,
                batch_size=size,
            )
        if scale is not Scale.LOGIT and not 0.0 <= value <= 1.0:
            raise InvalidResponseError(
                f"score for index {raw_index} is {value}, outside [0, 1] for scale {scale.value!r}",
                batch=batch,
                batch_size=size,
            )
        values[raw_index] = value
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        raise InvalidResponseError(
            f"no score for indices {missing[:10]}{' ...' if len(missing) > 10 else ''}",
            batch=batch,
            batch_size=size,
        )
    return [to_probability(v, scale) for v in values if v is not None]


def results_from_json(
    payload: object, *, key: str = "relevance_score", where: str = "the backend"
) -> BatchResult:
    """A rerank body's ``results[{index, <key>}]`` (or a bare list of them), unvalidated.

    Values are passed on exactly as JSON decoded them, so :func:`validate_batch`
    sees ``true`` or a string for what it is instead of a number cast from it.
    A body of any other shape raises :class:`MalformedResponse`.
    """
    items = payload.get("results") if isinstance(payload, dict) else payload
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        found = type(items).__name__ if isinstance(payload, dict) else type(payload).__name__
        raise MalformedResponse(
            f"{where} returned an unexpected body shape: expected a list of results, got {found}"
        )
    tokens = None
    if isinstance(payload, dict):
        tokens = payload.get("total_tokens")
        usage = payload.get("usage") or (payload.get("meta") or {}).get("billed_units") or {}
        if tokens is None and isinstance(usage, dict):
            tokens = usage.get("total_tokens")
    return BatchResult(
        scores=[(item.get("index"), item.get(key)) for item in items],
        total_tokens=tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None,
    )


def json_body(content: bytes, *, where: str) -> object:
    """A response body decoded as JSON, or :class:`MalformedResponse` saying why not."""
    if not content.strip():
        raise MalformedResponse(f"{where} returned an empty body")
    try:
        return json.loads(content)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise MalformedResponse(f"{where} returned a body that is not JSON: {exc}") from exc


def typed_error(exc: Exception, *, batch: int, batch_size: int) -> Exception | None:
    """The package error a batch's failure stands for; ``None`` to let it through as is.

    An unreadable body is :class:`InvalidResponseError`, an HTTP-client or SDK
    failure :class:`~zerank_core.errors.BackendError`, both naming the batch.
    """
    if isinstance(exc, MalformedResponse):
        return InvalidResponseError(str(exc), batch=batch, batch_size=batch_size)
    if isinstance(exc, ZeRankError):
        return None
    return as_backend_error(exc, batch=batch, batch_size=batch_size)
