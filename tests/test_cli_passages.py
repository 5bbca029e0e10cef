"""``zerank compress --passages``: kept pages trimmed to their evidence passages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_run import call
from tests.fake_servers import FakeRerankServer

ROOT = Path(__file__).resolve().parent.parent
PACKET = ROOT / "cookbook" / "prior_auth" / "packet.txt"
CRITERIA = ROOT / "cookbook" / "prior_auth" / "criteria.yaml"


def pages_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\f")


def test_compress_passages_against_a_server(fake_server: FakeRerankServer) -> None:
    code, out, err = call(
        "compress",
        str(PACKET),
        "-c",
        str(CRITERIA),
        "--server-url",
        f"{fake_server.url}/v1/rerank",
        "--no-cache",
        "--top-k",
        "2",
        "--passages",
        "--passage-top-k",
        "1",
        "--passage-threshold",
        "0.3",
        "-o",
        "-",
    )
    assert code == 0, err
    data = json.loads(out)
    pages = pages_of(PACKET)
    assert data["passage_policy"] == {
        "threshold": 0.3,
        "top_k": 1,
        "max_chars": None,
        "min_keep": 1,
        "passage_chars": 500,
    }
    assert "evidence passages (≤ 500 chars each, top 1 a page, floor 0.3" in err
    chars = 0
    for criterion in data["results"]:
        passages = criterion["passages"]
        # One passage for each kept page: top 1, and min_keep gives every kept page its best.
        assert sorted(p["page"] for p in passages) == sorted(criterion["pages"])
        for p in passages:
            assert pages[p["page"] - 1][p["start"] : p["end"]] == p["text"]
            assert f"[page {p['page']}]\n" in criterion["context"]
            assert p["text"] in criterion["context"]
        assert criterion["chars_kept"] == sum(p["end"] - p["start"] for p in passages)
        chars += criterion["chars_kept"]
    assert data["report"]["chars_kept"] == chars
    # Stage 2 costs the passages of kept pages only, in more requests to the same server.
    sent = sum(len(r.body["documents"]) for r in fake_server.requests)
    assert data["report"]["usage"]["texts"] == sent


def test_passage_options_need_passages() -> None:
    code, out, err = call(
        "compress", str(PACKET), "-c", str(CRITERIA), "--no-cache", "--passage-top-k", "2"
    )
    assert code == 2
    assert out == ""
    assert "--passage-top-k needs --passages" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--passage-threshold", "1.5"], "must be in [0, 1], got 1.5"),
        (["--passage-top-k", "-1"], "must be >= 0, got -1"),
        (["--passage-chars", "0"], "must be >= 1, got 0"),
        (["--passage-min-keep", "x"], "expected an integer >= 0, got 'x'"),
    ],
)
def test_bad_passage_options_are_named(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        call("compress", str(PACKET), "-c", str(CRITERIA), "--passages", *args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_several_documents_with_passages(tmp_path: Path) -> None:
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    pages = pages_of(PACKET)
    first.write_text("\f".join(pages[:10]), encoding="utf-8")
    second.write_text("\f".join(pages[10:20]), encoding="utf-8")
    out_dir = tmp_path / "out"
    code, _, err = call(
        "compress",
        str(first),
        str(second),
        "-c",
        str(CRITERIA),
        "--no-cache",
        "--passages",
        "-o",
        str(out_dir),
    )
    assert code == 0, err
    for name in ("a.json", "b.json"):
        data = json.loads((out_dir / name).read_text(encoding="utf-8"))
        assert data["passage_policy"]["top_k"] == 3
        kept = [c for c in data["results"] if c["pages"]]
        assert kept
        assert all(c["passages"] for c in kept)


def test_passages_on_ray_are_refused_before_anything_runs() -> None:
    code, out, err = call(
        "compress", str(PACKET), "-c", str(CRITERIA), "--no-cache", "--passages", "--ray", "auto"
    )
    assert code == 2
    assert out == ""
    assert "--passages is not available with --ray yet" in err
