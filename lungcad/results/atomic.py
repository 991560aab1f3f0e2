"""Atomic file writes: the one writer of every file lungcad leaves behind.

A file is written to a temporary file in its own folder, flushed to disk (fsync), given
the usual permissions and renamed over the target (``os.replace``), and the folder is
fsynced too.  A reader, a resumed run or a shard that merges sees either the old file or
the complete new one, never a partial one, even after a crash or a power cut.

The temporary file's name says which host and process wrote it
(``.<name>.<host>.<pid>.<random>.tmp``), so that :func:`remove_stale_temp_files` can tell
the leftovers of a killed writer from the file a live one is writing.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "remove_stale_temp_files"]


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
#: Host part of temporary file names, so that a later run can tell which leftovers it may remove.
_HOST = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname())[:32].strip("-") or "host"
_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[^.]*\.tmp$")
#: Leftover temporary files of another host are removed after this many seconds.
_FOREIGN_TMP_AGE_S = 3600.0


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms (Windows) where a folder cannot be opened: rename is durable there
        return
    try:
        # some file systems cannot fsync a folder; the rename itself has been done
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends without an error,
    it is fsynced and renamed to ``path`` (and the folder fsynced).  On an error it is removed.

    For writers that want a file name rather than bytes: ``model.save`` needs a name that
    ends in ``.keras``, so ``suffix=".keras"``.  The folder is created if missing.

    >>> with atomic_path("runs/x/last.keras", suffix=".keras") as tmp:   # doctest: +SKIP
    ...     model.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:80]}.{_HOST}.{os.getpid()}.",
                               suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)        # not mkstemp's private 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A reader (or a resumed run) sees either the old file or the complete new one,
    never a partial one.  The folder is created if missing.
    """
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


def atomic_write_text(path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` atomically (see :func:`atomic_write_bytes`); newlines are written as given.

    Characters the encoding cannot hold (lone surrogates from a badly encoded header)
    are written as backslash escapes rather than failing the scan.
    """
    return atomic_write_bytes(path, text.encode(encoding, errors="backslashreplace"))


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) is not a probe on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(folder) -> int:
    """Remove temporary files left in ``folder`` by writers that were killed.

    A file of :func:`atomic_write_bytes` names its host and process.  It is removed when
    that process no longer runs on this host, or, for another host (shards sharing a
    network folder), when it is older than an hour.  Files of live writers are kept.

    Returns
    -------
    int
        How many files were removed.
    """
    folder = Path(folder)
    removed = 0
    now = time.time()
    for f in folder.glob(".*.tmp") if folder.is_dir() else []:
        m = _TMP_NAME.match(f.name)
        if not m:
            continue
        try:
            if m["host"] == _HOST:
                stale = int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"]))
            else:
                stale = now - f.stat().st_mtime > _FOREIGN_TMP_AGE_S
            if stale:
                f.unlink()
                removed += 1
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            continue
    return removed
