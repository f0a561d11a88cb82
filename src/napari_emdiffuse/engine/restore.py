"""2D restoration (DiReP): normalise -> tile -> K samples -> mean + uncertainty -> denormalise.

Works on 2D images (YX) and stacks (ZYX, restored slice by slice) held as numpy, dask or
zarr arrays, of any size from 1x1 and any real dtype. ``restore_iter`` is the generator
every front end drives; ``restore`` runs it to the end; ``restore_to_zarr_iter`` streams
block by block into a zarr store so memory is bounded by the block, not the image.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .canvas import Item, SamplingOptions, resolve_options, sample_canvas
from .models.cards import TASKS
from .errors import EMDiffuseError, InputError
from .events import Progress, drain
from .models.device import resolve_device
from .models.model import EMDiffuseModel
from .models.registry import load_model
from .inference.normalise import (
    NormInfo,
    fit_normalisation,
    from_model,
    sample_values,
    std_from_model,
    to_dtype,
    make_condition,
)
from .tiling import TilePlan, block_slices, pad_to, round_up

__all__ = [
    "Restoration",
    "restore",
    "restore_iter",
    "restore_to_zarr",
    "restore_to_zarr_iter",
    "validate_image",
    "restore_plane",
    "combined_std",
    "restore_block",
    "BlockPlan",
    "canvas_size",
]

_SUPPORTED = "uint8, uint16, int8, int16, int32, uint32, float16, float32 or float64"


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


def validate_image(image: Any, *, allow_3d: bool = True, name: str = "image") -> Any:
    """Check an array-like before any work; return it (leading singleton axes dropped).

    Raises :class:`InputError` with one line for empty, non-numeric, complex, RGB or
    too-many-dimension inputs. Values (NaN/Inf) are checked as slices are read.
    """
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        try:
            image = np.asarray(image)
        except Exception:  # noqa: BLE001
            raise InputError(f"{name} must be an array (numpy, dask or zarr)") from None
    dtype = np.dtype(image.dtype)
    if dtype.kind == "c":
        raise InputError(f"{name} is complex-valued; pass a real image (e.g. its magnitude)")
    if dtype.kind not in "uif" and dtype.kind != "b":
        raise InputError(f"{name} has unsupported dtype {dtype}; use {_SUPPORTED}")
    if any(s == 0 for s in image.shape) or len(image.shape) == 0:
        raise InputError(f"{name} is empty (shape {tuple(image.shape)})")
    while image.ndim > 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 3 and image.shape[-1] in (3, 4) and image.shape[0] > 4:
        raise InputError(
            f"{name} looks like an RGB(A) colour image (shape {tuple(image.shape)}); convert it to grey scale first"
        )
    if image.ndim < 2 or image.ndim > (3 if allow_3d else 2):
        want = "a 2D (YX) image or a 3D (ZYX) stack" if allow_3d else "a 2D (YX) image"
        raise InputError(f"{name} has {image.ndim} dimensions {tuple(image.shape)}; pass {want}")
    return image


def _as_numpy(block: Any) -> np.ndarray:
    block = block.compute() if hasattr(block, "compute") else block
    return np.array(block, copy=True)  # never a view of the caller's data


def _check_finite(values: np.ndarray, what: str) -> None:
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        if bad == values.size:
            raise InputError(f"{what} is all NaN/Inf; nothing to restore")
        raise InputError(f"{what} contains {bad} NaN/Inf pixels; replace them before restoring")


class _Planes:
    """Uniform ZYX access to a 2D or 3D array-like (zarr arrays cannot take ``[None]``)."""

    def __init__(self, image: Any) -> None:
        self.image, self.is_stack = image, image.ndim == 3
        self.shape = tuple(image.shape) if self.is_stack else (1, *image.shape)

    def __getitem__(self, idx: tuple) -> Any:
        z, rest = idx[0], idx[1:]
        return self.image[(z, *rest)] if self.is_stack else self.image[rest]


def _fit_norm(model: EMDiffuseModel, image: Any) -> NormInfo:
    values = sample_values(image)
    if values.dtype.kind == "f":
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            raise InputError("image is all NaN/Inf; nothing to restore")
        values = finite
    return fit_normalisation(values, model.card.normalisation)


def _check_task(task: str) -> None:
    if task not in ("denoise", "super-resolve"):
        hint = " (use reconstruct_isotropic for volumes)" if task in TASKS else ""
        raise EMDiffuseError(f"unknown task {task!r}; choose denoise or super-resolve{hint}")


# Axes of the (N, C, H, W) canvas, or of one (H, W) sample, to flip: identity, left-right,
# up-down, both. Negative, so the same tuple serves both.
_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def restore_plane(
    model: EMDiffuseModel,
    plane: np.ndarray,
    norm: NormInfo,
    opts: SamplingOptions,
    *,
    device: torch.device,
    z: int = 0,
    origin: tuple[int, int] = (0, 0),
    progress: dict | None = None,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray | None]]:
    """Restore one 2D plane (input units in, model-range mean and std out, float32).

    ``origin`` is the plane's position in the whole image (input pixels), so that noise is
    seeded by global position when the image is processed in blocks.
    """
    s = model.card.scale if model.card.task == "super-resolve" else 1
    cond = make_condition(plane, norm, s, device)
    h, w = cond.shape[-2:]
    mult = model.card.network.size_multiple
    ch, cw = canvas_size(h, mult), canvas_size(w, mult)
    cond = torch.from_numpy(pad_to(cond.cpu().numpy(), ch, cw)).to(device)
    # Mirror ensemble: sample k sees the canvas flipped by _FLIPS[k % 4] and is flipped back.
    views = min(4, opts.samples) if opts.flips else 1
    cond = torch.cat([torch.flip(cond, _FLIPS[v]) if _FLIPS[v] else cond for v in range(views)])
    items = [Item(cond=k % views, stream=(z, k)) for k in range(opts.samples)]
    progress = progress or {}
    samples, variance = yield from sample_canvas(
        model,
        cond,
        items,
        opts,
        origin=(origin[0] * s, origin[1] * s),
        progress_offset=progress.get("offset", 0),
        progress_total=progress.get("total"),
    )
    if views > 1:
        samples = torch.stack([torch.flip(sm, _FLIPS[k % views]) if _FLIPS[k % views] else sm for k, sm in enumerate(samples)])
        if variance is not None:
            variance = torch.stack([torch.flip(v, _FLIPS[k % views]) if _FLIPS[k % views] else v for k, v in enumerate(variance)])
    samples = samples[:, :h, :w].numpy()
    mean = samples.mean(axis=0)
    return mean, combined_std(samples, None if variance is None else variance[:, :h, :w].numpy())


def combined_std(samples: np.ndarray, variance: np.ndarray | None) -> np.ndarray | None:
    """Std of the output from K samples (K, H, W) and the network's variance (K, H, W).

    The law of total variance: the mean predicted (aleatoric) variance plus the variance of
    the samples around their mean (their spread). None when neither is available.

    Examples
    --------
    >>> s = np.array([[[0.0]], [[2.0]]]); v = np.full((2, 1, 1), 3.0)
    >>> float(combined_std(s, v)[0, 0])  # sqrt(3 + 1)
    2.0
    """
    k = samples.shape[0]
    if variance is None and k < 2:
        return None
    total = np.zeros(samples.shape[1:], np.float64)
    if k > 1:
        total += samples.var(axis=0, ddof=1 if variance is None else 0)
    if variance is not None:
        total += variance.mean(axis=0)
    return np.sqrt(total).astype(np.float32)


def canvas_size(n: int, mult: int) -> int:
    """Canvas edge for an image edge: a multiple of the network's, and never so small
    that the coarsest level's normalisation sees a single pixel."""
    return max(round_up(n, mult), round_up(32, mult), 2 * mult)


