"""``emdiffuse score``: images of one field side by side against a reference (PSNR, SSIM,
mean absolute error, FRC resolution, the extremes' bias, and each uncertainty map's
calibration), as a table or JSON records."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["score_command", "score_rows", "score_table"]


def score_command(args: argparse.Namespace) -> int:
    """Read the files (only ``--region`` of each), score them and print the table: several
    images against one reference, or a folder of results against a folder of references
    whose images pair by name (a batch's outputs; then a mean row)."""
    from .engine.errors import InputError
    from .engine.io.batch import is_image_folder

    maps_given = args.uncertainty
    if maps_given is not None and len(maps_given) != len(args.input):
        raise InputError(f"{len(args.input)} images but {len(maps_given)} uncertainty maps: give one per image "
                         "(- for none)")
    if any(is_image_folder(p) for p in [*args.input, args.reference]):
        scores, unit = _score_folders(args)
    else:
        scores, unit = _score_files(args.input, args.reference, maps_given, args)
    if args.json:
        for s in scores:
            print(json.dumps({**s.as_dict(), "unit": unit}, allow_nan=True))
    else:
        print(score_table(scores, unit=unit))
    return 0


def _score_files(inputs: list[str], reference: str, maps: list[str] | None, args: argparse.Namespace
                 ) -> tuple[list[Any], str | None]:
    """Images against one reference, and the unit of the FRC's second column."""
    from .scoring import read_for_scoring, score_images

    pick = {"channel": args.channel, "time": args.time}
    images = [read_for_scoring(path, args.region, **pick)[0] for path in inputs]
    ref, ref_img = read_for_scoring(reference, args.region, **pick)
    stds = [None if m in (None, "-") else read_for_scoring(m, args.region, **pick)[0]
            for m in (maps or [None] * len(images))]
    pixel = float(ref_img.spacing[-1]) if ref_img.spacing and ref_img.unit else None
    scores = score_images(images, ref, names=list(inputs), uncertainties=stds, data_range=args.data_range,
                          register=args.register, pixel_size=pixel, factor=args.factor)
    return scores, ref_img.unit if pixel else None


def _score_folders(args: argparse.Namespace) -> tuple[list[Any], str | None]:
    """A folder of results against a folder of references (and of uncertainty maps), paired
    by name, each against its own; a mean row below where there are several."""
    from .engine.errors import InputError
    from .engine.io.batch import matched_pairs
    from .scoring import mean_score

    if len(args.input) != 1:
        raise InputError("a folder is scored against a folder of references: give one folder of images")
    images, refs = matched_pairs(args.input, [args.reference])
    maps: list[str | None] = [None] * len(images)
    if args.uncertainty and args.uncertainty[0] != "-":
        maps = list(matched_pairs(args.input, args.uncertainty)[1])
    scores, units = [], set()
    for image, ref, std in zip(images, refs, maps):
        (score,), unit = _score_files([image], ref, [std] if std else None, args)
        score.name = Path(image).name
        scores.append(score)
        units.add(unit)
    unit = units.pop() if len(units) == 1 else None
    if unit is None:
        for s in scores:
            s.frc_nm = None  # files of other units, or none: pixels only
    return scores + ([mean_score(scores, f"mean of {len(scores)}")] if len(scores) > 1 else []), unit


def score_rows(scores: list[Any], *, unit: str | None = None) -> tuple[list[str], list[list[str]]]:
    """The table's header and one row of cells per score (the Score dock shows them as they
    are; :func:`score_table` aligns them)."""
    cal = any(s.uncertainty for s in scores)
    head = ["image", "PSNR dB", "SSIM", "MAE", "FRC px"] + ([f"FRC {unit}"] if unit else []) + ["dark 1%", "bright 1%"]
    head += ["cov2 %", "rho", "worst1%", "x for 95%"] if cal else []
    rows = []
    for s in scores:
        row = [s.name, f"{s.psnr:.2f}", _num(s.ssim, ".4f"), _num(s.mae, ".2f"), f"{s.frc_px:.2f}"]
        row += [_num(s.frc_nm, ".1f")] if unit else []
        row += [f"{s.dark_bias:+.2f}", f"{s.bright_bias:+.2f}"]
        if cal:
            u = s.uncertainty
            row += ([f"{u['coverage'] * 100:.1f}", _num(u["rank_correlation"], ".2f"), _num(u["worst_mean"], ".2f", "x"),
                     _num(u["scale_95"], ".2f")] if u else ["", "", "", ""])
        rows.append(row)
    return head, rows


def score_table(scores: list[Any], *, unit: str | None = None) -> str:
    """The scores as an aligned text table, one row per image.

    Examples
    --------
    >>> from napari_emdiffuse.scoring import ImageScore
    >>> print(score_table([ImageScore("a.tif", 30.0, 0.8, 5.0, 3.1, None, 1.0, -2.0)]))
    image  PSNR dB  SSIM    MAE   FRC px  dark 1%  bright 1%
    a.tif  30.00    0.8000  5.00  3.10    +1.00    -2.00
    """
    head, rows = score_rows(scores, unit=unit)
    rows = [head, *rows]
    widths = [max(len(r[k]) for r in rows) for k in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _num(v: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt) + suffix
