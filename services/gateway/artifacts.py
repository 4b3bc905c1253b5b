"""GET /artifacts/checkpoints/{id}/{file}: checkpoint files for the nodes, resumable by Range.

Only what a published checkpoint's manifest lists (plus the manifest and its digest) is
served, and only when the resolved path is still inside that checkpoint's directory, so no
`..`, encoded slash, absolute path or symlink can reach anything else. The ETag is the
file's sha256 from the manifest: a node that already holds the bytes gets 304, and a
`Range` resume (206) is safe because a checkpoint id never changes content.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse
from pydantic import ValidationError

from checkpoints.durable import sha256_file
from checkpoints.manifest import (
    ARTIFACTS_PREFIX,
    MANIFEST,
    MANIFEST_DIGEST,
    Manifest,
    parse_id,
)
from services.gateway.auth import require_token
from services.gateway.errors import NotFound

router = APIRouter(dependencies=[Depends(require_token)])


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    return any(t.strip().removeprefix("W/") == etag for t in header.split(","))


def locate(root: Path, checkpoint_id: str, file: str) -> tuple[Path, str]:
    """The file's real path and its sha256; NotFound for anything not a listed file of a
    published checkpoint inside `root` (the same answer whatever the reason, on purpose)."""
    missing = NotFound(
        f"no file {file!r} in checkpoint {checkpoint_id!r}: list the checkpoint's files in "
        f"{ARTIFACTS_PREFIX}/{checkpoint_id}/{MANIFEST}"
    )
    if parse_id(checkpoint_id) is None:  # also refuses `.tmp-*`, `.corrupt-*`, `..`
        raise missing
    base = (root / checkpoint_id).resolve()
    if not base.is_relative_to(root.resolve()) or not (base / MANIFEST).is_file():
        raise missing
    manifest_path = base / MANIFEST
    if file in (MANIFEST, MANIFEST_DIGEST):
        target = (base / file).resolve()
        if not target.is_relative_to(base) or not target.is_file():
            raise missing
        return target, sha256_file(target)
    try:
        manifest = Manifest.model_validate_json(manifest_path.read_bytes())
    except ValidationError:
        raise missing from None
    entry = next((f for f in manifest.files if f.path == file), None)
    if entry is None:
        raise missing
    target = (base / entry.path).resolve()  # follows symlinks: where the bytes really are
    if not target.is_relative_to(base) or not target.is_file():
        raise missing
    return target, entry.sha256


@router.api_route(
    ARTIFACTS_PREFIX + "/{checkpoint_id}/{file:path}", methods=["GET", "HEAD"], response_model=None
)
def artifact(checkpoint_id: str, file: str, request: Request) -> Response:
    root: Path = request.app.state.checkpoints_root
    path, sha256 = locate(root, checkpoint_id, file)
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    # FileResponse answers Range (206, multi-range, 416 with `bytes */size`) and If-Range
    # against the ETag given here.
    return FileResponse(path, headers=headers, media_type="application/octet-stream")
