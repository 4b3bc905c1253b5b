"""Gateway SSE fan-out: publish→client latency (p50, p99), the highest sustained rate, and
the gateway's memory over time, with 1, 10 and 50 clients, in one run.

A real gateway (`python -m services.gateway`) serves `/events?streams=training`; the clients
are raw asyncio HTTP connections in separate processes (25 a process), so the measuring side
costs little next to the gateway. Latency is the client's clock minus the event's `time`
(stamped when the event is built, just before XADD; same machine, same clock), so it
includes XADD, the gateway's XREAD, fan-out, the socket and the client's read.

    python bench/sse_fanout.py                       # the recorded run (10-minute memory phase)
    python bench/sse_fanout.py --minutes 1           # a shorter memory phase
    python bench/sse_fanout.py --clients 10 --latency-seconds 5 --minutes 0

Phases, for each client count: latency at `--rate` events/s; then a ladder of offered rates
(`--ladder`), each held `--step-seconds`: a step is sustained when every client received every
event within 2 s of the last publish and none was cut off as lagged. Last, the memory phase:
`--rate` events/s to the largest client count for `--minutes`, the gateway's RSS sampled every
`--rss-every` seconds (RSS is sampled through all phases too).

Runs against R3_BENCH_REDIS_URL, else claims an empty database on 127.0.0.1:6379 and empties
it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
import psutil
import redis
from redis_claim import claim_db  # bench/ is on sys.path when run as a script

from bus.events import TrainStep
from bus.publish import Publisher

ROOT = Path(__file__).resolve().parents[1]
PREBUILT = [
    TrainStep(current_step=i, loss=0.5, learning_rate=1e-4, tokens=4096) for i in range(1000)
]
PER_PROCESS = 25
TIME_KEY = b'"time":"'
TIME_LEN = len("2026-11-24T02:31:00.123456Z")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# --- clients (in their own processes) ---------------------------------------------------------


class Client:
    """One SSE connection: counts frames, and with `timing` on parses each event's time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        self.lagged = 0
        self.latencies: list[float] = []
        self.timing = True

    async def run(self) -> None:
        while True:  # a lagged (closed) stream reconnects live, as a dashboard would
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(
                b"GET /events?streams=training HTTP/1.1\r\nHost: bench\r\n"
                b"Accept: text/event-stream\r\n\r\n"
            )
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            tail = b""
            while True:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    break
                now = time.time()
                data = tail + chunk
                cut = data.rfind(b"\n\n")
                if cut < 0:
                    tail = data
                    continue
                whole, tail = data[: cut + 2], data[cut + 2 :]
                n = whole.count(TIME_KEY)
                self.count += n
                if b"event: lagged" in whole:
                    self.lagged += 1
                if self.timing and n:
                    start = 0
                    while (i := whole.find(TIME_KEY, start)) >= 0:
                        stamp = whole[i + len(TIME_KEY) : i + len(TIME_KEY) + TIME_LEN]
                        sent = datetime.fromisoformat(stamp.decode()).timestamp()
                        self.latencies.append((now - sent) * 1000)
                        start = i + 1
            writer.close()


def client_process(port: int, n: int, control: Connection) -> None:
    async def main() -> None:
        clients = [Client(port) for _ in range(n)]
        tasks = [asyncio.create_task(c.run()) for c in clients]
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, control.recv)
            if command[0] == "stop":
                for t in tasks:
                    t.cancel()
                return
            if command[0] == "timing":
                for c in clients:
                    c.timing = command[1]
            if command[0] == "report":
                control.send([(c.count, c.lagged, []) for c in clients])
            if command[0] == "latencies":  # hands them over and starts afresh
                control.send([(c.count, c.lagged, c.latencies) for c in clients])
                for c in clients:
                    c.latencies = []

    asyncio.run(main())


