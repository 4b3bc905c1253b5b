"""The README's examples run as written (only the Redis URL is the test's)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import redis

from bus import queues

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_command(prefix: str) -> list[str]:
    text = README.read_text(encoding="utf-8").replace("\\\n", " ")
    match = re.search(rf"^{re.escape(prefix)}.*$", text, flags=re.MULTILINE)
    assert match, f"no `{prefix}` example in the README"
    return shlex.split(match.group(0))


def test_the_rq_enqueue_example_queues_a_training_job(r: redis.Redis, redis_url: str) -> None:
    argv = readme_command("rq enqueue")
    argv[argv.index("--url") + 1] = redis_url
    argv[0] = str(Path(sys.executable).parent / "rq")
    subprocess.run(argv, check=True, capture_output=True)
    [job] = queues.queues(r, "train")[0].get_jobs()
    assert job.func_name == queues.TRAIN_FILE
    assert job.kwargs == {"path": "/abs/path/batch.jsonl"}
    assert queues.depths(r) == {**{q: 0 for q in queues.depths(r)}, "train-high": 1}
