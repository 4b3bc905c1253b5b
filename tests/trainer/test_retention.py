from __future__ import annotations

import shutil
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
import redis
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bus import keys
from bus.broadcast import EARLIEST, BroadcastReader
from bus.events import Event
from bus.publish import Publisher
from checkpoints.settings import CheckpointSettings
from services.model.loading import load_model_and_tokenizer
from services.trainer.checkpoint import CheckpointInfo, CheckpointStore, checkpoint_id
from services.trainer.retention import RetentionPolicy, apply_retention, plan_retention
from tests.model.fixtures import embedded_model_dir

NOW = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)


def ck(
    step: int,
    created: str | datetime = NOW,
    *,
    val: float | None = None,
    size: int = 100,
    revision: int = 0,
) -> CheckpointInfo:
    when = (
        datetime.fromisoformat(created).replace(tzinfo=UTC) if isinstance(created, str) else created
    )
    name = checkpoint_id(step, revision)
    return CheckpointInfo(
        id=name,
        step=step,
        revision=revision,
        path=Path("/nowhere") / name,
        created=when,
        model_name="tiny",
        manifest_sha256="0" * 64,
        size_bytes=size,
        files=1,
        val_loss=val,
        cursor=None,
    )


def policy(**overrides: object) -> RetentionPolicy:
    base: dict[str, object] = {
        "keep_last": 2,
        "snapshot_time": time(3, 0),
        "snapshot_days": 0,
        "keep_best": False,
        "min_free_disk_bytes": 0,
        "tz": UTC,
    }
    base.update(overrides)
    return RetentionPolicy(**base)  # type: ignore[arg-type]


# --- the plan (pure) -------------------------------------------------------------------------


def test_keep_last_keeps_the_newest_n_and_deletes_the_rest_oldest_first() -> None:
    plan = plan_retention([ck(s) for s in (5, 1, 4, 2, 3)], policy(keep_last=2), now=NOW)
    assert plan.keep == {"step-00000004": ["last"], "step-00000005": ["newest", "last"]}
    assert plan.delete == [
        ("step-00000001", "retention"),
        ("step-00000002", "retention"),
        ("step-00000003", "retention"),
    ]


def test_nothing_to_decide_about_an_empty_directory() -> None:
    plan = plan_retention([], policy(min_free_disk_bytes=10), now=NOW, free_bytes=0)
    assert plan.keep == {} and plan.delete == [] and plan.short_bytes == 10


@pytest.mark.parametrize(
    ("created", "kept_as"),
    [
        ("2025-01-07T04:00", None),  # its window (Jan 7) is older than the 3 days kept
        ("2025-01-08T02:59", None),  # before 03:00: still Jan 7's window
        ("2025-01-08T03:00", "snapshot 2025-01-08"),  # exactly at the time counts
        ("2025-01-08T09:00", None),  # second of its day
        ("2025-01-09T05:00", "snapshot 2025-01-09"),
        ("2025-01-09T23:00", None),
        ("2025-01-10T02:59", None),  # after midnight but before 03:00: Jan 9's window
        ("2025-01-10T03:30", "snapshot 2025-01-10"),
        ("2025-01-10T11:00", None),  # newest (kept as such, not as a snapshot)
    ],
)
def test_daily_snapshots_keep_the_first_checkpoint_after_the_snapshot_time(
    created: str, kept_as: str | None
) -> None:
    times = [
        "2025-01-07T04:00",
        "2025-01-08T02:59",
        "2025-01-08T03:00",
        "2025-01-08T09:00",
        "2025-01-09T05:00",
        "2025-01-09T23:00",
        "2025-01-10T02:59",
        "2025-01-10T03:30",
        "2025-01-10T11:00",
    ]
    infos = [ck(step, when) for step, when in enumerate(times, start=1)]
    plan = plan_retention(infos, policy(keep_last=1, snapshot_days=3), now=NOW)
    target = infos[times.index(created)].id
    reasons = plan.keep.get(target, [])
    assert [r for r in reasons if r.startswith("snapshot")] == ([kept_as] if kept_as else [])
    if not reasons:
        assert (target, "retention") in plan.delete


