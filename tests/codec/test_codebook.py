"""The codebook: learning, the versioned file, lossless encoding, decode errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codec.canonical import canonical, canonical_steps
from codec.codebook import (
    CODEBOOK_FILE,
    SCHEMA,
    SCHEMA_VERSION,
    Codebook,
    build_codebook,
    codebook_in,
    whitespace_count,
)
from codec.domains import build_default_codebook, canonical_corpus, default_codebook
from codec.errors import CodebookError, DecodeError, ParseError
from codec.sexpr import Expr, to_text, to_text_all
from tests.codec.strategies import expressions, steps

CODEBOOK = default_codebook()


@pytest.fixture(scope="module")
def small() -> Codebook:
    return build_codebook(canonical_corpus(200, seed=3), size=40, min_freq=3)


def test_learns_frequent_fragments_that_save_tokens(small: Codebook) -> None:
    assert 0 < len(small) <= 40
    texts = [small.fragment_text(i) for i in range(len(small))]
    assert any(t.startswith("(let") for t in texts)
    assert all(whitespace_count(t) >= 2 for t in texts)
    assert small.params["size"] == 40 and small.params["min_freq"] == 3


def test_size_and_frequency_are_validated() -> None:
    with pytest.raises(CodebookError, match="size 513"):
        build_codebook(["(ans 1)"], size=513)
    with pytest.raises(CodebookError, match="min_freq"):
        build_codebook(["(ans 1)"], min_freq=0)


def test_nothing_frequent_gives_an_empty_codebook() -> None:
    book = build_codebook(["(ans 1)"], size=10, min_freq=2)
    assert len(book) == 0
    assert book.decode(book.encode("(ans 1)")) == "(ans 1)"


def test_counter_decides_what_is_worth_a_code() -> None:
    corpus = ["(let v1 (add 1 2) 3)"] * 10
    everything_one_token = build_codebook(corpus, size=10, min_freq=2, count_tokens=lambda t: 1)
    assert len(everything_one_token) == 0


def test_saved_file_is_versioned_and_round_trips(small: Codebook, tmp_path: Path) -> None:
    path = tmp_path / "codebook.json"
    small.save(path)
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA and data["schema_version"] == SCHEMA_VERSION
    assert list(data["codes"])[:2] == ["<E000>", "<E001>"]
    assert data["params"]["size"] == 40
    loaded = Codebook.load(path)
    assert loaded.fragments == small.fragments


def test_version_hashes_the_codes_only(small: Codebook, tmp_path: Path) -> None:
    import hashlib

    codes = small.to_json()["codes"]
    digest = hashlib.sha256(
        json.dumps(codes, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert small.version == "cb-" + digest[:12]
    path = tmp_path / "cb.json"
    small.save(path)
    assert Codebook.load(path).version == small.version
    # the build params do not count; one fragment more or less does
    assert Codebook(small.fragments, {"other": 1}).version == small.version
    assert Codebook(small.fragments[:-1]).version != small.version
    assert CODEBOOK.version != small.version


def test_codebook_in_a_directory(small: Codebook, tmp_path: Path) -> None:
    assert codebook_in(tmp_path) is None
    small.save(tmp_path / CODEBOOK_FILE)
    found = codebook_in(tmp_path)
    assert found is not None and found.version == small.version
    (tmp_path / CODEBOOK_FILE).write_text("{not json")
    with pytest.raises(CodebookError, match=str(tmp_path / CODEBOOK_FILE)):
        codebook_in(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(schema_version=99), "schema_version 99"),
        (lambda d: d.update(schema="other"), "not a codebook"),
        (lambda d: d.update(codes={"<E001>": "(ans"}), "codes must run"),
        (lambda d: d.update(codes={"<E000>": "(ans $"}), "malformed"),
        (lambda d: d.update(codes={"<E000>": "(ans", "<E001>": "(ans"}), "appears twice"),
    ],
)
def test_bad_files_are_refused(
    small: Codebook, tmp_path: Path, change: object, message: str
) -> None:
    data = small.to_json()
    change(data)  # type: ignore[operator]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CodebookError, match=message):
        Codebook.load(path)


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{")
    with pytest.raises(CodebookError, match="cannot read"):
        Codebook.load(path)


def test_shipped_default_matches_a_fresh_build() -> None:
    assert build_default_codebook().to_json() == CODEBOOK.to_json()


def test_encoded_text_is_compact() -> None:
    text = "(let v1 (add 4 9) 13)\n(ans 13)"
    encoded = CODEBOOK.encode(text)
    assert "<E" in encoded and " <E" not in encoded and ">\u0020" not in encoded
    assert len(encoded) < len(text)
    assert CODEBOOK.decode(encoded) == text


def test_lossless_on_generated_reasoning() -> None:
    for text in canonical_corpus(300, seed=11):
        assert CODEBOOK.decode(CODEBOOK.encode(text)) == text


@settings(max_examples=150, deadline=None)
@given(expressions)
def test_lossless_on_random_expressions(expr: Expr) -> None:
    text = to_text(canonical(expr))
    assert CODEBOOK.decode(CODEBOOK.encode(text)) == text
    assert CODEBOOK.encode_expr(expr) == CODEBOOK.encode(text)


@settings(max_examples=80, deadline=None)
@given(steps)
def test_lossless_on_random_step_sequences(exprs: list[Expr]) -> None:
    text = to_text_all(canonical_steps(exprs))
    assert CODEBOOK.decode(CODEBOOK.encode(text)) == text


@pytest.mark.parametrize(
    ("encoded", "position", "message"),
    [
        ("<E001>v1<E999>", 8, "unknown code <E999>"),
        ("(ans 1)<E12>", 7, "malformed code"),
        ("(ans 1))", 7, "unexpected ')'"),
        ("(ans 1", 6, "expected 1 more ')'"),
        ("(ans 1$)", 5, "malformed token '1$'"),
        ('(note "x)', 6, "malformed string"),
    ],
)
def test_decode_errors_name_the_position(encoded: str, position: int, message: str) -> None:
    with pytest.raises(DecodeError) as info:
        CODEBOOK.decode(encoded)
    assert info.value.position == position
    assert message in str(info.value)


def test_a_code_that_closes_too_much_is_an_error() -> None:
    closing = next(i for i in range(len(CODEBOOK)) if CODEBOOK.fragments[i][0] == ")")
    with pytest.raises(DecodeError, match="closes a list"):
        CODEBOOK.decode(f"<E{closing:03d}>")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet='<E0123456789>() abv-/"\n', max_size=30))
def test_garbage_gives_a_decode_error_or_valid_text_never_a_crash(encoded: str) -> None:
    try:
        CODEBOOK.decode(encoded)
    except DecodeError as err:
        assert 0 <= err.position <= len(encoded)


@pytest.mark.parametrize(
    ("text", "position"), [("(ans $)", 5), ("(ans 1", 6), ("(ans 1))", 7), (")(", 0)]
)
def test_encode_refuses_malformed_text_with_its_position(text: str, position: int) -> None:
    with pytest.raises(ParseError) as info:
        CODEBOOK.encode(text)
    assert info.value.position == position
