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

from .canvas import Item, SamplingOptions, canvas_size, combined_std, resolve_options, sample_canvas
from ..models.cards import TASKS
from ..errors import EMDiffuseError, InputError
from ..events import Progress, drain
from ..models.device import resolve_device
from ..models.model import EMDiffuseModel
from ..models.registry import load_model
from .normalise import (
    NormInfo,
    fit_normalisation,
    from_model,
    sample_values,
    std_from_model,
    to_dtype,
    make_condition,
)
from .checks import check_finite, owned_array, validate_image
from .tiling import TilePlan, pad_to, round_up

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


class Planes:
    """Uniform ZYX access to a 2D or 3D array-like (zarr arrays cannot take ``[None]``)."""

    def __init__(self, image: Any) -> None:
        self.image, self.is_stack = image, image.ndim == 3
        self.shape = tuple(image.shape) if self.is_stack else (1, *image.shape)

    def __getitem__(self, idx: tuple) -> Any:
        z, rest = idx[0], idx[1:]
        return self.image[(z, *rest)] if self.is_stack else self.image[rest]


def fit_norm(model: EMDiffuseModel, image: Any) -> NormInfo:
    values = sample_values(image)
    if values.dtype.kind == "f":
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            raise InputError("image is all NaN/Inf; nothing to restore")
        values = finite
    return fit_normalisation(values, model.card.normalisation, adapt_range=True)


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


def _plane_batches(model: EMDiffuseModel, shape: tuple[int, int], opts: SamplingOptions) -> int:
    """Network batches one plane needs per step (for progress totals)."""
    s = model.card.scale if model.card.task == "super-resolve" else 1
    mult = model.card.network.size_multiple
    h, w = canvas_size(shape[0] * s, mult), canvas_size(shape[1] * s, mult)
    plan = TilePlan(h, w, min(opts.tile, h), min(opts.tile, w), opts.overlap)
    steps = opts.n_steps if model.card.kind == "diffusion" else 1
    return steps * -(-len(plan) * opts.samples // opts.batch)


def prepare(image, task, model, arch, device, preset, kw) -> tuple:
    _check_task(task)
    image = validate_image(image)
    dev = resolve_device(device)
    m = load_model(model, task=task, arch=arch, device=dev)
    opts = resolve_options(m, dev, preset=preset, **kw)
    return image, dev, m, opts


def scaled_spacing(spacing, ndim: int, scale: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    spacing = tuple(float(v) for v in spacing)
    if len(spacing) != ndim:
        raise InputError(f"spacing has {len(spacing)} values for a {ndim}-D image")
    return spacing[:-2] + tuple(v / scale for v in spacing[-2:])


def run_info(m: EMDiffuseModel, opts: SamplingOptions, dev: torch.device) -> dict:
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
    image, dev, m, opts = prepare(image, task, model, arch, device, preset, kw)
    out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(image.dtype)
    if out_dtype.kind == "b":
        out_dtype = np.dtype(np.uint8)
    s = m.card.scale if task == "super-resolve" else 1
    new_spacing = scaled_spacing(spacing, image.ndim, s)
    stack = Planes(image)
    if isinstance(image, np.ndarray):
        check_finite(np.asarray(image), "image")
    norm = fit_norm(m, image)
    nz, h, w = stack.shape
    per_plane = _plane_batches(m, (h, w), opts)
    total = nz * per_plane
    mean = np.empty((nz, h * s, w * s), dtype=out_dtype)
    want_std = opts.samples > 1 or getattr(m.unet, "aleatoric", False)
    unc = np.empty((nz, h * s, w * s), dtype=np.float32) if want_std else None
    for z in range(nz):
        plane = owned_array(stack[z, :, :]).astype(np.float64)
        check_finite(plane, f"slice {z}" if nz > 1 else "image")
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
        spacing=new_spacing,
        normalisation=norm.as_dict(),
        info=run_info(m, opts, dev),
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


def provenance(info: dict, normalisation: dict | None = None, **extra: Any) -> dict:
    """What made an output: the run's settings (:attr:`Restoration.info`), the normalisation
    and the package version, for a file's metadata or a layer's ``metadata``.

    Examples
    --------
    >>> provenance({"model": "demo-denoise", "preset": "fast"})["model"]
    'demo-denoise'
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = f"napari-emdiffuse {version('napari-emdiffuse')}"
    except PackageNotFoundError:  # running from a source tree
        package = "napari-emdiffuse (source tree)"
    return {**info, "normalisation": normalisation, "package": package, **extra}
