"""GET /api/studies and /api/studies/{study_id}: the mode studies `regime3 study modes` stored.

A study writes its full report JSON at `r3:study:<id>` and its id in the sorted set
`r3:studies` (score: its start, unix seconds); while it runs, its points arrive on the study
stream (`study.progress`, forwarded by /events like every stream). The list answers each
study's summary, newest first, so the dashboard loads history once and then follows the
stream. Open like /api/history: a study holds figures and no secret; host paths in it are
answered by their last component only (`public_report`).
"""

from __future__ import annotations

import json
import re
from typing import Any, cast

import redis
from fastapi import APIRouter, Query, Request

from bus import keys
from services.gateway.errors import BadRequest, NotFound, Unavailable

router = APIRouter()

# Ids are made by the study command (a time and a few letters); anything else is refused
# before it reaches Redis, so no key outside r3:study:* can be named through the route.
STUDY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# The report's fields a list shows per study (everything else: GET /api/studies/{id}).
SUMMARY_FIELDS = (
    "domain",
    "difficulty",
    "modes",
    "seeds",
    "steps",
    "target",
    "state",
    "wall_seconds",
)


def check_id(study_id: str) -> str:
    if not STUDY_ID.fullmatch(study_id):
        raise BadRequest(
            f"study id {study_id!r} is not one: letters, digits, '.', '_', ':' or '-', at most "
            "128, starting with a letter or digit; GET /api/studies lists the stored ids"
        )
    return study_id


def _report(connection: redis.Redis, study_id: str) -> dict[str, Any] | None:
    """The stored report, None when absent; a report that is no JSON object says so."""
    raw = cast(bytes | None, connection.get(keys.study_key(study_id)))
    if raw is None:
        return None
    try:
        report = json.loads(raw)
    except ValueError as exc:
        raise Unavailable(
            f"the report at {keys.study_key(study_id)} is no JSON ({exc}); run the study "
            "again with the same --out to write it anew, or delete the key"
        ) from None
    if not isinstance(report, dict):
        raise Unavailable(
            f"the report at {keys.study_key(study_id)} is a JSON {type(report).__name__}, not "
            "an object; run the study again with the same --out, or delete the key"
        )
    return report


# A report names where the study ran (its --out, the starting model, the plots, the python):
# paths of the trainer host, which an open route does not hand out. Each is answered by its
# last component (the file or folder name), which is what a reader of the page needs.
_PATH_FIELDS = ("start_model", "out", "report_path")
_ABSOLUTE = re.compile(r"(?<![\w.-])/[^\s'\"]+")


def _name(value: Any) -> Any:
    return (
        _ABSOLUTE.sub(lambda m: m.group().rstrip("/").rsplit("/", 1)[-1], value)
        if isinstance(value, str)
        else value
    )


def public_report(report: dict[str, Any]) -> dict[str, Any]:
    """`report` with every host path cut to its last component (see _PATH_FIELDS)."""
    out = dict(report)
    for key in _PATH_FIELDS:
        if key in out:
            out[key] = _name(out[key])
    if isinstance(out.get("plots"), list):
        out["plots"] = [_name(p) for p in out["plots"]]
    environment = out.get("environment")
    if isinstance(environment, dict):
        out["environment"] = {k: _name(v) for k, v in environment.items()}
    plan = out.get("plan")
    if isinstance(plan, dict):
        plan = {k: _name(v) for k, v in plan.items()}
        if isinstance(plan.get("recipe"), dict):
            plan["recipe"] = {k: _name(v) for k, v in plan["recipe"].items()}
        out["plan"] = plan
    return out


def summary(study_id: str, started: float, report: dict[str, Any] | None) -> dict[str, Any]:
    """One study in the list: its id, start, and the report's headline fields if it has one
    (a study still running may have none yet: `report: false`)."""
    out: dict[str, Any] = {"study_id": study_id, "started": started, "report": report is not None}
    if report is not None:
        report = public_report(report)
        # `regime3 study modes` keeps its options (domain, modes, seeds …) under "plan".
        plan = report.get("plan")
        source = (plan if isinstance(plan, dict) else {}) | report
        out |= {k: source[k] for k in SUMMARY_FIELDS if k in source}
    return out


@router.get("/api/studies")
def list_studies(
    request: Request,
    limit: int = Query(50, ge=1, le=1000, description="Most studies to list, newest first"),
) -> dict[str, Any]:
    connection: redis.Redis = request.app.state.redis
    newest = cast(
        list[tuple[bytes, float]],
        connection.zrevrange(keys.STUDIES, 0, limit - 1, withscores=True),
    )
    studies = []
    for member, started in newest:
        study_id = member.decode()
        try:
            report = _report(connection, study_id) if STUDY_ID.fullmatch(study_id) else None
        except Unavailable:
            report = None  # one unreadable report does not hide the others; its page says why
        studies.append(summary(study_id, started, report))
    return {"studies": studies, "total": connection.zcard(keys.STUDIES)}


@router.get("/api/studies/{study_id}")
def get_study(request: Request, study_id: str) -> dict[str, Any]:
    connection: redis.Redis = request.app.state.redis
    check_id(study_id)
    report = _report(connection, study_id)
    started = connection.zscore(keys.STUDIES, study_id)
    if report is None:
        raise NotFound(
            f"no study {study_id!r}: no report at {keys.study_key(study_id)}"
            + (" yet (it is listed: still running?)" if started is not None else "")
            + "; GET /api/studies lists the stored ones"
        )
    return {"study_id": study_id, "started": started} | public_report(report)
