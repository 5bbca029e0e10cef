"""ContractNLI as labelled retrieval cases, for measuring evidence recall.

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
``path`` argument, else ``$ZERANK_CONTRACTNLI_DIR``, else
``../shared/data/contractnli`` relative to the current directory. It is never
copied into the package.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from zerank_core.errors import ConfigurationError, DocumentError

__all__ = [
    "CONTRACTNLI_ENV",
    "RELEVANT_CHOICES",
    "Annotation",
    "ContractDocument",
    "ContractNLI",
    "EvidenceExample",
    "Hypothesis",
    "contractnli_dir",
    "load_contractnli",
    "page_examples",
    "span_examples",
]

CONTRACTNLI_ENV = "ZERANK_CONTRACTNLI_DIR"
DEFAULT_CONTRACTNLI_DIR = Path("..") / "shared" / "data" / "contractnli"
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
    return Path.cwd() / DEFAULT_CONTRACTNLI_DIR


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
        hypotheses = tuple(
            Hypothesis(
                id=str(key), short_description=value["short_description"], text=value["hypothesis"]
            )
            for key, value in raw["labels"].items()
        )
        documents = tuple(_document(d) for d in raw["documents"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DocumentError(f"{file} is not in the ContractNLI format: {exc!r}") from exc
    return ContractNLI(split=split, path=file, hypotheses=hypotheses, documents=documents)


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
