"""One torch thread while tiny models run on the shared CPU (torch imported only when used)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(count: int = 1) -> Iterator[None]:
    """torch uses `count` intra-op threads inside the block, and its old number after.

    Tiny matmuls gain nothing from threads, and on a shared busy CPU two spinning OpenMP
    threads turned a 3 s test into 50 s; one thread also keeps CPU matmuls bitwise stable (the
    same op order whatever else the machine is doing).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
