"""Writing files the way a user's tools do: atomically, with the permissions the umask gives.

Invariants: the destination holds either its old content or the whole new one, never a part
(temporary file in the same folder, fsync, rename); a new file gets mode 0666 minus the umask,
as open() would give it (cwebp, avifenc and Pillow do the same); a file that is replaced keeps
its permission bits.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere, the only way to read it is to set it (briefly)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write that replaces `path` when the block ends without an exception
    (and is removed, leaving `path` as it was, when one is raised). The one home of atomic
    writes: every file the project writes for users, runs or the bench goes through here."""
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    try:
        mode = stat.S_IMODE(dest.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp creates 0600
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` (str: as UTF-8) to `path` atomically (see atomic_file)."""
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> None:
    """Write `obj` as JSON (with a final newline) to `path` atomically, creating its folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(obj, indent=indent) + "\n")
