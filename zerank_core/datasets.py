"""Labelled validation sets: what ``zerank calibrate`` and ``zerank evaluate`` read.

:func:`load_labelled` reads three formats into :class:`LabelledExample` cases
(a query, its units, the indices of the relevant units):

- JSON Lines, one case a line: ``{"query": ..., "units": [...], "relevant":
  [unit indices]}``, with optional ``id``, ``criterion`` (the criterion id a
  per-criterion threshold is fitted for), ``document`` (what groups cases for
  the conformal guarantee) and ``instruction``;
- labelled documents (YAML or JSON): documents in any format
  :func:`~zerank_core.loaders.load_document` reads, a criteria file, and the
  evidence pages of each criterion (an answer key)::

      criteria: criteria.yaml            # paths are relative to this file
      documents:
        - document: packet.txt
          evidence: {DX: [3, 5, 6], HBV: []}

  (or one document with ``document:`` and ``evidence:`` at the top level).
  Every criterion of the criteria file needs an entry; ``[]`` says it has no
  evidence in that document. Empty pages are left out of the units, as
  ``zerank compress`` never scores them;
- a ContractNLI split (``dev.json``/``test.json``), read as below.

ContractNLI as labelled retrieval cases, for measuring evidence recall.

ContractNLI (Koreeda and Manning, 2021; CC BY 4.0) annotates 17 hypotheses
against non-disclosure agreements, with the sentence-level spans that are
evidence for each. Here a hypothesis is a criterion (the query), and
Entailment and Contradiction evidence both count as relevant: a reviewer
needs the clause that refutes a criterion as much as the one that supports it.

Two views: :func:`span_examples` (one case per contract and hypothesis, the
contract's spans as units) and :func:`page_examples` (several contracts
concatenated and cut into ~2,500-character pages at span boundaries, the
pages as units), which exercises selection on long documents.

The data is read from a folder holding ``dev.json`` and ``test.json``: the
``path`` argument, else ``$ZERANK_CONTRACTNLI_DIR``, else the copy in the
repository's ``benchmarks/data/contractnli`` (CC BY 4.0; it is not part of the
installed package).
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml

from zerank_core.errors import ConfigurationError, DocumentError

__all__ = [
    "CONTRACTNLI_ENV",
    "RELEVANT_CHOICES",
    "Annotation",
    "ContractDocument",
    "ContractNLI",
    "EvidenceExample",
    "Hypothesis",
    "LabelledExample",
    "LabelledSet",
    "contractnli_dir",
    "load_contractnli",
    "load_labelled",
    "page_examples",
    "span_examples",
]

CONTRACTNLI_ENV = "ZERANK_CONTRACTNLI_DIR"
REPOSITORY_CONTRACTNLI_DIR = Path("benchmarks") / "data" / "contractnli"
RELEVANT_CHOICES = frozenset({"Entailment", "Contradiction"})
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Hypothesis:
    """One criterion: its id (``nda-11``), short name and full statement."""

    id: str
    short_description: str
    text: str


@dataclass(frozen=True)
class Annotation:
    """A label for one (contract, hypothesis) pair and its evidence span indices."""

    choice: str
    spans: tuple[int, ...]

    @property
    def is_relevant(self) -> bool:
        """Whether the evidence counts as relevant (Entailment or Contradiction)."""
        return self.choice in RELEVANT_CHOICES


@dataclass(frozen=True)
class ContractDocument:
    """One contract: its text, its spans as ``(start, end)`` offsets, its labels."""

    id: str
    file_name: str
    text: str
    spans: tuple[tuple[int, int], ...]
    annotations: Mapping[str, Annotation]

    @property
    def span_texts(self) -> tuple[str, ...]:
        """The text of each span, in order."""
        return tuple(self.text[start:end] for start, end in self.spans)

    def evidence(self, hypothesis_id: str) -> frozenset[int]:
        """Indices of the spans relevant to a hypothesis (empty if NotMentioned)."""
        annotation = self.annotations.get(hypothesis_id)
        if annotation is None or not annotation.is_relevant:
            return frozenset()
        return frozenset(annotation.spans)


@dataclass(frozen=True)
class ContractNLI:
    """One split of ContractNLI: the hypotheses and the annotated contracts."""

    split: str
    path: Path
    hypotheses: tuple[Hypothesis, ...]
    documents: tuple[ContractDocument, ...]


@dataclass(frozen=True)
class EvidenceExample:
    """A labelled retrieval case: score ``units`` against ``query``.

    ``relevant`` holds the indices of the units that contain evidence;
    ``document_ids`` the contracts the units come from.
    """

    id: str
    hypothesis_id: str
    query: str
    units: tuple[str, ...]
    relevant: frozenset[int]
    document_ids: tuple[str, ...]


def contractnli_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The folder to read ContractNLI from (see the module docstring for the order)."""
    if path is not None:
        return Path(path)
    from_env = os.environ.get(CONTRACTNLI_ENV)
    if from_env:
        return Path(from_env)
    # A clone or an editable install: the copy next to the package.
    beside_package = Path(__file__).resolve().parent.parent / REPOSITORY_CONTRACTNLI_DIR
    if beside_package.is_dir():
        return beside_package
    return Path.cwd() / REPOSITORY_CONTRACTNLI_DIR


