"""The checkpoint manifest: its schema, checkpoint ids, the job cursor, and where one is served.

No torch here: the gateway (serving artifacts) and the node (verifying a download) read
manifests too, and must not pay for importing the training stack.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"
# Where the gateway serves the checkpoint root: the gateway mounts its route here and a node
# builds a checkpoint's URL from the gateway's base URL and `artifact_path(id)`.
ARTIFACTS_PREFIX = "/artifacts/checkpoints"
ID_PATTERN = re.compile(r"^step-(\d{8,})(?:-r(\d+))?$")


class JobCursor(BaseModel):
    """Where training stands in its current file, so a resume skips no example and repeats none.

    `byte_offset`, `line` and `rows_done` are `services.trainer.dataset_reader.DataCursor`'s
    `offset`, `line` and `rows_done`; `job_id` and `dataset_sha256` say which file they are in.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str | None = None
    dataset_sha256: str
    byte_offset: int = Field(ge=0)  # of the next unread line
    line: int = Field(1, ge=1)  # its 1-based line number
    rows_done: int = Field(0, ge=0)  # packed rows of that line's pack buffer already trained
    examples_done: int = Field(0, ge=0)


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str  # relative to the checkpoint directory, '/'-separated
    size: int
    sha256: str


class Manifest(BaseModel):
    """`manifest.json`. Raise `version` on an incompatible change; readers refuse newer ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["regime3.checkpoint"] = "regime3.checkpoint"
    version: int = 1
    id: str
    step: int
    revision: int = 0
    created: datetime
    model_name: str
    cursor: JobCursor | None = None
    trainer_config: dict[str, Any] = Field(default_factory=dict)
    val_loss: float | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    # Codebook.version of the codes the tokenizer holds as tokens (codebook.json beside it);
    # None: the run has no code tokens.
    codebook: str | None = None
    files: list[FileEntry]
    total_bytes: int


def checkpoint_id(step: int, revision: int = 0) -> str:
    base = f"step-{step:08d}"
    return base if revision == 0 else f"{base}-r{revision}"


def parse_id(name: str) -> tuple[int, int] | None:
    """(step, revision) of a checkpoint directory name, or None for anything else."""
    match = ID_PATTERN.match(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def artifact_path(checkpoint_id: str) -> str:
    """The URL path, under the gateway's base URL, of a checkpoint's directory (ends in /)."""
    return f"{ARTIFACTS_PREFIX}/{checkpoint_id}/"
