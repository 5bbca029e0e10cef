"""Evidence passages: splitting kept pages, the passage policy, two-stage gating."""

from __future__ import annotations

import math
import pickle
import re

import pytest

from zerank_core.errors import ConfigurationError
from zerank_core.passages import (
    DEFAULT_PASSAGE_POLICY,
    MERGE_BELOW_CHARS,
    PassagePolicy,
    split_passages,
)

CONTRACT = (
    "ARTICLE 4.\n"
    "The Recipient shall keep the Confidential Information secret and shall not disclose it. "
    "The obligations survive termination of this Agreement for five years.\n\n"
    "Either party may terminate this Agreement with thirty days written notice; "
    "notices are sent by registered mail to the address above."
)
TABLE = " | ".join(f"row {i} amount {i * 17} USD" for i in range(120))


def check_passages(text: str, passages: list[tuple[int, int]], limit: int) -> None:
    previous_end = 0
    for start, end in passages:
        assert previous_end <= start < end <= len(text)
        assert end - start <= limit
        piece = text[start:end]
        assert piece == piece.strip()
        assert piece
        assert not text[previous_end:start].strip()  # no visible character is left out
        previous_end = end
    assert not text[previous_end:].strip()


def test_passages_end_at_sentences_and_line_breaks_with_offsets_into_the_page() -> None:
    passages = split_passages(CONTRACT, 500)
    texts = [CONTRACT[a:b] for a, b in passages]
    check_passages(CONTRACT, passages, 500)
    # The short heading is joined to the sentence after it.
    assert texts[0].startswith("ARTICLE 4.\nThe Recipient shall keep")
    assert texts[1] == "The obligations survive termination of this Agreement for five years."
    assert texts[2].startswith("Either party may terminate")
    assert texts[2].endswith(";")
    assert texts[3] == "notices are sent by registered mail to the address above."


def test_hard_wrapped_lines_are_not_cut_but_headings_and_list_items_are() -> None:
    text = (
        "PATIENT HISTORY\n"
        "She meets the\n2010 ACR/EULAR classification criteria for rheumatoid arthritis and\n"
        "was started on methotrexate 15 mg weekly in March, with folic acid\n"
        "1 mg daily\n"
        "(a) a negative interferon-gamma release assay in January\n"
        "- hepatitis B surface antigen negative on the same day\n"
        "Hemoglobin 12.1 g/dL"
    )
    texts = [text[a:b] for a, b in split_passages(text, 500)]
    assert texts[0].startswith("PATIENT HISTORY\nShe meets the\n2010 ACR/EULAR")
    assert texts[0].endswith("with folic acid\n1 mg daily")
    assert texts[1] == "(a) a negative interferon-gamma release assay in January"
    assert texts[2].startswith("- hepatitis B surface antigen negative on the same day")


def test_a_table_with_no_sentence_boundary_still_yields_bounded_passages() -> None:
    assert "\n" not in TABLE
    assert not re.search(r"[.!?;:]\s", TABLE)
    passages = split_passages(TABLE, 200)
    assert len(passages) >= len(TABLE) // 200
    check_passages(TABLE, passages, 200)
    # Cut between words: no passage starts or ends inside a word.
    for start, end in passages:
        assert start == 0 or TABLE[start - 1] == " "
        assert end == len(TABLE) or TABLE[end] == " "


def test_a_word_longer_than_a_passage_is_cut_inside_it() -> None:
    text = "short start. " + "x" * 250 + " end of it."
    passages = split_passages(text, 100)
    check_passages(text, passages, 100)
    # The last window goes on with the words after the long one.
    assert [b - a for a, b in passages if text[a] == "x"] == [100, 100, 61]


def test_blank_text_has_no_passage_and_a_short_page_is_one() -> None:
    assert split_passages(" \n\t ") == []
    assert split_passages("Fine.") == [(0, 5)]
    assert split_passages("  Fine.  ") == [(2, 7)]
    assert len("Fine.") < MERGE_BELOW_CHARS


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "400", None])
def test_split_passages_refuses_a_bad_length(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(repr(bad))):
        split_passages("Some text.", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 1.5}, "passage threshold must be in [0, 1], got 1.5"),
        ({"threshold": -0.1}, "got -0.1"),
        ({"threshold": math.nan}, "got nan"),
        ({"threshold": "high"}, "got 'high'"),
        ({"top_k": -1}, "passage top_k must be an integer >= 0, got -1"),
        ({"top_k": 2.0}, "got 2.0"),
        ({"max_chars": True}, "passage max_chars must be an integer >= 0, got True"),
        ({"min_keep": -1}, "passage min_keep must be an integer >= 0, got -1"),
        ({"passage_chars": 0}, "passage_chars must be an integer >= 1, got 0"),
    ],
)
def test_bad_passage_policies_are_refused_naming_the_value(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        PassagePolicy(**options)  # type: ignore[arg-type]


def test_policy_threshold_and_top_k_apply_per_page_and_results_are_in_page_order() -> None:
    policy = PassagePolicy(threshold=0.5, top_k=2)
    scores = [[0.9, 0.2, 0.6, 0.8], [0.7, 0.55, 0.65]]
    lengths = [[10] * 4, [10] * 3]
    first, second = policy.select(scores, lengths)
    assert first.indices == (0, 3)
    assert second.indices == (0, 2)
    assert first.selected == {0, 3}
    assert not first.forced


def test_policy_budget_is_shared_by_the_pages_of_a_criterion() -> None:
    policy = PassagePolicy(max_chars=50, min_keep=0)
    scores = [[0.9, 0.3], [0.8, 0.7]]
    lengths = [[30, 10], [30, 15]]
    first, second = policy.select(scores, lengths)
    # Best first: 0.9 (30 chars) fits, 0.8 (30) does not, 0.7 (15) and 0.3 (10) do... up to 50.
    assert first.indices == (0,)
    assert second.indices == (1,)


def test_min_keep_gives_every_kept_page_its_best_passage() -> None:
    policy = PassagePolicy(threshold=0.95)
    first, second = policy.select([[0.2, 0.4], [0.99, 0.1]], [[5, 5], [5, 5]])
    assert first.indices == (1,)
    assert first.forced == {1}
    assert not first.selected
    assert second.indices == (0,)
    assert not second.forced
    (none,) = PassagePolicy(threshold=0.95, min_keep=0).select([[0.2]], [[5]])
    assert none.indices == ()


def test_policy_round_trips_and_reads_prefixed_attributes() -> None:
    class Options:
        passage_threshold = 0.4
        passage_top_k = 2
        passage_max_chars = None
        passage_min_keep = 1
        passage_chars = 300

    policy = PassagePolicy.from_attributes(Options())
    assert policy == PassagePolicy(threshold=0.4, top_k=2, passage_chars=300)
    assert PassagePolicy(**policy.to_dict()) == policy
    assert pickle.loads(pickle.dumps(policy)) == policy
    assert DEFAULT_PASSAGE_POLICY.min_keep == 1