def _plane_batches(model: EMDiffuseModel, shape: tuple[int, int], opts: SamplingOptions) -> int:
    """Network batches one plane needs per step (for progress totals)."""
    s = model.card.scale if model.card.task == "super-resolve" else 1
    mult = model.card.network.size_multiple
    h, w = canvas_size(shape[0] * s, mult), canvas_size(shape[1] * s, mult)
    plan = TilePlan(h, w, min(opts.tile, h), min(opts.tile, w), opts.overlap)
    steps = opts.n_steps if model.card.kind == "diffusion" else 1
    return steps * -(-len(plan) * opts.samples // opts.batch)


def _prepare(image, task, model, arch, device, preset, kw) -> tuple:
    _check_task(task)
    image = validate_image(image)
    dev = resolve_device(device)
    m = load_model(model, task=task, arch=arch, device=dev)
    opts = resolve_options(m, dev, preset=preset, **kw)
    return image, dev, m, opts


def _out_spacing(spacing, ndim: int, scale: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    spacing = tuple(float(v) for v in spacing)
    if len(spacing) != ndim:
        raise InputError(f"spacing has {len(spacing)} values for a {ndim}-D image")
    return spacing[:-2] + tuple(v / scale for v in spacing[-2:])


def _info(m: EMDiffuseModel, opts: SamplingOptions, dev: torch.device) -> dict:
    return {
        "model": m.card.name,
        "task": m.card.task,
        "preset": opts.preset,
        "sampler": opts.sampler,
        "steps": opts.steps,
        "samples": opts.samples,
        "tile": opts.tile,
        "overlap": opts.overlap,
        "batch": opts.batch,
        "seed": opts.seed,
        "precision": opts.precision,
        "device": str(dev),
    }


def restore_iter(
    image: Any,
    task: str = "denoise",
    model: "str | Path | EMDiffuseModel | None" = None,
    *,
    arch: str | None = None,
    preset: str = "fast",
    steps: int | None = None,
    samples: int | None = None,
    sampler: str | None = None,
    eta: float | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    batch: int | None = None,
    seed: int = 0,
    device: str = "auto",
    dtype: Any = None,
    spacing: tuple[float, ...] | None = None,
    precision: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
    start_log_snr: float | None = None,
    flips: bool | None = None,
) -> Generator["Progress | Restoration", None, None]:
    """Restore an image, yielding :class:`Progress` events and finally a :class:`Restoration`.

    Closing the generator cancels at the next tile batch. See :func:`restore` for the
    parameters.
    """
    kw = dict(
        sampler=sampler, steps=steps, samples=samples, eta=eta, tile=tile, overlap=overlap,
        batch=batch, seed=seed, precision=precision, channels_last=channels_last, compile=compile,
        start_log_snr=start_log_snr, flips=flips,
    )
    image, dev, m, opts = _prepare(image, task, model, arch, device, preset, kw)
    out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(image.dtype)
    if out_dtype.kind == "b":
        out_dtype = np.dtype(np.uint8)
    s = m.card.scale if task == "super-resolve" else 1
    out_spacing = _out_spacing(spacing, image.ndim, s)
    stack = _Planes(image)
    if isinstance(image, np.ndarray):
        _check_finite(np.asarray(image), "image")
    norm = _fit_norm(m, image)
    nz, h, w = stack.shape
    per_plane = _plane_batches(m, (h, w), opts)
    total = nz * per_plane
    mean = np.empty((nz, h * s, w * s), dtype=out_dtype)
    want_std = opts.samples > 1 or getattr(m.unet, "aleatoric", False)
    unc = np.empty((nz, h * s, w * s), dtype=np.float32) if want_std else None
    for z in range(nz):
        plane = _as_numpy(stack[z, :, :]).astype(np.float64)
        _check_finite(plane, f"slice {z}" if nz > 1 else "image")
        mu, sd = yield from restore_plane(
            m, plane, norm, opts, device=dev, z=z, progress={"offset": z * per_plane, "total": total}
        )
        mean[z] = to_dtype(from_model(mu, norm), out_dtype)
        if unc is not None:
            unc[z] = std_from_model(sd, norm) if sd is not None else 0.0
    if image.ndim == 2:
        mean, unc = mean[0], (unc[0] if unc is not None else None)
    yield Restoration(
        mean=mean,
        uncertainty=unc,
        scale=s,
        spacing=out_spacing,
        normalisation=norm.as_dict(),
        info=_info(m, opts, dev),
    )


def restore(
    image: Any,
    task: str = "denoise",
    model: "str | Path | EMDiffuseModel | None" = None,
    **options: Any,
) -> Restoration:
    """Denoise or super-resolve an EM image with a diffusion model.

    Parameters
    ----------
    image : array-like
        2D (YX) image or 3D (ZYX) stack; numpy, dask or zarr; uint8, uint16, float32,
        float64 or another real dtype; any size from 1x1. Never modified.
    task : {"denoise", "super-resolve"}
        What to do; the model must be made for it.
    model : str, Path or EMDiffuseModel, optional
        A bundled or user model name, a model directory or zip, or a published checkpoint
        (``.pth``, with ``arch=``). None uses the bundled default for the task.
    arch : str, optional
        Architecture of a published checkpoint (EMDiffuse-n, EMDiffuse-r).
    preset : {"fast", "balanced", "reference"}
        ``fast``: few-step DPM-Solver++, one sample. ``balanced``: 4 samples with
        uncertainty (steps and start level from the model card). ``reference``: the
        published 1000-step DDPM, 2 samples.
    steps, samples, sampler, eta : optional
        Override the preset. Samplers: ``ddim``, ``dpm++``, ``ddpm``.
    flips : bool, optional
        Mirror ensemble: samples 2-4 see the image mirrored left-right, up-down and both,
        and are mirrored back, so the mean also averages out orientation-dependent network
        errors. Default: on for ``balanced``, off otherwise.
    tile, overlap, batch : int, optional
        Tile edge (rounded up to the network's multiple), overlap between tiles, tiles per
        network call. Defaults come from the model card and the device.
    seed : int
        Noise seed; the result is identical for any tile order, batch size or device count.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    dtype : numpy dtype, optional
        Output dtype; default the input's.
    spacing : tuple of float, optional
        Input pixel size per axis; the result's ``spacing`` is updated for super-resolution.

    Returns
    -------
    Restoration

    Examples
    --------
    >>> import numpy as np
    >>> noisy = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    >>> result = restore(noisy, "denoise", steps=2)  # doctest: +SKIP
    >>> result.mean.shape, result.mean.dtype
    ((64, 64), dtype('uint8'))
    """
    return drain(restore_iter(image, task, model, **options))


@dataclass(frozen=True)
class BlockPlan:
    """How a (stack of) image(s) is cut into blocks for streaming: the same plan on one
    machine or on a cluster, so the result does not depend on where blocks ran."""

    nz: int
    height: int
    width: int
    scale: int
    is_stack: bool
    ys: tuple
    xs: tuple

    @classmethod
    def make(cls, shape: tuple[int, ...], scale: int, block: int, opts: SamplingOptions) -> "BlockPlan":
        is_stack = len(shape) == 3
        nz, h, w = shape if is_stack else (1, *shape)
        halo = max(opts.tile // (2 * scale), opts.overlap)
        block = max(int(block), opts.tile)
        return cls(nz, h, w, scale, is_stack, tuple(block_slices(h, block, halo)), tuple(block_slices(w, block, halo)))

    @property
    def out_shape(self) -> tuple[int, ...]:
        s = self.scale
        return (self.nz, self.height * s, self.width * s) if self.is_stack else (self.height * s, self.width * s)

    @property
    def chunks(self) -> tuple[int, ...]:
        yx = (min(1024, self.height * self.scale), min(1024, self.width * self.scale))
        return (1, *yx) if self.is_stack else yx

    def jobs(self) -> list[tuple[int, int, int]]:
        return [(z, iy, ix) for z in range(self.nz) for iy in range(len(self.ys)) for ix in range(len(self.xs))]


def restore_block(
    m: EMDiffuseModel,
    stack: Any,
    plan: BlockPlan,
    job: tuple[int, int, int],
    *,
    norm: NormInfo,
    opts: SamplingOptions,
    device: torch.device,
    dtype: np.dtype,
    dst: Any,
    unc: Any = None,
) -> Generator[Progress, None, None]:
    """Read one block with its halo, restore it, write its centre into ``dst`` (and ``unc``)."""
    z, iy, ix = job
    (ry, wy, cy), (rx, wx, cx) = plan.ys[iy], plan.xs[ix]
    s = plan.scale
    planes = stack if isinstance(stack, _Planes) else _Planes(stack)
    plane = _as_numpy(planes[z, ry, rx]).astype(np.float64)
    _check_finite(plane, f"block z={z} y={wy.start} x={wx.start}")
    mu, sd = yield from restore_plane(m, plane, norm, opts, device=device, z=z, origin=(ry.start, rx.start))
    crop = (slice(cy.start * s, cy.stop * s), slice(cx.start * s, cx.stop * s))
    idx = ((z,) if plan.is_stack else ()) + (slice(wy.start * s, wy.stop * s), slice(wx.start * s, wx.stop * s))
    dst[idx] = to_dtype(from_model(mu[crop], norm), dtype)
    if unc is not None and sd is not None:
        unc[idx] = std_from_model(sd[crop], norm)


def restore_to_zarr_iter(
    image: Any,
    out: str | Path,
    task: str = "denoise",
    model: "str | Path | EMDiffuseModel | None" = None,
    *,
    uncertainty_out: str | Path | None = None,
    block: int = 2048,
    arch: str | None = None,
    preset: str = "fast",
    device: str = "auto",
    dtype: Any = None,
    spacing: tuple[float, ...] | None = None,
    overwrite: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
    **kw: Any,
) -> Generator["Progress | Path", None, None]:
    """Stream a large image block by block into a zarr store; yields progress, then the path.

    Each block is read with a halo of half a tile, restored with per-step merging, cropped
    and written; noise is seeded by global position, so the block layout, not the machine,
    fixes the result. The store appears at ``out`` only when complete (temp dir, then
    rename, completion marker last). With ``workers=N`` (a local dask cluster) or
    ``scheduler="tcp://..."`` the blocks run on dask.distributed workers, each loading the
    model once and writing into the shared store; the result is identical.
    """
    from .io.zarr import ZarrWriter

    image, dev, m, opts = _prepare(image, task, model, arch, device, preset, kw)
    out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(image.dtype)
    s = m.card.scale if task == "super-resolve" else 1
    plan = BlockPlan.make(tuple(image.shape), s, block, opts)
    norm = _fit_norm(m, image)
    out_spacing = _out_spacing(spacing, image.ndim, s)
    want_std = uncertainty_out is not None and opts.samples > 1
    attrs = {"normalisation": norm.as_dict(), **_info(m, opts, dev)}
    writer_kw = dict(chunks=plan.chunks, spacing=out_spacing, overwrite=overwrite)
    if workers or scheduler:
        from .distributed import run_blocks

        yield from run_blocks(
            image, plan, model if model is not None else m, task=task, arch=arch, device=str(device),
            out=Path(out), unc_out=Path(uncertainty_out) if want_std else None, writer_kw={**writer_kw, "attrs": attrs},
            norm=norm, opts=opts, dtype=out_dtype, workers=workers, scheduler=scheduler,
        )
        yield Path(out)
        return
    stack = _Planes(image)
    jobs = plan.jobs()
    with ZarrWriter(out, plan.out_shape, out_dtype, attrs=attrs, **writer_kw) as wr:
        unc_wr = ZarrWriter(uncertainty_out, plan.out_shape, np.float32, **writer_kw) if want_std else None
        try:
            for done, job in enumerate(jobs, 1):
                yield from restore_block(
                    m, stack, plan, job, norm=norm, opts=opts, device=dev, dtype=out_dtype,
                    dst=wr.array, unc=unc_wr.array if unc_wr is not None else None,
                )
                yield Progress("block", done, len(jobs))
            if unc_wr is not None:
                unc_wr.commit()
        except BaseException:
            if unc_wr is not None:
                unc_wr.abort()
            raise
    yield Path(out)


def restore_to_zarr(image: Any, out: str | Path, task: str = "denoise", model=None, **options: Any) -> Path:
    """Run :func:`restore_to_zarr_iter` to the end and return the output path."""
    return drain(restore_to_zarr_iter(image, out, task, model, **options))
