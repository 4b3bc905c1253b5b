"""The codebook a model directory carries (codec contract C2) and the one the node decodes with.

A checkpoint trained on encoded data holds `codebook.json` beside its weights: its `<E###>`
codes are what the model's added code tokens mean. A model without one (the embedded model,
a checkpoint of a run that never saw codes) is decoded with the codec's default codebook.
The node reads each file once per version on disk: the registry listing names every
registered model's codebook, and it must not parse every file on every call.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

from codec.codebook import CODEBOOK_FILE, Codebook, codebook_in
from codec.domains import default_codebook

_lock = threading.Lock()
# (resolved path, mtime_ns, size) of a codebook file -> its parsed codebook
_read: dict[tuple[str, int, int], Codebook] = {}
_MAX_CACHED = 64


def model_codebook(directory: str | Path) -> Codebook | None:
    """The codebook saved in a model directory; None when it has none.

    Raises CodebookError naming the file when it is there but corrupt.
    """
    path = Path(directory) / CODEBOOK_FILE
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _lock:
        cached = _read.get(key)
    if cached is not None:
        return cached
    codebook = codebook_in(directory)
    if codebook is not None:
        with _lock:
            if len(_read) >= _MAX_CACHED:
                _read.clear()
            _read[key] = codebook
    return codebook


@lru_cache(maxsize=1)
def _default() -> Codebook:
    return default_codebook()


def decoding_codebook(codebook: Codebook | None) -> Codebook:
    """`codebook`, or the codec's default one for a model that carries none."""
    return codebook if codebook is not None else _default()
