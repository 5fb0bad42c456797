"""Writing files safely: one atomic-write helper for every writer, output checks before the work,
disk-full errors as one line, and the run-folder lock.

Every file latte writes (checkpoints, videos, manifests, reports, cache shards) goes through
`atomic_path`: the data goes into a temp file beside the target, is fsynced, takes the mode the
umask gives new files (mkstemp would leave it 0600) and is renamed over the target, so a reader or a
killed process never leaves half a file under the real name.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from latte.errors import LatteError

TMP_SUFFIX = ".tmp"


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot sync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, also when a C++ writer (torch.save, PyAV) reports it only in its message."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc)


@contextmanager
def atomic_path(path, what: str = "file"):
    """Yield a temp path beside `path` to write; on success fsync it, give it the umask's mode and
    rename it onto `path`. On failure the temp file is removed and `path` is left as it was; a full
    disk becomes a one-line LatteError."""
    path = Path(path)
    make_parent(path, what)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise _write_error(exc, path, what) from exc
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as exc:
        if disk_full(exc):
            raise _write_error(exc, path, what) from exc
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class DiskFullError(LatteError):
    """No space left while writing: the target was left as it was."""


def _write_error(exc: OSError, path: Path, what: str) -> LatteError:
    if disk_full(exc):
        return DiskFullError(f"no space left on device while writing {what} {path}; nothing was replaced")
    return LatteError(f"cannot create {what} {path}: {exc.strerror or exc}")


def atomic_write_text(path, text: str, what: str = "file") -> Path:
    with atomic_path(path, what) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_torch_save(obj, path, what: str = "checkpoint") -> Path:
    import torch

    with atomic_path(path, what) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
    return Path(path)


def remove_stale_temps(folder) -> list[Path]:
    """Delete the temp files atomic_path leaves when its process is killed mid-write."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def make_parent(path, what: str = "file") -> None:
    """Create the folder `path` goes into, or say in one line why it cannot be."""
    make_folder(Path(path).parent, what=f"the folder of {what} {path}")


def make_folder(folder, what: str = "folder") -> Path:
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LatteError(f"cannot create {what} {folder}: a file of that name exists")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(exc, folder, what) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LatteError(f"cannot create files in {what} {folder}: permission denied")
    return folder


def check_output_file(path, what: str = "output") -> Path:
    """Before any work: `path` can be created as a file (its folder exists or can be made, it is not a folder)."""
    path = Path(path)
    if path.is_dir():
        raise LatteError(f"cannot create {what} {path}: it is an existing folder")
    make_parent(path, what)
    try:  # the folder may take no files whatever its mode bits say (root, /proc, a read-only mount)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _write_error(exc, path, what) from exc
    return path


# -- one writer per run folder ---------------------------------------------------------------------------

LOCK_NAME = ".latte.lock"


class FolderLock:
    """An exclusive flock on <folder>/.latte.lock holding "pid@host command". The kernel drops the lock
    when its process exits or is killed, so no crash leaves a folder locked; the file itself stays."""

    def __init__(self, folder, command: str):
        self.folder, self.command = Path(folder), command
        self.handle, self.created = None, False

    def acquire(self) -> "FolderLock":
        self.created = not self.folder.exists()
        make_folder(self.folder, "output folder")
        path = self.folder / LOCK_NAME
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                handle.close()
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise LatteError(f"{self.folder} is in use by {holder}: wait for it to finish or use another folder")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} (latte {self.command})\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        """Unlock; a folder this lock created and nothing else was written into is removed again."""
        if self.handle is None:
            return
        if self.created and [p.name for p in self.folder.iterdir()] == [LOCK_NAME]:
            (self.folder / LOCK_NAME).unlink(missing_ok=True)
            self.folder.rmdir()
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        self.handle = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