def test_before_today_s_snapshot_time_yesterday_s_window_is_the_current_one() -> None:
    infos = [ck(1, "2025-01-09T02:00"), ck(2, "2025-01-09T04:00"), ck(3, "2025-01-10T01:00")]
    early = datetime(2025, 1, 10, 2, 0, tzinfo=UTC)
    plan = plan_retention(infos, policy(keep_last=1, snapshot_days=1), now=early)
    assert plan.keep == {
        "step-00000002": ["snapshot 2025-01-09"],
        "step-00000003": ["newest", "last"],
    }


def test_snapshot_time_is_read_in_the_policy_s_zone() -> None:
    # 03:00 in UTC+2 is 01:00 UTC: a checkpoint at 01:30 UTC is that day's first.
    from datetime import timezone

    zone = timezone(timedelta(hours=2))
    infos = [ck(1, "2025-01-10T00:30"), ck(2, "2025-01-10T01:30"), ck(3, "2025-01-10T11:00")]
    plan = plan_retention(infos, policy(keep_last=1, snapshot_days=1, tz=zone), now=NOW)
    assert plan.keep["step-00000002"] == ["snapshot 2025-01-10"]
    assert ("step-00000001", "retention") in plan.delete


def test_the_best_by_validation_is_kept_and_ties_go_to_the_newer() -> None:
    infos = [ck(1, val=2.0), ck(2, val=1.5), ck(3, val=1.5), ck(4, val=3.0), ck(5), ck(6)]
    plan = plan_retention(infos, policy(keep_last=1, keep_best=True), now=NOW)
    assert plan.keep == {"step-00000003": ["best"], "step-00000006": ["newest", "last"]}
    assert plan.protected == {"step-00000003", "step-00000006"}
    off = plan_retention(infos, policy(keep_last=1, keep_best=False), now=NOW)
    assert "step-00000003" in off.deleted_ids


def test_a_same_step_resave_is_newer_than_the_first() -> None:
    infos = [ck(5, revision=1), ck(5), ck(4)]
    plan = plan_retention(infos, policy(keep_last=1), now=NOW)
    assert plan.keep == {"step-00000005-r1": ["newest", "last"]}


@pytest.mark.parametrize(
    ("free", "threshold", "deleted", "short"),
    [
        # Enough disk: retention alone (keep_last=3 keeps 3, 4, 5; best is 2).
        (10_000, 1_000, [("step-00000001", "retention")], 0),
        # Short by 150: step 1 (retention) frees 100, then the oldest unprotected (3) goes.
        (850, 1_000, [("step-00000001", "retention"), ("step-00000003", "disk")], 0),
        # Short by 250: 3 and 4 go; 2 (best) and 5 (newest) never do.
        (
            750,
            1_000,
            [("step-00000001", "retention"), ("step-00000003", "disk"), ("step-00000004", "disk")],
            0,
        ),
        # Far short: everything unprotected goes and the plan says how much is still missing.
        (
            0,
            1_000,
            [("step-00000001", "retention"), ("step-00000003", "disk"), ("step-00000004", "disk")],
            700,
        ),
    ],
)
def test_below_the_disk_threshold_the_oldest_unprotected_go_first(
    free: int, threshold: int, deleted: list[tuple[str, str]], short: int
) -> None:
    infos = [ck(1), ck(2, val=0.5), ck(3), ck(4), ck(5)]
    plan = plan_retention(
        infos,
        policy(keep_last=3, keep_best=True, min_free_disk_bytes=threshold),
        now=NOW,
        free_bytes=free,
    )
    assert plan.delete == deleted
    assert plan.short_bytes == short
    assert {"step-00000002", "step-00000005"} <= set(plan.keep)


def test_the_only_checkpoint_survives_any_disk_pressure() -> None:
    plan = plan_retention([ck(1)], policy(min_free_disk_bytes=10**12), now=NOW, free_bytes=0)
    assert plan.delete == [] and plan.keep == {"step-00000001": ["newest", "last"]}
    assert plan.short_bytes == 10**12  # nothing could be freed


