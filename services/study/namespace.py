"""Each run of a study gets a Redis database of its own, so parallel trainers never share keys.

With `redis-server` on PATH the study starts a private one on a free port (nothing persisted)
and hands its databases out; without it, it borrows empty logical databases of the user's
Redis (R3_REDIS_URL's server, never its configured database), marked with a claim key, and
empties them when the run ends. The user's own database receives only the study's events.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import redis

from services.study.errors import StudyError

CLAIM_KEY = "r3:study:claimed-db"  # in a borrowed database: which study holds it
DATABASES = 16  # Redis's default `databases`


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Namespaces:
    """A pool of Redis URLs, one database each; `take()` one per run, `give()` it back."""

    def __init__(self, urls: list[str], *, borrowed: bool, owner: str) -> None:
        self.urls = list(urls)
        self.free = list(urls)
        self.borrowed = borrowed
        self.owner = owner
        self.where = "a private redis-server" if not borrowed else "borrowed databases"

    def take(self) -> str:
        if not self.free:
            raise StudyError("no Redis database is free for another run; lower --parallel")
        return self.free.pop(0)

    def give(self, url: str) -> None:
        if self.borrowed:
            clear(redis.Redis.from_url(url))  # emptied, still the study's until it ends
        self.free.append(url)

    def release(self) -> None:
        """Empty every borrowed database this study still holds, its claim too."""
        if not self.borrowed:
            return
        for url in self.urls:
            conn = redis.Redis.from_url(url)
            if _text(conn.get(CLAIM_KEY)) == self.owner:
                conn.flushdb()


def _text(value: object) -> str | None:
    return value.decode() if isinstance(value, bytes) else value  # type: ignore[return-value]


def clear(conn: redis.Redis) -> None:
    """Empty a run's database but keep its claim (a borrowed database stays the study's while
    the study runs: another study, or anything else, must not take it as empty)."""
    holder = conn.get(CLAIM_KEY)
    conn.flushdb()
    if holder is not None:
        conn.set(CLAIM_KEY, holder)


@contextmanager
def namespaces(main_url: str, owner: str, needed: int) -> Iterator[Namespaces]:
    """`needed` databases, from a private redis-server when the binary exists."""
    if shutil.which("redis-server"):
        port = _free_port()
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--databases", str(max(DATABASES, needed))]
        proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C must not stop it under the runs
        )
        try:
            url = f"redis://127.0.0.1:{port}"
            conn = redis.Redis.from_url(url)
            for _ in range(200):
                try:
                    conn.ping()
                    break
                except redis.ConnectionError:
                    if proc.poll() is not None:
                        raise StudyError(
                            f"redis-server on port {port} exited at start ({proc.returncode})"
                        ) from None
                    time.sleep(0.05)
            yield Namespaces([f"{url}/{db}" for db in range(needed)], borrowed=False, owner=owner)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        return
    pool = _borrow(main_url, owner, needed)
    try:
        yield pool
    finally:
        pool.release()


def _borrow(main_url: str, owner: str, needed: int) -> Namespaces:
    parts = urlsplit(main_url)
    db_text = parts.path.strip("/") or dict(
        item.split("=", 1) for item in parts.query.split("&") if "=" in item
    ).get("db", "0")
    mine = int(db_text) if db_text.isdigit() else 0
    base = urlunsplit(parts._replace(path="", query=""))
    urls: list[str] = []
    for db in range(DATABASES - 1, -1, -1):
        if db == mine or len(urls) == needed:
            continue
        url = urlunsplit(parts._replace(path=f"/{db}", query=""))
        conn = redis.Redis.from_url(url)
        if _text(conn.get(CLAIM_KEY)) == owner:  # this study's, from an earlier invocation
            urls.append(url)
            continue
        # Empty, then claimed atomically (SET NX: of two studies at once one wins), then
        # still holding nothing but the claim (else something else got there first).
        if conn.dbsize() != 0 or not conn.set(CLAIM_KEY, owner, nx=True):
            continue
        if conn.dbsize() == 1:
            urls.append(url)
        elif _text(conn.get(CLAIM_KEY)) == owner:
            conn.delete(CLAIM_KEY)
    if len(urls) < needed:
        for url in urls:  # what this invocation claimed goes back
            conn = redis.Redis.from_url(url)
            if _text(conn.get(CLAIM_KEY)) == owner:
                conn.flushdb()
    if len(urls) < needed:
        raise StudyError(
            f"redis-server is not on PATH and only {len(urls)} empty databases of {base} are "
            f"free for {needed} parallel runs: install redis-server (the study then starts "
            "a private one) or lower --parallel"
        )
    return Namespaces(urls, borrowed=True, owner=owner)
