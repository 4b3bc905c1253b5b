"""The study's errors: each says what is wrong, where, and what to do."""

from __future__ import annotations


class StudyError(RuntimeError):
    """A study that cannot start or go on (bad options, an --out of another study)."""
