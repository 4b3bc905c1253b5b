"""Chaos soak: train real files with the embedded model while faults are injected, then prove
from the ledger that nothing was lost and nothing trained twice.

    .venv/bin/python bench/chaos.py --seconds 180 [--files 3 --examples 30 --seed 1]
        [--json-out FILE]

What runs: a private redis-server (AOF, `appendfsync always`, on a free port, never the
shared one), a dataset store with `--files` queued JSONL files (users' format, from the codec
domains), and `python -m services.trainer` under a small supervisor that restarts it when it
exits (as compose's `restart: unless-stopped` does) and counts every exit it did not cause.

Faults, one every 3-10 s (seeded) until `--seconds` have passed:
  - kill -9 of the trainer, restarted 0-3 s later;
  - kill -9 of Redis, restarted 2-5 s later (the trainer rides it out, or is restarted);
  - the newest checkpoint corrupted on disk (a flipped byte in its weights), then a kill -9,
    so the restarted trainer finds it at start-up (at most once per newer save, as the
    quarantine promise is for the newest checkpoint);
  - SIGTERM (a requested stop), restarted 0-3 s later.
Then faults stop and the trainer finishes the queue.

Checked at the end (exit status 1 when any fails): every job finished; following the ledger
along the lineage of the final weights (a step number seen again after a restart replaces
the steps from that number on), every line of every file was trained exactly once (one
epoch); no checkpoint id was announced twice; every user file is intact and its stored copy
present. With `--node`, a node on the embedded model runs beside it (restarted like the
trainer), and one more fault is drawn: 6 long completions (half streaming) whose clients hang
up after 0.3 s; the node must hold none of them within 1.5 s and serve a short request at
once, and stop within its drain bound at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

SAVE_STEPS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on PATH")
        self.binary = binary

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.5).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise SystemExit("the soak's redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


class Supervisor:
    """Keeps one service process running; counts the exits it did not ask for."""

    def __init__(self, env: dict[str, str], log: Path, module: str = "services.trainer") -> None:
        self.env = env
        self.log = log
        self.module = module
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.unexpected_exits: list[int] = []
        self._expected = False

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        self._expected = False

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._expected = True
            self.proc.send_signal(signum)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.unexpected_exits.append(-999)  # a stop that did not stop in 60 s

    def watch(self, redis_up: bool) -> None:
        """Restart the process if it exited (after noting whether it was asked to)."""
        if self.proc is None or self.proc.poll() is None:
            return
        if not redis_up:
            self._expected = True  # no Redis at start-up: the trainer says so and exits
        if not self._expected:
            self.unexpected_exits.append(self.proc.returncode)
        if redis_up:
            self.start()


def abandon_requests(node_url: str, count: int, rng: random.Random) -> dict[str, float | bool]:
    """`count` long completions (half streaming) whose clients hang up after 0.3 s; then how
    long until the node holds none of them, and whether a short request is served at once."""
    import threading

    import httpx

    def one(stream: bool) -> None:
        body = {
            "messages": [{"role": "user", "content": f"tell a long story {rng.random()}"}],
            "max_tokens": 3000,
            "stream": stream,
        }
        try:
            with httpx.Client(timeout=0.3) as client:
                if stream:
                    with client.stream("POST", node_url + "/v1/chat/completions", json=body) as r:
                        for _ in r.iter_bytes():
                            pass
                else:
                    client.post(node_url + "/v1/chat/completions", json=body)
        except httpx.HTTPError:
            pass  # the client gave up: that is the fault

    threads = [threading.Thread(target=one, args=(i % 2 == 0,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gone_at = time.monotonic()
    drained = None
    while time.monotonic() - gone_at < 10:
        try:
            models = httpx.get(node_url + "/models", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            time.sleep(0.1)
            continue
        entries = models.get("models", models) if isinstance(models, dict) else models
        if all(int(e.get("requests_in_flight", 0)) == 0 for e in entries):
            drained = time.monotonic() - gone_at
            break
        time.sleep(0.05)
    started = time.monotonic()
    try:
        r = httpx.post(
            node_url + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
            timeout=30,
        )
        served = r.status_code == 200
    except httpx.HTTPError:
        served = False
    return {
        "drained_seconds": -1.0 if drained is None else drained,
        "probe_seconds": time.monotonic() - started,
        "probe_served": served,
    }


def write_files(folder: Path, files: int, examples: int, seed: int) -> list[Path]:
    from codec.domains import default_codebook, mixed_problems
    from codec.modes import RENDER_MODES

    rng = random.Random(seed)
    codebook = default_codebook()
    problems = list(mixed_problems(files * examples, seed=seed))
    paths = []
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(files):
        path = folder / f"soak-{n}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for index in range(examples):
                at = n * examples + index
                row = problems[at].render(RENDER_MODES[at % len(RENDER_MODES)], codebook, rng)
                row["meta"]["id"] = f"soak-{n}-{index}"
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


def lineage(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kept: list[dict[str, Any]] = []
    for step in steps:
        while kept and kept[-1]["step"] >= step["step"]:
            kept.pop()
        kept.append(step)
    return kept


def newest_checkpoint(root: Path) -> Path | None:
    from checkpoints.manifest import parse_id

    found = [(parse_id(p.name), p) for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    found = [(key, p) for key, p in found if key is not None]
    return max(found)[1] if found else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--examples", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--node",
        action="store_true",
        help="also run a node on the embedded model, and let clients abandon long requests",
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="r3-chaos-"))
    server = Redis(work / "redis")
    (work / "redis").mkdir()
    server.start()
    from bus import queues
    from bus.keys import STREAM_ALERTS, STREAM_CHECKPOINTS
    from checkpoints.durable import sha256_file
    from services.dataset_store import DatasetStore
    from services.model.loading import resolve_model_dir

    conn = redis.Redis.from_url(server.url)
    sources = write_files(work / "user-files", args.files, args.examples, args.seed)
    before = {p: sha256_file(p) for p in sources}
    store = DatasetStore(work / "data" / "datasets")
    job_ids = []
    for path in sources:
        stored = store.add(path)
        job = queues.enqueue(
            conn,
            queues.TRAIN_FILE,
            kind="train",
            kwargs={"path": str(stored.path), "name": stored.name, "sha256": stored.sha256},
        )
        job_ids.append((job.id, path, stored))

    env = {k: v for k, v in os.environ.items() if not k.startswith("R3_")}
    env.update(
        {
            "R3_REDIS_URL": server.url,
            "R3_MODEL": str(resolve_model_dir(None)),
            "R3_DATA_DIR": str(work / "data"),
            "R3_CHECKPOINT_DIR": str(work / "ckpt"),
            "R3_MIN_FREE_DISK_BYTES": "0",
            "R3_TRAIN_LEDGER": str(work / "ledger.jsonl"),
            "R3_SAVE_STEPS": str(SAVE_STEPS),
            "R3_MAX_LENGTH": "384",
            "R3_MICRO_BATCH_TOKENS": "384",
            "R3_TOKENS_PER_STEP": "384",
            "R3_PACK_BUFFER_EXAMPLES": "8",
            "R3_EVAL_STEPS": "100000",
            "R3_LAYER_MONITOR_STEPS": "0",
            "R3_ACTIVATION_CHECKPOINTING": "false",
            "R3_TORCH_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
        }
    )
    trainer = Supervisor(env, work / "trainer.log")
    trainer.start()
    node: Supervisor | None = None
    node_url = ""
    abandoned: list[dict[str, float | bool]] = []
    if args.node:
        import httpx

        port = free_port()
        node_url = f"http://127.0.0.1:{port}"
        node_env = dict(env, R3_NODE_PORT=str(port), R3_NODE_HOST="127.0.0.1")
        node = Supervisor(node_env, work / "node.log", module="services.node")
        node.start()
        ready = time.monotonic() + 180
        while time.monotonic() < ready:
            try:
                if httpx.get(node_url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    faults: Counter[str] = Counter()
    corrupted_after: str | None = None  # a newer save must come before the next corruption
    started = time.monotonic()
    redis_up = True
    while time.monotonic() - started < args.seconds:
        pause = rng.uniform(3, 10)
        until = time.monotonic() + pause
        while time.monotonic() < until:
            trainer.watch(redis_up)
            if node is not None:
                node.watch(redis_up)
            time.sleep(0.2)
        kinds = ["kill_trainer", "kill_redis", "corrupt_checkpoint", "stop_trainer"]
        kind = rng.choice(kinds + (["abandon_requests"] if node is not None else []))
        if kind == "kill_trainer":
            trainer.signal(signal.SIGKILL)
            time.sleep(rng.uniform(0, 3))
            trainer.start()
        elif kind == "stop_trainer":
            trainer.signal(signal.SIGTERM)
            time.sleep(rng.uniform(0, 3))
            trainer.start()
        elif kind == "abandon_requests":
            abandoned.append(abandon_requests(node_url, 6, rng))
        elif kind == "kill_redis":
            server.kill()
            redis_up = False
            down = time.monotonic() + rng.uniform(2, 5)
            while time.monotonic() < down:
                trainer.watch(redis_up)
                if node is not None:
                    node.watch(redis_up)
                time.sleep(0.2)
            server.start()
            redis_up = True
        else:
            newest = newest_checkpoint(work / "ckpt")
            if newest is None or newest.name == corrupted_after:
                continue
            weights = newest / "model.safetensors"
            trainer.signal(signal.SIGKILL)  # the disk rots while the trainer is down
            data = bytearray(weights.read_bytes())
            data[len(data) // 2] ^= 0x01
            weights.write_bytes(bytes(data))
            corrupted_after = newest.name
            trainer.start()
        faults[kind] += 1
    fault_seconds = time.monotonic() - started

    # Let the queue finish without faults.
    from rq.job import Job, JobStatus

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        trainer.watch(True)
        statuses = [Job.fetch(i, connection=conn).get_status() for i, _, _ in job_ids]
        if all(s == JobStatus.FINISHED for s in statuses):
            break
        time.sleep(0.5)
    trainer.signal(signal.SIGTERM)
    node_stop_seconds = None
    if node is not None:
        stop_began = time.monotonic()
        node.signal(signal.SIGTERM)
        node_stop_seconds = round(time.monotonic() - stop_began, 1)
    total_seconds = time.monotonic() - started

    # The ledger, along the lineage of the final weights.
    ledger = work / "ledger.jsonl"
    steps = [json.loads(line) for line in ledger.read_text().splitlines() if line.endswith("}")]
    kept = lineage(steps)
    trained = Counter((s["job"], e[0], e[1]) for s in kept for e in s["examples"])
    from services.trainer.dataset_reader import read_lines

    expected = {
        (job_id, raw.line, raw.offset)
        for job_id, _, stored in job_ids
        for raw in read_lines(stored.path)
        if not raw.blank
    }
    missing = expected - set(trained)
    twice = {key: n for key, n in trained.items() if n > 1}
    unknown = set(trained) - expected
    announced = [
        fields[b"checkpoint_id"].decode()
        for _, fields in conn.xrange(STREAM_CHECKPOINTS)
        if fields.get(b"type") == b"checkpoint.ready"
    ]
    issued = (work / "ckpt" / ".issued-ids").read_text().split()
    alerts = Counter(
        fields[b"code"].decode() for _, fields in conn.xrange(STREAM_ALERTS) if b"code" in fields
    )
    files_intact = all(p.exists() and sha256_file(p) == before[p] for p in sources)
    stored_present = all(stored.path.exists() for _, _, stored in job_ids)
    finished = sum(
        Job.fetch(i, connection=conn).get_status() == JobStatus.FINISHED for i, _, _ in job_ids
    )
    summary = {
        "fault_seconds": round(fault_seconds, 1),
        "total_seconds": round(total_seconds, 1),
        "faults_injected": dict(faults),
        "faults_total": sum(faults.values()),
        "trainer_starts": trainer.starts,
        "unexpected_trainer_exits": trainer.unexpected_exits,
        "jobs": len(job_ids),
        "jobs_completed": finished,
        "examples": len(expected),
        "ledger_steps_written": len(steps),
        "lineage_steps": len(kept),
        "steps_redone_after_faults": len(steps) - len(kept),
        "examples_missing": len(missing),
        "examples_trained_twice": len(twice),
        "examples_unknown": len(unknown),
        "checkpoints_announced": len(announced),
        "checkpoint_ids_reused": len(announced) - len(set(announced)),
        "issued_ids_reused": len(issued) - len(set(issued)),
        "alerts": dict(alerts),
        "node_starts": None if node is None else node.starts,
        "unexpected_node_exits": None if node is None else node.unexpected_exits,
        "abandon_rounds": len(abandoned),
        "abandoned_requests": 6 * len(abandoned),
        "abandoned_drained_max_seconds": max(
            (float(a["drained_seconds"]) for a in abandoned), default=None
        ),
        "probe_after_abandon_max_seconds": max(
            (float(a["probe_seconds"]) for a in abandoned), default=None
        ),
        "probes_failed": sum(not a["probe_served"] for a in abandoned),
        "abandon_rounds_detail": [
            {k: round(v, 2) if isinstance(v, float) else v for k, v in a.items()} for a in abandoned
        ],
        "node_sigterm_seconds": node_stop_seconds,
        "user_files_intact": files_intact,
        "stored_copies_present": stored_present,
        "work_dir": str(work),
    }
    ok = (
        finished == len(job_ids)
        and not missing
        and not twice
        and not unknown
        and summary["checkpoint_ids_reused"] == 0
        and summary["issued_ids_reused"] == 0
        and files_intact
        and stored_present
        and not trainer.unexpected_exits
        and (node is None or not node.unexpected_exits)
        and all(0 <= float(a["drained_seconds"]) <= 1.5 and a["probe_served"] for a in abandoned)
    )
    summary["ok"] = ok
    print(json.dumps(summary, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
    server.kill()
    if not args.keep and ok:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
