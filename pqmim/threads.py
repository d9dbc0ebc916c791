"""Parallel work in fixed pieces: results that do not depend on the thread count.

The coder and the banded synthesis cut their work into pieces fixed by the data (windows,
row bands), compute each piece with single-threaded torch ops and spread the pieces over a
pool of threads, one per thread torch was set to use. While any such section runs, torch's own
thread count is 1 (it is process-wide); the count is restored when the last section ends, so
two threads coding at once with two Codec objects do not undo each other's setting.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import torch

_lock = threading.Lock()
_active = 0
_saved = 1


@contextlib.contextmanager
def fixed_pieces() -> Iterator[ThreadPoolExecutor]:
    """A pool with as many workers as torch had threads; torch single-threaded meanwhile."""
    global _active, _saved
    with _lock:
        if _active == 0:
            _saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _active += 1
        workers = max(1, _saved)
    try:
        with ThreadPoolExecutor(workers) as pool:
            yield pool
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                torch.set_num_threads(_saved)
