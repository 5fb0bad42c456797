"""Writing files safely: one atomic-write helper for every writer, output checks before the work,
disk-full errors as one line, and the run-folder lock.

What a command may write over is decided here, in `check_output_file` / `check_output_folder`, which
every command calls on its outputs before any work (and which create nothing): never a file a run
depends on (`protected_by`: a run folder's checkpoints and config, a latent cache's files, a file a
LoRA run records by hash as its base), and any other existing file only with `--overwrite`.

Every file latte writes (checkpoints, videos, manifests, reports, cache shards) goes through
`atomic_path`: the data goes into a temp file beside the target, is fsynced, takes the mode the
umask gives new files (mkstemp would leave it 0600) and is renamed over the target, so a reader or a
killed process never leaves half a file under the real name.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
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
    import torch  # local: files.py stays torch-free (~2 s): cli.py and light modules import it at startup

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


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe(folder: Path, path: Path, what: str) -> None:
    """`path` could be created in `folder`: the nearest existing folder on the way is a folder that takes
    files (root, /proc and read-only mounts refuse whatever the mode bits say). Nothing is created."""
    found = _nearest_existing(folder)
    if not found.is_dir():
        raise LatteError(f"cannot create {what} {path}: {found} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=found)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _write_error(exc, path, what) from exc


def check_output_file(path, what: str = "output", overwrite: bool = False, reads: list | None = None) -> Path:
    """Before any work: `path` may be written as a file. Not a folder, not a file the command reads
    (`reads`: (what it is, path) pairs), never a file a run depends on (`protected_by`), an existing file only
    with `overwrite`, and its folder takes files. Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise LatteError(f"cannot create {what} {path}: it is an existing folder")
    _refuse_reads(path, what, reads)
    refuse_protected(path, what)
    if path.exists() and not overwrite:
        raise LatteError(f"{what} {path} exists: pass --overwrite to replace it")
    _probe(path.parent, path, what)
    return path


def _refuse_reads(path: Path, what: str, reads: list | None) -> None:
    for role, source in reads or ():
        if source is not None and resolved(source) == resolved(path):
            raise LatteError(f"the {what} {path} is {role}: give another {what} path")


