"""Validation: each bad line reported with its number and reason, kept, counted to a threshold."""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.trainer.dataset_reader import DataCursor, read_lines
from services.trainer.errors import DataChangedError, DataFileError, RejectThresholdError
from services.trainer.tokenize import ChatTokenizer
from services.trainer.validate import (
    ExampleId,
    check_thinking,
    training_examples,
    validate_file,
)
from tests.rig.trainer import chat_line, settings, think

Write = Callable[..., Path]


def good(index: int) -> dict[str, Any]:
    return chat_line(f"What is {index} + 1?", f"(add {index} 1)", str(index + 1), id=f"g{index}")


def test_a_clean_codec_file_is_accepted_whole(
    chat: ChatTokenizer, codec_rows: list[dict[str, Any]], write_jsonl: Write, tmp_path: Path
) -> None:
    path = write_jsonl(codec_rows)
    seen: list[int] = []
    report = validate_file(
        path,
        chat,
        settings(),
        rejects_path=tmp_path / "rejects.jsonl",
        on_progress=lambda so_far: seen.append(so_far.accepted_lines + so_far.rejected),
        progress_every=100,
    )
    assert seen == [99, 199, 299]  # counted before the 100th, 200th, 300th line lands
    assert (report.lines, report.accepted_lines, report.rejected) == (300, 300, 0)
    assert report.examples == 300 and report.tokens > report.loss_tokens > 0
    assert report.bytes_read == path.stat().st_size
    assert (tmp_path / "rejects.jsonl").read_text() == ""
    assert json.loads(json.dumps(report.to_dict()))["rejected"] == 0


BAD_LINES: list[tuple[Any, str, str]] = [
    ("{not json", "json", "not valid JSON"),
    ([1, 2], "schema", "JSON list, not an object"),
    ({"messages": []}, "schema", "non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "schema", "last message must be an"),
    (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]},
        "schema",
        "messages[1].role is 'robot'",
    ),
    (
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
        "schema",
        "messages[0].content must be a string, not int",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "reasoning_content": "hidden"},
            ]
        },
        "schema",
        "reasoning_content",
    ),
    (
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "4"}]},
        "thinking",
        "messages[1] (assistant): no reasoning",
    ),
    (
        {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]},
        "schema",
        "expected assistant",
    ),
    (chat_line("q", "r", "a", id=["x"]), "schema", "meta.id ['x']"),
]


def test_each_bad_line_is_reported_with_its_number_reason_and_text(
    chat: ChatTokenizer, write_jsonl: Write, tmp_path: Path
) -> None:
    rows: list[Any] = []
    expected: dict[int, tuple[str, str]] = {}
    for index, (bad, kind, reason) in enumerate(BAD_LINES):
        rows += [good(10 * index + j) for j in range(3)]
        rows.append(bad if isinstance(bad, str | dict) else json.dumps(bad))
        expected[len(rows)] = (kind, reason)
    rows += ["", "   "]  # blank lines are neither examples nor rejects
    rows.append(good(1))  # meta.id g1 again
    expected[len(rows)] = ("duplicate", "repeats the one of line 2")
    path = write_jsonl(rows)
    rejects = tmp_path / "rejects.jsonl"
    report = validate_file(path, chat, settings(reject_threshold=1.0), rejects_path=rejects)

    assert report.blank_lines == 2
    assert report.lines == len(rows) - 2
    assert report.rejected == len(expected)
    kept = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert {k["line"]: k["kind"] for k in kept} == {n: kind for n, (kind, _) in expected.items()}
    raw_lines = path.read_bytes().split(b"\n")
    for record in kept:
        kind, reason = expected[record["line"]]
        assert reason in record["reason"], (record, reason)
        # The rejects file keeps the original line, and its offset finds it in the source.
        assert record["text"].encode() == raw_lines[record["line"] - 1]
        with path.open("rb") as f:
            f.seek(record["offset"])
            assert f.readline().rstrip(b"\n") == raw_lines[record["line"] - 1]
    assert [r.line for r in report.first_rejects] == sorted(expected)
    assert report.kinds["schema"] == sum(1 for _, k, _ in BAD_LINES if k == "schema")


