"""vEMDiffuse: isotropic reconstruction of anisotropic volumes.

Every pair of neighbouring slices z, z+1 of a ZYX volume gets ``factor - 1`` new slices
between them. All new slices of a pair (and all their samples) are generated together in
one per-step-merged canvas (:func:`~.canvas.sample_canvas`): the condition is the two
measured slices, each generated slice has its own slice-index embedding and its own noise
stream ``(z, j, k)``. The output has ``(Z - 1) * factor + 1`` slices; the measured slices
sit at ``z * factor`` and are copied bit for bit.

The work is split into *block tasks*: one slab (a pair of slices) times, for slices larger
than ``block``, lateral blocks read with a halo. The layout depends only on the volume,
``block`` and the tile, never on how many workers run it, and noise is seeded by global
position, so the result is identical in one process, on a local multi-process cluster
(``workers=N``) or on a remote dask scheduler (``scheduler="tcp://..."``).

Memory is bounded by one block: input slices are read as needed, outputs are written as
soon as a block is finished (into a zarr store with one-slice chunks when ``out`` is
given), and the intensity normalisation is fitted on a bounded subsample.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import secrets
import shutil
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .canvas import Item, SamplingOptions, resolve_options, sample_canvas
from ..errors import EMDiffuseError, InputError
from ..events import Progress, drain
from ..io.common import ZARR_SUFFIX, check_output_path
from ..io.images import read_image
from ..io.zarr import ZarrWriter, open_zarr_for_block_writes, zarr_major
from ..models.device import resolve_device
from ..models.model import EMDiffuseModel
from ..models.registry import DEFAULT_MODELS, load_model
from .normalise import NormInfo, fit_normalisation, from_model, std_from_model, to_dtype, to_model
from ..parallel.runner import model_spec, run_tasks, stage_input, worker_model, zarr_location
from .canvas import canvas_size, combined_std
from .checks import check_finite, owned_array, validate_image
from .restore import run_info
from .tiling import TilePlan, block_slices, pad_to

__all__ = [
    "IsotropicResult",
    "reconstruct_isotropic",
    "reconstruct_isotropic_iter",
    "factor_from_spacing",
]

MODES = {"i": "isotropic-i", "a": "isotropic-a"}
#: A z/xy spacing ratio within this relative distance of a whole number is taken as that factor.
FACTOR_TOLERANCE = 0.05
#: Lateral block edge (pixels) of the block tasks; also the output's chunk edge.
DEFAULT_BLOCK = 2048
#: At most this many values (from at most NORM_SAMPLE_SLICES slices) fit the normalisation,
#: so its memory does not grow with the volume.
NORM_SAMPLE_VALUES = 1_000_000
NORM_SAMPLE_SLICES = 64


@dataclass
class IsotropicResult:
    """Result of an isotropic reconstruction.

    Attributes
    ----------
    volume : numpy.ndarray or zarr.Array
        The reconstructed volume, ``((Z - 1) * factor + 1, Y, X)``, in the input's dtype
        unless asked otherwise. With ``out`` it is the finished store, opened read-only.
    uncertainty : numpy.ndarray, zarr.Array or None
        Pixel-wise standard deviation over the samples (float32, input intensity units;
        zero on the measured slices), when asked for.
    factor : int
        How many times finer the z sampling became.
    spacing : tuple of float or None
        Voxel size of the output (z divided by ``factor``) when the input's was known.
    info : dict
        Model, sampler, steps, samples, tile, overlap, block, seed, device, workers and the
        normalisation used.
    path, uncertainty_path : pathlib.Path or None
        Where the zarr stores were written, when ``out`` was given.
    """

    volume: Any
    uncertainty: Any | None
    factor: int
    spacing: tuple[float, ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    uncertainty_path: Path | None = None


# ----------------------------------------------------------------------------------------------
# checks


def factor_from_spacing(spacing: Sequence[float]) -> int:
    """The z factor that makes a volume with voxel size ``spacing`` (z, y, x) isotropic.

    The z spacing divided by the mean lateral spacing, rounded to the nearest whole number
    (halves round down); ratios more than 5% from a whole number are refused.

    Parameters
    ----------
    spacing : sequence of 3 floats
        Voxel size along z, y and x, in any one unit.

    Returns
    -------
    int
        The factor, at least 2.

    Raises
    ------
    InputError
        The spacing is not three positive numbers, the volume is already (nearly) isotropic,
        or the ratio is not close to a whole number.

    Examples
    --------
    >>> factor_from_spacing((50, 4, 4))
    12
    >>> factor_from_spacing((40.0, 8.0, 8.0))
    5
    """
    values = _check_spacing(spacing)
    assert values is not None
    ratio = values[0] / (0.5 * (values[1] + values[2]))
    if ratio < 1.5:
        raise InputError(
            f"the z spacing is {ratio:.3g} times the lateral spacing: the volume is already close to "
            f"isotropic; pass factor= to reconstruct anyway"
        )
    n = math.ceil(ratio - 0.5)
    if abs(ratio - n) > FACTOR_TOLERANCE * n:
        raise InputError(
            f"the z spacing is {ratio:.3g} times the lateral spacing, not a whole number; "
            f"choose the factor yourself with factor= (e.g. {n} or {n + 1})"
        )
    return int(n)


def _check_spacing(spacing: Any) -> tuple[float, float, float] | None:
    if spacing is None:
        return None
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise InputError(f"spacing must be three numbers (z, y, x), got {spacing!r}") from None
    if len(values) != 3:
        raise InputError(f"spacing must be three numbers (z, y, x), got {len(values)}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"spacing values must be positive numbers, got {values}")
    return values  # type: ignore[return-value]


def _check_factor(factor: Any) -> int:
    ok = not isinstance(factor, (bool, np.bool_)) and isinstance(factor, (numbers.Integral, numbers.Real))
    if not ok or not math.isfinite(float(factor)) or not float(factor).is_integer():
        raise InputError(f"factor must be a whole number of at least 2, got {factor!r}")
    if int(factor) < 2:
        raise InputError(f"factor must be at least 2 (1 + the slices to add per gap), got {int(factor)}")
    return int(factor)


def _check_mode(mode: str) -> str:
    key = str(mode).lower().removeprefix("isotropic-")
    if key not in MODES:
        raise EMDiffuseError(f"unknown mode {mode!r}; choose 'i' (isotropic data) or 'a' (anisotropic data)")
    return MODES[key]


def _check_volume(volume: Any) -> Any:
    vol = validate_image(volume, name="volume")
    if vol.ndim != 3:
        raise InputError(
            f"volume has {vol.ndim} dimensions {tuple(vol.shape)}; isotropic reconstruction needs a 3D (ZYX) stack"
        )
    if vol.shape[0] < 2:
        raise InputError(
            f"volume has {vol.shape[0]} slice along z; isotropic reconstruction needs at least 2 slices"
        )
    return vol


def _check_model(m: EMDiffuseModel, factor: int) -> None:
    card = m.card
    if card.cond_channels != 2:
        raise EMDiffuseError(
            f"model '{card.name}' takes {card.cond_channels} condition channel(s); an isotropic model takes "
            f"the 2 neighbouring slices"
        )
    if card.kind == "regression" and card.network.out_channel != factor - 1:
        raise InputError(
            f"model '{card.name}' makes {card.network.out_channel} slice(s) per gap (factor "
            f"{card.network.out_channel + 1}), not {factor - 1}; pass factor={card.network.out_channel + 1}"
        )
    if factor > 2 and card.kind == "diffusion" and not card.network.slice_embedding:
        raise EMDiffuseError(
            f"model '{card.name}' has no slice-index embedding, so it can only add one slice per gap (factor=2)"
        )
    if card.z_factor is not None and card.z_factor != factor:
        raise InputError(
            f"model '{card.name}' was trained for factor {card.z_factor}, not {factor}; "
            f"pass factor={card.z_factor} or use a model trained for {factor}"
        )


def _check_workers(workers: Any, scheduler: Any) -> None:
    if workers is not None and scheduler is not None:
        raise InputError("pass either workers= (a local cluster) or scheduler= (an existing one), not both")
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1
    ):
        raise InputError(f"workers must be a positive whole number, got {workers!r}")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise InputError(f"scheduler must be an address such as 'tcp://host:8786', got {scheduler!r}")


def _check_out(out: Any) -> Path | None:
    if out is None:
        return None
    if not isinstance(out, (str, os.PathLike)):
        raise InputError(f"out must be a path ending in .zarr, got {type(out).__name__}")
    path = check_output_path(out)
    if path.suffix.lower() != ZARR_SUFFIX:
        raise InputError(
            f"cannot write '{path}': out must be a .zarr store (write TIFF from the in-memory result instead)"
        )
    return path


def _uncertainty_path(uncertainty: Any, out: Path | None) -> Path | None:
    if out is None or not uncertainty:
        return None
    if isinstance(uncertainty, (str, os.PathLike)):
        path = _check_out(uncertainty)
        if path is not None and path.resolve() == out.resolve():
            raise InputError("the uncertainty store must not be the output store")
        return path
    return out.with_name(f"{out.stem}_uncertainty{ZARR_SUFFIX}")


# ----------------------------------------------------------------------------------------------
# the block tasks


@dataclass(frozen=True)
class _Layout:
    """Block tasks of a volume: slabs x lateral blocks, each (read, write, crop) slices."""

    nz: int
    factor: int
    ys: tuple[tuple[slice, slice, slice], ...]
    xs: tuple[tuple[slice, slice, slice], ...]
    chunks: tuple[int, int, int]

    @classmethod
    def make(cls, shape: tuple[int, int, int], factor: int, block: int, opts: SamplingOptions) -> "_Layout":
        nz, h, w = shape
        block = max(int(block), opts.tile)
        # Half a tile of context around a block: its border tiles see what the whole
        # canvas would have shown them.
        halo = max(opts.tile // 2, opts.overlap)
        ys = tuple(block_slices(h, block, halo))
        xs = tuple(block_slices(w, block, halo))
        return cls(nz, factor, ys, xs, (1, min(block, h), min(block, w)))

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return ((self.nz - 1) * self.factor + 1, self.ys[-1][1].stop, self.xs[-1][1].stop)

    def jobs(self) -> list[tuple[int, int, int]]:
        return [(z, iy, ix) for z in range(self.nz - 1) for iy in range(len(self.ys)) for ix in range(len(self.xs))]


def _block_batches(m: EMDiffuseModel, shape: tuple[int, int], n_items: int, opts: SamplingOptions) -> int:
    """Network batches one block needs over all steps (progress totals)."""
    mult = m.card.network.size_multiple
    h, w = canvas_size(shape[0], mult), canvas_size(shape[1], mult)
    plan = TilePlan(h, w, min(opts.tile, h), min(opts.tile, w), opts.overlap)
    if m.card.kind != "diffusion":
        return math.ceil(len(plan) / opts.batch)  # a predictor makes all of a gap's slices at once
    return opts.n_steps * math.ceil(n_items * len(plan) / opts.batch)


def _sample_block(
    m: EMDiffuseModel,
    vol: Any,
    z: int,
    ry: slice,
    rx: slice,
    *,
    factor: int,
    norm: NormInfo,
    opts: SamplingOptions,
    device: torch.device,
    progress: tuple[int, int] | None = None,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]:
    """Generate the ``factor - 1`` slices between z and z+1 over the region (ry, rx).

    Returns the two measured slices (input dtype), the model-range mean of the new slices
    (factor-1, h, w) and their std over samples (or from the model's variance) or None.
    """
    lo = owned_array(vol[z, ry, rx])
    hi = owned_array(vol[z + 1, ry, rx])
    check_finite(lo, f"slice {z}")
    check_finite(hi, f"slice {z + 1}")
    h, w = lo.shape
    mult = m.card.network.size_multiple
    cond = np.stack([to_model(lo, norm), to_model(hi, norm)])  # lower z first, as trained
    cond = pad_to(cond, canvas_size(h, mult), canvas_size(w, mult))
    cond_t = torch.from_numpy(np.ascontiguousarray(cond))[None].to(device)
    k = opts.samples
    items = [Item(cond=0, stream=(z, j, s), slice_index=j - 1) for j in range(1, factor) for s in range(k)]
    offset, total = progress or (0, None)
    gen = sample_canvas(
        m, cond_t, items, opts, origin=(ry.start, rx.start), progress_offset=offset, progress_total=total
    )
    try:
        while True:
            ev = next(gen)
            if ev.stage == "sampling":  # the sampler's own per-slab step events would restart at 0
                ev.message = f"slab {z + 1}/{vol.shape[0] - 1}"
                yield ev
    except StopIteration as stop:
        samples, variance = stop.value
    finally:
        gen.close()
    samples = samples[:, :h, :w].numpy().reshape(factor - 1, k, h, w)
    mean = samples.mean(axis=1)
    if variance is not None:
        variance = variance[:, :h, :w].numpy().reshape(factor - 1, k, h, w)
    std = [combined_std(samples[j], None if variance is None else variance[j]) for j in range(factor - 1)]
    return lo, hi, mean, (None if std[0] is None else np.stack(std))


def _measured(raw: np.ndarray, dtype: np.dtype) -> np.ndarray:
    # Measured slices go out untouched when the dtype allows; otherwise they are cast once.
    return raw if raw.dtype == dtype else to_dtype(raw.astype(np.float64), dtype)


def _write_block(
    dst: Any,
    unc: Any | None,
    z: int,
    ys: tuple[slice, slice, slice],
    xs: tuple[slice, slice, slice],
    parts: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None],
    *,
    nz: int,
    factor: int,
    norm: NormInfo,
    dtype: np.dtype,
) -> None:
    """Write output slices z*factor .. z*factor+factor-1 (and the last measured slice after
    the last slab) of one block. Each task owns its chunks, so tasks never collide."""
    lo, hi, mean, std = parts
    (_, wy, cy), (_, wx, cx) = ys, xs
    last = z == nz - 2
    n = factor + (1 if last else 0)
    out = np.empty((n, wy.stop - wy.start, wx.stop - wx.start), dtype=dtype)
    out[0] = _measured(lo[cy, cx], dtype)
    for j in range(1, factor):  # slice by slice: float64 copies stay one slice large
        out[j] = to_dtype(from_model(mean[j - 1, cy, cx], norm), dtype)
    if last:
        out[factor] = _measured(hi[cy, cx], dtype)
    dst[z * factor : z * factor + n, wy, wx] = out
    if unc is not None:
        u = np.zeros(out.shape, dtype=np.float32)
        if std is not None:
            u[1:factor] = std_from_model(std[:, cy, cx], norm)
        unc[z * factor : z * factor + n, wy, wx] = u


def _fit_volume_norm(m: EMDiffuseModel, vol: Any) -> NormInfo:
    """The card's rule fitted on a strided subsample of evenly spaced slices.

    At most NORM_SAMPLE_VALUES values are read, whatever the volume's size."""
    nz, h, w = vol.shape
    zs = np.unique(np.linspace(0, nz - 1, min(nz, NORM_SAMPLE_SLICES)).round().astype(int))
    per_slice = max(1, NORM_SAMPLE_VALUES // len(zs))
    stride = max(1, math.ceil(math.sqrt(h * w / per_slice)))
    per = math.ceil(h / stride) * math.ceil(w / stride)
    values = np.empty(len(zs) * per, dtype=np.float64)  # filled in place: no list + concatenate copy
    n = 0
    for z in zs:
        sub = vol[int(z), ::stride, ::stride]
        sub = np.asarray(sub.compute() if hasattr(sub, "compute") else sub).ravel()
        if sub.dtype.kind == "f":
            sub = sub[np.isfinite(sub)]
        values[n : n + sub.size] = sub
        n += sub.size
    values = values[:n]
    if values.size == 0:
        raise InputError("volume is all NaN/Inf; nothing to reconstruct")
    return fit_normalisation(values, m.card.normalisation, adapt_range=True)


# ----------------------------------------------------------------------------------------------
# distributed execution


@dataclass(frozen=True)
class _BlockJob:
    """Everything a worker needs for one block task (picklable)."""

    model: str
    arch: str | None
    device: str
    src: str
    src_key: str
    dst: str
    unc: str | None
    z: int
    ys: tuple[slice, slice, slice]
    xs: tuple[slice, slice, slice]
    nz: int
    factor: int
    norm: NormInfo
    opts: SamplingOptions
    dtype: str


def _run_block_task(job: _BlockJob) -> tuple[int, int, int]:
    """Run one block task in a worker: read its slices, sample, write into the shared store."""
    import zarr

    m = worker_model(job.model, job.arch, job.device)
    src = zarr.open_array(job.src, path=job.src_key, mode="r") if job.src_key else zarr.open_array(job.src, mode="r")
    parts = drain(
        _sample_block(
            m, src, job.z, job.ys[0], job.xs[0], factor=job.factor, norm=job.norm, opts=job.opts, device=m.device
        )
    )
    dst = open_zarr_for_block_writes(job.dst)
    unc = open_zarr_for_block_writes(job.unc) if job.unc else None
    _write_block(dst, unc, job.z, job.ys, job.xs, parts, nz=job.nz, factor=job.factor, norm=job.norm, dtype=np.dtype(job.dtype))
    return job.z, job.ys[1].start, job.xs[1].start




def _run_distributed(
    vol: Any,
    layout: _Layout,
    spec: tuple[str, str | None],
    *,
    device: str,
    out: Path,
    unc_out: Path | None,
    writer_kw: dict,
    norm: NormInfo,
    opts: SamplingOptions,
    dtype: np.dtype,
    workers: int | None,
    scheduler: str | None,
    staged_input: Path,
    cleanup: list[Path],
) -> Generator[Progress, None, tuple[Any, Any]]:
    loc = zarr_location(vol)
    if loc is None:
        cleanup.append(staged_input)  # before writing: a failed copy is removed too
        loc = (stage_input(vol, staged_input, layout.chunks), "")
    wr = ZarrWriter(out, layout.out_shape, dtype, **writer_kw)
    unc_wr = None
    try:
        if unc_out is not None:
            kw = {**writer_kw, "attrs": {"what": "uncertainty (std over samples)", **writer_kw.get("attrs", {})}}
            unc_wr = ZarrWriter(unc_out, layout.out_shape, np.float32, **kw)
        jobs = [
            _BlockJob(
                model=spec[0], arch=spec[1], device=device, src=loc[0], src_key=loc[1], dst=str(wr.temp_path),
                unc=str(unc_wr.temp_path) if unc_wr is not None else None, z=z, ys=layout.ys[iy], xs=layout.xs[ix],
                nz=layout.nz, factor=layout.factor, norm=norm, opts=opts, dtype=dtype.str,
            )
            for z, iy, ix in layout.jobs()
        ]
        yield from run_tasks(_run_block_task, jobs, workers=workers, scheduler=scheduler, name="isotropic")
        if unc_wr is not None:
            unc_wr.commit()
        wr.commit()
        return wr.array, (unc_wr.array if unc_wr is not None else None)
    finally:
        if unc_wr is not None:
            unc_wr.abort()  # no-op after commit
        wr.abort()


# ----------------------------------------------------------------------------------------------
# the pipeline


def reconstruct_isotropic_iter(
    volume: Any,
    factor: int | None = None,
    model: "str | Path | EMDiffuseModel | None" = None,
    *,
    mode: str = "i",
    arch: str | None = None,
    preset: str = "fast",
    steps: int | None = None,
    samples: int | None = None,
    sampler: str | None = None,
    eta: float | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    batch: int | None = None,
    block: int = DEFAULT_BLOCK,
    seed: int = 0,
    device: str = "auto",
    spacing: Sequence[float] | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = True,
    uncertainty: bool | str | os.PathLike = False,
    dtype: Any = None,
    precision: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
) -> Generator["Progress | IsotropicResult", None, None]:
    """Reconstruct an isotropic volume, yielding :class:`Progress` events and finally an
    :class:`IsotropicResult`.

    Closing the generator cancels the work at the next tile batch (in-process) or cancels
    the outstanding block tasks (distributed); a zarr output is then removed, never left
    half-written. See :func:`reconstruct_isotropic` for the parameters.
    """
    task = _check_mode(mode)
    if isinstance(volume, (str, os.PathLike)):
        data = read_image(volume)
        volume = data.data
        if spacing is None and data.spacing is not None and len(data.spacing) == 3:
            spacing = data.spacing
    vol = _check_volume(volume)
    spacing = _check_spacing(spacing)
    _check_workers(workers, scheduler)
    distributed = workers is not None or scheduler is not None
    out_path = _check_out(out)
    if out_path is not None and out_path.exists() and not overwrite:
        raise InputError(f"cannot write '{out_path}': it already exists")
    if distributed and out_path is None:
        raise InputError("a distributed run (workers= or scheduler=) writes into a zarr store; pass out='....zarr'")
    unc_path = _uncertainty_path(uncertainty, out_path)
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise InputError(f"block must be a positive number of pixels, got {block!r}")
    if factor is not None:
        f = _check_factor(factor)
    elif spacing is not None:
        f = factor_from_spacing(spacing)
    else:
        raise InputError("say how much finer z should become: pass factor= or the voxel spacing (z, y, x)")
    try:
        out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(vol.dtype)
    except TypeError:
        raise InputError(f"unknown output dtype {dtype!r}") from None
    if out_dtype.kind == "b":
        out_dtype = np.dtype(np.uint8)
    if out_dtype.kind not in "uif":
        raise InputError(f"output dtype must be an integer or float type, got {out_dtype}")

    if distributed:
        # Workers load the model themselves; here it only answers questions. A device this
        # machine lacks may exist on the workers, so fall back to the CPU for the options.
        try:
            dev = resolve_device(device)
        except EMDiffuseError:
            dev = torch.device("cpu")
        m = load_model(model, task=task, arch=arch, device="cpu")
    else:
        dev = resolve_device(device)
        m = load_model(model, task=task, arch=arch, device=dev)
    _check_model(m, f)
    opts = resolve_options(
        m, dev, preset=preset, sampler=sampler, steps=steps, samples=samples, eta=eta, tile=tile,
        overlap=overlap, batch=batch, seed=seed, precision=precision,
    )  # fmt: skip
    aleatoric = bool(getattr(m.unet, "aleatoric", False))
    if uncertainty and opts.samples < 2 and not aleatoric:
        raise InputError("uncertainty needs at least 2 samples; pass samples=2 or more (or preset='balanced')")
    want_std = bool(uncertainty)

    if isinstance(vol, np.ndarray):
        check_finite(vol, "volume")
    norm = _fit_volume_norm(m, vol)
    layout = _Layout.make(tuple(vol.shape), f, block, opts)
    nz = vol.shape[0]
    out_spacing = (spacing[0] / f, spacing[1], spacing[2]) if spacing is not None else None
    info = {
        **run_info(m, opts, dev),
        "mode": mode,
        "factor": f,
        "block": layout.chunks[1:],
        "normalisation": norm.as_dict(),
        "workers": scheduler if scheduler is not None else workers,
    }
    writer_kw = dict(chunks=layout.chunks, spacing=out_spacing, axes="ZYX", attrs=info, overwrite=overwrite)

    if distributed:
        assert out_path is not None
        tag = secrets.token_hex(4)
        cleanup: list[Path] = []
        try:
            model_dir = out_path.with_name(f".{out_path.name}.model-{tag}")
            spec, spec_arch, wrote = model_spec(model, m, task, arch, model_dir)
            if wrote:
                cleanup.append(model_dir)
            arr, unc = yield from _run_distributed(
                vol, layout, (spec, spec_arch), device=str(device), out=out_path, unc_out=unc_path,
                writer_kw=writer_kw, norm=norm, opts=opts, dtype=out_dtype, workers=workers,
                scheduler=scheduler, staged_input=out_path.with_name(f".{out_path.name}.input-{tag}.zarr"),
                cleanup=cleanup,
            )  # fmt: skip
        finally:
            for p in cleanup:
                shutil.rmtree(p, ignore_errors=True)
        yield IsotropicResult(arr, unc, f, out_spacing, info, out_path, unc_path)
        return

    jobs = layout.jobs()
    n_items = (f - 1) * opts.samples
    costs = [
        _block_batches(m, (ys[0].stop - ys[0].start, xs[0].stop - xs[0].start), n_items, opts)
        for ys, xs in ((layout.ys[iy], layout.xs[ix]) for _, iy, ix in jobs)
    ]
    total = sum(costs)

    def run(dst: Any, unc: Any) -> Generator[Progress, None, None]:
        offset = 0
        for (z, iy, ix), cost in zip(jobs, costs):
            ys, xs = layout.ys[iy], layout.xs[ix]
            parts = yield from _sample_block(
                m, vol, z, ys[0], xs[0], factor=f, norm=norm, opts=opts, device=dev, progress=(offset, total)
            )
            _write_block(dst, unc, z, ys, xs, parts, nz=nz, factor=f, norm=norm, dtype=out_dtype)
            offset += cost

    if out_path is None:
        result = np.empty(layout.out_shape, dtype=out_dtype)
        unc_arr = np.zeros(layout.out_shape, dtype=np.float32) if want_std else None
        yield from run(result, unc_arr)
        yield IsotropicResult(result, unc_arr, f, out_spacing, info)
        return

    with ZarrWriter(out_path, layout.out_shape, out_dtype, **writer_kw) as wr:
        unc_wr = None
        try:
            if unc_path is not None:
                unc_wr = ZarrWriter(unc_path, layout.out_shape, np.float32, **writer_kw)
            yield from run(wr.array, unc_wr.array if unc_wr is not None else None)
            if unc_wr is not None:
                unc_wr.commit()
        except BaseException:
            if unc_wr is not None:
                unc_wr.abort()
            raise
    yield IsotropicResult(
        wr.array, unc_wr.array if unc_wr is not None else None, f, out_spacing, info, out_path, unc_path
    )


def reconstruct_isotropic(
    volume: Any,
    factor: int | None = None,
    model: "str | Path | EMDiffuseModel | None" = None,
    **options: Any,
) -> IsotropicResult:
    """Make an anisotropic EM volume isotropic with vEMDiffuse.

    Between every two neighbouring slices, ``factor - 1`` new slices are generated by a
    conditional diffusion model that sees the two measured slices. The measured slices are
    kept exactly; the output has ``(Z - 1) * factor + 1`` slices and z spacing divided by
    ``factor``.

    Parameters
    ----------
    volume : array-like or path
        ZYX volume: numpy, dask or zarr array, or a TIFF/zarr path (its spacing is used
        when ``spacing`` is not given); any real dtype; at least 2 slices. Never modified.
    factor : int, optional
        How many times finer z becomes (>= 2). Default: from ``spacing``, z over the mean
        lateral spacing, which must be within 5% of a whole number.
    model : str, Path or EMDiffuseModel, optional
        A bundled or user model name, a model directory or zip, or a published vEMDiffuse
        checkpoint (``.pth`` with ``arch=``). Default: the bundled ``demo-isotropic``.
    mode : {"i", "a"}
        ``i``: a model trained on isotropic data (vEMDiffuse-i); ``a``: one trained on the
        lateral planes of the anisotropic volume itself (vEMDiffuse-a). Both run along z.
    arch : str, optional
        Architecture of a published checkpoint (vEMDiffuse-i, vEMDiffuse-a).
    preset : {"fast", "balanced", "reference"}
        As in :func:`~.restore.restore`; ``steps``, ``samples``, ``sampler``, ``eta``
        override it.
    tile, overlap, batch : int, optional
        Tile edge, tile overlap and tiles per network call.
    block : int
        Lateral block edge of the block tasks and of the output chunks (default 2048).
    seed : int
        Noise seed; noise is seeded by (seed, slab, slice, sample, position), so the result
        does not depend on tiles, batches, blocks' order or worker count.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    spacing : tuple of 3 floats, optional
        Voxel size (z, y, x); gives ``factor`` when that is not set, and the result's spacing.
    out : str or Path, optional
        A ``.zarr`` store to stream the result into (chunks of one slice); it appears only
        when complete. Needed for distributed runs.
    overwrite : bool
        Replace an existing ``out`` when finished (default True).
    uncertainty : bool or path
        Also return the pixel-wise std over the samples (needs ``samples >= 2``). With
        ``out`` it goes to ``<out>_uncertainty.zarr`` or the path given here.
    dtype : numpy dtype, optional
        Output dtype; default the input's.
    workers : int, optional
        Run the block tasks on a local dask cluster of this many processes.
    scheduler : str, optional
        Run them on an existing dask cluster (``tcp://host:port``); the input, ``out`` and
        the model must be on storage the workers can reach.

    Returns
    -------
    IsotropicResult

    Raises
    ------
    InputError
        2D input, fewer than 2 slices, a bad factor or spacing, a factor the model was not
        trained for, NaN/Inf voxels, an unusable output path.
    EMDiffuseError
        A model made for another task, unknown options.

    Examples
    --------
    >>> import numpy as np
    >>> stack = (np.random.default_rng(0).random((3, 64, 64)) * 255).astype(np.uint8)
    >>> result = reconstruct_isotropic(stack, factor=4, steps=2)  # doctest: +SKIP
    >>> result.volume.shape, result.volume.dtype  # doctest: +SKIP
    ((9, 64, 64), dtype('uint8'))
    >>> bool((result.volume[::4] == stack).all())  # doctest: +SKIP
    True
    """
    return drain(reconstruct_isotropic_iter(volume, factor, model, **options))
