"""Running the command line in-process, for tests."""

from __future__ import annotations

import io

from zerank_core.cli import main


def call(*args: str) -> tuple[int, str, str]:
    """``zerank ARGS...``: its exit code, standard output and standard error."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()
