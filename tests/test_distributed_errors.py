"""Errors of a Ray run read as in one process: checked before Ray starts, unwrapped after."""

from __future__ import annotations

import functools
import io
import json
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.data")

from tests.fake_servers import FakeRerankServer
from zerank_core.cli import main
from zerank_core.criteria import Criterion
from zerank_core.distributed import gate_on_ray, package_error
from zerank_core.errors import BackendError, ConfigurationError
from zerank_core.loaders import Document
from zerank_core.scorers import RerankServerScorer

ROOT = Path(__file__).resolve().parent.parent
CRITERIA = [Criterion("renewal", "When is the renewal deadline?")]


def _documents(folder: Path) -> list[str]:
    paths = []
    for i in range(2):
        path = folder / f"packet-{i}.json"
        path.write_text(json.dumps([f"renewal deadline {i}", "invoice"]), encoding="utf-8")
        paths.append(str(path))
    criteria = folder / "criteria.txt"
    criteria.write_text("When is the renewal deadline?\n", encoding="utf-8")
    return [*paths, "-c", str(criteria)]


def test_a_credential_conflict_fails_before_ray_starts(
    fake_server: FakeRerankServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    assert not ray.is_initialized()
    monkeypatch.setenv("ZERANK_SERVER_API_KEY", "a-server-key-123")
    url = f"http://user:pw-123456@{fake_server.url.removeprefix('http://')}/v1/rerank"
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["compress", *_documents(tmp_path), "--ray", "--server-url", url, "--no-cache"],
        stdout=out,
        stderr=err,
    )
    assert code == 2
    lines = err.getvalue().splitlines()
    assert lines[-1].startswith("zerank: error: the rerank server would get two credentials")
    assert not ray.is_initialized()
    assert fake_server.requests == []


def test_package_error_finds_the_original_in_a_chain() -> None:
    original = BackendError("the server answered HTTP 401", batch=0, batch_size=2)

    class Wrapper(Exception):
        def __init__(self, cause: BaseException) -> None:
            super().__init__("wrapped")
            self.cause = cause

    outer = RuntimeError("outer")
    outer.__cause__ = Wrapper(original)
    assert package_error(outer) is original
    assert package_error(RuntimeError("plain")) is None


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    import ray

    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()


def test_a_401_inside_an_actor_is_the_packages_error(ray_instance: Any) -> None:
    server = FakeRerankServer(faults=deque(["401"] * 100))
    try:
        documents = [Document.from_texts(["renewal deadline", "invoice"], source="a.pdf")]
        factory = functools.partial(RerankServerScorer, f"{server.url}/v1/rerank")
        with pytest.raises(BackendError) as caught:
            gate_on_ray(documents, CRITERIA, scorer=factory)
        assert type(caught.value) is BackendError
        assert caught.value.status_code == 401
        assert "HTTP 401" in str(caught.value)
    finally:
        server.close()


def test_compress_on_ray_prints_one_error_line_with_status_2(
    ray_instance: Any, tmp_path: Path
) -> None:
    server = FakeRerankServer(faults=deque(["401"] * 100))
    try:
        out, err = io.StringIO(), io.StringIO()
        url = f"{server.url}/v1/rerank"
        code = main(
            ["compress", *_documents(tmp_path), "--ray", "--server-url", url, "--no-cache"],
            stdout=out,
            stderr=err,
        )
        assert code == 2
        errors = [line for line in err.getvalue().splitlines() if "error" in line.lower()]
        assert len(errors) == 1
        assert errors[0].startswith("zerank: error: ")
        assert "HTTP 401" in errors[0]
        assert "Traceback" not in err.getvalue()
    finally:
        server.close()


def test_a_configuration_error_inside_an_actor_stays_one(ray_instance: Any) -> None:
    documents = [Document.from_texts(["renewal deadline"], source="a.pdf")]
    factory = functools.partial(RerankServerScorer, "ftp://nowhere")
    with pytest.raises(ConfigurationError, match="must start with http"):
        gate_on_ray(documents, CRITERIA, scorer=factory)
