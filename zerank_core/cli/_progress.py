"""Results of a many-document job written as they finish, and a rerun that skips what is done.

Each document's JSON goes into the ``-o`` folder atomically (a temporary file
in the same folder, flushed to disk, then ``os.replace``), as soon as the
document is complete; a crash or a killed driver leaves whole files only.
Then one line is appended to ``.zerank-progress.jsonl`` in that folder: the
file's name, the document, a digest of the job (criteria, selection policy,
backend settings, whether context is included) and the file's SHA-256.

A rerun into the same folder skips a document when its line is there, for
the same job digest, and the file still has that SHA-256. A line cut short by
a crash is ignored; so is a file changed since (it is redone).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from zerank_core.criteria import Criterion
from zerank_core.results import GateResult, JobSummary, dump_result
from zerank_core.select import SelectionPolicy

__all__ = ["PROGRESS_FILE", "ResultFolder", "file_names", "job_digest", "write_atomic"]

PROGRESS_FILE = ".zerank-progress.jsonl"
_TEMPORARY_SUFFIX = ".partial"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the whole new one."""
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}{_TEMPORARY_SUFFIX}"
    try:
        with temporary.open("x", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def job_digest(
    criteria: Sequence[Criterion],
    policy: SelectionPolicy,
    backend: Mapping[str, Any],
    *,
    include_context: bool,
) -> str:
    """What makes a document's result valid for a rerun: criteria, policy, backend, context."""
    job = {
        "criteria": [asdict(c) for c in criteria],
        "policy": asdict(policy),
        "backend": dict(backend),
        "context": include_context,
    }
    canonical = json.dumps(job, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def file_names(sources: Sequence[str]) -> list[str]:
    """One file name per document: its stem, numbered when two documents share one."""
    used = {"summary.json"}
    names = []
    for source in sources:
        stem = Path(source).stem or "document"
        name, number = f"{stem}.json", 1
        while name in used:
            number += 1
            name = f"{stem}-{number}.json"
        used.add(name)
        names.append(name)
    return names


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ResultFolder:
    """The ``-o DIR`` of a many-document job: one file per document, written as each finishes."""

    def __init__(
        self, folder: Path, sources: Sequence[str], job: str, *, include_text: bool = True
    ) -> None:
        self.folder = folder
        self.include_text = include_text
        self.sources = list(sources)
        self.names = file_names(self.sources)
        self.job = job
        folder.mkdir(parents=True, exist_ok=True)
        # Temporary files of a run that was killed while writing: never a result.
        for stale in folder.glob(f".*{_TEMPORARY_SUFFIX}"):
            stale.unlink(missing_ok=True)
        self._progress = folder / PROGRESS_FILE
        self.done = self._already_done()

    def _already_done(self) -> set[int]:
        recorded: dict[str, dict[str, Any]] = {}
        try:
            lines = self._progress.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if isinstance(entry, dict) and entry.get("job") == self.job:
                recorded[str(entry.get("file"))] = entry
        done = set()
        for index, (name, source) in enumerate(zip(self.names, self.sources, strict=True)):
            entry = recorded.get(name)
            if (
                entry is not None
                and entry.get("document") == source
                and entry.get("sha256") == _sha256(self.folder / name)
            ):
                done.add(index)
        return done

    def write(self, index: int, result: GateResult) -> None:
        """Write document ``index``'s result, then record it as done."""
        name = self.names[index]
        text = dump_result(result, include_text=self.include_text)
        write_atomic(self.folder / name, text)
        entry = {
            "file": name,
            "document": self.sources[index],
            "job": self.job,
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        }
        with self._progress.open("a", encoding="utf-8") as log:
            log.write(json.dumps(entry, ensure_ascii=False) + "\n")
            log.flush()
            os.fsync(log.fileno())
        self.done.add(index)

    def finish(self, summary: JobSummary) -> None:
        """Write ``summary.json``: the job's summary and which file holds which document."""
        files = dict(zip(self.sources, self.names, strict=True))
        text = dump_result(summary.model_copy(update={"files": files}))
        write_atomic(self.folder / "summary.json", text)
