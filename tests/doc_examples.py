"""Finding and running the fenced ``python`` blocks of the README and the docs.

A page's blocks run in order in one fresh Python process, as a reader pastes
them one after another into an interpreter: a later block may use the names an
earlier block of the same page defined. Each block is compiled under its page's
path and line numbers, so a traceback points at the Markdown line that failed.

A block whose first line is ``# requires: gpu`` (or ``weights``, ``key``,
``ray-cluster``; several separated by commas) needs something this machine
cannot have: it is checked for syntax only, and reported as skipped with that
reason. Any other ``# requires:`` value is an error, so that the reason stays
one of the four.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ("gpu", "weights", "key", "ray-cluster")
LANGUAGES = ("python", "py")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
_REQUIRES = re.compile(r"^#\s*requires:\s*(?P<what>.+?)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced python block: where it is, its code, and what it requires."""

    path: Path
    line: int
    """Line of the block's first code line in its file, from 1."""
    code: str
    requires: tuple[str, ...]

    @property
    def where(self) -> str:
        try:
            name = self.path.relative_to(ROOT).as_posix()
        except ValueError:
            name = self.path.as_posix()
        return f"{name}:{self.line}"


def doc_pages(root: Path = ROOT) -> list[Path]:
    """The README, the changelog and every Markdown page under ``docs/``."""
    pages = [root / name for name in ("README.md", "CHANGELOG.md") if (root / name).is_file()]
    return pages + sorted((root / "docs").rglob("*.md"))


def requirements(first_line: str, where: str) -> tuple[str, ...]:
    """What a ``# requires: a, b`` first line names; () when it has none."""
    match = _REQUIRES.match(first_line.strip())
    if match is None:
        return ()
    names = tuple(name.strip() for name in match["what"].split(","))
    unknown = [name for name in names if name not in REQUIREMENTS]
    if unknown:
        raise ValueError(
            f"{where}: '# requires:' names {', '.join(map(repr, unknown))}; "
            f"use one or more of {', '.join(REQUIREMENTS)}"
        )
    return names


def find_blocks(path: Path) -> list[Block]:
    """The fenced ``python`` blocks of one Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].strip().split(" ")[0].split("{")[0].lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence) and set(stripped) == {fence[0]}:
                break
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        if language in LANGUAGES and any(line.strip() for line in body):
            first = next(line for line in body if line.strip())
            where = f"{path}:{i + 2}"
            blocks.append(Block(path, i + 2, "\n".join(body) + "\n", requirements(first, where)))
        i = j + 1
    return blocks


# Runs in the child process: reads the blocks as JSON and executes them in one
# namespace, each compiled under its own file name and line numbers.
_RUNNER = """
import ast, json, sys, traceback
blocks = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
for block in blocks:
    tree = ast.parse(block["code"], filename=block["file"])
    ast.increment_lineno(tree, block["line"] - 1)
    try:
        exec(compile(tree, block["file"], "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"example failed: {block['where']}", file=sys.stderr)
        sys.exit(1)
"""


def example_env() -> dict[str, str]:
    """The environment of a fresh shell with no backend configured."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ZERANK_", "ZEROENTROPY_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["MPLBACKEND"] = "Agg"
    return env


def run_blocks(blocks: list[Block], workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run ``blocks`` in order in one new interpreter whose working folder is ``workdir``.

    ``workdir`` gets links to the repository's ``cookbook`` and ``benchmarks``
    folders, so that paths in the examples read as from a clone's root while
    whatever an example writes stays out of the repository.
    """
    for name in ("cookbook", "benchmarks"):
        link = workdir / name
        if not link.exists():
            link.symlink_to(ROOT / name, target_is_directory=True)
    payload = [
        {"file": str(b.path), "line": b.line, "code": b.code, "where": b.where} for b in blocks
    ]
    return subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=example_env(),
        cwd=workdir,
        timeout=600,
        check=False,
    )
