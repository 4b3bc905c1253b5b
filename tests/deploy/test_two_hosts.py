"""Two hosts for real: the trainer host's and the node host's processes in two network
namespaces joined by a veth pair, each with its own address, started with the commands the
compose file runs (`python -m services.<name>`, the same environment variables).

It shows a checkpoint pulled across the link and hot-swapped on the node, then a shard
generated on the node, uploaded to the trainer host's gateway and trained there. Needs root
(network namespaces); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _why_not() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (run the suite as root, as CI does)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    if shutil.which("redis-server") is None:
        return "needs redis-server on PATH for the trainer host's Redis"
    return None


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


@dataclass
class Host:
    ns: str
    address: str
    env: dict[str, str]
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str]) -> None:
        log = (self.logs / f"{self.ns}-{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *argv],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def run(self, argv: list[str], timeout: float = 60) -> str:
        result = subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise AssertionError(f"{argv} in {self.ns}: {result.stdout}{result.stderr}")
        return result.stdout

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


_VARIABLE = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def interpolate(arg: str) -> str:
    """What compose makes of `${VAR}`, `${VAR:-default}` and `${VAR:?error}` in a command."""
    return _VARIABLE.sub(lambda m: os.environ.get(m.group(1)) or m.group(2) or "", arg)


def compose_commands() -> dict[str, list[str]]:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return {
        name: [interpolate(str(arg)) for arg in spec["command"]]
        for name, spec in services.items()
        if name != "redis"
    }


def wait_for(what: str, check: Callable[[], Any], timeout: float, hosts: list[Host]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for host in hosts:
            for name, proc in host.procs.items():
                if proc.poll() is not None:
                    log = (host.logs / f"{host.ns}-{name}.log").read_text()[-3000:]
                    raise AssertionError(
                        f"{name} on {host.ns} exited while waiting for {what}:\n{log}"
                    )
        value = check()
        if value:
            return value
        time.sleep(1.0)
    tails = "\n".join(
        f"--- {path.name}\n{path.read_text()[-1500:]}"
        for path in sorted(hosts[0].logs.glob("*.log"))
    )
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")


@pytest.fixture
def two_hosts(tmp_path: Path, embedded_dir: Path) -> Iterator[tuple[Host, Host]]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    tag = f"{os.getpid() % 100000}"
    subnet = f"10.213.{os.getpid() % 250}"
    trainer_ns, node_ns = f"r3t{tag}", f"r3n{tag}"
    veth_t, veth_n = f"r3vt{tag}", f"r3vn{tag}"
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        sh("ip", "netns", "add", trainer_ns)
        sh("ip", "netns", "add", node_ns)
        sh("ip", "link", "add", veth_t, "type", "veth", "peer", "name", veth_n)
        for ns, veth, host in ((trainer_ns, veth_t, 1), (node_ns, veth_n, 2)):
            sh("ip", "link", "set", veth, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{subnet}.{host}/24", "dev", veth)
            sh("ip", "-n", ns, "link", "set", veth, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, OSError) as exc:
        for ns in (trainer_ns, node_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"could not build the two namespaces: {getattr(exc, 'stderr', exc)}")
    trainer_ip, node_ip = f"{subnet}.1", f"{subnet}.2"
    common = {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "R3_MODEL": str(embedded_dir),
        "R3_ADMIN_TOKEN": "admin-" + "a" * 32,
        "R3_NODE_TOKEN": "node-" + "n" * 32,
        # A password, as compose sets one (RQ jobs are pickles: Redis must not be open).
        "R3_REDIS_URL": f"redis://:twohostpw@{trainer_ip}:6379/0",
        "REDISCLI_AUTH": "twohostpw",
        "R3_RUN_ID": f"twohost-{tag}",
    }
    trainer = Host(
        trainer_ns,
        trainer_ip,
        {
            **common,
            "R3_HOST_NAME": "trainer-host",
            "R3_DATA_DIR": str(tmp_path / "trainer"),
            "R3_GATEWAY_HOST": "0.0.0.0",
            # Small and quick on a CPU: a checkpoint every few steps, no in-loop evaluation.
            "R3_TOKENS_PER_STEP": "2048",
            "R3_MICRO_BATCH_TOKENS": "2048",
            "R3_MAX_LENGTH": "512",
            "R3_SAVE_STEPS": "4",
            "R3_EVAL_STEPS": "100000",
        },
        logs,
    )
    node = Host(
        node_ns,
        node_ip,
        {
            **common,
            "R3_HOST_NAME": "node-host",
            "R3_NODE_NAME": "node-host",
            "R3_DATA_DIR": str(tmp_path / "node"),
            "R3_NODE_HOST": "0.0.0.0",
            "R3_GATEWAY_URL": f"http://{trainer_ip}:8080",
            "R3_NODE_URL": "http://127.0.0.1:8765",
            "R3_SWAP_POLICY": "every",
            "R3_TELEMETRY_INTERVAL_SECONDS": "2",
        },
        logs,
    )
    try:
        (tmp_path / "redis").mkdir()
        trainer.start(
            "redis",
            ["redis-server", "--bind", trainer_ip, "--port", "6379", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path / "redis"),
             "--requirepass", "twohostpw"],
        )  # fmt: skip
        yield trainer, node
    finally:
        node.stop()
        trainer.stop()
        for ns in (trainer_ns, node_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def events(host: Host, *streams: str) -> list[dict[str, Any]]:
    argv = [str(BIN / "regime3"), "events", "--since", "0", "--json"]
    for stream in streams:
        argv += ["--stream", stream]
    return [json.loads(line) for line in host.run(argv).splitlines() if line.strip()]


def test_checkpoint_crosses_to_the_node_and_a_node_shard_trains_on_the_trainer(
    two_hosts: tuple[Host, Host], tmp_path: Path
) -> None:
    trainer, node = two_hosts
    commands = compose_commands()
    wait_for(
        "redis", lambda: _ok(trainer, ["redis-cli", "-h", trainer.address, "ping"]), 30, [trainer]
    )
    for name in ("gateway", "trainer"):
        trainer.start(name, commands[name])
    for name in ("node", "node-worker"):
        node.start(name, commands[name])
    health = [str(BIN / "regime3"), "health"]
    wait_for("the gateway", lambda: _ok(trainer, [*health, "gateway"]), 90, [trainer, node])
    wait_for("the node", lambda: _ok(node, [*health, "node"]), 120, [trainer, node])
    # The node host reaches the trainer host's Redis and gateway over the veth pair only.
    assert _ok(node, ["redis-cli", "-h", trainer.address, "ping"])

    data = tmp_path / "arith.jsonl"
    trainer.run(
        [str(BIN / "regime3"), "data", "generate", "--domain", "arithmetic", "--count", "120",
         "--seed", "3", "--out", str(data)]
    )  # fmt: skip
    trainer.run([str(BIN / "regime3"), "enqueue", str(data), "--priority", "high"])

    def swapped() -> dict[str, Any] | None:
        for event in events(trainer, "models"):
            if event["type"] == "model.swapped" and event.get("node") == "node-host":
                return event
        return None

    swap = wait_for("a checkpoint swapped in on the node", swapped, 300, [trainer, node])
    pulled = [e for e in events(trainer, "models") if e["type"] == "checkpoint.pulled"]
    assert pulled and pulled[0]["host"] == "node-host" and pulled[0]["bytes"] > 0
    assert swap["model_id"] == pulled[0]["checkpoint_id"]

    # A shard generated on the node, uploaded to the gateway across the link, trained here.
    node.run(
        [sys.executable, "-c",
         "from bus import queues; from bus.connections import connect; "
         "queues.enqueue(connect(), queues.NODE_GENERATE, kind='node', priority='high', "
         "kwargs={'domain': 'arithmetic', 'count': 4, 'seed': 11, 'max_tokens': 48, "
         "'name': 'twohost-shard'})"]
    )  # fmt: skip

    def shard_trained() -> dict[str, Any] | None:
        jobs = events(trainer, "jobs")
        queued = {
            e["job_id"] for e in jobs if e["type"] == "job.queued" and e["queue"] == "train-low"
        }
        for event in jobs:
            if event["type"] == "job.failed" and event["job_id"] in queued:
                raise AssertionError(f"the node's shard failed to train: {event['reason']}")
            if event["type"] == "job.finished" and event["job_id"] in queued:
                return event
        return None

    finished = wait_for(
        "the node's shard trained on the trainer", shard_trained, 300, [trainer, node]
    )
    assert finished["host"] == "trainer-host"


def _ok(host: Host, argv: list[str]) -> bool:
    try:
        host.run(argv, timeout=20)
    except (AssertionError, subprocess.TimeoutExpired):
        return False
    return True