def load_contractnli(
    split: str = "test", path: str | os.PathLike[str] | None = None
) -> ContractNLI:
    """Read ``{split}.json`` from the ContractNLI folder."""
    if split not in SPLITS:
        raise ConfigurationError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    folder = contractnli_dir(path)
    file = folder / f"{split}.json"
    if not file.is_file():
        raise ConfigurationError(
            f"ContractNLI file not found: {file}; pass path=... or set {CONTRACTNLI_ENV}"
        )
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DocumentError(f"{file} is not in the ContractNLI format: {exc!r}") from exc
    return _contractnli_from(raw, file, split)


def span_examples(data: ContractNLI) -> list[EvidenceExample]:
    """One case per (contract, hypothesis): the contract's spans are the units.

    Pairs labelled NotMentioned are included with no relevant unit; recall
    figures leave them out, character counts do not.
    """
    return [
        EvidenceExample(
            id=f"{doc.id}/{hypothesis.id}",
            hypothesis_id=hypothesis.id,
            query=hypothesis.text,
            units=doc.span_texts,
            relevant=doc.evidence(hypothesis.id),
            document_ids=(doc.id,),
        )
        for doc in data.documents
        for hypothesis in data.hypotheses
    ]


def page_examples(
    data: ContractNLI,
    *,
    contracts_per_document: int = 10,
    page_chars: int = 2500,
    separator: str = "\n\n",
) -> list[EvidenceExample]:
    """Long documents: consecutive contracts concatenated and cut into pages.

    Contracts are taken ``contracts_per_document`` at a time in file order
    (the last group may be smaller) and joined with ``separator``. The text
    is cut only at span starts, so a page never splits a span: a page holds
    at most ``page_chars`` characters unless one span alone is longer (text
    outside every span, a few characters in ContractNLI, rides along). Every
    character of the joined text is in exactly one page. A page is relevant
    to a hypothesis when it holds an evidence span of any of its contracts.
    One case per (group, hypothesis).
    """
    for name, value in (
        ("contracts_per_document", contracts_per_document),
        ("page_chars", page_chars),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
    examples: list[EvidenceExample] = []
    docs = data.documents
    for first in range(0, len(docs), contracts_per_document):
        group = docs[first : first + contracts_per_document]
        text, offsets = _join(group, separator)
        starts = [
            offset + start
            for doc, offset in zip(group, offsets, strict=True)
            for start, _ in doc.spans
        ]
        ends = [
            offset + end for doc, offset in zip(group, offsets, strict=True) for _, end in doc.spans
        ]
        cuts = _page_cuts(starts, ends, page_chars)
        pages = tuple(text[a:b] for a, b in zip(cuts, [*cuts[1:], len(text)], strict=True))
        name = f"{group[0].id}-{group[-1].id}"
        for hypothesis in data.hypotheses:
            relevant = {
                bisect.bisect_right(cuts, offset + doc.spans[i][0]) - 1
                for doc, offset in zip(group, offsets, strict=True)
                for i in doc.evidence(hypothesis.id)
            }
            examples.append(
                EvidenceExample(
                    id=f"{name}/{hypothesis.id}",
                    hypothesis_id=hypothesis.id,
                    query=hypothesis.text,
                    units=pages,
                    relevant=frozenset(relevant),
                    document_ids=tuple(doc.id for doc in group),
                )
            )
    return examples


def _join(group: Sequence[ContractDocument], separator: str) -> tuple[str, list[int]]:
    offsets = []
    position = 0
    for doc in group:
        offsets.append(position)
        position += len(doc.text) + len(separator)
    return separator.join(doc.text for doc in group), offsets


def _page_cuts(starts: list[int], ends: list[int], page_chars: int) -> list[int]:
    """Page start offsets: a new page begins at the span that would overflow it."""
    cuts = [0]
    for start, end in zip(starts, ends, strict=True):
        if start > cuts[-1] and end - cuts[-1] > page_chars:
            cuts.append(start)
    return cuts


def _document(raw: Mapping[str, Any]) -> ContractDocument:
    text = raw["text"]
    if not isinstance(text, str):
        raise TypeError(f"document {raw.get('id')!r}: text is not a string")
    spans = tuple((int(start), int(end)) for start, end in raw["spans"])
    for index, (start, end) in enumerate(spans):
        if not 0 <= start <= end <= len(text):
            raise ValueError(
                f"document {raw['id']!r}: span {index} {start, end} is outside its text"
            )
    annotations = {}
    for key, value in raw["annotation_sets"][0]["annotations"].items():
        indices = tuple(int(i) for i in value["spans"])
        for i in indices:
            if not 0 <= i < len(spans):
                raise ValueError(f"document {raw['id']!r}: {key} cites span {i} of {len(spans)}")
        annotations[str(key)] = Annotation(choice=str(value["choice"]), spans=indices)
    return ContractDocument(
        id=str(raw["id"]),
        file_name=str(raw["file_name"]),
        text=text,
        spans=spans,
        annotations=MappingProxyType(annotations),
    )


# --- labelled validation sets ---------------------------------------------------------

UnitKind = Literal["pages", "spans"]


@dataclass(frozen=True)
class LabelledExample:
    """A labelled case: score ``units`` against ``query``; ``relevant`` are unit indices.

    ``criterion`` names the criterion the case belongs to (for per-criterion
    thresholds), ``document`` what it was read from (for grouping), and
    ``unit_labels`` what each unit is called in reports (page numbers for
    documents).
    """

    id: str
    query: str
    units: tuple[str, ...]
    relevant: frozenset[int]
    criterion: str | None = None
    document: str | None = None
    instruction: str | None = None
    unit_labels: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LabelledSet:
    """The cases read from ``path``, and which of the formats it was."""

    path: Path
    format: str
    examples: tuple[LabelledExample, ...]

    @property
    def n_with_evidence(self) -> int:
        """Cases with at least one relevant unit."""
        return sum(1 for e in self.examples if e.relevant)


def load_labelled(
    path: str | os.PathLike[str],
    *,
    units: UnitKind = "pages",
    contracts_per_document: int = 10,
    page_chars: int = 2500,
) -> LabelledSet:
    """Read a labelled validation set (see the module docstring for the formats).

    ``units``, ``contracts_per_document`` and ``page_chars`` apply to
    ContractNLI: ``"pages"`` (default) concatenates contracts into long
    documents cut into pages, as :func:`page_examples`; ``"spans"`` keeps
    each contract's annotated spans as units (:func:`span_examples`).
    """
    if units not in ("pages", "spans"):
        raise ConfigurationError(f"units must be 'pages' or 'spans', got {units!r}")
    file = Path(path)
    if not file.is_file():
        raise ConfigurationError(f"labelled set not found: {file}")
    suffix = file.suffix.lower()
    if suffix == ".jsonl":
        return LabelledSet(file, "jsonl", _jsonl_examples(file))
    try:
        text = file.read_text(encoding="utf-8")
        raw = yaml.safe_load(text) if suffix in (".yaml", ".yml") else json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise DocumentError(f"cannot read the labelled set {file}: {exc}") from exc
    if isinstance(raw, dict) and {"labels", "documents"} <= set(raw):
        data = _contractnli_from(raw, file, file.stem)
        if units == "spans":
            cases = span_examples(data)
        else:
            cases = page_examples(
                data, contracts_per_document=contracts_per_document, page_chars=page_chars
            )
        return LabelledSet(
            file,
            f"contractnli-{units}",
            tuple(
                LabelledExample(
                    id=c.id,
                    query=c.query,
                    units=c.units,
                    relevant=c.relevant,
                    criterion=c.hypothesis_id,
                    document="+".join(c.document_ids),
                )
                for c in cases
            ),
        )
    if isinstance(raw, dict) and ("documents" in raw or "document" in raw):
        return LabelledSet(file, "documents", _document_examples(file, raw))
    raise DocumentError(
        f"{file}: not a labelled set: expected .jsonl cases, a ContractNLI split, or "
        "{documents: [{document, evidence}], criteria: FILE}"
    )


def _contractnli_from(raw: Mapping[str, Any], file: Path, split: str) -> ContractNLI:
    try:
        hypotheses = tuple(
            Hypothesis(
                id=str(key), short_description=value["short_description"], text=value["hypothesis"]
            )
            for key, value in raw["labels"].items()
        )
        documents = tuple(_document(d) for d in raw["documents"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DocumentError(f"{file} is not in the ContractNLI format: {exc!r}") from exc
    return ContractNLI(split=split, path=file, hypotheses=hypotheses, documents=documents)


def _jsonl_examples(file: Path) -> tuple[LabelledExample, ...]:
    examples = []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DocumentError(f"cannot read the labelled set {file}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DocumentError(f"{where}: not valid JSON: {exc}") from exc
        if not isinstance(item, dict):
            raise DocumentError(f"{where}: expected an object, got {type(item).__name__}")
        query, units, relevant = item.get("query"), item.get("units"), item.get("relevant")
        if not isinstance(query, str) or not query.strip():
            raise DocumentError(f"{where}: 'query' must be a non-empty string, got {query!r:.60}")
        if not isinstance(units, list) or not units or not all(isinstance(u, str) for u in units):
            raise DocumentError(f"{where}: 'units' must be a non-empty list of strings")
        if not isinstance(relevant, list):
            raise DocumentError(
                f"{where}: 'relevant' must be a list of unit indices, got {relevant!r:.60}"
            )
        for index in relevant:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(units):
                raise DocumentError(
                    f"{where}: relevant index {index!r} is not a unit index (0..{len(units) - 1})"
                )
        optional = {}
        for key in ("id", "criterion", "document", "instruction"):
            value = item.get(key)
            if value is not None and not isinstance(value, str | int):
                raise DocumentError(f"{where}: '{key}' must be a string, got {value!r:.60}")
            optional[key] = None if value is None else str(value)
        examples.append(
            LabelledExample(
                id=optional["id"] or str(number),
                query=query,
                units=tuple(units),
                relevant=frozenset(relevant),
                criterion=optional["criterion"],
                document=optional["document"],
                instruction=optional["instruction"],
            )
        )
    if not examples:
        raise DocumentError(f"{file} holds no labelled case")
    return tuple(examples)


def _document_examples(file: Path, raw: Mapping[str, Any]) -> tuple[LabelledExample, ...]:
    from zerank_core.criteria import load_criteria
    from zerank_core.loaders import load_document

    entries = raw.get("documents")
    if entries is None:
        entries = [{key: raw[key] for key in ("document", "evidence", "criteria") if key in raw}]
    if not isinstance(entries, list) or not entries:
        raise DocumentError(f"{file}: 'documents' must be a non-empty list")
    examples = []
    for position, entry in enumerate(entries, start=1):
        where = f"{file}: documents[{position}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("document"), str):
            raise DocumentError(f"{where} needs 'document': a path")
        criteria_path = entry.get("criteria", raw.get("criteria"))
        if not isinstance(criteria_path, str):
            raise DocumentError(f"{where} needs 'criteria': a path (here or at the top level)")
        evidence = entry.get("evidence")
        if not isinstance(evidence, dict):
            raise DocumentError(f"{where} needs 'evidence': {{criterion id: [page numbers]}}")
        document = load_document(file.parent / entry["document"], ocr=False)
        criteria = load_criteria(file.parent / criteria_path)
        known = {c.id for c in criteria}
        unknown = sorted(str(k) for k in evidence if str(k) not in known)
        if unknown:
            raise DocumentError(f"{where}: evidence for unknown criteria {', '.join(unknown)}")
        missing = [c.id for c in criteria if c.id not in evidence]
        if missing:
            raise DocumentError(
                f"{where}: no evidence entry for {', '.join(missing)} (use [] for none)"
            )
        pages = [p for p in document.pages if not p.is_empty]
        index_of = {p.number: i for i, p in enumerate(pages)}
        name = entry["document"]
        for criterion in criteria:
            numbers = evidence[criterion.id] or []
            if not isinstance(numbers, list):
                raise DocumentError(f"{where}: evidence of {criterion.id} must be a list of pages")
            relevant = set()
            for number in numbers:
                if isinstance(number, bool) or not isinstance(number, int):
                    raise DocumentError(
                        f"{where}: {criterion.id}: page {number!r} is not a page number"
                    )
                if number not in index_of:
                    state = "empty" if 1 <= number <= len(document.pages) else "not in the document"
                    raise DocumentError(
                        f"{where}: {criterion.id}: page {number} of {name} is {state}"
                    )
                relevant.add(index_of[number])
            examples.append(
                LabelledExample(
                    id=f"{name}/{criterion.id}",
                    query=criterion.text,
                    units=tuple(p.text for p in pages),
                    relevant=frozenset(relevant),
                    criterion=criterion.id,
                    document=name,
                    instruction=criterion.instruction or raw.get("instruction"),
                    unit_labels=tuple(str(p.number) for p in pages),
                )
            )
    return tuple(examples)