class Pool:
    """`n` clients in processes of PER_PROCESS connections each."""

    def __init__(self, port: int, n: int) -> None:
        self.pipes: list[Connection] = []
        self.procs: list[mp.Process] = []
        for start in range(0, n, PER_PROCESS):
            ours, theirs = mp.Pipe()
            proc = mp.Process(
                target=client_process, args=(port, min(PER_PROCESS, n - start), theirs)
            )
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)

    def report(self, command: str = "report") -> list[tuple[int, int, list[float]]]:
        """(frames received, times lagged, latencies if `command` is "latencies") a client."""
        for p in self.pipes:
            p.send((command,))
        return [row for p in self.pipes for row in p.recv()]

    def timing(self, on: bool) -> None:
        for p in self.pipes:
            p.send(("timing", on))

    def stop(self) -> None:
        for p in self.pipes:
            p.send(("stop",))
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


# --- the gateway and the publisher ------------------------------------------------------------


class Gateway:
    def __init__(self, url: str, port: int, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("R3_")}
        env.update(R3_REDIS_URL=url, R3_GATEWAY_PORT=str(port), R3_GATEWAY_HOST="127.0.0.1")
        self.port = port
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.gateway"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url("/healthz"), timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit(f"the gateway did not start; see {log}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def clients(self) -> int:
        return int(httpx.get(self.url("/healthz"), timeout=5).json()["sse_clients"])

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=15)


class RssSampler(threading.Thread):
    def __init__(self, gateway: Gateway, every: float) -> None:
        super().__init__(daemon=True)
        self.gateway = gateway
        self.every = every
        self.phase = "start"
        self.samples: list[tuple[float, str, int]] = []
        self.t0 = time.monotonic()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(
                (round(time.monotonic() - self.t0, 1), self.phase, self.gateway.rss())
            )
            self.stop.wait(self.every)


def publish_at(pub: Publisher, rate: float, seconds: float, *, fresh: bool = True) -> int:
    """Publish TrainSteps at `rate`/s for `seconds`, in 5 ms ticks; returns how many.

    `fresh` builds each event just before its XADD, so its `time` is the publish time (for
    latency); without it, prebuilt events are reused so that building pydantic models does
    not cap the rate the ladder can offer.
    """
    tick = 0.005
    sent = 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(rate * min(elapsed + tick, seconds)) - sent
        if due > 0:
            if fresh:
                pub.publish_many(
                    TrainStep(current_step=sent + i, loss=0.5, learning_rate=1e-4, tokens=4096)
                    for i in range(due)
                )
            else:
                for i in range(0, due, len(PREBUILT)):
                    pub.publish_many(PREBUILT[: min(len(PREBUILT), due - i)])
            sent += due
        pause = start + (sent / rate) - time.monotonic()
        if pause > 0:
            time.sleep(min(pause, tick))
    return sent


