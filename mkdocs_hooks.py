"""MkDocs hook: one API reference page per public module, found at build time.

Every module of ``zerank_core``, ``langchain_zerank`` and ``llamaindex_zerank``
whose name has no leading underscore gets a page holding a single
``::: module`` directive; mkdocstrings lists the module's public members (its
``__all__``) with their signatures. The pages are generated, so a module added
or renamed in the code needs no edit here, and an object that disappears makes
``mkdocs build --strict`` fail where a page still links to it.

The module also holds :class:`SphinxMarkup`, a griffe extension that renders
the docstrings' reStructuredText habits (``:class:`~a.B` ``, code blocks,
doctest lines) as Markdown.
"""

from __future__ import annotations

import pkgutil
import re
import textwrap
from pathlib import Path
from typing import Any

import griffe
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

PACKAGES = ("langchain_zerank", "llamaindex_zerank", "zerank_core")
ROOT = Path(__file__).resolve().parent
REFERENCE = "reference"
# The command line's subcommand modules are its implementation; its reference
# is `zerank --help` and the long-documents guide.
INTERNAL = ("zerank_core.cli.",)


def public_modules(package: str) -> list[str]:
    """Dotted names of ``package`` and its submodules without a private part."""
    names = [package]
    path = [str(ROOT / package)]
    for info in pkgutil.walk_packages(path, prefix=f"{package}."):
        parts = info.name.split(".")
        if any(part.startswith("_") for part in parts) or info.name.startswith(INTERNAL):
            continue
        names.append(info.name)
    return sorted(names)


def page_path(module: str) -> str:
    return f"{REFERENCE}/{module}.md"


def page_text(module: str) -> str:
    return f"# `{module}`\n\n::: {module}\n"


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Fill the nav's "API reference" entry with one page per public module."""
    for entry in config.nav or []:
        if isinstance(entry, dict) and "API reference" in entry:
            sections: list[Any] = [f"{REFERENCE}/index.md"]
            for package in PACKAGES:
                sections.append(
                    {package: [{module: page_path(module)} for module in public_modules(package)]}
                )
            entry["API reference"] = sections
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for package in PACKAGES:
        for module in public_modules(package):
            files.append(File.generated(config, page_path(module), content=page_text(module)))
    return files


_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`~?(?:[^`<]*<)?([^`>]+)>?`")
_CODE_BLOCK = re.compile(r"^( *)\.\. code-block:: *(\w*)\n\n((?:\1 {2,}.*\n|\n)+)", re.MULTILINE)
_DOCTEST = re.compile(r"^( *)(>>> .*\n(?:\1(?:>>>|\.\.\.) .*\n|\1(?!>>>)\S.*\n)*)", re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    target = match[1]
    shown = target.rsplit(".", 1)[-1] if match[0].count("~") else target
    return f"``{shown}``"


def _code_block(match: re.Match[str]) -> str:
    indent, language, body = match[1], match[2] or "python", match[3]
    code = textwrap.dedent(body).strip("\n")
    return f"{indent}```{language}\n{textwrap.indent(code, indent)}\n{indent}```\n\n"


def _doctest(match: re.Match[str]) -> str:
    indent, body = match[1], match[2]
    return f"{indent}```pycon\n{indent}{body}{indent}```\n"


def sphinx_to_markdown(text: str) -> str:
    """Sphinx roles become code spans, ``.. code-block::`` and ``>>>`` lines fences."""
    text = _ROLE.sub(_role, text)
    text = _CODE_BLOCK.sub(_code_block, text if text.endswith("\n") else text + "\n")
    return _DOCTEST.sub(_doctest, text).rstrip("\n")


class SphinxMarkup(griffe.Extension):
    """Render the package's reStructuredText docstring habits as Markdown."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = sphinx_to_markdown(obj.docstring.value)
