"""A real gateway (`python -m services.gateway` under uvicorn) on a free port, and an SSE reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.rig.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin-secret-token"
NODE = "node-secret-token"


@dataclass
class Gateway:
    """One gateway process; `restart()` stops it and starts another on the same port."""

    env: dict[str, str]
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.gateway"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway did not answer in 30 s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def rss_bytes(self) -> int:
        import psutil

        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics by name (labels folded into the name as Prometheus shows them)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics", timeout=5).text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out


def gateway_env(
    redis_url: str, tmp: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("R3_")}
    env.update(
        R3_REDIS_URL=redis_url,
        R3_DATA_DIR=str(tmp / "data"),
        R3_CHECKPOINT_DIR=str(tmp / "checkpoints"),
        R3_ADMIN_TOKEN=ADMIN,
        R3_NODE_TOKEN=NODE,
        R3_GATEWAY_HOST="127.0.0.1",
        R3_GATEWAY_PORT=str(free_port()),
        R3_DASHBOARD_DIR=str(tmp / "dashboards"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


@dataclass
class Frame:
    event: str
    id: str | None
    data: dict[str, object] = field(default_factory=dict)


class SseReader:
    """Reads SSE frames from an open httpx stream; each read waits at most `timeout` s, so
    a broken stream fails the test instead of hanging it."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()

    def __iter__(self) -> Iterator[Frame]:
        event, ident, data = "message", None, []
        for line in self.lines:
            if line == "":
                if data:
                    yield Frame(event, ident, json.loads("\n".join(data)))
                event, ident, data = "message", None, []
            elif line.startswith(":"):
                continue  # keep-alive comment
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    event = value
                elif name == "id":
                    ident = value
                elif name == "data":
                    data.append(value)

    def take(self, n: int) -> list[Frame]:
        out: list[Frame] = []
        for frame in self:
            out.append(frame)
            if len(out) == n:
                break
        return out


# Dataset uploads (tests/gateway/test_uploads*.py).
AUTH = {"Authorization": f"Bearer {NODE}"}


def jsonl(n: int) -> bytes:
    """`n` small chat lines, as an upload's body."""
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(n)
    ]
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def upload(
    gw: Gateway, data: bytes, *, headers: dict[str, str] = AUTH, **params: str
) -> httpx.Response:
    """POST `data` to the gateway's /datasets as the multipart field `file`."""
    return httpx.post(
        gw.url + "/datasets",
        params=params,
        files={"file": ("shard-7.jsonl", data, "application/x-ndjson")},
        headers=headers,
        timeout=30,
    )