def test_policy_from_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("R3_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("R3_SNAPSHOT_TIME", "4:30")
    monkeypatch.setenv("R3_KEEP_LAST_CHECKPOINTS", "5")
    settings = CheckpointSettings()
    assert settings.checkpoints_path == tmp_path / "checkpoints"
    made = RetentionPolicy.from_settings(settings)
    assert made.snapshot_time == time(4, 30) and made.keep_last == 5 and made.keep_best
    monkeypatch.setenv("R3_SNAPSHOT_TIME", "half past four")
    with pytest.raises(ValueError, match="give a local time as HH:MM"):
        CheckpointSettings()


# --- applying it to real checkpoints ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return load_model_and_tokenizer(embedded_model_dir(tmp_path_factory))


@pytest.fixture
def four(tmp_path: Path, tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> CheckpointStore:
    """Checkpoints at steps 1-4; step 2 has the best validation loss."""
    store = CheckpointStore(tmp_path / "checkpoints")
    for step in (1, 2, 3, 4):
        store.save(*tiny, step=step, val_loss=1.0 if step == 2 else 2.0)
    return store


def events(r: redis.Redis, stream: str) -> list[Event]:
    return [d.event for d in BroadcastReader(r, {stream: EARLIEST}).read(0)]


def test_retention_deletes_whole_directories_and_says_so(
    r: redis.Redis, four: CheckpointStore
) -> None:
    sizes = {i.id: sum(p.stat().st_size for p in i.path.rglob("*")) for i in four.list()}
    result = apply_retention(
        four, policy(keep_last=1, keep_best=True), publisher=Publisher(r), now=NOW
    )
    assert [i.id for i in four.list()] == ["step-00000002", "step-00000004"]
    assert sorted(p.name for p in four.root.iterdir()) == [
        ".issued-ids",
        "step-00000002",
        "step-00000004",
    ]
    pruned = events(r, keys.STREAM_CHECKPOINTS)
    assert [(e.type, e.checkpoint_id, e.reason) for e in pruned] == [
        ("checkpoint.pruned", "step-00000001", "retention"),
        ("checkpoint.pruned", "step-00000003", "retention"),
    ]
    assert [e.freed_bytes for e in pruned] == [sizes["step-00000001"], sizes["step-00000003"]]
    assert all(e.disk_free_bytes and e.disk_free_bytes > 0 for e in pruned)
    assert [p.freed_bytes for p in result.pruned] == [e.freed_bytes for e in pruned]


def test_disk_pressure_prunes_all_but_the_protected_and_raises_an_alert(
    r: redis.Redis, four: CheckpointStore
) -> None:
    four.quarantine("step-00000001", ["flipped byte, for the test"])
    # A threshold no disk can reach: everything that may go, goes.
    unreachable = shutil.disk_usage(four.root).total * 2
    result = apply_retention(
        four,
        policy(keep_last=4, keep_best=True, min_free_disk_bytes=unreachable),
        publisher=Publisher(r),
        now=NOW,
    )
    assert result.quarantine_freed_bytes > 0 and four.quarantined() == []
    assert [i.id for i in four.list()] == ["step-00000002", "step-00000004"]  # best, newest
    pruned = events(r, keys.STREAM_CHECKPOINTS)
    assert [(e.checkpoint_id, e.reason) for e in pruned] == [("step-00000003", "disk")]
    [alert] = events(r, keys.STREAM_ALERTS)
    assert alert.code == "disk_low" and alert.level == "error"
    assert "R3_MIN_FREE_DISK_BYTES" in alert.message


def test_with_disk_to_spare_nothing_is_pruned_for_disk(
    r: redis.Redis, four: CheckpointStore
) -> None:
    result = apply_retention(
        four,
        policy(keep_last=4, keep_best=True, min_free_disk_bytes=1),
        publisher=Publisher(r),
        now=NOW,
    )
    assert result.pruned == [] and len(four.list()) == 4
    assert events(r, keys.STREAM_CHECKPOINTS) == [] and events(r, keys.STREAM_ALERTS) == []
