"""2D restoration (DiReP): normalise -> blocks -> tiles -> K samples -> mean + uncertainty
-> denormalise.

Works on 2D images (YX) and stacks (ZYX, restored slice by slice) held as numpy, dask or
zarr arrays, of any size from 1x1 and any real dtype. ``restore_iter`` is the generator
every front end drives; ``restore`` runs it to the end; ``restore_to_zarr_iter`` streams
block by block into a zarr store so memory is bounded by the block, not the image. Both go
through the same :class:`~.blocks.BlockPlan`, so they give the same pixels.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .canvas import (
    MIRRORS, Item, SamplingOptions, block_tiles, combined_std, is_multistep, resolve_options, sample_canvas,
    sampling_request, tile_note, tiles_in_nodata, covered_by,
)
from .structure import with_structure
from ..models.cards import TASKS
from ..errors import EMDiffuseError, InputError
from ..events import Progress
from ..models.device import resolve_device
from ..models.model import EMDiffuseModel
from ..models.registry import load_model
from .normalise import (
    BLUR_CROP,
    NormInfo,
    read_blur,
    fit_normalisation,
    from_model,
    sample_values,
    std_from_model,
    to_dtype,
    make_condition,
)
from .blocks import (
    DEFAULT_BLOCK, BlockPlan, BlockRun, BlockTarget, Distribute, already_done, block_key, build_pyramids, output_place,
    input_identity, pending_jobs, resume_note, run_key, shrinking_blocks, zarr_outputs,
)  # fmt: skip
from ..io.common import is_url
from ..io.ledger import Ledger
from ..io.spacing import output_origin
from ..io.zarrurl import check_output_url
from ..io.views import cutout
from ..io.zarrfmt import check_zarr_format, zarr_format_part
from .checks import (
    check_block, check_finite, check_fits_in_memory, check_region, output_dtype, owned_array, validate_image,
)  # fmt: skip
from .fill import fill_mask, inpaint_nearest, upscale_mask
from .provenance import run_info
from .slabs import SlabPlanes, chunk_depth, in_slab_order
from .tiling import TilePlan, cut_canvas, pad_mode, pad_to
from .zfilter import ZFilter, plan_z_filter, smooth_along_z

__all__ = [
    "Restoration",
    "restore_iter",
    "restore_to_zarr_iter",
    "restore_plane",
    "restore_block",
    "z_filter_pass",
]


@dataclass
class Restoration:
    """Result of a restoration.

    Attributes
    ----------
    mean : numpy.ndarray
        The restored image (mean of the samples), in the input's dtype unless asked otherwise.
    uncertainty : numpy.ndarray or None
        Pixel-wise standard deviation over the samples (float32, input intensity units);
        None with one sample, unless the model predicts its own variance.
    scale : int
        Lateral magnification (2 for x2 super-resolution).
    spacing : tuple of float or None
        Physical pixel size of the output per axis when the input's was given.
    origin : tuple of float or None
        Where the output's first pixel centre lies (:func:`~..io.spacing.output_origin`: a
        region's place, the finer grid of super-resolution); None at 0.
    normalisation : dict
        The rule and the input values that mapped to -1 and +1.
    info : dict
        Model, sampler, steps, samples, tile, overlap, seed and device used.
    """

    mean: np.ndarray
    uncertainty: np.ndarray | None
    scale: int = 1
    spacing: tuple[float, ...] | None = None
    normalisation: dict = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    origin: tuple[float, ...] | None = None


class Planes:
    """Uniform ZYX access to a 2D or 3D array-like (zarr arrays cannot take ``[None]``); a
    stack stored in deep chunks is read a slab at a time (:class:`~.slabs.SlabPlanes`)."""

    def __init__(self, image: Any) -> None:
        self.image, self.is_stack = image, image.ndim == 3
        self.shape = tuple(image.shape) if self.is_stack else (1, *image.shape)
        self._stack = SlabPlanes(image) if self.is_stack else None

    def __getitem__(self, idx: tuple) -> Any:
        z, rest = idx[0], idx[1:]
        return self._stack[(z, *rest)] if self._stack is not None else self.image[rest]


def fit_norm(model: EMDiffuseModel, image: Any) -> NormInfo:
    values = sample_values(image)
    nan = False
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.any():
            raise InputError("image has no finite pixels (all NaN or Inf); nothing to restore")
        nan = bool(np.isnan(values).any())
        values = values[finite]
    return replace(fit_normalisation(values, model.card.normalisation, adapt_range=True), nan=nan)


def _check_task(task: str) -> None:
    if task not in ("denoise", "super-resolve"):
        hint = " (use reconstruct_isotropic for volumes)" if task in TASKS else ""
        raise EMDiffuseError(f"unknown task {task!r}; choose denoise or super-resolve{hint}")


def with_blur(
    model: EMDiffuseModel, image: Any, norm: NormInfo, opts: SamplingOptions, device: torch.device
) -> SamplingOptions:
    """``opts`` with the acquisition blur a blur-conditioned model is told: the user's, else
    read off the image once (its middle slice, see :func:`~.normalise.read_blur`), so that
    every tile and slice of the run is restored for the same acquisition."""
    if not model.card.network.blur_level or opts.blur is not None:
        return opts
    planes = Planes(image)
    nz, h, w = planes.shape
    y0, x0 = max(0, (h - BLUR_CROP) // 2), max(0, (w - BLUR_CROP) // 2)
    plane = owned_array(planes[nz // 2, y0 : y0 + BLUR_CROP, x0 : x0 + BLUR_CROP])
    blur = read_blur(model.unet.blur_estimator, plane, norm, model.card.scale, device)
    return replace(opts, blur=round(blur, 3), extra={**opts.extra, "blur_source": "read off the image"})


# Noise streams of the refiner's residual samples: apart from the views' and samples' own.
REFINE_STREAM = 1 << 20


def restore_plane(
    model: EMDiffuseModel,
    plane: np.ndarray,
    norm: NormInfo,
    opts: SamplingOptions,
    *,
    device: torch.device,
    z: int = 0,
    origin: tuple[int, int] = (0, 0),
    whole: tuple[int, int] | None = None,
    keep: tuple[slice, slice] | None = None,
    progress: dict | None = None,
    nodata: np.ndarray | None = None,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray | None]]:
    """Restore the pixels ``keep`` (default: all) of one 2D plane (input units in,
    model-range mean and std of ``keep`` times the scale out, float32).

    ``nodata``: the plane's pixels that are no data (fill, NaN; inpainted in ``plane``), whose
    output the caller replaces. A predictor's tiles that lie wholly in them are not run (the
    empty margins of a connectomics volume, the black border of a montage cost nothing), and
    the mean there is the condition itself, so the uncertainty's structure term sees no step.

    ``origin`` is the plane's position in the whole image of ``whole`` pixels (default: the
    plane is the whole image), in input pixels: the tiles are the whole image's
    (:func:`~.canvas.block_tiles`) and the noise is seeded by global position, so a block
    comes out as it does in a whole-image run.
    """
    s = model.card.scale if model.card.task == "super-resolve" else 1
    ph, pw = plane.shape
    whole = whole or (origin[0] + ph, origin[1] + pw)
    keep = keep or (slice(0, ph), slice(0, pw))
    rows = slice(origin[0] + keep[0].start, origin[0] + keep[0].stop)
    cols = slice(origin[1] + keep[1].start, origin[1] + keep[1].stop)
    plan = block_tiles(model, opts, whole, rows, cols, scale=s)
    image = (whole[0] * s, whole[1] * s)
    cond = make_condition(plane, norm, s, device).cpu().numpy()
    cond = torch.from_numpy(np.ascontiguousarray(cut_canvas(cond, (origin[0] * s, origin[1] * s), plan, image)))
    cond = cond.to(device)
    # Mirror ensemble: sample k sees its tiles flipped by MIRRORS[k % 4] (and flipped back).
    views = min(4, opts.samples) if opts.flips else 1
    level = opts.blur if model.card.network.blur_level else None
    items = [Item(cond=0, stream=(z, k), flip=MIRRORS[k % views], level=level) for k in range(opts.samples)]
    progress = progress or {}
    skip = _skipped_tiles(model, opts, nodata, plan, s, origin, image)
    samples, variance = yield from sample_canvas(
        model,
        cond,
        items,
        opts,
        plan=plan,
        progress_offset=progress.get("offset", 0),
        progress_total=progress.get("total"),
        skip=skip,
    )
    if skip is not None:  # pixels only skipped tiles cover: the condition, as the network would nearly give
        bare = torch.from_numpy(~covered_by(plan, skip))
        samples[:, bare] = cond[0, 0].cpu()[bare]
    # the window's pixels of the image (not the canvas's padding past its end)
    inside = (min(plan.height, image[0] - plan.origin[0]), min(plan.width, image[1] - plan.origin[1]))
    samples = samples.numpy()
    variance = None if variance is None else variance.numpy()
    if opts.refine_samples:
        mean, std = yield from _refine(model, cond, samples, variance, opts, z=z, plan=plan, inside=inside,
                                       mode=pad_mode(image, plan.whole), progress=progress)  # fmt: skip
    else:
        mean, std = samples.mean(axis=0), combined_std(samples, variance)
    mean = mean[: inside[0], : inside[1]]
    std = None if std is None else std[: inside[0], : inside[1]]
    if std is not None and (model.card.uncertainty_structure > 0 or model.card.uncertainty_tail > 0):
        std = with_structure(mean, std, model.card.uncertainty_structure, tail=model.card.uncertainty_tail)
    ky = slice(rows.start * s - plan.origin[0], rows.stop * s - plan.origin[0])
    kx = slice(cols.start * s - plan.origin[1], cols.stop * s - plan.origin[1])
    return mean[ky, kx], None if std is None else std[ky, kx]


def _skipped_tiles(model: EMDiffuseModel, opts: SamplingOptions, nodata: np.ndarray | None, plan: TilePlan, s: int,
                   origin: tuple[int, int], image: tuple[int, int]) -> list[bool] | None:
    """The tiles wholly in the plane's no data (:func:`~.canvas.tiles_in_nodata`), the mask cut
    to the canvas as the condition is."""
    if nodata is None or not nodata.any():
        return None
    mask = np.repeat(np.repeat(nodata, s, axis=0), s, axis=1)[None].astype(np.float32)  # the condition's pixels
    return tiles_in_nodata(model, opts, cut_canvas(mask, (origin[0] * s, origin[1] * s), plan, image)[0] > 0.5, plan)


def _refine(
    model: EMDiffuseModel,
    cond: torch.Tensor,
    views: np.ndarray,
    variance: np.ndarray | None,
    opts: SamplingOptions,
    *,
    z: int,
    plan: TilePlan,
    inside: tuple[int, int],
    mode: str,
    progress: dict | None,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray | None]]:
    """Predict, then refine: sample K residuals around the predictor's mean with the
    refiner, conditioned on the input and the mean, over the predictor's canvas (``plan``;
    ``inside``: its pixels of the image, the rest padding as ``mode`` pads). The output is the mean plus the
    residuals' average; its uncertainty combines the predicted (aleatoric) variance with the
    refined samples' spread (the law of total variance, as for mirrored views)."""
    refiner = model.refiner_model()
    assert refiner is not None and model.card.refiner is not None
    mean = views.mean(axis=0)
    # the mean is the image's; past its end the refiner sees it padded, as the condition is
    padded = pad_to(mean[None, : inside[0], : inside[1]], plan.height, plan.width, mode=mode)
    canvas_mean = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32)).to(cond.device)
    rcond = torch.cat([cond[:1], canvas_mean[None]], dim=1)
    k = opts.refine_samples
    ref = model.card.refiner
    start = ref.start_log_snr if opts.sampler != "ddpm" else None
    ropts = replace(opts, steps=opts.refine_steps, samples=k, flips=False, start_log_snr=start)
    items = [Item(cond=0, stream=(z, REFINE_STREAM + j)) for j in range(k)]
    progress = progress or {}
    offset = progress.get("offset", 0) + _predictor_batches(model, plan, opts)
    residual, _ = yield from sample_canvas(
        refiner, rcond, items, ropts, plan=plan, progress_offset=offset, progress_total=progress.get("total"),
        start=torch.zeros(k, 1, plan.height, plan.width, device=cond.device),
    )  # fmt: skip
    refined = mean + ref.residual_scale * residual.numpy()
    total = refined.var(axis=0)
    if variance is not None:
        total = total + variance.mean(axis=0) + (views.var(axis=0) if len(views) > 1 else 0.0)
    return refined.mean(axis=0), np.sqrt(total).astype(np.float32)


