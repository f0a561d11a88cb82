"""The public API: restore, reconstruct_isotropic, finetune, and the model registry.

Each job has one typed options dataclass (:class:`RestoreOptions`, :class:`ZarrOptions`,
:class:`IsotropicOptions`, :class:`FinetuneOptions`). Pass one as ``options=``, or give its
fields as keywords (they override ``options``); an unknown keyword is refused with the list
of valid ones. Values are checked by the engine, with one-line reasons
(:class:`~napari_emdiffuse.engine.errors.InputError`).

Every long job has a generator form (``*_iter``) that yields
:class:`~napari_emdiffuse.engine.events.Progress` events and ends with the result; closing
it cancels the job. The CLI and the napari widgets drive these same generators.

Examples
--------
>>> import numpy as np
>>> import napari_emdiffuse as emd
>>> noisy = (np.random.default_rng(0).random((128, 128)) * 255).astype(np.uint8)
>>> result = emd.restore(noisy, "denoise", preset="balanced")
>>> result.mean.shape, result.mean.dtype, result.uncertainty.dtype
((128, 128), dtype('uint8'), dtype('float32'))
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Generator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from .engine.errors import EMDiffuseError
from .engine.events import Progress, drain
from .engine.inference.blocks import DEFAULT_BLOCK
from .engine.inference.restore import Restoration
from .engine.inference.restore import restore_iter as _restore_iter
from .engine.inference.restore import restore_to_zarr_iter as _restore_to_zarr_iter
from .engine.inference.volume import IsotropicResult
from .engine.inference.volume import reconstruct_isotropic_iter as _reconstruct_isotropic_iter
from .engine.models.model import EMDiffuseModel
from .engine.models.registry import list_models, load_model, register_model
from .engine.parallel.runner import Cluster
from .engine.training.config import TrainConfig
from .engine.training.finetune import finetune_iter as _finetune_iter
from .engine.training.finetune import train, train_iter

__all__ = [
    "RestoreOptions",
    "ZarrOptions",
    "IsotropicOptions",
    "FinetuneOptions",
    "restore",
    "restore_iter",
    "restore_to_zarr",
    "restore_to_zarr_iter",
    "reconstruct_isotropic",
    "reconstruct_isotropic_iter",
    "finetune",
    "finetune_iter",
    "train",
    "train_iter",
    "load_model",
    "list_models",
    "register_model",
    "Cluster",
]

ModelLike = Union[str, os.PathLike, EMDiffuseModel, None]
Preset = Literal["fast", "balanced", "reference"]


@dataclass(frozen=True, kw_only=True)
class SamplingChoice:
    """What every restoration job shares: the model's architecture (published checkpoints),
    the preset and its overrides, tiling, device and precision.

    Attributes
    ----------
    arch : str, optional
        Architecture of a published ``.pth`` checkpoint (EMDiffuse-n, EMDiffuse-r,
        vEMDiffuse-i, vEMDiffuse-a).
    preset : {"fast", "balanced", "reference"}
        ``fast``: one pass of a predictor (or a few-step sampler, one sample).
        ``balanced``: 4 mirrored views or 4 samples, with uncertainty. ``reference``: the
        published 1000-step DDPM sampler (diffusion models).
    steps, samples, sampler, eta : optional
        Override the preset (samplers ``ddim``, ``dpm++``, ``ddpm``).
    tile, overlap, batch : int, optional
        Tile edge, overlap between tiles, tiles per network call (default: the card's and
        the device's).
    block : int
        Block edge in input pixels (2048): the most the sampler holds at once; halved
        automatically when a block does not fit the GPU.
    seed : int
        Noise seed. Noise is drawn per position, so tiles, batches, blocks and workers do
        not change the result.
    device : str
        ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    precision : {"fp32", "bf16", "fp16"}, optional
        The network's arithmetic; fp32 unless asked.
    dtype : numpy dtype, optional
        Output dtype; default the input's.
    """

    arch: str | None = None
    preset: Preset = "fast"
    steps: int | None = None
    samples: int | None = None
    sampler: Literal["ddim", "dpm++", "ddpm"] | None = None
    eta: float | None = None
    tile: int | None = None
    overlap: int | None = None
    batch: int | None = None
    block: int = DEFAULT_BLOCK
    seed: int = 0
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16"] | None = None
    dtype: Any = None


@dataclass(frozen=True, kw_only=True)
class RestoreOptions(SamplingChoice):
    """Options of :func:`restore`: those of :class:`SamplingChoice`, plus

    Attributes
    ----------
    spacing : tuple of float, optional
        Input pixel size per axis; the result's is divided by the scale (super-resolution).
    flips : bool, optional
        Mirror ensemble (views 2-4 mirrored and mirrored back); default on for ``balanced``.
    start_log_snr : float, optional
        Diffusion models: start sampling from a noised copy of the input at this level
        instead of pure noise (fewer steps); default the card's.
    refine : bool, optional
        Predictors with a refiner (predict, then refine): sample the residual around the
        mean. Default: for the presets the model card lists (``reference``).
    blur : float or {"auto", "area"}, optional
        Super-resolution with a model told the acquisition (the bundled one): ``"area"`` for
        a detector that averages each pixel (binning), or the width (std, output pixels,
        0-2) of the Gaussian probe of a scan. Default ``"auto"``: read off the image once
        (the value used is in ``Restoration.info["blur"]``).
    z_filter : {"auto", "off"} or float
        Denoising a stack: average the restored slices along z with a Gaussian of this width
        (std, in slices, 0-3; 0 is off). ``"auto"`` (default) does so only where the input's
        neighbouring slices look alike (FIB-SEM, block-face SEM with near-isotropic voxels;
        not serial-section TEM), choosing the width (0.3-1 slices) by cross-validation along
        z; the width used is in ``Restoration.info["z_filter"]``. Each restored slice's error
        is its own, so averaging alike slices removes part of it: +1.3 dB on a near-isotropic
        FIB-SEM stack at dose 30.
    channels_last, compile : bool
        GPU speed-ups: channels-last memory layout; ``torch.compile`` of the network.
    uncertainty : bool
        Keep the per-pixel uncertainty where the model gives one (default). False leaves
        ``Restoration.uncertainty`` None and saves its memory (4 bytes a pixel) when only the
        image is wanted. A zarr run writes it where ``uncertainty_out`` is given.
    region : tuple, optional
        Restore only these rows and columns (input pixels) of the image, or of every slice of
        a stack: ``(y0, y1, x0, x1)`` or two slices. The normalisation is fitted on the whole
        image and the region is restored by the whole image's tiles that reach it, so the
        result (the region's size, times the scale) is what a whole-image run gives there: a
        quick look at a large image's result before the whole run, or, with
        :func:`restore_to_zarr`, a part of a terabyte volume of any size.
    origin : tuple of float, optional
        Where the input's first pixel centre lies, per axis, in the units of ``spacing``
        (a napari layer's ``translate``). The result's ``origin`` places it over the input:
        moved to a ``region``'s first row and column and, for super-resolution, a quarter of
        an input pixel back (the finer grid's first pixel centre); a zarr output records it
        as its ``origin`` and OME-NGFF translation.
    """

    spacing: tuple[float, ...] | None = None
    origin: tuple[float, ...] | None = None
    flips: bool | None = None
    start_log_snr: float | None = None
    refine: bool | None = None
    blur: float | str | None = None
    z_filter: float | str = "auto"
    channels_last: bool = False
    compile: bool = False
    uncertainty: bool = True
    region: tuple | None = None


@dataclass(frozen=True, kw_only=True)
class ZarrOptions(RestoreOptions):
    """Options of :func:`restore_to_zarr`: those of :class:`RestoreOptions`, plus

    Attributes
    ----------
    uncertainty_out : path, optional
        A second ``.zarr`` store for the per-pixel uncertainty.
    overwrite : bool
        Replace an existing output once the new one is complete (default True).
    workers : int, optional
        Run the blocks on a new local dask cluster of this many processes (one GPU each).
    scheduler : str, optional
        Run them on an existing dask cluster: its address (``tcp://host:port``), or the file
        its scheduler wrote (``dask scheduler --scheduler-file sched.json``, as HPC jobs pass it).
    resume : bool
        Keep the finished blocks of a run that fails or is stopped (in an unfinished store
        beside ``out``), and continue an earlier such run of the same input, model and
        options from its finished blocks. The output still appears only when complete.
    zarr_format : {2, 3}
        2 (default): one file per block, which every zarr reader opens. 3: zarr v3 (OME-Zarr
        0.5 for a ``.ome.zarr`` name), each block one shard of 512-px chunks, so that viewers
        read a part of a block without the whole of it (needs zarr-python 3).
    """

    uncertainty_out: str | os.PathLike | None = None
    overwrite: bool = True
    workers: int | None = None
    scheduler: str | None = None
    resume: bool = False
    zarr_format: Literal[2, 3] = 2


@dataclass(frozen=True, kw_only=True)
class IsotropicOptions(SamplingChoice):
    """Options of :func:`reconstruct_isotropic`: those of :class:`SamplingChoice`, plus

    Attributes
    ----------
    mode : {"i", "a"}
        ``i``: a model trained on isotropic data (vEMDiffuse-i); ``a``: one trained on the
        volume's own lateral planes (vEMDiffuse-a).
    spacing : tuple of 3 floats, optional
        Voxel size (z, y, x): gives the factor when none is given, and the result's spacing.
    out : path or URL, optional
        A ``.zarr`` store to stream the result into; it appears only when complete. A name
        ending in ``.ome.zarr`` adds the pyramid (OME-Zarr), as in :func:`restore_to_zarr`;
        a URL of an object store as there.
    overwrite : bool
        Replace an existing ``out`` once the new one is complete (default True).
    uncertainty : bool or path
        Also return the per-voxel uncertainty; with ``out``, written to
        ``<out>_uncertainty.zarr`` or the path given.
    workers, scheduler, resume, zarr_format
        As in :class:`ZarrOptions` (needs ``out``).
    denoise : bool, str, path or EMDiffuseModel, optional
        Denoise the measured slices first (one pass of a denoising model, its mirrored
        views with ``preset="balanced"``; ``True`` for the bundled one) and generate the new slices from the denoised ones; the output's
        measured slices are then the denoised ones. For noisy volumes: interpolating noise
        gives noisy new slices (``benchmarks/isotropic.py --doses``). With ``out``, the
        denoised slices go to a temporary zarr store beside it (as large as the input),
        removed at the end.
    region : tuple, optional
        Reconstruct only these rows and columns (input pixels) of every slice: ``(y0, y1, x0,
        x1)`` or two slices, normalised as the whole volume and made by its tiles that reach
        them, as in the whole run: a quick look at a large volume's result, or with ``out``
        a part of any size.
    origin : tuple of 3 floats, optional
        Where the input's first voxel centre lies (z, y, x), in the units of ``spacing``; the
        result's is moved to a ``region``'s first row and column (and recorded in ``out``).
        A volume read from a file brings its own.
    """

    mode: Literal["i", "a"] = "i"
    spacing: tuple[float, float, float] | None = None
    out: str | os.PathLike | None = None
    overwrite: bool = True
    uncertainty: bool | str | os.PathLike = False
    workers: int | None = None
    scheduler: str | None = None
    resume: bool = False
    zarr_format: Literal[2, 3] = 2
    denoise: bool | str | os.PathLike | EMDiffuseModel | None = None
    region: tuple | None = None
    origin: tuple[float, float, float] | None = None


@dataclass(frozen=True, kw_only=True)
class FinetuneOptions:
    """Options of :func:`finetune`.

    Attributes
    ----------
    out : path
        Model directory to write (required).
    base : str or path, optional
        Model to start from; default the bundled model of the task.
    iterations, patch, batch : int
        Training length (200), crop edge (64) and crops per step (8).
    lr : float, optional
        Learning rate; default 5e-4 for predictors denoising from pairs, 2e-4 for other
        predictors, 1e-5 self-supervised, 5e-5 diffusion.
    val_fraction : float
        The bottom fraction of the images held back for validation (0.1).
    seed : int
    device : str
    precision : {"auto", "fp32", "bf16"}
        The training steps' arithmetic: ``auto`` (default) is bf16 mixed precision where the
        device has native bf16 (a CUDA GPU of compute capability 8+, a CPU with AVX512-BF16 or
        AMX: 1.45x faster on 2 such CPU cores, the same validation), else fp32.
    freeze_encoder : bool
        Train the decoder only.
    factor : int, optional
        Isotropic tasks: slices per gap (default the base model's).
    objective : {"supervised", "self-supervised", "neighbour-slices"}, optional
        Default for denoising without a target: self-supervised (a blind spot); with a target,
        supervised. neighbour-slices: each slice of a stack whose neighbouring slices are alike
        learns from the mean of its two neighbours (restoring then averages along z twice over:
        the blind spot did better after ``z_filter``).
    extra : dict
        Any other :class:`~napari_emdiffuse.engine.training.config.TrainConfig` field.
    """

    out: str | os.PathLike | None = None
    base: str | os.PathLike | None = None
    iterations: int = 200
    patch: int = 64
    batch: int = 8
    lr: float | None = None
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    freeze_encoder: bool = False
    factor: int | None = None
    objective: Literal["supervised", "self-supervised", "neighbour-slices"] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


T = TypeVar("T")


def _options(cls: type[T], options: T | None, overrides: dict[str, Any]) -> T:
    """``options`` (or the defaults) with ``overrides`` applied; unknown names refused."""
    if options is not None and not isinstance(options, cls):
        raise EMDiffuseError(f"options must be a {cls.__name__}, got {type(options).__name__}")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    for key in overrides:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(sorted(names))}"
            raise EMDiffuseError(f"unknown option {key!r} for {cls.__name__}{hint}")
    base = options if options is not None else cls()
    return replace(base, **overrides)  # type: ignore[type-var]


def _distribute(opts: ZarrOptions | IsotropicOptions) -> Cluster | None:
    if opts.workers is None and opts.scheduler is None:
        return None
    return Cluster(workers=opts.workers, scheduler=opts.scheduler)


def _engine_kwargs(opts: Any, *drop: str) -> dict[str, Any]:
    # not dataclasses.asdict: that deep-copies, and arrays or models may ride along
    return {f.name: getattr(opts, f.name) for f in fields(opts) if f.name not in drop}


def restore_iter(
    image: Any, task: str = "denoise", model: ModelLike = None, *, options: RestoreOptions | None = None, **overrides: Any
) -> Generator[Progress | Restoration, None, None]:
    """:func:`restore` as a generator: :class:`Progress` events, then the :class:`Restoration`."""
    opts = _options(RestoreOptions, options, overrides)
    return _restore_iter(image, task, model, **_engine_kwargs(opts))


def restore(
    image: Any, task: str = "denoise", model: ModelLike = None, *, options: RestoreOptions | None = None, **overrides: Any
) -> Restoration:
    """Denoise or super-resolve an EM image or stack.

    Parameters
    ----------
    image : array-like
        2D (YX) image or 3D (ZYX) stack, restored plane by plane; numpy, dask or zarr; any
        real dtype; any size from 1x1. Never modified.
    task : {"denoise", "super-resolve"}
        What to do; the model must be made for it.
    model : str, path or EMDiffuseModel, optional
        A bundled or registered model name, a model directory or bioimage.io zip, or a
        published checkpoint (``.pth`` with ``arch=``). Default: the bundled model of the task.
    options : RestoreOptions, optional
        All options at once.
    **overrides
        Any :class:`RestoreOptions` field, e.g. ``preset="balanced"``.

    Returns
    -------
    Restoration
        ``mean`` (input dtype unless ``dtype``), ``uncertainty`` (float32, input units, or
        None), ``scale``, ``spacing``, ``normalisation`` and ``info`` (what was run).

    Raises
    ------
    InputError
        Unusable input (Inf pixels, nothing but NaN, wrong number of dimensions, bad option values).
    EMDiffuseError
        Unknown option, model or task; a model made for another task.

    Examples
    --------
    >>> import numpy as np
    >>> noisy = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    >>> result = restore(noisy, "denoise")
    >>> result.mean.shape, result.mean.dtype
    ((64, 64), dtype('uint8'))
    >>> restore(noisy, "denoise", preset="quick")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.EMDiffuseError: unknown preset 'quick'; choose one of fast, balanced, reference
    """
    return drain(restore_iter(image, task, model, options=options, **overrides))


def restore_to_zarr_iter(
    image: Any,
    out: str | os.PathLike,
    task: str = "denoise",
    model: ModelLike = None,
    *,
    options: ZarrOptions | None = None,
    **overrides: Any,
) -> Generator[Progress | Path, None, None]:
    """:func:`restore_to_zarr` as a generator: :class:`Progress` events, then the path."""
    opts = _options(ZarrOptions, options, overrides)
    kw = _engine_kwargs(opts, "workers", "scheduler", "uncertainty")  # uncertainty_out says it here
    return _restore_to_zarr_iter(image, out, task, model, distribute=_distribute(opts), **kw)


def restore_to_zarr(
    image: Any,
    out: str | os.PathLike,
    task: str = "denoise",
    model: ModelLike = None,
    *,
    options: ZarrOptions | None = None,
    **overrides: Any,
) -> Path:
    """Restore an image or stack of any size block by block into a ``.zarr`` store.

    Memory is bounded by one block; the store appears at ``out`` only when complete. With
    ``workers`` or ``scheduler`` the blocks run on dask workers (one GPU each on a local
    cluster), and so does the average along z of an alike stack (``z_filter``); the pixels
    are the same as in one process, and as :func:`restore` gives.

    Parameters
    ----------
    image : array-like
        As in :func:`restore`; a zarr array on disk is read by the workers directly, any
        other input is first copied into a temporary store beside ``out``.
    out : path or URL
        The ``.zarr`` store to write; a name ending in ``.ome.zarr`` makes an OME-Zarr store:
        the result in ``"0"`` and its pyramid of 2x2 means below it, with OME-NGFF metadata.
        A URL (``s3://bucket/out.zarr``: an object store) gets the store once it is whole
        (written under a hidden prefix, then copied there metadata last); it must not exist
        yet, and ``resume`` needs a folder.
    task, model
        As in :func:`restore`.
    options : ZarrOptions, optional
    **overrides
        Any :class:`ZarrOptions` field.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import numpy as np
    >>> image = (np.random.default_rng(0).random((2, 96, 96)) * 255).astype(np.uint8)
    >>> path = restore_to_zarr(image, "out.zarr", block=64)  # doctest: +SKIP
    """
    return drain(restore_to_zarr_iter(image, out, task, model, options=options, **overrides))


def reconstruct_isotropic_iter(
    volume: Any,
    factor: int | None = None,
    model: ModelLike = None,
    *,
    options: IsotropicOptions | None = None,
    **overrides: Any,
) -> Generator[Progress | IsotropicResult, None, None]:
    """:func:`reconstruct_isotropic` as a generator: :class:`Progress` events, then the result."""
    opts = _options(IsotropicOptions, options, overrides)
    kw = _engine_kwargs(opts, "workers", "scheduler")
    return _reconstruct_isotropic_iter(volume, factor, model, distribute=_distribute(opts), **kw)


def reconstruct_isotropic(
    volume: Any,
    factor: int | None = None,
    model: ModelLike = None,
    *,
    options: IsotropicOptions | None = None,
    **overrides: Any,
) -> IsotropicResult:
    """Make an anisotropic EM volume isotropic (vEMDiffuse).

    Between every two neighbouring slices, ``factor - 1`` new slices are generated from the
    two measured ones. The measured slices are kept exactly (or denoised first, with
    ``denoise``); the output has
    ``(Z - 1) * factor + 1`` slices and its z spacing is divided by ``factor``.

    Parameters
    ----------
    volume : array-like or path
        ZYX volume (numpy, dask, zarr, or a TIFF, MRC or zarr path whose voxel size is used); at
        least 2 slices; any real dtype. Never modified.
    factor : int, optional
        How many times finer z becomes (>= 2); default from ``spacing``.
    model : str, path or EMDiffuseModel, optional
        Default: the bundled ``demo-isotropic`` at factor 3, else ``demo-isotropic-any``
        (one model for every factor).
    options : IsotropicOptions, optional
    **overrides
        Any :class:`IsotropicOptions` field.

    Returns
    -------
    IsotropicResult

    Examples
    --------
    >>> import numpy as np
    >>> stack = (np.random.default_rng(0).random((3, 64, 64)) * 255).astype(np.uint8)
    >>> result = reconstruct_isotropic(stack, factor=3)
    >>> result.volume.shape, bool((result.volume[::3] == stack).all())
    ((7, 64, 64), True)
    """
    return drain(reconstruct_isotropic_iter(volume, factor, model, options=options, **overrides))


def finetune_iter(
    task: str, input: Any, target: Any = None, *, options: FinetuneOptions | None = None, **overrides: Any
) -> Generator[Progress | Path, None, None]:
    """:func:`finetune` as a generator: :class:`Progress` events (with validation PSNR
    against the base model's), then the model directory."""
    train_fields = set(TrainConfig.model_fields)
    own = {f.name for f in fields(FinetuneOptions)}
    extra = {k: overrides.pop(k) for k in list(overrides) if k not in own and k in train_fields}
    opts = _options(FinetuneOptions, options, overrides)
    if opts.out is None:
        raise EMDiffuseError("say where to write the fine-tuned model: out='my-model'")
    kw = _engine_kwargs(opts, "extra")
    return _finetune_iter(task, input, target, **kw, **{**opts.extra, **extra})


def finetune(
    task: str, input: Any, target: Any = None, *, options: FinetuneOptions | None = None, **overrides: Any
) -> Path:
    """Fine-tune a model on your own images and return its directory.

    Parameters
    ----------
    task : {"denoise", "super-resolve", "isotropic-i", "isotropic-a"}
    input : array-like or path, or a list of them
        The degraded image (or stack), or the volume (isotropic tasks); a list for several
        (several registered pairs, of any sizes, each with its held-back strip).
    target : array-like or path, or a list of them, optional
        Its registered clean / high-resolution counterpart (one per input). Without one, denoising learns
        from the noisy input alone, with a structured blind spot that copes with the
        correlated noise of fast SEM scans (``objective="neighbour-slices"``: from a stack's
        neighbouring slices).
    options : FinetuneOptions, optional
    **overrides
        Any :class:`FinetuneOptions` field, or another ``TrainConfig`` field.

    Returns
    -------
    pathlib.Path
        The model directory; load it with :func:`load_model` or pass it as ``model=``.

    Examples
    --------
    >>> path = finetune("denoise", "noisy.tif", "clean.tif", out="my-model")  # doctest: +SKIP
    >>> result = restore(noisy, "denoise", model=path)  # doctest: +SKIP
    """
    return drain(finetune_iter(task, input, target, options=options, **overrides))