def test_too_many_rejects_fail_before_training_naming_the_first_lines(
    chat: ChatTokenizer, write_jsonl: Write, tmp_path: Path
) -> None:
    rows: list[Any] = [good(i) for i in range(98)]
    rows.insert(10, "oops")
    rows.insert(50, '{"messages": "nope"}')
    path = write_jsonl(rows)
    rejects = tmp_path / "rejects.jsonl"
    with pytest.raises(RejectThresholdError) as caught:
        validate_file(path, chat, settings(), rejects_path=rejects)
    message = str(caught.value)
    assert "2 of 100 lines rejected (2.00%)" in message
    assert "R3_REJECT_THRESHOLD=0.01" in message
    assert "line 11: not valid JSON" in message and "line 51:" in message
    assert str(rejects) in message
    assert len(rejects.read_text().splitlines()) == 2  # written before failing
    # One bad line in a hundred is at the threshold, not above it: accepted.
    rows[50] = good(500)
    report = validate_file(write_jsonl(rows, "one-bad.jsonl"), chat, settings())
    assert report.rejected == 1 and report.reject_rate == 0.01


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (think("r", "a"), None),
        ("  " + think("r", "a", stops=2), None),
        (think("r", "a", stops=4), None),
        ("🤔🤔🤔🤔🤔\nr\n🛑🛑\na", "opens with 5 🤔, expected 4"),
        ("🤔🤔🤔\nr\n🛑🛑\na", "opens with 3 🤔, expected 4"),
        (think("r", "a", stops=1), "closes with 1 🛑, expected 2 to 4"),
        (think("r", "a", stops=5), "closes with 5 🛑, expected 2 to 4"),
        (think("r", "  "), "no answer after the 🛑"),
        ("🤔🤔🤔🤔\nr and no close\na", "never closed"),
        ("answer first " + think("r", "a"), "text before the 🤔"),
        (think("r 🤔 again", "a"), "🤔 appears in 2 places"),
        (think("r", "a 🛑🛑"), "🛑 appears in 2 places"),
        ("just an answer", "no reasoning"),
    ],
)
def test_thinking_marker_rules(content: str, problem: str | None) -> None:
    found = check_thinking(content, open_count=4, stop_min=2, stop_max=4)
    assert found == problem if problem is None else (found is not None and problem in found)


def test_require_allow_ignore(chat: ChatTokenizer, write_jsonl: Write) -> None:
    plain = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    }
    bad_earlier = {
        "messages": [
            {"role": "user", "content": "1?"},
            {"role": "assistant", "content": "🤔🤔\nr\n🛑🛑\n1"},  # malformed, but not last
            {"role": "user", "content": "2?"},
            {"role": "assistant", "content": think("r", "2")},
        ]
    }
    path = write_jsonl([good(0), plain, bad_earlier])
    by_mode = {}
    for mode in ("require", "allow", "ignore"):
        report = validate_file(path, chat, settings(thinking_markers=mode, reject_threshold=1.0))
        by_mode[mode] = [(r.line, r.reason) for r in report.first_rejects]
    assert by_mode["require"] == [
        (2, "messages[1] (assistant): no reasoning: it does not start with 🤔🤔🤔🤔"),
        (3, "messages[1] (assistant): opens with 2 🤔, expected 4 (R3_THINK_OPEN_COUNT)"),
    ]
    assert by_mode["allow"] == by_mode["require"][1:]
    assert by_mode["ignore"] == []


def test_unreadable_files_get_a_clear_error(tmp_path: Path, chat: ChatTokenizer) -> None:
    cases = {
        "empty.jsonl": (b"", "the file is empty"),
        "blank.jsonl": (b"\n  \n\n", "only blank lines"),
        "binary.jsonl": (b"PK\x03\x04\x00\x00zip data", "a binary file (a NUL byte at offset 4)"),
        "latin1.jsonl": ('{"messages": "caf\xe9"}\n'.encode("latin-1"), "not UTF-8 text"),
    }
    for name, (data, problem) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DataFileError, match=re.escape(problem)) as caught:
            validate_file(path, chat, settings())
        assert str(path) in str(caught.value)
    with pytest.raises(DataFileError, match="no such file"):
        validate_file(tmp_path / "missing.jsonl", chat, settings())