def check_output_folder(path, what: str = "output folder", overwrite: bool | None = None,
                        holds: str | None = None, reads: list | None = None) -> Path:
    """Before any work: `path` may be a folder the command writes into. overwrite None: a folder the
    command resumes (train, encode, sample into a folder, ablate), which may exist but may be a run folder
    only when it `holds` "run" and a latent cache only when it holds "cache"; True/False: a folder whose
    files it replaces (convert --to diffusers), which may exist non-empty only with overwrite. Never a
    folder inside what a run depends on, nor one the command reads (`reads`). Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LatteError(f"cannot create {what} {path}: a file of that name exists")
    _refuse_reads(path, what, reads)
    refuse_protected(path, what, whole_folder=overwrite is not None)
    if path.is_dir():
        if holds != "run" and is_run_folder(path):
            raise LatteError(f"{what} {path} is a training run folder: give another folder")
        if holds != "cache" and is_latent_cache(path):
            raise LatteError(f"{what} {path} is a latent cache: give another folder")
        if overwrite is False and any(p.name != LOCK_NAME for p in path.iterdir()):
            raise LatteError(f"{what} {path} exists and is not empty: pass --overwrite to replace its files")
    _probe(path, path, what)
    return path


def replace_folder(new: Path, folder: Path) -> Path:
    """Move the complete folder `new` to `folder`, replacing an existing one (renamed aside first, removed after)."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
        os.replace(folder, old / folder.name)
    os.replace(new, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(folder.parent)
    return folder


# -- what no command writes over ---------------------------------------------------------------------------

RUN_CONFIG = "config.yaml"
CACHE_MANIFEST, CACHE_FORMAT = "manifest.json", "latte-latent-cache"
DEPENDENCIES = "dependencies.jsonl"
log = logging.getLogger("latte.files")


def resolved(path) -> Path:
    return Path(path).expanduser().resolve()


def cache_root() -> Path:
    """$LATTE_CACHE_DIR, else ~/.cache/latte: real statistics and the record of files runs depend on."""
    root = os.environ.get("LATTE_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "latte"


def is_run_folder(folder: Path) -> bool:
    return (folder / "checkpoints").is_dir() and (folder / RUN_CONFIG).is_file()


def is_latent_cache(folder: Path) -> bool:
    try:
        return json.loads((folder / CACHE_MANIFEST).read_text()).get("format") == CACHE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _dependencies() -> list[dict]:
    """The recorded dependencies whose run still holds checkpoints (others are stale)."""
    try:
        lines = (cache_root() / DEPENDENCIES).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
            if (Path(entry["run"]) / "checkpoints").is_dir():
                entries.append(entry)
        except (ValueError, KeyError, TypeError):
            continue
    return entries


def record_dependency(path, sha256: str, run) -> None:
    """Note that the run folder `run` depends on `path` as it was (sha256): while the run holds checkpoints,
    no latte command writes over it and training keeps it. A record that cannot be written is a warning."""
    entry = {"path": str(resolved(path)), "sha256": sha256, "run": str(resolved(run))}
    if entry in _dependencies():
        return
    registry = cache_root() / DEPENDENCIES
    try:
        registry.parent.mkdir(parents=True, exist_ok=True)
        with open(registry.with_name(registry.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one read-modify-write at a time; stale records dropped
            kept = [e for e in _dependencies() if e != entry] + [entry]
            atomic_write_text(registry, "".join(json.dumps(e) + "\n" for e in kept), "dependency record")
    except (OSError, LatteError) as exc:
        log.warning("could not record that %s depends on %s in %s: %s", run, path, registry, exc)


def recorded_dependency(path, whole_folder: bool = False) -> dict | None:
    """The record of a run that depends on `path` (or on a file inside it; with whole_folder, also on a
    file inside the folder `path`), or None."""
    target = resolved(path)
    for entry in _dependencies():
        recorded = Path(entry["path"])
        if target == recorded or recorded in target.parents or (whole_folder and target in recorded.parents):
            return entry
    return None


def protected_by(path, whole_folder: bool = False) -> str | None:
    """Why no command may write `path` (or, with whole_folder, replace the folder `path`), or None: a file
    a run records by hash, anything in a run folder's checkpoints/ or its config, anything in a latent cache."""
    target = resolved(path)
    entry = recorded_dependency(target, whole_folder)
    if entry is not None:
        return (f"run {entry['run']} depends on {entry['path']} (recorded by sha256 {entry['sha256'][:12]} "
                f"as the base of its LoRA adapters)")
    if target.name == RUN_CONFIG and is_run_folder(target.parent):
        return f"it is the config of run {target.parent}"
    for folder in (target, *target.parents):
        if folder.name == "checkpoints" and is_run_folder(folder.parent):
            return f"it is in the checkpoints of run {folder.parent}"
        if folder != target and is_latent_cache(folder):  # the cache itself: only `latte encode` resumes it
            return f"it is in the latent cache {folder}"
    return None


def refuse_protected(path, what: str, whole_folder: bool = False) -> None:
    reason = protected_by(path, whole_folder)
    if reason:
        raise LatteError(f"refusing to write {what} {path}: {reason}; not even --overwrite replaces it")


# -- one writer per run folder ---------------------------------------------------------------------------

LOCK_NAME = ".latte.lock"


class FolderLock:
    """An exclusive flock on <folder>/.latte.lock holding "pid@host command". The kernel drops the lock
    when its process exits or is killed, so no crash leaves a folder locked (a killed holder's file stays,
    unlocked); a released lock removes its file, and the folder too when the lock made it and it is empty."""

    def __init__(self, folder, command: str):
        self.folder, self.command = Path(folder), command
        self.handle, self.created = None, False

    def acquire(self) -> FolderLock:
        self.created = not self.folder.exists()
        make_folder(self.folder, "output folder")
        path = self.folder / LOCK_NAME
        while True:
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
                raise LatteError(f"{self.folder} is in use by {holder}: wait for it to finish or use another folder") from exc
            try:  # the holder we waited on may have removed the file on release: lock the file that is there
                if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} (latte {self.command})\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        """Remove the lock file and unlock; a folder this lock created that is empty again is removed."""
        if self.handle is None:
            return
        (self.folder / LOCK_NAME).unlink(missing_ok=True)  # still locked: no one else holds this file
        if self.created and not any(self.folder.iterdir()):
            self.folder.rmdir()
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        self.handle = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
