"""Writing what a run produced, so that nothing a user owns is overwritten or lost.

- `write_atomic` / `write_bytes_atomic`: a temporary file beside the target, then a rename; a
  reader never sees half a file and an interrupted write never destroys an earlier one.
- `check_output_file` / `check_output_dir`: every output location is checked *before* a long run:
  a folder where a file is wanted (or the reverse), a missing or read-only parent, a disk too full
  for the result, an earlier file that `--force` was not given to replace.
- `OutputLock`: one run per output location; a second run into the same place is refused while
  the first holds it (an advisory `flock`, released by the kernel even if the first run dies).

Messages are one line each: what is wrong and how to fix it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from energyprune.errors import UsageError

#: Free space a folder must have before a run writes into it: results with power traces and
#: reports take a few MB; pruned weights are checked separately by size.
MIN_FREE_BYTES = 16 * 1024 * 1024
LOCK_NAME = ".energyprune.lock"


def cache_dir() -> Path:
    """Where energyprune keeps what it may recompute (the J/FLOP floor, a converted model):
    ``$ENERGYPRUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/energyprune``, else ``~/.cache/energyprune``."""
    explicit = os.environ.get("ENERGYPRUNE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "energyprune"


class OutputError(UsageError):
    """An output location that cannot take the result (exit code 2, before any measuring)."""


def to_json(result: Mapping[str, Any]) -> str:
    """The JSON text of a result (infinite and NaN floats become null: JSON has neither)."""
    return json.dumps(_finite_copy(result), indent=2, default=_jsonable, allow_nan=False) + "\n"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "value"):  # enums
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _finite_copy(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_copy(v) for v in value]
    return value


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        # mkstemp creates the file 0600; give it the mode an ordinary write would (umask applied).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def check_writable_folder(folder: Path, what: str, needed_bytes: int = MIN_FREE_BYTES) -> None:
    """The folder exists, is a folder, takes a new file, and has room: or one line saying why not."""
    folder = folder if str(folder) else Path(".")
    if not folder.exists():
        raise OutputError(f"{what}: the folder {folder} does not exist: create it or choose another place")
    if not folder.is_dir():
        raise OutputError(f"{what}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".energyprune-probe.", dir=folder)
    except OSError as error:
        reason = "it is read-only" if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else (
            error.strerror or str(error))
        raise OutputError(f"{what}: nothing can be written in {folder} ({reason}): choose a writable place") from None
    os.close(fd)
    os.unlink(probe)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise OutputError(f"{what}: only {free / 1e6:.1f} MB are free in {folder}, and the result needs about "
                          f"{needed_bytes / 1e6:.0f} MB: free some space or choose another place")


def check_output_file(path: str | os.PathLike[str], *, force: bool, extensions: Mapping[str, str] | None = None,
                      option: str = "--out", source: str | os.PathLike[str] | None = None) -> str | None:
    """Check `--out FILE` before any work; returns the format its extension names (when
    `extensions` maps extensions to formats) or None."""
    target = Path(path)
    fmt = None
    if extensions is not None:
        fmt = extensions.get(target.suffix.lower())
        if fmt is None:
            primary = list({f: e for e, f in reversed(list(extensions.items()))}.values())[::-1]
            raise OutputError(f"{option} {path}: use a {' or '.join(primary)} file name")
    if target.is_dir():
        raise OutputError(f"{option} {path} is a folder: give a file name")
    if source is not None and target.exists() and target.resolve() == Path(source).resolve():
        raise OutputError(f"{option} {path} is the result file itself: the JSON is the source of truth, never replaced")
    if target.exists() and not force:
        raise OutputError(f"{option} {path} already exists: choose another name or pass --force to replace it")
    check_writable_folder(target.parent, f"{option} {path}")
    return fmt


def check_output_dir(path: str | os.PathLike[str], *, own_files: Iterable[str], force: bool,
                     option: str = "--out", resume: bool = False, needed_bytes: int = MIN_FREE_BYTES) -> bool:
    """Check `--out DIR` before any work. Returns whether an earlier run's own files are there
    (which the caller removes only once everything else is validated). Refuses a DIR holding
    anything else, or earlier results without `force` (or `resume`)."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"{option} {directory} is a file: give a folder")
    check_writable_folder(directory if directory.exists() else directory.parent, f"{option} {directory}", needed_bytes)
    if not directory.exists():
        return False
    present = [p.name for p in directory.iterdir() if p.name != LOCK_NAME]
    if not present or resume:
        return False
    own = set(own_files)
    ours = sorted(name for name in present if name in own)
    others = sorted(name for name in present if name not in own)
    if not force:
        what = f"earlier results ({', '.join(ours)})" if ours else "other files"
        raise OutputError(f"{option} {directory} already holds {what}: choose another folder, or pass --force to "
                          "replace its results" + (" (--resume continues the run)" if ours else ""))
    if not ours:
        raise OutputError(f"{option} {directory} holds files that are not energyprune results "
                          f"({', '.join(others[:3])}{'...' if len(others) > 3 else ''}): choose another folder "
                          "(--force only replaces a run's own files)")
    return True


class OutputLock:
    """An exclusive, advisory lock on an output location for the length of a run.

    For a folder the lock file is `DIR/.energyprune.lock`; for a file, `FILE.lock` beside it (removed
    when released). A second run asking for the same location while the first holds it gets an
    `OutputError` naming the holder's process id. The kernel releases a `flock` when its process
    dies, so a crashed run never leaves a location locked for good."""

    def __init__(self, path: str | os.PathLike[str], *, folder: bool) -> None:
        target = Path(path)
        self.target = target
        self.path = target / LOCK_NAME if folder else target.with_name(target.name + ".lock")
        self._fd: int | None = None
        self._created_folder = False

    def acquire(self) -> OutputLock:
        import fcntl

        if self.path.parent != self.target.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True)
            self._created_folder = True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (process {int(os.read(fd, 32).decode().split()[0])})"
            os.close(fd)
            raise OutputError(f"another energyprune run is writing to {self.target}{holder}: wait for it to finish or "
                              "choose another output") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # closing releases the flock
        self._fd = None
        if self._created_folder:  # a folder made only to hold the lock, left empty by a failed run
            with contextlib.suppress(OSError):
                self.target.rmdir()

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
