"""Every folder under the data dir, named once (`R3_DATA_DIR`, default `data/`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataLayout:
    """The default place of everything a regime3 host keeps under its data dir.

    A setting that moves one folder elsewhere (`R3_CHECKPOINT_DIR`, `R3_INBOX_DIR`,
    `R3_NODE_MODELS_DIR`, `R3_REJECTS_DIR`, `R3_VALIDATION_DIR`, `R3_GEN_DIR`) is resolved by
    its settings class against these defaults; nothing else builds a path under the root.
    """

    root: Path

    @property
    def datasets(self) -> Path:
        """The dataset store: queued files by content hash (`<sha256>.jsonl`)."""
        return self.root / "datasets"

    @property
    def checkpoints(self) -> Path:
        """The trainer's checkpoints, one directory each (`step-00001000/`)."""
        return self.root / "checkpoints"

    @property
    def models(self) -> Path:
        """Models a process serves or starts from: the embedded model, pulled checkpoints."""
        return self.root / "models"

    @property
    def validation(self) -> Path:
        """The fixed validation sets (JSONL with meta.golden), the same on every host."""
        return self.root / "validation"

    @property
    def rejects(self) -> Path:
        """Each training file's rejected lines, with line number and reason."""
        return self.root / "rejects"

    @property
    def inbox(self) -> Path:
        """Dropped files become training jobs (sub-folders choose the priority)."""
        return self.root / "inbox"

    @property
    def generated(self) -> Path:
        """Shards the node-worker's generate jobs write."""
        return self.root / "generated"

    @property
    def demo(self) -> Path:
        """The demo feeder's staging area for the shards it enqueues."""
        return self.root / "demo"

    @property
    def secrets(self) -> Path:
        """Tokens `regime3 up` makes for a one-machine run (mode 0600)."""
        return self.root / "secrets"

    @property
    def node_token_file(self) -> Path:
        return self.secrets / "node-token"

    @property
    def redis(self) -> Path:
        """A private Redis's files when `regime3 up` starts one."""
        return self.root / "redis"
