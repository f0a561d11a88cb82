"""What a long run into a zarr store has finished, kept inside its unfinished store, so that a
run that crashed or was stopped can continue where it stopped (``resume``).

A :class:`Ledger` is a folder of small files, one per finished part (a block of the plan, a
tile column averaged along z) and one per value the run must not choose twice (the z filter's
width). A part is marked only after its pixels are written, so a part that a crash cut short
is simply done again. Any process that can write the store can write its ledger: dask workers
mark their own blocks. The folder lives inside the ``.partial-`` store and goes with it when
the store is committed.

Inside a store at a URL (an object store, :mod:`.zarrurl`) the folder is a prefix and each
mark one small object: an object store writes an object whole or not at all, so no rename is
needed there.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import is_url

__all__ = ["Ledger", "LEDGER_DIR"]

#: The ledger's folder inside an unfinished store (zarr ignores names starting with a dot).
LEDGER_DIR = ".emdiffuse-ledger"


@dataclass(frozen=True)
class Ledger:
    """Finished parts of one resumable run; with ``folder`` None (a run that cannot be
    resumed) it remembers nothing and every part is to do. Picklable: workers get a copy.

    Examples
    --------
    >>> import tempfile
    >>> led = Ledger(tempfile.mkdtemp())
    >>> led.done("block-1"), led.mark("block-1"), led.done("block-1")
    (False, None, True)
    >>> led.write("width", "0.8"); led.read("width")
    '0.8'
    >>> Ledger(None).done("block-1")
    False
    """

    folder: str | None = None

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def _path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"not a ledger key: {key!r}")
        return Path(self.folder) / key  # type: ignore[arg-type]

    def _remote(self) -> tuple[Any, str] | None:
        """The fsspec file system and prefix of a ledger at a URL; None for a folder."""
        if not self.enabled or not is_url(self.folder):
            return None
        from .fetch import url_fs

        return url_fs(self.folder)  # type: ignore[arg-type]

    def done(self, key: str) -> bool:
        """Whether part ``key`` was marked finished."""
        if (remote := self._remote()) is not None:
            fs, root = remote
            return bool(fs.exists(f"{root}/{self._path(key).name}"))
        return self.enabled and self._path(key).exists()

    def mark(self, key: str) -> None:
        """Mark part ``key`` finished (call only once its pixels are written)."""
        self.write(key, "")

    def write(self, key: str, value: str) -> None:
        """Record ``value`` under ``key``, atomically (a crash leaves the old value or none)."""
        if not self.enabled:
            return
        path = self._path(key)
        if (remote := self._remote()) is not None:
            fs, root = remote
            fs.pipe_file(f"{root}/{key}", value.encode())
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{key}.{secrets.token_hex(4)}")
        tmp.write_text(value)
        os.replace(tmp, path)

    def read(self, key: str) -> str | None:
        """The value recorded under ``key``, or None."""
        if not self.enabled:
            return None
        path = self._path(key)
        try:
            if (remote := self._remote()) is not None:
                fs, root = remote
                return bytes(fs.cat_file(f"{root}/{key}")).decode()
            return path.read_text()
        except FileNotFoundError:
            return None

    def forget(self, key: str) -> None:
        """Mark part ``key`` to do again."""
        if not self.enabled:
            return
        path = self._path(key)
        if (remote := self._remote()) is not None:
            fs, root = remote
            try:
                fs.rm_file(f"{root}/{key}")
            except FileNotFoundError:
                pass
            return
        path.unlink(missing_ok=True)

    def keys(self) -> set[str]:
        """Every key recorded (none for a ledger without a folder)."""
        if (remote := self._remote()) is not None:
            fs, root = remote
            fs.invalidate_cache(root)  # workers mark blocks behind this process's listing cache
            try:
                names = fs.ls(root, detail=False)
            except FileNotFoundError:
                return set()
            found = (n.rstrip("/").rsplit("/", 1)[-1] for n in names)
            return {n for n in found if n and not n.startswith(".")}
        if not self.enabled or not Path(self.folder).is_dir():  # type: ignore[arg-type]
            return set()
        return {p.name for p in Path(self.folder).iterdir() if not p.name.startswith(".")}  # type: ignore[arg-type]
