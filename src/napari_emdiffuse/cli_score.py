"""``emdiffuse score``: images of one field side by side against a reference (PSNR, SSIM,
mean absolute error, FRC resolution, the extremes' bias, and each uncertainty map's
calibration), as a table or JSON records."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

__all__ = ["score_command", "score_rows", "score_table"]


def score_command(args: argparse.Namespace) -> int:
    """Read the files (only ``--region`` of each), score them and print the table."""
    from .engine.errors import InputError
    from .scoring import read_for_scoring, score_images

    maps_given = args.uncertainty
    if maps_given is not None and len(maps_given) != len(args.input):
        raise InputError(f"{len(args.input)} images but {len(maps_given)} uncertainty maps: give one per image "
                         "(- for none)")
    pick = {"channel": args.channel, "time": args.time}
    images = [read_for_scoring(path, args.region, **pick)[0] for path in args.input]
    reference, ref_img = read_for_scoring(args.reference, args.region, **pick)
    maps = [None if m in (None, "-") else read_for_scoring(m, args.region, **pick)[0]
            for m in (maps_given or [None] * len(images))]
    spacing = ref_img.spacing
    pixel = float(spacing[-1]) if spacing and ref_img.unit else None
    scores = score_images(images, reference, names=list(args.input), uncertainties=maps,
                          data_range=args.data_range, register=args.register, pixel_size=pixel, factor=args.factor)
    if args.json:
        for s in scores:
            print(json.dumps({**s.as_dict(), "unit": ref_img.unit if pixel else None}, allow_nan=True))
    else:
        print(score_table(scores, unit=ref_img.unit if pixel else None))
    return 0


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
