"""The demo's learning curve through the real path: seeded queue → `python -m services.trainer`.

It does what `regime3 up` does for the trainer host, without the node and gateway: draws the
fixed validation set, seeds train-normal with the demo's data (validation problems excluded),
starts the trainer worker with the demo recipe (services.feeder.demo.DEMO_TRAINER_ENV; every
R3_* variable you set, in the environment or in the checkout's .env, wins), and
follows the `eval.result` events: step, wall seconds, the trainer's CPU seconds, held-out EM.
It stops at --target EM or --minutes. Exit status 0 when the target was reached in time.

    .venv/bin/python bench/demo_learning.py --minutes 10 --target 0.9 --json-out /tmp/curve.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bus import keys  # noqa: E402
from bus.broadcast import EARLIEST, BroadcastReader  # noqa: E402
from bus.events import EvalResult  # noqa: E402
from services.feeder.config import FeederSettings  # noqa: E402
from services.feeder.demo import (  # noqa: E402
    DEMO_TRAINER_ENV,
    apply_demo_recipe,
    seed_queue,
    user_value,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--examples", type=int, default=20_000, help="seeded examples")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    data = args.data_dir or Path(tempfile.mkdtemp(prefix="r3-demo-"))
    port = _free_port()
    redis_proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    conn = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            conn.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    feeder = FeederSettings(data_dir=data, demo_seed_examples=args.examples)
    # The recipe fills in only what the user left unset (as `regime3 up` does): the trainer
    # runs in ROOT, so ROOT/.env is the file its settings read.
    env = dict(os.environ)
    env_file = ROOT / ".env"
    apply_demo_recipe(env, feeder, env_file=env_file)
    env.update(
        R3_REDIS_URL=url,
        R3_DATA_DIR=str(data),
        R3_MIN_FREE_DISK_BYTES="0",
        PYTHONUNBUFFERED="1",
    )
    eval_sets = user_value("R3_FIXED_EVAL_SETS", env, env_file)
    recipe = {
        name: user_value(name, env, env_file)
        for name in [*DEMO_TRAINER_ENV, "R3_FIXED_EVAL_SETS", "R3_EVAL_MAX_TOKENS"]
    }
    started = time.monotonic()
    eval_size = int(user_value("R3_EVAL_EXAMPLES", env, env_file) or "64")
    seed_queue(conn, feeder, validation_sets=eval_sets, validation_size=eval_size)
    seeded_s = time.monotonic() - started
    trainer = subprocess.Popen(
        [sys.executable, "-m", "services.trainer"],
        env=env,
        cwd=ROOT,
        stdout=open(data / "trainer.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    proc = psutil.Process(trainer.pid)
    reader = BroadcastReader(conn, {keys.STREAM_EVAL: EARLIEST})
    curve: list[dict[str, float | int | None]] = []
    reached = False
    try:
        while time.monotonic() - started < args.minutes * 60 and trainer.poll() is None:
            for delivery in reader.read(1000):
                event = delivery.event
                if not isinstance(event, EvalResult):
                    continue
                cpu = proc.cpu_times()
                point = {
                    "step": event.step,
                    "wall_s": round(time.monotonic() - started, 1),
                    "trainer_cpu_s": round(cpu.user + cpu.system, 1),
                    "em": round(event.fixed_eval_em, 4),
                    "ce": None if event.fixed_eval_ce is None else round(event.fixed_eval_ce, 4),
                    "answer_ce": None if event.answer_ce is None else round(event.answer_ce, 4),
                    "load_1m": round(os.getloadavg()[0], 2),
                }
                curve.append(point)
                print(json.dumps(point), flush=True)
                if event.fixed_eval_em >= args.target:
                    reached = True
            if reached:
                break
    finally:
        trainer.terminate()
        trainer.wait(60)
        redis_proc.terminate()
        redis_proc.wait(10)
    result = {
        "reached": reached,
        "target": args.target,
        "minutes": args.minutes,
        "seed_queue_s": round(seeded_s, 1),
        "cpus": os.cpu_count(),
        "demo_mode": feeder.demo_mode,
        "recipe": {k: v for k, v in recipe.items() if v},  # what the trainer ran with
        "curve": curve,
    }
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}))
    if args.data_dir is None:
        shutil.rmtree(data, ignore_errors=True)
    return 0 if reached else 1


if __name__ == "__main__":
    raise SystemExit(main())