def wait_delivered(pool: Pool, base: list[int], expected: int, grace: float) -> list[int]:
    deadline = time.monotonic() + grace
    while True:
        counts = [c for c, _, _ in pool.report()]
        got = [c - b for c, b in zip(counts, base, strict=True)]
        if min(got) >= expected or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def run_clients(gw: Gateway, pub: Publisher, n: int, args: argparse.Namespace) -> dict:
    pool = Pool(gw.port, n)
    try:
        deadline = time.monotonic() + 30
        while gw.clients() != n:
            if time.monotonic() > deadline:
                raise SystemExit(f"{n} clients did not connect")
            time.sleep(0.1)
        row: dict = {"clients": n}
        # Latency at the fixed rate.
        base = [c for c, _, _ in pool.report("latencies")]
        sent = publish_at(pub, args.rate, args.latency_seconds)
        got = wait_delivered(pool, base, sent, 2.0)
        latencies = [x for _, _, lat in pool.report("latencies") for x in lat]
        row["latency"] = {
            "rate": args.rate,
            "published": sent,
            "delivered": sum(got),
            "p50_ms": round(percentile(latencies, 50), 2),
            "p99_ms": round(percentile(latencies, 99), 2),
            "max_ms": round(max(latencies, default=float("nan")), 2),
        }
        # The ladder: the highest offered rate every client keeps up with.
        pool.timing(False)
        row["ladder"] = []
        best = 0
        for rate in args.ladder:
            before = pool.report()
            base = [c for c, _, _ in before]
            t0 = time.monotonic()
            sent = publish_at(pub, rate, args.step_seconds, fresh=False)
            achieved = sent / (time.monotonic() - t0)
            got = wait_delivered(pool, base, sent, 2.0)
            lagged = sum(lag for _, lag, _ in pool.report()) - sum(lag for _, lag, _ in before)
            # Sustained: every client got every event, none lagged, and the publisher really
            # offered this rate (on a loaded machine it may not: then the step says so).
            ok = min(got) >= sent and lagged == 0 and achieved >= 0.9 * rate
            row["ladder"].append(
                {
                    "offered": rate,
                    "published_per_s": round(achieved),
                    "ok": ok,
                    "lagged": lagged,
                    "min_delivered_ratio": round(min(got) / max(sent, 1), 3),
                }
            )
            if not ok:
                break
            best = rate
            time.sleep(0.5)
        row["sustained_events_per_s"] = best
        row["sustained_deliveries_per_s"] = best * n
        pool.timing(True)
        return row
    finally:
        pool.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument(
        "--ladder",
        type=int,
        nargs="+",
        default=[500, 1000, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 15000],
    )
    parser.add_argument("--step-seconds", type=float, default=3.0)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rss-every", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    url = claim_db()
    r = redis.Redis.from_url(url)
    gw = Gateway(url, free_port(), Path("/tmp") / f"sse_fanout_gateway_{os.getpid()}.log")
    sampler = RssSampler(gw, min(args.rss_every, 1.0))
    sampler.start()
    pub = Publisher(r)
    rows = []
    try:
        for n in args.clients:
            sampler.phase = f"clients={n}"
            rows.append(run_clients(gw, pub, n, args))
            print(json.dumps(rows[-1]), flush=True)
        memory: dict = {}
        if args.minutes > 0:
            n = max(args.clients)
            pool = Pool(gw.port, n)
            try:
                while gw.clients() != n:
                    time.sleep(0.1)
                sampler.phase = "memory"
                sampler.every = args.rss_every
                start = len(sampler.samples)
                pool.report("latencies")
                sent = publish_at(pub, args.rate, args.minutes * 60)
                time.sleep(1.0)
                reports = pool.report("latencies")
                lat = [x for _, _, xs in reports for x in xs]
                samples = [s for s in sampler.samples[start:]]
                rss = [s[2] for s in samples]
                half = len(rss) // 2
                memory = {
                    "clients": n,
                    "rate": args.rate,
                    "minutes": args.minutes,
                    "published": sent,
                    "lagged": sum(lag for _, lag, _ in reports),
                    "p50_ms": round(percentile(lat, 50), 2),
                    "p99_ms": round(percentile(lat, 99), 2),
                    "rss_first_mib": round(rss[0] / 2**20, 1) if rss else None,
                    "rss_last_mib": round(rss[-1] / 2**20, 1) if rss else None,
                    "rss_max_mib": round(max(rss) / 2**20, 1) if rss else None,
                    # Flat means the second half's mean is no higher than the first half's.
                    "rss_first_half_mean_mib": round(statistics.mean(rss[:half]) / 2**20, 1)
                    if half
                    else None,
                    "rss_second_half_mean_mib": round(statistics.mean(rss[half:]) / 2**20, 1)
                    if half
                    else None,
                }
            finally:
                pool.stop()
            print(json.dumps({"memory": memory}), flush=True)
    finally:
        sampler.stop.set()
        gw.stop()
        if not os.environ.get("R3_BENCH_REDIS_URL"):
            r.flushdb()
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end",
        "command": " ".join(sys.argv),
        "rows": rows,
        "memory": memory,
        "rss_samples": sampler.samples,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples"}, indent=1))


if __name__ == "__main__":
    main()
