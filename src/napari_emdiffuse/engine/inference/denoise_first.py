"""Denoise the measured slices of a volume before isotropic reconstruction.

A model that generates slices between two noisy ones carries their noise into the new slices
(``benchmarks/isotropic.py --doses``). :func:`denoise_first` restores every measured slice
with a denoising model (one pass, the ``fast`` preset; four mirrored views when the
reconstruction is ``balanced``) in memory or, for a zarr output, into
temporary stores beside it (:func:`scratch_beside`), which the reconstruction then reads.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

from ..errors import EMDiffuseError, InputError
from ..events import Progress
from ..io.zarr import open_zarr_readonly
from ..models.model import EMDiffuseModel
from ..models.registry import load_model
from .blocks import Distribute
from .restore import restore_iter, restore_to_zarr_iter

__all__ = ["check_denoiser", "denoise_first", "scratch_beside", "store_path"]


def store_path(arr: Any) -> Path | None:
    """Where a zarr array on disk lives (the workers open it), or None."""
    if arr is None:
        return None
    root = getattr(getattr(arr, "store", None), "root", None) or getattr(getattr(arr, "store", None), "path", None)
    if root is None:
        raise EMDiffuseError("internal: a distributed run needs the measured slices' uncertainty on disk")
    return Path(root)


@contextlib.contextmanager
def scratch_beside(out_path: Path | str | None, *, key: str | None = None) -> Iterator[Path | None]:
    """A hidden folder beside ``out_path`` for intermediate stores, removed at the end
    (also on errors and cancel); None without an output path. For an output by URL, a
    temporary folder of this machine (``TMPDIR``). A resumable run's (``key``,
    :func:`~.blocks.run_key`) is named by its key and kept when the run fails or stops, so
    that the next run of the same job finds the slices it denoised."""
    if out_path is None:
        yield None
        return
    name = f"{key[:16]}-resumable" if key is not None else secrets.token_hex(4)
    if isinstance(out_path, str) and key is None:  # an output by URL: a folder of this machine's
        scratch = Path(tempfile.mkdtemp(prefix=f".emdiffuse-denoised-{name}-"))
    elif isinstance(out_path, str):  # resumable: found again by a next run on this machine
        scratch = Path(tempfile.gettempdir()) / f".emdiffuse-denoised-{name}"
        scratch.mkdir(exist_ok=True)
    else:
        scratch = out_path.parent / f".{out_path.name}.denoised-{name}"
        scratch.mkdir(exist_ok=key is not None)
    if key is None:
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    yield scratch  # an error or a stop leaves it for the next run
    shutil.rmtree(scratch, ignore_errors=True)


def check_denoiser(denoise: Any, device: Any) -> Any:
    """The denoising model to run first: None (none), the bundled one for True, a loaded
    model for a name, path or model (checked here, before any work starts)."""
    if denoise is None or denoise is False or (isinstance(denoise, str) and not denoise.strip()):
        return None
    if not isinstance(denoise, (bool, str, os.PathLike, EMDiffuseModel)):
        raise InputError(f"denoise must be a denoising model's name or path (or True), got {type(denoise).__name__}")
    return load_model(None if denoise is True else denoise, task="denoise", device=device)


def denoise_first(
    vol: Any,
    denoiser: EMDiffuseModel,
    *,
    spec: Any,
    device: Any,
    block: int,
    want_std: bool,
    scratch: Path | None,
    distribute: Distribute | None,
    preset: str = "fast",
    resume: bool = False,
) -> Generator[Progress, None, tuple[Any, Any]]:
    """Denoise every measured slice: in memory, or into zarr stores under ``scratch``
    (beside the output; the caller removes them). Returns (slices, their std). ``resume``:
    the stores are resumable (:func:`~.restore.restore_to_zarr_iter`), and found finished
    when an earlier run of the same job got past this stage.

    ``preset``: ``balanced`` (mirrored views) when the reconstruction is balanced too, else
    ``fast`` (one pass)."""

    def tagged(gen: Generator) -> Generator[Progress, None, Any]:
        last = None
        try:
            while True:
                ev = next(gen)
                if isinstance(ev, Progress):
                    ev.message = ev.message or "denoising the measured slices first"
                    yield ev
                else:
                    last = ev
        except StopIteration:
            return last
        finally:
            gen.close()

    if scratch is None:
        res = yield from tagged(restore_iter(vol, "denoise", denoiser, device=device, block=block, preset=preset))
        return res.mean, (res.uncertainty if want_std else None)
    dst, unc = scratch / "denoised.zarr", (scratch / "denoised_std.zarr" if want_std else None)
    yield from tagged(
        restore_to_zarr_iter(
            vol, dst, "denoise", spec if distribute is not None else denoiser, uncertainty_out=unc,
            block=block, device=device, preset=preset, distribute=distribute, resume=resume,
        )
    )  # fmt: skip
    # a denoiser of one sample and no aleatoric head gives no uncertainty: none is written
    return open_zarr_readonly(dst), (open_zarr_readonly(unc) if unc is not None and unc.exists() else None)