def test_invalid_utf8_past_the_head_rejects_only_that_line(
    chat: ChatTokenizer, write_jsonl: Write
) -> None:
    rows: list[Any] = [good(i) for i in range(400)]  # well past the 64 KiB head
    rows.append(b'{"messages": "caf\xe9"}')
    report = validate_file(write_jsonl(rows), chat, settings(reject_threshold=1.0))
    assert [(r.line, r.kind) for r in report.first_rejects] == [(401, "utf8")]
    assert "invalid UTF-8 at byte 17" in report.first_rejects[0].reason


def test_byte_order_mark_and_crlf_are_tolerated(chat: ChatTokenizer, tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    body = "\r\n".join(json.dumps(good(i), ensure_ascii=False) for i in range(3)) + "\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    report = validate_file(path, chat, settings())
    assert (report.accepted_lines, report.rejected) == (3, 0)


def test_a_runaway_line_is_rejected_without_being_held(
    chat: ChatTokenizer, write_jsonl: Write
) -> None:
    huge = json.dumps(chat_line("q" * 5000, "r", "a"))
    path = write_jsonl([good(0), huge, good(1)])
    report = validate_file(path, chat, settings(max_line_bytes=4096, reject_threshold=1.0))
    assert [(r.line, r.kind) for r in report.first_rejects] == [(2, "line_bytes")]
    assert "over R3_MAX_LINE_BYTES=4096" in report.first_rejects[0].reason
    assert report.accepted_lines == 2


def test_overlong_rejected_or_split_never_truncated(
    chat: ChatTokenizer, write_jsonl: Write
) -> None:
    turns: list[dict[str, str]] = []
    for i in range(6):
        turns += [
            {"role": "user", "content": f"Step {i}: add {i} to the total."},
            {"role": "assistant", "content": think(f"(add total {i}) " * 3, str(i))},
        ]
    long_chat = {"messages": turns, "meta": {"id": "long"}}
    one_huge_turn = chat_line("q", "(step) " * 200, "a", id="huge")
    path = write_jsonl([good(0), long_chat, one_huge_turn])

    rejected = validate_file(path, chat, settings(max_length=128, reject_threshold=1.0))
    assert [(r.line, r.kind) for r in rejected.first_rejects] == [(2, "length"), (3, "length")]
    assert "over max_length 128" in rejected.first_rejects[0].reason

    s = settings(max_length=128, overlong="split", reject_threshold=1.0)
    split = validate_file(path, chat, s)
    assert [(r.line, r.kind) for r in split.first_rejects] == [(3, "length")]
    assert "exchange 1 alone" in split.first_rejects[0].reason
    assert split.split_lines == 1 and split.longest <= 128
    examples = list(training_examples(path, chat, s, rejected_offsets=split.rejected_offsets))
    pieces = [e for e in examples if e.id.line == 2]
    assert [e.id.part for e in pieces] == list(range(len(pieces))) and len(pieces) >= 2
    assert all(e.length <= 128 for e in examples)
    # Every assistant turn of the long chat is in exactly one piece's loss.
    decoded = "".join(chat.tokenizer.decode(e.input_ids[e.assistant_mask].tolist()) for e in pieces)
    for turn in turns[1::2]:
        assert decoded.count(turn["content"] + "<|im_end|>") == 1


def test_training_stream_skips_rejects_and_resumes_from_a_cursor(
    chat: ChatTokenizer, write_jsonl: Write
) -> None:
    rows: list[Any] = [good(i) for i in range(30)]
    rows[5] = "broken"
    rows[12] = good(3)  # duplicate of line 4
    rows.insert(20, "")
    path = write_jsonl(rows)
    s = settings(reject_threshold=1.0)
    report = validate_file(path, chat, s)
    assert [r.line for r in report.first_rejects] == [6, 13]
    full = list(training_examples(path, chat, s, rejected_offsets=report.rejected_offsets))
    assert len(full) == 28 and 6 not in {e.id.line for e in full}
    # A duplicate is only known from earlier lines; a resumed reader skips it all the same.
    lines = {raw.line: raw for raw in read_lines(path)}
    for resume_line in (1, 7, 13, 21, 31):
        start = DataCursor(lines[resume_line].offset, resume_line)
        tail = list(
            training_examples(path, chat, s, rejected_offsets=report.rejected_offsets, start=start)
        )
        assert [e.id for e in tail] == [e.id for e in full if e.id.line >= resume_line]
    assert full[0].id == ExampleId(line=1, offset=0, part=0)
    assert full[0].next_offset == lines[2].offset


def test_a_changed_file_is_caught_not_trained_on(chat: ChatTokenizer, write_jsonl: Write) -> None:
    path = write_jsonl([good(i) for i in range(5)])
    report = validate_file(path, chat, settings())
    data = path.read_bytes().replace(b'"g2"', b'"g2", "x": [')
    path.write_bytes(data)
    with pytest.raises(DataChangedError, match=r"data.jsonl:3: validation accepted this line"):
        list(training_examples(path, chat, settings(), rejected_offsets=report.rejected_offsets))
    with pytest.raises(DataFileError, match="not the start of a line"):
        list(training_examples(path, chat, settings(), start=DataCursor(offset=7, line=2)))


@pytest.mark.slow
def test_worker_processes_give_the_same_report(
    chat: ChatTokenizer, codec_rows: list[dict[str, Any]], write_jsonl: Write
) -> None:
    rows: list[Any] = list(codec_rows[:200])
    rows[50] = "bad"
    rows[150] = codec_rows[3]
    path = write_jsonl(rows)
    s = settings(reject_threshold=1.0)
    inline = validate_file(path, chat, s)
    # One spawned worker: the same code path as many, for a fraction of the start-up time.
    pooled = validate_file(path, chat, s, workers=1)
    assert inline.to_dict() | {"seconds": 0} == pooled.to_dict() | {"seconds": 0}
    assert list(inline.rejected_offsets) == list(pooled.rejected_offsets)


def test_a_template_error_on_one_line_rejects_that_line(tokenizer: Any, write_jsonl: Write) -> None:
    picky = pickle.loads(pickle.dumps(tokenizer))
    picky.chat_template = (
        "{%- for m in messages -%}{%- if 'forbidden' in m['content'] -%}"
        "{{- raise_exception('no forbidden words') -}}{%- endif -%}{%- endfor -%}"
        + tokenizer.chat_template
    )
    path = write_jsonl([good(0), chat_line("a forbidden question", "r", "a"), good(1)])
    report = validate_file(path, ChatTokenizer(picky), settings(reject_threshold=1.0))
    assert [(r.line, r.kind) for r in report.first_rejects] == [(2, "template")]
    assert "no forbidden words" in report.first_rejects[0].reason


def test_lines_json_loads_refuses_are_rejected_with_their_number_not_a_crash(
    chat: ChatTokenizer, write_jsonl: Write, tmp_path: Path
) -> None:
    # RecursionError (deep nesting) and ValueError (an integer over 4,300 digits) are not
    # JSONDecodeError: they used to fail the whole job without a line number.
    rows: list[Any] = [good(i) for i in range(4)]
    rows.insert(1, '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}")
    rows.insert(3, '{"messages": [], "n": ' + "9" * 5000 + "}")
    path = write_jsonl(rows)
    report = validate_file(path, chat, settings(reject_threshold=1.0))
    assert [(r.line, r.kind) for r in report.first_rejects] == [(2, "json"), (4, "json")]
    assert "not valid JSON: nested too deeply" in report.first_rejects[0].reason
    assert "4300" in report.first_rejects[1].reason
    assert report.accepted_lines == 4


def test_a_utf8_bom_is_accepted(chat: ChatTokenizer, write_jsonl: Write) -> None:
    path = write_jsonl([b"\xef\xbb\xbf" + json.dumps(good(1)).encode(), good(2)])
    report = validate_file(path, chat, settings())
    assert (report.accepted_lines, report.rejected) == (2, 0)
