"""Data set parsing: lines and JSON lines, blank lines skipped, errors name the line."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlnet.protocol.dataset import parse_dataset


def test_lines_skip_blank_and_keep_text_verbatim() -> None:
    data = b"\xef\xbb\xbfone two\r\n\n   \n  three  four \r\nfive"
    assert parse_dataset(data, "lines", "text") == ("one two", "  three  four ", "five")


def test_jsonl_field() -> None:
    rows = [{"text": "a b", "id": 1}, {"body": "x", "text": "c"}]
    data = "\n".join(json.dumps(r) for r in rows).encode() + b"\n\n"
    assert parse_dataset(data, "jsonl", "text") == ("a b", "c")
    assert parse_dataset(b'{"body": "x y"}', "jsonl", "body") == ("x y",)


@pytest.mark.parametrize(
    ("data", "fmt", "message"),
    [
        (b"ok\n\nbad \xff byte\n", "lines", r"^line 3: not valid UTF-8"),
        (b'{"text": "a"}\n{"text": \n', "jsonl", r"^line 2: invalid JSON"),
        (b'{"text": "a"}\n\n["text"]\n', "jsonl", r"^line 3: expected a JSON object, got list"),
        (b'{"body": "a"}\n', "jsonl", r"^line 1: JSON object has no field 'text'"),
        (b'{"text": 3}\n', "jsonl", r"^line 1: field 'text' must be a string, got int"),
        (b'{"text": "\\ud800"}\n', "jsonl", r"^line 1: field 'text' holds a lone surrogate"),
        (b"x\n", "csv", r"unknown data set format"),
    ],
)
def test_errors_name_the_line(data: bytes, fmt: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_dataset(data, fmt, "text")  # type: ignore[arg-type]


@given(
    st.lists(
        st.text(
            alphabet=st.characters(exclude_characters="\n\r", exclude_categories=["Cs"]),
            max_size=20,
        )
    )
)
def test_lines_round_trip(lines: list[str]) -> None:
    data = "\n".join(lines).encode()
    if data.startswith(b"\xef\xbb\xbf"):
        data = b"\n" + data  # a leading BOM is stripped by design
    assert parse_dataset(data, "lines", "text") == tuple(x for x in lines if x.strip())


@given(st.lists(st.text(max_size=20)))
def test_jsonl_round_trip(texts: list[str]) -> None:
    texts = [t.encode("utf-8", "replace").decode("utf-8") for t in texts]
    data = "\n".join(json.dumps({"text": t}) for t in texts).encode()
    assert parse_dataset(data, "jsonl", "text") == tuple(texts)
