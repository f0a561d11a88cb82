"""TIFF and MRC outputs too large for memory: the command restores into a hidden zarr store
beside the output (written block by block), then writes the file from it slice by slice (a 2D
image: tile by tile) and removes the store, so a .tif or .mrc output of any size needs disk,
not memory."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .engine.io.common import ZARR_SUFFIX, suffix_of

__all__ = ["remove_spill", "spill_store", "write_spilled"]


def spill_store(out: Path, shape: tuple[int, ...], image: Any, *, uncertainty: bool) -> Path | None:
    """A hidden zarr store beside a TIFF or MRC output whose image or stack would not fit in
    memory (the file is then written from it piece by piece); None where the result fits."""
    from .engine.errors import InputError
    from .engine.inference.checks import check_fits_in_memory, output_dtype

    if suffix_of(out) == ZARR_SUFFIX or len(shape) not in (2, 3):
        return None
    try:
        check_fits_in_memory(shape, output_dtype(None, image), uncertainty=uncertainty)
        return None
    except InputError as exc:
        import secrets

        print(f"emdiffuse: note: {str(exc).split(';')[0]}; it goes through a temporary .zarr beside "
              f"'{out.name}', then into it{' slice by slice' if len(shape) == 3 else ''}", file=sys.stderr)
        return out.with_name(f".{out.name}.partial-{secrets.token_hex(4)}.zarr")


def write_spilled(out: Path, unc: Path | None, spill: Path, spill_unc: Path | None, data: Any, source: str,
                  attrs: dict) -> list[str]:
    """Write the finished stores of a spilled run (:func:`spill_store`) into the TIFF / MRC outputs."""
    from .engine.inference.restore import provenance
    from .engine.io.images import write_image
    from .engine.io.zarr import open_zarr_readonly

    info = {k: v for k, v in attrs.items() if k not in ("normalisation", "spacing", "unit", "emdiffuse_complete")}
    made = provenance(info, attrs.get("normalisation"), source=source)
    spacing, unit = attrs.get("spacing"), data.unit or "nm"
    image = open_zarr_readonly(spill)
    axes = "ZYX"[-image.ndim:]
    write_image(out, image, spacing=spacing, unit=unit, axes=axes, provenance=made)
    wrote = [str(out)]
    if unc is not None and spill_unc is not None and spill_unc.exists():
        write_image(unc, open_zarr_readonly(spill_unc), spacing=spacing, unit=unit, axes=axes,
                    provenance={**made, "what": "uncertainty (std, input units)"})
        wrote.append(f"{unc} (uncertainty)")
    return wrote


def remove_spill(*paths: Path | None) -> None:
    from .engine.io.atomic import remove_path

    for path in paths:
        if path is not None:
            remove_path(path)
