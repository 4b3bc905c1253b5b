"""Errors of the trainer's data path: unreadable files, failed validation, unusable templates."""

from __future__ import annotations

from pathlib import Path


class TrainerError(Exception):
    """Base class for every error of `services.trainer`."""


class DataFileError(TrainerError):
    """A training file that cannot be read as JSONL at all (missing, empty, binary, not UTF-8)."""

    def __init__(self, path: Path | str, problem: str, fix: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}; {fix}")

    def __repr__(self) -> str:
        return f"DataFileError(path={str(self.path)!r}, problem={self.problem!r})"


class RejectThresholdError(TrainerError):
    """Too many lines of a file were rejected: the job fails before any optimizer step."""

    def __init__(
        self,
        path: Path | str,
        *,
        rejected: int,
        lines: int,
        threshold: float,
        first: list[tuple[int, str]],
        rejects_path: Path | None,
    ) -> None:
        self.path = Path(path)
        self.rejected = rejected
        self.lines = lines
        shown = "; ".join(f"line {line}: {reason}" for line, reason in first)
        kept = f" All rejected lines are in {rejects_path}." if rejects_path else ""
        rate = rejected / lines if lines else 1.0
        super().__init__(
            f"{path}: {rejected} of {lines} lines rejected ({rate:.2%}), above "
            f"R3_REJECT_THRESHOLD={threshold:g}; no training step was taken. First bad lines: "
            f"{shown}.{kept} Fix those lines (or raise the threshold) and queue the file again."
        )

    def __repr__(self) -> str:
        return (
            f"RejectThresholdError(path={str(self.path)!r}, rejected={self.rejected}, "
            f"lines={self.lines})"
        )


class TemplateError(TrainerError):
    """The tokenizer's chat template cannot give a faithful assistant-only loss mask."""


class DataChangedError(TrainerError):
    """A line accepted by validation was rejected when read again for training."""


class CodebookMismatch(TrainerError):
    """A file encoded with another codebook than the run's: the job fails before any step."""
