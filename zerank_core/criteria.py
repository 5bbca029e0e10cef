"""Criteria: the questions a long document is gated against, from YAML, JSON or text."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from zerank_core.errors import ConfigurationError

__all__ = ["Criterion", "load_criteria", "parse_criteria"]

_CRITERION_KEYS = frozenset({"id", "text", "instruction", "threshold"})


@dataclass(frozen=True)
class Criterion:
    """One thing to find evidence for.

    ``text`` is what the scorer reads as the query. ``instruction`` (appended
    by zerank's convention) and ``threshold`` (the selection floor) override
    the gate's for this criterion only.
    """

    id: str
    text: str
    instruction: str | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise ConfigurationError(f"criterion id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.text, str) or not self.text.strip():
            raise ConfigurationError(f"criterion {self.id!r} needs a non-empty text")
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise ConfigurationError(
                f"criterion {self.id!r}: instruction must be a string, got {self.instruction!r}"
            )
        if self.threshold is not None:
            value = self.threshold
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or math.isnan(value)
                or not 0.0 <= value <= 1.0
            ):
                raise ConfigurationError(
                    f"criterion {self.id!r}: threshold must be in [0, 1], got {value!r}"
                )


def parse_criteria(data: object, *, source: str = "criteria") -> list[Criterion]:
    """Criteria from already-parsed data.

    Accepted: a list whose items are strings or mappings with ``text`` and
    optional ``id``, ``instruction``, ``threshold``; or a mapping
    ``{"criteria": [...], "instruction": ...}`` whose instruction applies to
    every criterion that has none. Ids default to ``C1``, ``C2``, ...
    """
    default_instruction = None
    if isinstance(data, Mapping):
        unknown = sorted(set(map(str, data)) - {"criteria", "instruction"})
        if unknown or "criteria" not in data:
            raise ConfigurationError(
                f"{source}: expected a list of criteria or a mapping with 'criteria' "
                f"(and optionally 'instruction'); got keys {sorted(map(str, data))}"
            )
        default_instruction = data.get("instruction")
        data = data["criteria"]
    if not isinstance(data, list) or not data:
        raise ConfigurationError(f"{source}: expected a non-empty list of criteria")
    criteria = []
    for position, item in enumerate(data, start=1):
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, Mapping):
            raise ConfigurationError(
                f"{source}: criterion {position} must be a string or a mapping, got {item!r:.60}"
            )
        unknown = sorted(set(map(str, item)) - _CRITERION_KEYS)
        if unknown:
            raise ConfigurationError(
                f"{source}: criterion {position} has unknown keys {unknown}; "
                f"allowed: {sorted(_CRITERION_KEYS)}"
            )
        criteria.append(
            Criterion(
                id=str(item.get("id", f"C{position}")),
                text=item.get("text", ""),
                instruction=item.get("instruction", default_instruction),
                threshold=item.get("threshold"),
            )
        )
    seen: set[str] = set()
    for criterion in criteria:
        if criterion.id in seen:
            raise ConfigurationError(f"{source}: criterion id {criterion.id!r} appears twice")
        seen.add(criterion.id)
    return criteria


def load_criteria(path: str | Path) -> list[Criterion]:
    """Criteria from YAML (``.yaml``/``.yml``), JSON, or text (one per line).

    In a text file blank lines and lines starting with ``#`` are skipped.
    YAML and JSON follow :func:`parse_criteria`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read criteria file {path}: {exc}") from exc
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"{path} is not valid YAML: {exc}") from exc
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{path} is not valid JSON: {exc}") from exc
    else:
        data = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    return parse_criteria(data, source=str(path))
