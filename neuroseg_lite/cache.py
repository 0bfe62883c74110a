"""Content-keyed caching: keys from what determines a result, atomic writes, and the timing records beside them.

Introduced in chapter 7 (``07_sparsity_sweep``), where the experiment runner keeps every trained model,
pseudo-label set, prediction and results row in a working folder. Every artefact is stored under a key: a hash
of everything that determined it (array digests, annotation, fully resolved configs, seed). The human-readable
label in the file name is for browsing only; a file is reused only when the key recorded beside it matches the
key asked for and the file reads back, otherwise it is rebuilt with a warning that says why.

:func:`atomic_write` is the package's one way of writing a file that must never be seen half-written.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import stat
import tempfile
import warnings
from pathlib import Path

import numpy as np

from neuroseg_lite.utils import to_plain

__all__ = ["atomic_write", "array_digest", "content_key", "Cache", "StaleCacheWarning"]


class StaleCacheWarning(UserWarning):
    """A cached file was not reused (missing record, other key, unreadable) and is being rebuilt."""


def _new_file_mode() -> int:
    """The permission bits ``open(path, "w")`` gives a new file under the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, write) -> Path:
    """Write a file with ``write(temporary_path)`` in the same folder, then rename it over ``path``.

    A crash or a full disk leaves the previous file (if any) intact and no half-written one in its place.

    Parameters
    ----------
    path : str or Path
    write : callable
        Called with a temporary :class:`~pathlib.Path` that ends with ``path``'s suffix (numpy and torch
        writers keep such names as they are).

    Returns
    -------
    Path

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
    >>> atomic_write(target, lambda tmp: tmp.write_text("hello")).read_text()
    'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(handle)
    temporary = Path(temporary)
    try:
        write(temporary)
        # mkstemp makes the file private (0600); give it the mode an ordinary write would (or the old file's)
        os.chmod(temporary, stat.S_IMODE(path.stat().st_mode) if path.exists() else _new_file_mode())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def array_digest(*arrays) -> str:
    """SHA-256 of the dtypes, shapes and bytes of some arrays: equal digests mean equal contents.

    Examples
    --------
    >>> import numpy as np
    >>> zeros = array_digest(np.zeros(3))
    >>> zeros == array_digest(np.zeros(3)), zeros == array_digest(np.ones(3))
    (True, False)
    """
    sha = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        sha.update(f"{array.dtype.str}{array.shape}".encode())
        sha.update(memoryview(array).cast("B"))
    return sha.hexdigest()


def content_key(description) -> str:
    """SHA-256 of a JSON-able description (dicts, lists, numbers, strings; dataclasses via ``asdict``).

    Keys do not depend on dict order; floats are written by ``repr``, so 0.5 and 0.50 give one key.

    Examples
    --------
    >>> content_key({"a": 1, "b": [0.5, "x"]}) == content_key({"b": [0.5, "x"], "a": 1})
    True
    """
    text = json.dumps(to_plain(description), sort_keys=True, separators=(",", ":"), default=_plain_dataclass)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain_dataclass(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_plain(dataclasses.asdict(value))
    raise TypeError(f"content_key cannot describe a {type(value).__name__}; pass builtins, arrays or dataclasses.")


def _warn(message: str) -> None:
    warnings.warn(message, StaleCacheWarning, stacklevel=3)


class Cache:
    """A folder of artefacts, each stored as ``root/kind/{label}-{key[:16]}{suffix}`` plus a JSON record.

    The record (``...{suffix}.json``) is written after the artefact, so it marks the artefact complete; it
    holds the full key, the description the key was made from (to see what a file is), and the wall time
    that produced it.

    Parameters
    ----------
    root : str or Path
    """

    def __init__(self, root):
        self.root = Path(root)

    def path(self, kind: str, label: str, key: str, suffix: str) -> Path:
        return self.root / kind / f"{label}-{key[:16]}{suffix}"

    @staticmethod
    def _record_path(path: Path) -> Path:
        return path.with_name(path.name + ".json")

    def load(self, kind: str, label: str, key: str, suffix: str, read):
        """``read(path)`` of the cached artefact, or None (with a :class:`StaleCacheWarning` saying why)."""
        path = self.path(kind, label, key, suffix)
        record_path = self._record_path(path)
        if not path.exists() and not record_path.exists():
            return None
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            _warn(f"{path} has no readable record of what produced it (interrupted run?); rebuilding it.")
            return None
        if record.get("key") != key:
            _warn(f"{path} was produced from other inputs (stored key {str(record.get('key'))[:16]}..., wanted "
                  f"{key[:16]}...); rebuilding it.")
            return None
        try:
            return read(path)
        except Exception as err:  # a truncated file fails differently in numpy, torch and json
            _warn(f"{path} is unreadable ({type(err).__name__}: {err}); it is truncated or damaged, rebuilding it.")
            return None

    def save(self, kind: str, label: str, key: str, suffix: str, write, *, description=None,
             seconds: float | None = None, device: str | None = None) -> Path:
        """Write an artefact with ``write(temporary_path)``, then its record; returns the artefact's path."""
        path = atomic_write(self.path(kind, label, key, suffix), write)
        record = {"key": key, "seconds": None if seconds is None else round(float(seconds), 3),
                  "device": device, "description": to_plain(description)}
        atomic_write(self._record_path(path),
                     lambda tmp: tmp.write_text(json.dumps(record, indent=1, default=repr)))
        return path

    def seconds(self, kind: str, label: str, key: str, suffix: str) -> float:
        """Wall time recorded when the artefact was produced; NaN if there is none."""
        try:
            record = json.loads(self._record_path(self.path(kind, label, key, suffix)).read_text())
        except (OSError, ValueError):
            return math.nan
        value = record.get("seconds") if record.get("key") == key else None
        return math.nan if value is None else float(value)
