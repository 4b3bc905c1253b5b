"""POST /datasets: a JSONL upload, streamed to disk under a size limit, checked, stored, queued.

The body is parsed as it arrives (python-multipart's push parser), and only the form field
`file` is written, straight to a temporary file beside the dataset store: memory stays a
few chunks whatever the size, and an upload over `R3_UPLOAD_MAX_BYTES` is cut off with
413 as soon as it passes the limit. The stored copy is checked line by line
(`services.dataset_store.check_jsonl`: UTF-8, every non-blank line a JSON object); the
trainer's deeper validation (roles, thinking markers, token lengths) needs its tokenizer
and runs before the first step, as for any queued file.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import tempfile
from pathlib import Path
from typing import Any

import anyio
import redis
from fastapi import APIRouter, Depends, Query, Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect

from bus import keys, queues
from services.dataset_store import DatasetError, DatasetStore, StoredDataset
from services.gateway.auth import require_token
from services.gateway.config import GatewaySettings
from services.gateway.errors import (
    BadRequest,
    InsufficientStorage,
    TooLarge,
    Unavailable,
    Unprocessable,
)

router = APIRouter()

FIELD = b"file"
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file's bytes


class _FileField:
    """Push-parser callbacks that write the `file` field's bytes to `out`, counting them."""

    def __init__(self, out: Any, limit: int) -> None:
        self.out = out
        self.limit = limit
        self.size = 0
        self.found = False
        self.too_large = False
        self.filename: str | None = None
        self._in_file = False
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._add("_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
        }

    def _add(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if params.get(b"name") == FIELD and not self.found:
            self.found = self._in_file = True
            raw = params.get(b"filename")
            self.filename = raw.decode(errors="replace") if raw else None

    def _data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file or self.too_large:
            return
        self.size += end - start
        if self.size > self.limit:
            self.too_large = True
            return
        self.out.write(data[start:end])

    def _part_end(self) -> None:
        self._in_file = False


def _too_large(limit: int) -> TooLarge:
    return TooLarge(
        f"the upload is larger than this gateway takes ({limit} bytes, R3_UPLOAD_MAX_BYTES): "
        "split it into smaller JSONL files or raise the limit; nothing was stored"
    )


async def receive_file(request: Request, into: Path, limit: int) -> _FileField:
    """Stream the request's `file` field into `into`; raises TooLarge past `limit`."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise BadRequest(
            "send the dataset as multipart/form-data with the file in the field `file` "
            "(curl -F file=@data.jsonl ...)"
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + MULTIPART_SLACK:
        raise _too_large(limit)  # refused before reading a byte
    with into.open("wb") as out:
        field = _FileField(out, limit)
        parser = MultipartParser(boundary, field.callbacks())  # type: ignore[arg-type]
        try:
            async for chunk in request.stream():
                parser.write(chunk)
                if field.too_large:
                    raise _too_large(limit)
        except MultipartParseError as exc:
            raise BadRequest(
                f"the multipart body is malformed ({exc}); send the file with a standard "
                "client (curl -F file=@data.jsonl ...); nothing was stored"
            ) from None
        except ClientDisconnect:
            raise BadRequest(
                "the client hung up before the upload ended; nothing was stored"
            ) from None
        parser.finalize()
    if not field.found:
        raise BadRequest("no form field `file` in the upload: send the JSONL as `file`")
    if parser.state != MultipartState.END:
        # python-multipart's finalize() does not check this: without the closing boundary
        # the file may be cut anywhere, and a cut file must never be queued as complete.
        raise BadRequest(
            "the multipart body ended before its closing boundary (a cut upload?); "
            "nothing was stored. Send it again"
        )
    return field


def _disk_full(exc: OSError) -> Exception:
    """A full disk (or quota) is the server's 507, not a 500: nothing was stored."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return exc
    return InsufficientStorage(
        "the gateway's disk is full: the upload was not stored or queued. Free space on the "
        "trainer host (old checkpoints, rejects) and send it again",
        headers={"Retry-After": "60"},
        fields={"queued": False, "stored": False},
    )


def _queue(request: Request, stored: StoredDataset, priority: str) -> Any:
    return queues.enqueue(
        request.app.state.redis,
        queues.TRAIN_FILE,
        kind="train",
        priority=priority,
        kwargs={"path": str(stored.path.resolve()), "name": stored.name, "sha256": stored.sha256},
        description=f"train {stored.name} ({stored.lines} examples, uploaded)",
    )


@router.post("/datasets", dependencies=[Depends(require_token)])
async def upload_dataset(
    request: Request,
    priority: str = Query("normal", description="Queue priority: high, normal or low."),
    name: str | None = Query(None, description="The dataset's name (default: its file name)."),
) -> dict[str, Any]:
    if priority not in keys.PRIORITIES:
        raise BadRequest(f"priority={priority!r}: use one of {', '.join(keys.PRIORITIES)}")
    settings: GatewaySettings = request.app.state.settings
    store = DatasetStore(settings.datasets_path)
    try:
        store.root.mkdir(parents=True, exist_ok=True)
        # A private directory beside the store: same filesystem, so storing it is a rename.
        work = Path(tempfile.mkdtemp(dir=store.root, prefix=".upload-"))
    except OSError as exc:
        raise _disk_full(exc) from None
    tmp = work / "upload.part"
    try:
        field = await receive_file(request, tmp, settings.upload_max_bytes)
        shown = Path(name or field.filename or "upload.jsonl").name  # a name, never a path
        try:
            stored = await anyio.to_thread.run_sync(
                functools.partial(store.add, tmp, move=True, shown_as=shown)
            )
        except DatasetError as exc:
            raise Unprocessable(f"{exc}; nothing was stored or queued") from None
    except OSError as exc:
        raise _disk_full(exc) from None
    finally:
        tmp.unlink(missing_ok=True)
        work.rmdir()
    stored = dataclasses.replace(stored, name=shown)
    try:
        job = await anyio.to_thread.run_sync(_queue, request, stored, priority)
    except redis.RedisError:
        # Stored but not queued: say so, so the client knows to send it again (the same
        # bytes are stored once, so a retry costs nothing but the transfer).
        raise Unavailable(
            f"{shown} was stored (dataset {stored.sha256[:12]}) but NOT queued: the message "
            "bus (Redis) is unreachable. Upload it again when the gateway's /health is ok",
            headers={"Retry-After": "10"},
            fields={"queued": False, "stored": True, "sha256": stored.sha256, "name": shown},
        ) from None
    return {
        "sha256": stored.sha256,
        "name": shown,
        "lines": stored.lines,
        "size_bytes": stored.size_bytes,
        "rejects": 0,  # a line that is not a JSON object refuses the whole file (422)
        "new": stored.new,
        "job_id": job.id,
        "queue": keys.train_queue(priority),
        "priority": priority,
        "queued": True,
        # The store's own name for it, relative to the data dir: never a server path.
        "path": f"datasets/{stored.path.name}",
    }
