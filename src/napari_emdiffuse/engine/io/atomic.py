"""Atomic writes: output goes to a hidden sibling of its final path and is renamed into place
only when complete, so a crash, a cancelled job or a full disk never leaves a half-written file
or folder under the name the user asked for."""

from __future__ import annotations

import glob
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["fsync_dir", "remove_path", "atomic_file", "temp_dir_beside", "replace_dir", "WriteStopped", "host_tag",
           "process_running", "partial_beside", "remove_orphans_beside"]

logger = logging.getLogger(__name__)


class WriteStopped(Exception):
    """Raised by a writer's ``progress`` callback to stop writing or uploading a file (the run
    was cancelled): the writers then leave nothing."""


def _umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before any threads write.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def fsync_dir(directory: Path) -> None:
    """Flush a folder's entries to disk, so that a rename into it survives a crash."""
    # Makes the rename itself durable; not possible on every OS/filesystem, so best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_path(path: Path) -> None:
    """Remove a file or folder tree, ignoring what is already gone."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        logger.warning("could not remove temporary output %s", path)


def host_tag() -> str:
    """This machine's name as it goes into a temporary name (so that a folder several machines
    share tells their processes apart)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def process_running(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # not ours to signal: it runs
        return True
    return True


def partial_beside(final: Path, suffix: str = "") -> Path:
    """A new hidden name beside ``final`` for what becomes it, naming this machine and process,
    so that a later run tells it from a killed run's leftover (:func:`remove_orphans_beside`)."""
    return final.with_name(f".{final.name}.partial-{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def remove_orphans_beside(final: Path) -> None:
    """Remove the hidden partials of ``final`` (:func:`partial_beside`) that processes of this
    machine left when they were killed outright (SIGKILL, the out-of-memory killer: no clean-up
    ran; a large result's may hold gigabytes). Those of running processes stay."""
    mine = f".{final.name}.partial-{host_tag()}-"
    for leftover in final.parent.glob(f"{glob.escape(mine)}*"):
        pid = leftover.name[len(mine):].split("-", 1)[0]
        if pid.isdigit() and not process_running(int(pid)):
            remove_path(leftover)


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; it replaces ``path`` when the block ends
    normally and is removed when it raises.

    Examples
    --------
    >>> import json, tempfile
    >>> target = Path(tempfile.mkdtemp()) / "models.json"
    >>> with atomic_file(target) as tmp:
    ...     _ = tmp.write_text(json.dumps({"models": []}))
    >>> json.loads(target.read_text())
    {'models': []}
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans_beside(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.partial-{host_tag()}-{os.getpid()}-", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file 0600; give it the mode an ordinary write would have: the
        # replaced file's, or the one the umask allows (outputs are shared on lab servers).
        try:
            mode = path.stat().st_mode & 0o7777
        except OSError:
            mode = _FILE_MODE
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temp_dir_beside(final: Path) -> Path:
    """A new hidden folder beside ``final`` (same file system, so it can be renamed onto it)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing what was there."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