def _predictor_batches(model: EMDiffuseModel, tiles: TilePlan, opts: SamplingOptions) -> int:
    steps = opts.n_steps if model.card.kind == "diffusion" else 1
    return steps * -(-len(tiles) * opts.samples // opts.batch)


def _plane_batches(model: EMDiffuseModel, plan: BlockPlan, iy: int, ix: int, opts: SamplingOptions) -> int:
    """Network batches block (iy, ix) of a plane needs over all steps (for progress totals)."""
    s = plan.scale
    tiles = block_tiles(model, opts, (plan.height, plan.width), plan.ys[iy][1], plan.xs[ix][1], scale=s)
    n = _predictor_batches(model, tiles, opts)
    if opts.refine_samples:
        n += opts.refine_steps * -(-len(tiles) * opts.refine_samples // opts.batch)
    return n


def prepare(image: Any, task: str, model: Any, arch: str | None, device: str, request: dict) -> tuple:
    """Checked image, device, loaded model and resolved options of a 2D restoration."""
    _check_task(task)
    image = validate_image(image)
    dev = resolve_device(device)
    m = load_model(model, task=task, arch=arch, device=dev)
    opts = resolve_options(m, dev, **request)
    return image, dev, m, opts


def scaled_spacing(spacing, ndim: int, scale: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    spacing = tuple(float(v) for v in spacing)
    if len(spacing) != ndim:
        raise InputError(f"spacing has {len(spacing)} values for a {ndim}-D image")
    return spacing[:-2] + tuple(v / scale for v in spacing[-2:])


def _start(region: tuple[slice, slice] | None) -> tuple[int, int]:
    """A checked region's first row and column (0, 0 for the whole image)."""
    return (region[0].start, region[1].start) if region is not None else (0, 0)


def restore_block(
    m: EMDiffuseModel,
    stack: Any,
    plan: BlockPlan,
    job: tuple[int, int, int],
    target: BlockTarget,
    *,
    progress: dict | None = None,
) -> Generator[Progress, None, None]:
    """Read one block with its halo, restore it, write its centre into the target's arrays."""
    norm, dst, unc = target.norm, target.dst, target.unc
    z, iy, ix = job
    (ry, wy, cy), (rx, wx, cx) = plan.ys[iy], plan.xs[ix]
    s = plan.scale
    planes = stack if isinstance(stack, Planes) else Planes(stack)
    plane = owned_array(planes[z, ry, rx]).astype(np.float64)
    where = f"slice {z}" if plan.is_stack else "image"
    check_finite(plane, where if len(plan.ys) * len(plan.xs) == 1 else f"{where}, block y={wy.start} x={wx.start}")
    y0, _, x0, _ = plan.bounds
    idx = ((z,) if plan.is_stack else ()) + (slice((wy.start - y0) * s, (wy.stop - y0) * s),
                                             slice((wx.start - x0) * s, (wx.stop - x0) * s))
    fill = fill_mask(plane, norm.fill)
    if fill is not None and fill[cy, cx].all():  # nothing but fill (or NaN) to write: no network pass
        dst[idx] = to_dtype(upscale_mask(plane[cy, cx], s), target.dtype)
        if unc is not None:
            unc[idx] = 0.0
        return
    raw = plane
    if fill is not None:
        plane = inpaint_nearest(plane, fill)
    mu, sd = yield from restore_plane(
        m, plane, norm, target.opts, device=target.device, z=z, origin=(ry.start, rx.start),
        whole=(plan.height, plan.width), keep=(cy, cx), progress=progress, nodata=fill,
    )  # fmt: skip
    out = from_model(mu, norm)
    sd = std_from_model(sd, norm) if sd is not None else None
    if fill is not None:  # fill stays fill and NaN stays NaN, known exactly
        keep = upscale_mask(fill[cy, cx], s)
        out[keep] = upscale_mask(raw[cy, cx], s)[keep]
        if sd is not None:
            sd[keep] = 0.0
    dst[idx] = to_dtype(out, target.dtype)
    if unc is not None:
        unc[idx] = sd if sd is not None else 0.0


def _out_shape(wy: slice, wx: slice, s: int) -> tuple[int, int]:
    return (wy.stop - wy.start) * s, (wx.stop - wx.start) * s


def _run_plan(
    m: EMDiffuseModel, image: Any, plan: BlockPlan, target: BlockTarget, ledger: Ledger = Ledger()
) -> Generator[Progress, None, None]:
    stack, jobs = Planes(image), in_slab_order(pending_jobs(plan, ledger), chunk_depth(image))
    costs = [_plane_batches(m, plan, iy, ix, target.opts) for _, iy, ix in jobs]
    offset, total = 0, sum(costs)
    for n, (job, cost) in enumerate(zip(jobs, costs), 1):
        yield from restore_block(m, stack, plan, job, target, progress={"offset": offset, "total": total})
        ledger.mark(block_key(plan, job))
        offset += cost
        if len(jobs) > 1:
            yield Progress("block", n, len(jobs))


def restore_iter(
    image: Any,
    task: str = "denoise",
    model: "str | Path | EMDiffuseModel | None" = None,
    *,
    arch: str | None = None,
    device: str = "auto",
    dtype: Any = None,
    spacing: tuple[float, ...] | None = None,
    block: int = DEFAULT_BLOCK,
    z_filter: "str | float" = "auto",
    uncertainty: bool = True,
    region: Any = None,
    origin: tuple[float, ...] | None = None,
    **sampling: Any,
) -> Generator["Progress | Restoration", None, None]:
    """Restore an image, yielding :class:`Progress` events and finally a :class:`Restoration`.

    ``sampling``: the choices of :data:`~.canvas.SAMPLING_KEYS` (preset, steps, samples, ...).
    ``z_filter``: see :func:`~.zfilter.plan_z_filter`. ``uncertainty``: keep the per-pixel
    uncertainty where the model gives one (False saves its memory). ``region``: only these
    rows and columns (:func:`~.checks.check_region`), normalised as the whole image and
    restored by the whole image's tiles that reach them, as in a whole-image run (a one-pass
    model gives the very same pixels). ``origin``: where the input's first pixel centre lies
    (its ``translate``); the result's ``origin`` places it over the input. Closing the generator cancels at the
    next tile batch. The user-facing entry point, with the parameters documented, is
    :func:`napari_emdiffuse.api.restore`.
    """
    request = sampling_request(**sampling)
    image, dev, m, opts = prepare(image, task, model, arch, device, request)
    check_block(block)
    norm = fit_norm(m, image)  # of the whole image: a region comes out as in a whole-image run
    part = image  # what the output shows: the region, or the whole image
    if region is not None:
        region = check_region(region, tuple(image.shape))
        part = cutout(image, region=(region[0].start, region[0].stop, region[1].start, region[1].stop))
    zplan = plan_z_filter(part, z_filter, task=task)
    out_dtype = output_dtype(dtype, image)
    s = m.card.scale if task == "super-resolve" else 1
    new_spacing = scaled_spacing(spacing, image.ndim, s)
    new_origin = output_origin(origin, spacing, image.ndim, scale=s, start=_start(region))
    if isinstance(image, np.ndarray):
        check_finite(np.asarray(part), "image")
    opts = with_blur(m, image, norm, opts, dev)
    want_std = uncertainty and (opts.samples > 1 or bool(getattr(m.unet, "aleatoric", False)))
    result: dict[str, Any] = {}
    if (note := tile_note(m, opts)) is not None:
        yield Progress("note", 0, 0, message=note)

    def run(edge: int) -> Generator[Progress, None, None]:
        plan = BlockPlan.make(tuple(image.shape), block=edge, opts=opts, scale=s, region=region,
                              multistep=is_multistep(m, opts))
        check_fits_in_memory(plan.out_shape, out_dtype, uncertainty=want_std)
        result["mean"] = np.empty(plan.out_shape, dtype=out_dtype)
        result["unc"] = np.empty(plan.out_shape, dtype=np.float32) if want_std else None
        target = BlockTarget(norm, opts, dev, out_dtype, result["mean"], result["unc"])
        yield from _run_plan(m, image, plan, target)

    yield from shrinking_blocks(run, block, opts.tile)
    info = run_info(m, opts, dev)
    if zplan is not None:
        info["z_filter"] = yield from z_filter_pass(zplan, result["mean"], result["unc"], part, norm)
    if region is not None:
        info["region"] = [region[0].start, region[0].stop, region[1].start, region[1].stop]
    yield Restoration(
        mean=result["mean"],
        uncertainty=result["unc"],
        scale=s,
        spacing=new_spacing,
        normalisation=norm.as_dict(),
        info=info,
        origin=new_origin,
    )


def restore_to_zarr_iter(
    image: Any,
    out: str | Path,
    task: str = "denoise",
    model: "str | Path | EMDiffuseModel | None" = None,
    *,
    uncertainty_out: str | Path | None = None,
    block: int = DEFAULT_BLOCK,
    arch: str | None = None,
    device: str = "auto",
    dtype: Any = None,
    spacing: tuple[float, ...] | None = None,
    overwrite: bool = True,
    distribute: Distribute | None = None,
    z_filter: "str | float" = "auto",
    resume: bool = False,
    zarr_format: int = 2,
    region: Any = None,
    origin: tuple[float, ...] | None = None,
    **sampling: Any,
) -> Generator["Progress | Path", None, None]:
    """Stream a large image block by block into a zarr store; yields progress, then the path.

    Each block runs the whole image's tiles that reach it, with per-step merging, and its
    centre is written; noise is seeded by global position, so neither the block layout nor
    the machine changes a one-pass model's result. The store appears at ``out`` only when complete (temp dir, then
    rename, completion marker last). ``distribute`` (see :mod:`~..parallel.runner`) runs the
    blocks on dask workers, each loading the model once and writing into the shared store;
    the result is identical. A stack averaged along z (``z_filter``) is averaged in the store
    before it is committed. ``resume``: a run that fails or is stopped keeps its unfinished
    stores, and a run of the same input, model, options and plan continues from the blocks
    they hold (:func:`~.blocks.zarr_outputs`); it says so in a "note" event. ``zarr_format``
    3 writes zarr v3 (OME-Zarr 0.5 for a ``.ome.zarr`` name), each block one shard of 512-px
    chunks (:mod:`~..io.zarrfmt`). ``region``: only these rows and columns, as in
    :func:`restore_iter` (the whole run's pixels there), of any size; the store records
    where it lies (``origin``, and OME-NGFF translations: napari places it over the input),
    from the input's own ``origin``.
    """
    check_block(block)
    zarr_format = check_zarr_format(zarr_format)
    for place in (out, uncertainty_out):  # a store by URL: checked before any work
        if place is not None and is_url(str(place)):
            check_output_url(str(place), resume=resume)
    request = sampling_request(**sampling)
    if distribute is not None:
        # Workers load the model themselves; here it only answers questions, on the CPU.
        image = validate_image(image)
        _check_task(task)
        m = load_model(model, task=task, arch=arch, device="cpu")
        dev = torch.device("cpu")
        opts = resolve_options(m, dev, **request)
    else:
        image, dev, m, opts = prepare(image, task, model, arch, device, request)
    out_dtype = output_dtype(dtype, image)
    s = m.card.scale if task == "super-resolve" else 1
    part, bounds = image, None  # what the output shows: the region, or the whole image
    if region is not None:
        region = check_region(region, tuple(image.shape))
        bounds = (region[0].start, region[0].stop, region[1].start, region[1].stop)
        part = cutout(image, region=bounds)
    plan = BlockPlan.make(tuple(image.shape), block=block, opts=opts, scale=s, region=region,
                          multistep=is_multistep(m, opts))  # fmt: skip
    zplan = plan_z_filter(part, z_filter, task=task)
    norm = fit_norm(m, image)
    opts = with_blur(m, image, norm, opts, dev)
    if opts.blur is not None:
        request = {**request, "blur": opts.blur}  # workers use the value read here
    new_spacing = scaled_spacing(spacing, image.ndim, s)
    new_origin = output_origin(origin, spacing, image.ndim, scale=s, start=_start(region))
    want_std = uncertainty_out is not None and (opts.samples > 1 or bool(getattr(m.unet, "aleatoric", False)))
    attrs = {"normalisation": norm.as_dict(), **run_info(m, opts, dev)}
    if bounds is not None:
        attrs["region"] = list(bounds)
    if distribute is not None:
        attrs["device"] = str(device)
    writer_kw = dict(chunks=plan.chunks, spacing=new_spacing, overwrite=overwrite, zarr_format=zarr_format,
                     origin=new_origin)
    key = None
    if resume:
        key = run_key(
            what="restore", task=task, model=m.digest(), request=request, blur=opts.blur, plan=plan,
            norm=norm.as_dict(), dtype=str(out_dtype), uncertainty=want_std, z_filter=zplan, input=input_identity(image),
            **zarr_format_part(zarr_format),
        )  # fmt: skip
        if (yield from already_done(output_place(out), output_place(uncertainty_out) if want_std else None, key)):
            yield output_place(out)
            return
    if (note := tile_note(m, opts)) is not None:
        yield Progress("note", 0, 0, message=note)
    if distribute is not None:
        run = BlockRun(
            image, plan, model, task, arch, str(device), output_place(out), output_place(uncertainty_out) if want_std else None,
            {**writer_kw, "attrs": attrs}, norm, request, opts, out_dtype, z_filter=zplan, resume_key=key,
            region=bounds,
        )  # fmt: skip
        yield from distribute(run)
        yield output_place(out)
        return

    unc_out = output_place(uncertainty_out) if want_std else None
    stores = zarr_outputs(output_place(out), unc_out, plan.out_shape, out_dtype, resume_key=key, **{**writer_kw, "attrs": attrs})
    with stores as (wr, unc_wr):
        yield from resume_note(wr, plan)

        def run(edge: int) -> Generator[Progress, None, None]:
            p = BlockPlan.make(tuple(image.shape), block=edge, opts=opts, scale=s, region=region,
                               multistep=is_multistep(m, opts))  # fmt: skip
            unc = unc_wr.array if unc_wr is not None else None
            yield from _run_plan(m, image, p, BlockTarget(norm, opts, dev, out_dtype, wr.array, unc), wr.ledger)

        yield from shrinking_blocks(run, block, opts.tile)
        if zplan is not None:
            unc = unc_wr.array if unc_wr is not None else None
            wr.array.attrs["z_filter"] = yield from z_filter_pass(zplan, wr.array, unc, part, norm, wr.ledger)
        yield from build_pyramids(wr, unc_wr)
    yield output_place(out)


def z_filter_pass(
    plan: ZFilter, mean: Any, uncertainty: Any, image: Any, norm: NormInfo, ledger: Ledger = Ledger()
) -> Generator[Progress, None, float]:
    """Say why a restored stack is averaged along z, then average it in place (numpy or zarr
    arrays, in this process; a dask cluster's workers do it themselves:
    :func:`~..parallel.runner.z_filter_on_workers`); returns the width used."""
    yield Progress("note", 0, 0, message=plan.note)
    return (yield from smooth_along_z(mean, uncertainty, image, plan, fill=norm.fill, ledger=ledger))
