"""The documented examples run as written (only the Redis URL is the test's), and the README
and docs/ link only to files of this repository that exist."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import redis

from bus import queues

REPO = Path(__file__).resolve().parents[2]
# The training job's `rq enqueue` example lives with the other job examples.
JOBS_DOC = REPO / "docs" / "jobs.md"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]


def documented_command(source: Path, pattern: str) -> list[str]:
    text = source.read_text(encoding="utf-8").replace("\\\n", " ")
    match = re.search(pattern, text, flags=re.MULTILINE)
    assert match, f"no example matching {pattern!r} in {source.relative_to(REPO)}"
    return shlex.split(match.group(0))


def test_the_rq_enqueue_example_queues_a_training_job(r: redis.Redis, redis_url: str) -> None:
    argv = documented_command(JOBS_DOC, r"^rq enqueue .*services\.trainer\.jobs\.\w+.*$")
    argv[argv.index("--url") + 1] = redis_url
    argv[0] = str(Path(sys.executable).parent / "rq")
    subprocess.run(argv, check=True, capture_output=True)
    [job] = queues.queues(r, "train")[0].get_jobs()
    assert job.func_name == queues.TRAIN_FILE
    assert job.kwargs == {"path": "/abs/path/batch.jsonl"}
    assert queues.depths(r) == {**{q: 0 for q in queues.depths(r)}, "train-high": 1}


def test_the_readme_starts_with_the_commands_ci_runs() -> None:
    first_block = (REPO / "README.md").read_text(encoding="utf-8").split("```")[1]
    assert [line.split()[:2] for line in first_block.splitlines()[1:3]] == [
        ["make", "up"],
        ["make", "test"],
    ]
    assert "make test" in (REPO / ".ci" / "run").read_text(encoding="utf-8")


def test_every_link_stays_in_the_repository_and_exists() -> None:
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            where = f"{doc.relative_to(REPO)} links to {target}"
            assert "://" not in target and not target.startswith("mailto:"), where
            path = (doc.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(REPO) and path.exists(), where


def test_the_readme_stays_what_a_user_reads_first() -> None:
    # Reference belongs in docs/, measurements in bench/README.md (issue 13 item 5).
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move reference into docs/"
