"""Every fenced python block of the README and of docs/ runs offline.

Each page is one test: its blocks run in order in a fresh interpreter with no
backend configured (see ``tests/doc_examples.py``). Blocks marked
``# requires: gpu|weights|key|ray-cluster`` are checked for syntax and
reported as skipped with that reason. ``ZERANK_DOCS_ROOT`` points the
collection at another folder, which the test of a broken example uses.
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doc_examples import ROOT, Block, doc_pages, find_blocks, run_blocks

DOCS_ROOT = Path(os.environ.get("ZERANK_DOCS_ROOT", ROOT))
PAGES = [page for page in doc_pages(DOCS_ROOT) if find_blocks(page)]
MARKED = [block for page in PAGES for block in find_blocks(page) if block.requires]


def page_id(page: Path) -> str:
    return page.relative_to(DOCS_ROOT).as_posix()


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_page_examples_run(page: Path, tmp_path: Path) -> None:
    runnable = [block for block in find_blocks(page) if not block.requires]
    if not runnable:
        pytest.skip("every block on this page is marked '# requires:'")

    result = run_blocks(runnable, tmp_path)

    if result.returncode != 0:
        pytest.fail(f"{result.stderr}\n{result.stdout}", pytrace=False)


@pytest.mark.parametrize("block", MARKED, ids=lambda block: block.where)
def test_marked_example_parses_and_is_skipped_for_its_reason(block: Block) -> None:
    ast.parse(block.code, filename=str(block.path))
    pytest.skip(f"requires: {', '.join(block.requires)}")


def test_the_readme_and_the_docs_have_examples() -> None:
    pages = {page_id(page) for page in PAGES}
    assert "README.md" in pages
    assert "docs/integrations/langchain.md" in pages
    assert "docs/integrations/llamaindex.md" in pages


BROKEN_README = """# A page

```python
total = 1 + 1
```

Then:

```python
assert total == 2
print(undefined_name)
```

```python
# requires: gpu
import torch
```
"""


def test_a_broken_example_fails_the_suite(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text(BROKEN_README, encoding="utf-8")
    env = {**os.environ, "ZERANK_DOCS_ROOT": str(tmp_path)}

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "test_page_examples_run",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
        check=False,
    )

    assert result.returncode == 1, result.stdout
    assert "1 failed" in result.stdout
    assert f"example failed: {tmp_path / 'README.md'}:10" in result.stdout
    assert f'File "{tmp_path / "README.md"}", line 11' in result.stdout
    assert "NameError: name 'undefined_name' is not defined" in result.stdout


def test_the_blocks_are_found_with_their_lines_and_requirements(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        BROKEN_README
        + "\n- a list item:\n\n    ```py\n    x = 1\n    ```\n\n```console\n$ x\n```\n",
        encoding="utf-8",
    )

    blocks = find_blocks(page)

    assert [(b.line, b.requires) for b in blocks] == [(4, ()), (10, ()), (15, ("gpu",)), (22, ())]
    assert blocks[3].code == "x = 1\n"


def test_an_unknown_requirement_is_an_error(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\n# requires: internet\nimport x\n```\n", encoding="utf-8")

    with pytest.raises(ValueError, match="'internet'; use one or more of gpu, weights"):
        find_blocks(page)


def test_the_api_reference_has_a_page_for_every_public_module() -> None:
    pytest.importorskip("mkdocs", reason="the docs extra: pip install '.[docs]'")
    sys.path.insert(0, str(ROOT))
    try:
        import mkdocs_hooks
    finally:
        sys.path.remove(str(ROOT))

    modules = {m for package in mkdocs_hooks.PACKAGES for m in mkdocs_hooks.public_modules(package)}

    assert {"langchain_zerank", "llamaindex_zerank", "zerank_core"} <= modules
    assert {"langchain_zerank.compressor", "llamaindex_zerank.selector"} <= modules
    assert "zerank_core.scorers.server" in modules
    assert not any("._" in module for module in modules)
    for module in modules:
        assert importlib.import_module(module).__name__ == module
        assert mkdocs_hooks.page_text(module).endswith(f"::: {module}\n")


def test_docstring_markup_becomes_markdown_in_the_reference() -> None:
    pytest.importorskip("mkdocs", reason="the docs extra: pip install '.[docs]'")
    sys.path.insert(0, str(ROOT))
    try:
        from mkdocs_hooks import sphinx_to_markdown
    finally:
        sys.path.remove(str(ROOT))

    text = (
        "Keeps what :class:`~zerank_core.select.SelectionPolicy` selects (:func:`a.b`).\n\n"
        "Example:\n    .. code-block:: python\n\n        x = 1\n\n"
        ">>> y = 2\n"
    )

    assert sphinx_to_markdown(text) == (
        "Keeps what ``SelectionPolicy`` selects (``a.b``).\n\n"
        "Example:\n    ```python\n    x = 1\n    ```\n\n"
        "```pycon\n>>> y = 2\n```"
    )


def test_the_readme_is_short_and_leads_with_the_frameworks() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    blocks = find_blocks(ROOT / "README.md")
    ci_command = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]

    assert len(lines) <= 250
    assert lines[3].startswith("pip install . && zerank compress ")
    assert lines[4] == ci_command
    langchain = min(b.line for b in blocks if "langchain_zerank" in b.code)
    llamaindex = min(b.line for b in blocks if "llamaindex_zerank" in b.code)
    assert langchain < 100
    assert llamaindex < 150
    for block in blocks:
        assert len(block.code.strip().splitlines()) <= 20, block.where
