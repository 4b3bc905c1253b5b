"""Errors raised by the codec: each says what went wrong, where, and what to do."""

from __future__ import annotations


class CodecError(Exception):
    """Base class for every codec error."""


def _where(text: str, position: int) -> str:
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return f"position {position} (line {line}, column {column})"


class ParseError(CodecError):
    """Text that is not a well-formed S-expression (or encoded sequence)."""

    def __init__(self, message: str, *, text: str, position: int) -> None:
        self.position = position
        self.text = text
        super().__init__(f"at {_where(text, position)}: {message}")


class CanonicalError(CodecError):
    """An expression outside the closed operator set, or with the wrong number of arguments."""

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(f"at {path}: {message}")


class DecodeError(ParseError):
    """Encoded text with an unknown code or a malformed sequence."""


class CodebookError(CodecError):
    """A codebook file that cannot be loaded or a build that cannot proceed."""


class DomainError(CodecError):
    """A bad domain name, difficulty or generation option."""
