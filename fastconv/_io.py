"""Atomic file writes: the one implementation every writer in fastconv uses.

A file is written into a temporary file in the destination folder, flushed to disk, and renamed
over the destination with ``os.replace`` (atomic on POSIX and Windows). A crash or an exception
at any point leaves the previous file intact: an exception (or Ctrl-C) also removes the temporary
file, while a killed process or a power cut may leave a hidden ``.NAME.*.tmp`` beside it — never
a broken file under the real name.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

PathLike = str | os.PathLike

# Read once at import (os.umask can only be read by setting it): mkstemp creates files 0600,
# and what we write should get the usual permissions of a new file instead.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Create or replace ``path`` atomically: ``write(f)`` fills a temporary file in the same folder,
    which is flushed to disk and renamed over ``path`` with os.replace. Creates the parent folder.

    On any error (or KeyboardInterrupt) the temporary file is removed and an existing ``path`` is
    left untouched. A replaced file keeps its permission bits; a new one gets 0666 minus the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_UMASK
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_savez(path: PathLike, arrays: dict[str, np.ndarray]) -> None:
    """np.savez ``arrays`` (uncompressed) to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: np.savez(f, **arrays))
