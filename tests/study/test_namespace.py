"""Borrowed databases (no redis-server on PATH): claimed atomically, kept claimed while the
study runs (a run's flush keeps the claim), reclaimed by the same study on resume, released
at its end."""

from __future__ import annotations

import pytest
import redis

from services.study import namespace
from services.study.namespace import CLAIM_KEY, _borrow, clear, namespaces


def _claims(pool: namespace.Namespaces) -> list[str | None]:
    values = [redis.Redis.from_url(url).get(CLAIM_KEY) for url in pool.urls]
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def test_borrowed_databases_stay_claimed_while_the_study_runs(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(namespace.shutil, "which", lambda name: None)  # the borrowing path
    with namespaces(redis_url, "study-a", 2) as pool:
        assert pool.borrowed and len(pool.urls) == 2
        assert _claims(pool) == ["study-a", "study-a"]
        url = pool.take()
        run = redis.Redis.from_url(url)
        clear(run)  # what a run does first (it used to flushdb: the claim went with it)
        run.set("r3:something", "1")
        assert _claims(pool) == ["study-a", "study-a"]
        # Another study finds none of them free; the same study (a resume) gets them back.
        other = None
        try:
            other = _borrow(redis_url, "study-b", 1)
            assert not set(other.urls) & set(pool.urls)
        finally:
            if other is not None:
                other.release()
        again = _borrow(redis_url, "study-a", 2)
        assert again.urls == pool.urls
        pool.give(url)  # emptied, still claimed
        assert run.dbsize() == 1 and _claims(pool) == ["study-a", "study-a"]
    assert _claims(pool) == [None, None]  # released at the end
    assert all(redis.Redis.from_url(u).dbsize() == 0 for u in pool.urls)
