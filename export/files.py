"""Atomic file writes: a file or folder appears whole at its final path, or not at all.

The one home of this logic for the whole project (export, training,
benchmarks): content is written to a temporary name beside the target, then
moved in place with `os.replace`, which is atomic within a file system. On
any error the temporary is removed and an existing target is left unchanged.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_dir", "atomic_file"]


def _new_file_mode(existing: Path, default: int = 0o666) -> int:
    """The mode of ``existing`` if it exists, else ``default`` less the umask.

    mkstemp and mkdtemp create 0600 / 0700 entries, which would make an
    installed model unreadable to other users once moved in place.
    """
    try:
        return os.stat(existing).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return default & ~umask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` when the block succeeds.

    ``suffix`` ends the temporary name (Keras insists on ``.keras``). The
    folder of ``path`` must exist.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; it replaces ``path`` when the block succeeds.

    The parent folder is created if needed; an existing ``path`` is removed
    only once the new folder is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        os.chmod(staging, _new_file_mode(path, 0o777))
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
