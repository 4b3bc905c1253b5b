from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from bus import keys, queues
from services.cli.main import cli

GOOD = {
    "messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "🤔🤔🤔🤔\n2+2=4\n🛑🛑\n4"},
    ]
}


@pytest.fixture
def run(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("R3_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return invoke


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.jsonl", None, "missing.jsonl: no such file"),
        ("empty.jsonl", b"", "empty.jsonl: the file is empty"),
        ("blank.jsonl", b"\n\n  \n", "only blank lines"),
        ("model.bin", b"PK\x03\x04\x00\x00\x01", "model.bin: looks binary"),
        (
            "latin1.jsonl",
            json.dumps(GOOD).encode() + b"\n" + '{"a": "é"}'.encode("latin-1"),
            "latin1.jsonl:2: not UTF-8",
        ),
        (
            "broken.jsonl",
            json.dumps(GOOD).encode() + b"\n" * 2 + b'{"messages": [\n',
            "broken.jsonl:3: not JSON",
        ),
        ("list.jsonl", b"[1, 2]\n", "list.jsonl:1: a JSON list, not an object"),
        ("csv.jsonl", b"role,content\nuser,hi\n", "csv.jsonl:1: not JSON"),
    ],
)
def test_bad_files_are_refused_and_nothing_is_queued(
    run, tmp_path: Path, r: redis.Redis, name: str, content: bytes | None, expected: str
) -> None:
    path = tmp_path / name
    if content is not None:
        write(path, content)
    result = run("enqueue", str(path))
    assert result.exit_code == 1
    assert expected in result.output and "Nothing was queued" in result.output
    assert sum(queues.depths(r).values()) == 0
    assert r.xlen(keys.STREAM_JOBS) == 0
    assert not list((tmp_path / "data").glob("datasets/*.jsonl"))


def test_a_good_file_is_stored_by_content_and_queued(run, tmp_path: Path, r: redis.Redis):
    path = write(tmp_path / "batch.jsonl", (json.dumps(GOOD) + "\n").encode() * 3)
    result = run("enqueue", str(path), "--priority", "high")
    assert result.exit_code == 0, result.output
    job_id = result.output.splitlines()[0]
    assert queues.depths(r)["train-high"] == 1
    [queued] = queues.queues(r, "train")[0].get_jobs()
    assert queued.id == job_id
    assert queued.func_name == queues.TRAIN_FILE
    stored = Path(queued.kwargs["path"])
    assert stored.read_bytes() == path.read_bytes()
    assert stored.name == f"{queued.kwargs['sha256']}.jsonl"
    assert queued.kwargs["name"] == "batch.jsonl"
    assert queued.timeout == -1  # a training file may take hours


def test_unknown_priority_is_a_usage_error(run, tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", (json.dumps(GOOD) + "\n").encode())
    result = run("enqueue", str(path), "--priority", "urgent")
    assert result.exit_code == 2 and "'urgent' is not one of" in result.output


def test_no_redis_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bus.settings import get_bus_settings

    monkeypatch.setenv("R3_REDIS_URL", "redis://127.0.0.1:1/0")
    get_bus_settings.cache_clear()
    path = write(tmp_path / "a.jsonl", (json.dumps(GOOD) + "\n").encode())
    result = CliRunner().invoke(cli, ["enqueue", str(path)])
    get_bus_settings.cache_clear()
    assert result.exit_code == 1
    assert "no Redis answers at redis://127.0.0.1:1/0" in result.output
    assert "regime3 up" in result.output


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "nested too deeply"),
        (b'{"n": ' + b"9" * 5000 + b"}\n", "4300"),
    ],
)
def test_a_line_json_loads_refuses_is_refused_with_its_line_not_a_traceback(
    run, tmp_path: Path, r: redis.Redis, line: bytes, why: str
) -> None:
    data = json.dumps(GOOD).encode() + b"\n" + line
    path = write(tmp_path / "hostile.jsonl", data)
    result = CliRunner().invoke(cli, ["enqueue", str(path)])
    assert result.exit_code == 1 and result.exception is not None
    assert isinstance(result.exception, SystemExit)  # a ClickException, not a traceback
    assert "hostile.jsonl:2: not JSON" in result.output and why in result.output
    assert path.read_bytes() == data
    assert sum(queues.depths(r).values()) == 0


def test_a_utf8_bom_is_accepted(run, tmp_path: Path, r: redis.Redis) -> None:
    path = write(tmp_path / "windows.jsonl", b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    result = run("enqueue", str(path))
    assert result.exit_code == 0, result.output
    assert queues.depths(r)["train-normal"] == 1
