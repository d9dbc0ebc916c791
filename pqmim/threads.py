"""Parallel work in fixed pieces: results that do not depend on the thread count.

The coder and the banded synthesis cut their work into pieces fixed by the data (windows,
row bands), compute each piece with single-threaded torch ops and spread the pieces over a
pool of threads, one per thread torch was set to use in the calling thread.

Invariants: torch's thread count is per thread (OpenMP's setting is per thread; a thread that
starts using torch takes, at its first query, the last value set anywhere, which is 1 while a
section runs in another thread: such a thread should query before it sets its own). Inside a section the calling thread and
the pool's workers run torch single-threaded; when the calling thread's outermost section ends,
its own count is what it was before. So the codec never changes another thread's count: two
threads coding at once with two Codec objects, or a thread training beside one coding, each
keep their own setting (tests/test_pixels.py). Sections nest (the inner one reuses the outer
one's worker count). The workers run with grad mode off: the pieces are inference.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import torch

_local = threading.local()  # depth: sections open in this thread; saved: its count before the first


def _worker() -> None:
    """A pool thread: torch single-threaded, and grad mode off (it is per thread, and on in a new
    thread: autograd would otherwise record every piece's operations and keep their inputs)."""
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)


@contextlib.contextmanager
def fixed_pieces() -> Iterator[ThreadPoolExecutor]:
    """A pool with as many workers as the calling thread had torch threads; the calling thread
    and the workers run torch single-threaded meanwhile."""
    depth = getattr(_local, "depth", 0)
    if depth == 0:
        _local.saved = torch.get_num_threads()
        torch.set_num_threads(1)
    _local.depth = depth + 1
    try:
        with ThreadPoolExecutor(max(1, _local.saved), initializer=_worker) as pool:
            yield pool
    finally:
        _local.depth = depth
        if depth == 0:
            torch.set_num_threads(_local.saved)
