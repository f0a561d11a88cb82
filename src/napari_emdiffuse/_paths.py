"""Where the shipped resources live: inside the installed wheel, or at the repository root
for an editable install."""

from __future__ import annotations

from pathlib import Path

__all__ = ["resources_dir"]


def resources_dir() -> Path:
    here = Path(__file__).resolve().parent
    packaged = here / "resources"
    if packaged.is_dir():
        return packaged
    return here.parent.parent / "resources"
