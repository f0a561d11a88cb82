"""Restore dock widget: denoise or super-resolve an image layer with a diffusion model.

The widget collects options and drives :func:`napari_emdiffuse.engine.inference.restore.restore_iter`
in a napari thread worker; the viewer stays responsive, a napari progress bar counts
tiles x steps, and Run becomes Cancel while the worker runs. *Restore files…* restores image
files on disk into a folder with the same options (:mod:`._files`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QComboBox, QWidget

from ..engine.core.samplers import SAMPLERS as ENGINE_SAMPLERS
from ..engine.events import VOLUME_STAGES
from ..engine.errors import EMDiffuseError, InputError
from ..engine.io.common import is_zarr_name
from ..engine.io.zarrurl import check_output_place
from ..engine.inference.zfilter import Z_FILTERS
from ..engine.io.consoles import databar_note
from ..engine.io.zarr import uncertainty_beside
from ._base import DockWidget
from ._controls import (
    ModelPicker, advanced_section, chunks_box, files_as_box, resume_box, scheduler_box, spin_box, tiling_boxes,
    workers_box,
    output_row, zarr_format_box,
)
from ._files import FilesMixin
from ._jobs import notify_info
from ._layers import (
    LayerCombo, layer_image, layer_source, lazy_volume, refuse_own_file, region_in_view, show_outputs,
    source_origin,
)
from ._settings import (
    PRESETS, WidgetOptions, check_cluster, check_preset, check_resume, check_tiling, check_workers,
    check_chunks_choice, check_files_as, check_zarr_format_choice, files_kwargs, sampling_kwargs,
)  # fmt: skip

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["RestoreWidget", "RestoreOptions", "output_names", "output_geometry", "check_input_layer", "layer_array",
           "layer_databar"]

TASKS = ("denoise", "super-resolve")
SAMPLERS = ("preset", *ENGINE_SAMPLERS)
REFINE_CHOICES = {"model card": None, "on": True, "off": False}  # predictors with a refiner
PRECISION_CHOICES = ("fp32", "bf16", "fp16")  # the engine's (canvas.PRECISIONS) without "auto"
PRESET_TIPS = {
    "fast": "predictors (the bundled models): one pass, with its uncertainty; diffusion models: "
            "few-step DPM-Solver++, one sample (no uncertainty)",
    "balanced": "the 4 mirrored views averaged (predictors) or 4 samples (diffusion models): "
                "mean and per-pixel uncertainty",
    "reference": "predictors: as balanced; diffusion models: the published 1000-step DDPM, 2 samples (slow)",
}


# ----------------------------------------------------------------------------------------------
# plain logic


@dataclass
class RestoreOptions(WidgetOptions):
    """The widget's options, as plain values (0 / -1 / "preset" mean "let the engine choose").

    Attributes
    ----------
    task : {"denoise", "super-resolve"}
    preset : {"fast", "balanced", "reference"}
    steps, samples : int
        0 takes the preset's value.
    sampler : str
        ``preset`` or one of ``dpm++``, ``ddim``, ``ddpm``.
    refine : {"model card", "on", "off"}
        Predictors with a refiner: sample the residual around the mean (``on``), return the
        mean alone (``off``), or do what the model card lists for the preset.
    blur : str
        Super-resolution with a model told the acquisition: ``auto`` (read off the image),
        ``area`` (a detector averaging each pixel) or the scan probe's width in output
        pixels (0-2). Ignored for denoising.
    tile : int
        Tile edge in pixels; 0 takes the model card's (shrunk to fit GPU memory).
    overlap : int
        Tile overlap in pixels; -1 takes the model card's.
    seed : int
        Noise seed: the same seed gives the same result.
    device : str
        ``auto``, ``cpu``, ``cuda:N`` or ``mps``.
    precision : {"fp32", "bf16", "fp16"}
        Network arithmetic; reduced precision only where the device has it natively.
    output : str
        Empty: keep the result in memory. A ``.zarr`` path: the image is restored block by
        block into it (any size; dask and multiscale layers stay lazy) and shown lazily. A
        ``.tif``, ``.mrc`` or ``.precomputed`` path: written with its pixel size and its
        uncertainty (``<name>_uncertainty`` beside it) once whole, as ``emdiffuse denoise -o``
        writes it, then shown from the file.
    current_slice : bool
        For a stack, restore only the slice the viewer shows.
    in_view : bool
        Restore only the part of the image the viewer shows (of every slice of a stack),
        normalised as the whole image: a quick look before a long run, or with an output
        path a store of that part that records its place (it opens over the input).
    z_filter : str
        Denoising a stack: ``auto`` (average the restored slices along z where neighbouring
        slices look alike), ``off``, or a width in slices (0-3).
    workers : int
        0: run in napari. N: run the blocks on a new local dask cluster of N processes (one
        GPU each where there are several); needs an output path (a ``.tif`` or ``.mrc`` one is written
        from the zarr store they fill, a ``.precomputed`` one by them too).
    scheduler : str
        Run the blocks on a running dask cluster instead: its scheduler's address
        (``tcp://host:8786``) or the file the scheduler wrote (``--scheduler-file``); its workers
        reach the output on shared storage. Excludes ``workers``; needs an output path.
    resume : bool
        ``.zarr`` output: a cancelled or failed run keeps its finished blocks, and the next
        run of the same image, model and options continues from them.
    zarr_format : {2, 3}
        ``.zarr`` output: 2, or 3 (zarr v3, a shard of 512-px chunks per block).
    chunks : str
        ``.precomputed`` output (and the *files…* button's as ``.precomputed``): ``raw``, or
        ``jpeg`` with a quality (``jpeg 85``; 8-bit results).
    """

    task: str = "denoise"
    preset: str = "fast"
    steps: int = 0
    samples: int = 0
    sampler: str = "preset"
    refine: str = "model card"
    blur: str = "auto"
    tile: int = 0
    overlap: int = -1
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    output: str = ""
    current_slice: bool = False
    in_view: bool = False
    z_filter: str = "auto"
    workers: int = 0
    scheduler: str = ""
    resume: bool = False
    zarr_format: int = 2
    chunks: str = "raw"
    files_as: str = ""  # the files… button's results: "" each file's format, else BATCH_FORMATS

    def validate(self) -> "RestoreOptions":
        """Refuse impossible combinations before starting a worker."""
        if self.task not in TASKS:
            raise EMDiffuseError(f"unknown task {self.task!r}; choose denoise or super-resolve")
        check_preset(self.preset)
        if self.sampler not in SAMPLERS:
            raise EMDiffuseError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS[1:])}")
        if self.refine not in REFINE_CHOICES:
            raise EMDiffuseError(f"unknown refine setting {self.refine!r}; choose one of {', '.join(REFINE_CHOICES)}")
        self.blur = check_blur(self.blur)
        check_tiling(self)
        if self.precision not in PRECISION_CHOICES:
            raise EMDiffuseError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
        if self.output:
            check_output_place(self.output, resume=self.resume is True)
        self.z_filter = check_z_filter(self.z_filter)
        check_workers(self.workers, self.output, self.scheduler)
        check_resume(self.resume, self.output)
        check_zarr_format_choice(self.zarr_format, self.output)
        check_chunks_choice(self.chunks, self.output)
        check_files_as(self.files_as)
        return self

    def engine_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``restore_iter`` (besides image, task, model, arch, spacing)."""
        self.validate()
        sampler = None if self.sampler == "preset" else self.sampler
        blur = self.blur if self.task == "super-resolve" and self.blur != "auto" else None
        z_filter = self.z_filter if self.z_filter in Z_FILTERS else float(self.z_filter)
        return sampling_kwargs(self) | {
            "sampler": sampler, "precision": self.precision, "refine": REFINE_CHOICES[self.refine], "blur": blur,
            **({"z_filter": z_filter} if self.task == "denoise" else {}),
        }


def named_or_width(text: str, names: tuple[str, ...], widest: float, what: str, unit: str) -> str:
    """A widget entry that is one of ``names`` or a width from 0 to ``widest`` ``unit``,
    checked and tidied (an empty entry is the first name); refused in one line otherwise.

    Examples
    --------
    >>> named_or_width(" Area ", ("auto", "area"), 2, "acquisition blur", "pixels")
    'area'
    >>> named_or_width("3", ("auto", "off"), 2, "z filter", "slices")
    Traceback (most recent call last):
    ...
    napari_emdiffuse.engine.errors.EMDiffuseError: z filter must be between 0 and 2 slices, not '3'
    """
    value = str(text).strip().lower() or names[0]
    if value in names:
        return value
    try:
        width = float(value)
    except ValueError:
        raise EMDiffuseError(f"{what} must be {', '.join(names)} or a width in {unit} (0-{widest:g}), not {text!r}") from None
    if not 0.0 <= width <= widest:
        raise EMDiffuseError(f"{what} must be between 0 and {widest:g} {unit}, not {text!r}")
    return value


def check_blur(text: str) -> str:
    """The widget's blur entry, checked: ``auto``, ``area`` or a width from 0 to 2 pixels.

    Examples
    --------
    >>> check_blur(" Area "), check_blur("1")
    ('area', '1')
    """
    return named_or_width(text, ("auto", "area"), 2.0, "acquisition blur", "pixels")


def check_z_filter(text: str) -> str:
    """The widget's z filter entry, checked: ``auto``, ``off`` or a width from 0 to 3 slices.

    Examples
    --------
    >>> check_z_filter(" Off "), check_z_filter("0.8")
    ('off', '0.8')
    """
    return named_or_width(text, Z_FILTERS, 3.0, "z filter", "slices")


def output_names(layer_name: str, task: str, scale: int = 1) -> tuple[str, str]:
    """Names of the restored layer and of its uncertainty.

    ``img`` -> ``img_denoised`` or ``img_sr2`` (x2 super-resolution), and
    ``img_denoised_uncertainty`` / ``img_sr2_uncertainty``: the uncertainty is named after
    its output so that denoising and super-resolving the same layer never overwrite each
    other's uncertainty.
    """
    out = f"{layer_name}_denoised" if task == "denoise" else f"{layer_name}_sr{int(scale)}"
    return out, f"{out}_uncertainty"


def output_geometry(
    scale: tuple[float, ...], translate: tuple[float, ...], factor: int = 1
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Scale and translate of an output layer magnified ``factor`` times in Y and X.

    napari puts the centre of pixel ``i`` at ``translate + i * scale``, so input pixel ``i``
    covers ``[t + (i - 1/2) S, t + (i + 1/2) S]``. Super-resolution splits it into ``factor``
    pixels of size ``S / factor`` that cover the same interval (the bicubic, pixel-area
    convention the model is trained with), the first one centred at
    ``t - S/2 + S/(2 factor)``. Hence::

        scale'     = S / factor
        translate' = t + (1/factor - 1) / 2 * S       (x2: t - S/4)

    so the output overlays the input exactly. Leading (Z) axes are unchanged.
    """
    from ..engine.io.spacing import output_origin

    scale = tuple(float(v) for v in scale)
    translate = tuple(float(v) for v in translate)
    if factor == 1:
        return scale, translate
    lead = len(scale) - 2
    new_scale = scale[:lead] + tuple(s / factor for s in scale[lead:])
    return new_scale, output_origin(translate, scale, len(scale), scale=factor) or (0.0,) * len(scale)


def check_input_layer(layer: Any, *, volume: bool = False) -> None:
    """Refuse layers the engine cannot take, with a one-line reason.

    Parameters
    ----------
    layer : napari.layers.Image or None
    volume : bool
        Require a 3D (ZYX) volume (isotropic reconstruction).
    """
    if layer is None:
        raise InputError("no image layer chosen: open an image (File > Open Sample > EMDiffuse) first")
    if getattr(layer, "rgb", False):
        raise InputError(
            f"layer '{layer.name}' is an RGB colour image; EM models need grey scale "
            "(convert it to grey scale, or load a single channel)"
        )
    bar = layer_databar(layer)
    if bar is not None:
        notify_info(f"'{layer.name}': {databar_note(bar[1])}")
    ndim = len(layer_array(layer).shape)
    # several channels or time points: napari splits a layer into one per channel
    split = "; several channels or time points? right-click the layer > Split Stack" if ndim > 3 else ""
    if volume and ndim != 3:
        raise InputError(
            f"layer '{layer.name}' has {ndim} dimensions; isotropic reconstruction needs a 3D (ZYX) volume{split}"
        )
    if not volume and ndim not in (2, 3):
        raise InputError(f"layer '{layer.name}' has {ndim} dimensions; pass a 2D image or a ZYX stack{split}")


def layer_array(layer: Any) -> Any:
    """The pixels to process: the layer's array (numpy, dask or zarr, never copied), or the
    full-resolution level of a multiscale layer, without leading size-1 axes (an OME-Zarr's
    single T and C; :func:`~._layers.layer_source` drops their scale) and without an SEM
    console's data bar (:func:`layer_databar`)."""
    from ..engine.io.views import drop_single_axes

    data = drop_single_axes(layer.data[0] if getattr(layer, "multiscale", False) else layer.data, None, None)[0]
    bar = layer_databar(layer)
    return data[..., : bar[0], :] if bar is not None else data


def layer_databar(layer: Any) -> tuple[int, int] | None:
    """(scanned rows, data bar rows) when the layer was opened from an SEM image whose console
    pasted its data bar below the scan (Thermo Fisher / FEI, Hitachi: napari's own readers keep
    the bar; this plugin's readers leave it out); None otherwise."""
    from ..engine.io.consoles import databar_rows

    path = getattr(getattr(layer, "source", None), "path", None)
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if not path or getattr(layer, "rgb", False) or len(data.shape) < 2:
        return None
    return databar_rows(path, tuple(int(n) for n in data.shape))


# ----------------------------------------------------------------------------------------------
# Qt


class RestoreWidget(FilesMixin, DockWidget):
    """Denoise or super-resolve an image layer (EMDiffuse-n / EMDiffuse-r).

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        Injected by napari.
    """

    SETTINGS = "restore"
    OPTIONS = RestoreOptions

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.last_outputs: list[Any] = []

        self.layer_combo = LayerCombo(napari_viewer)
        self.layer_combo.setToolTip("Grey-scale image or ZYX stack (restored slice by slice); never modified")
        self.task = QComboBox()
        self.task.addItems(TASKS)
        self.task.setToolTip("denoise: same size out; super-resolve: x2 (the model's scale) in Y and X")
        self.model = ModelPicker("denoise")
        self.preset = QComboBox()
        for name in PRESETS:
            self.preset.addItem(name)
            self.preset.setItemData(self.preset.count() - 1, PRESET_TIPS[name], Qt.ToolTipRole)
        self.preset.setToolTip("; ".join(f"{k}: {v}" for k, v in PRESET_TIPS.items()))

        self.steps = spin_box(0, 1000, 0, "preset", "Sampler steps (fewer: faster, blurrier)")
        self.samples = spin_box(0, 64, 0, "preset", "Samples averaged; 2 or more also give an uncertainty map")
        self.sampler = QComboBox()
        self.sampler.addItems(SAMPLERS)
        self.sampler.setToolTip("dpm++: few steps; ddim: deterministic; ddpm: the published ancestral sampler")
        self.refine = QComboBox()
        self.refine.addItems(REFINE_CHOICES)
        self.refine.setToolTip(
            "Models with a refiner (predict, then refine): on samples the residual around the mean; off "
            "returns the mean alone; model card: what the card lists for the preset"
        )
        self.blur = QComboBox()
        self.blur.setEditable(True)
        self.blur.addItems(["auto", "area", "0.5", "1.0", "1.5"])
        self.blur.setToolTip(
            "Super-resolution: how the low-resolution image was acquired. auto: read off the image; area: a "
            "detector averaging each pixel (binning); a number: the width (std) of the scan's probe in output pixels"
        )
        self.tile, self.overlap, self.seed = tiling_boxes()
        self.current_slice = QCheckBox("current slice only")
        self.current_slice.setToolTip("For a stack: restore only the slice shown in the viewer")
        self.in_view = QCheckBox("region in view only")
        self.in_view.setToolTip(
            "Restore only the part of the image the viewer shows (zoom in first), normalised as the whole image "
            "and read with context around it: a quick look at the settings before a long run; the whole run "
            "then replaces it. With a .zarr output: that part of every slice, into a store that opens over the input"
        )
        self.output, out_row = output_row(self, "in memory, or a .zarr/.tif/.mrc/.precomputed path",
                                          "Restore into")
        self.z_filter = QComboBox()
        self.z_filter.setEditable(True)
        self.z_filter.addItems([*Z_FILTERS, "0.5", "1.0"])
        self.z_filter.setToolTip(
            "Denoising a stack: average the restored slices along z. auto: only where neighbouring slices look "
            "alike (FIB-SEM, block-face SEM; not serial-section TEM), over a width chosen from the data; off; "
            "or a width in slices (std, 0-3)"
        )
        self.workers = workers_box()
        self.scheduler = scheduler_box()
        self.resume = resume_box()
        self.zarr_format = zarr_format_box()
        self.chunks = chunks_box()
        self.files_as = files_as_box()
        self.precision = QComboBox()
        self.precision.addItems(PRECISION_CHOICES)
        self.precision.setToolTip("Network arithmetic: fp32 (default, exact); bf16 on GPUs and CPUs that have it (1.5x faster on such a CPU); fp16 on GPUs")
        advanced = advanced_section(
            [
                ("steps", self.steps),
                ("samples", self.samples),
                ("sampler", self.sampler),
                ("refine", self.refine),
                ("acquisition blur", self.blur),
                ("z filter", self.z_filter),
                ("tile", self.tile),
                ("overlap", self.overlap),
                ("seed", self.seed),
                ("precision", self.precision),
                ("workers", self.workers),
                ("cluster", self.scheduler),
                ("", self.resume),
                ("zarr format", self.zarr_format),
                ("precomputed chunks", self.chunks),
                ("files… as", self.files_as),
            ]
        )
        self.files_button = self.make_files_button(
            "Restore image files on disk (TIFF, MRC, DM, Velox, CZI, ...) into a folder, with the options above; "
            "each result takes its file's name, its uncertainty goes into an 'uncertainty' folder inside"
        )
        self._lay_out(
            [("image", self.layer_combo), ("task", self.task), ("model", self.model), ("preset", self.preset),
             ("", self.current_slice), ("", self.in_view), ("output", out_row)],
            advanced,
            self.files_button,
        )
        self.task.currentTextChanged.connect(self.model.set_task)
        self._load_settings(self.model)

    # -- running ---------------------------------------------------------------------------------

    def _start(self) -> None:
        """Restore the chosen layer; Cancel stops at the next tile batch and adds no layer."""
        layer = self.layer_combo.layer()
        check_input_layer(layer)
        opts = self.options()
        kwargs = opts.engine_kwargs()
        model, arch = self.model.value()
        self._save_settings(opts, self.model)
        data = layer_array(layer)
        source = layer_source(layer)
        if opts.current_slice and len(data.shape) == 3:
            z = min(max(int(self.viewer.dims.current_step[-3]), 0), data.shape[0] - 1)
            data = data[z]
            kwargs.pop("z_filter", None)  # one slice: nothing to average along z
            source = {**source, "name": f"{source['name']}_z{z}", "scale": source["scale"][-2:],
                      "translate": source["translate"][-2:], "units": source["units"][-2:] if source["units"] else None,
                      "spacing": source["spacing"][-2:]}
        origin = source_origin(source)  # of the whole layer: a region moves it in the engine
        if opts.in_view:  # the rows and columns on screen; the result overlays them
            kwargs["region"], source = region_in_view(self.viewer, layer, tuple(data.shape), source)
        scale = source["spacing"]
        if (fine := _fine_pixel_note(model, arch, opts.task, source)) is not None:
            notify_info(f"'{layer.name}': {fine}")
        out = check_output_place(opts.output, resume=opts.resume) if opts.output else None
        unc_out = uncertainty_beside(out) if out is not None else None
        if out is not None and not is_zarr_name(out):
            refuse_own_file(out, layer)
            unc_out = check_output_place(str(unc_out))

        def factory():
            if is_zarr_name(out):  # block by block into the store: any size, the input stays lazy
                from ..api import restore_to_zarr_iter

                return restore_to_zarr_iter(data, out, opts.task, model, arch=arch, spacing=scale, origin=origin,
                                            uncertainty_out=unc_out, workers=opts.workers or None,
                                            scheduler=opts.scheduler or None, resume=opts.resume,
                                            zarr_format=opts.zarr_format, **kwargs)
            if out is not None:  # a TIFF, MRC or precomputed result, written as the command line writes one
                from ..files import restore_file_iter

                encoding, quality = check_chunks_choice(opts.chunks, str(out))
                return restore_file_iter(layer_image(data, source, layer, origin=origin), out, opts.task, model,
                                         arch=arch, uncertainty_out=unc_out, resume=opts.resume,
                                         workers=opts.workers or None, scheduler=opts.scheduler or None,
                                         model_ref=model, chunk_encoding=encoding,
                                         jpeg_quality=quality, **kwargs)
            from ..api import restore_iter

            return restore_iter(data, opts.task, model, arch=arch, spacing=scale, **kwargs)

        self._start_engine(
            factory,
            status=f"restoring '{layer.name}'…",
            desc=f"EMDiffuse {opts.task}: {layer.name}",
            stages=("sampling", "block", *VOLUME_STAGES),
            on_result=lambda result: self._show(result, source, opts.task, unc_out, data.shape[-1]),
            source=f"layer '{layer.name}'",
        )

    def files_job(self) -> tuple[str, Any, dict[str, Any]]:
        """*Restore files…*: the task, model and options of ``restore_files_iter`` (Advanced >
        workers or cluster: files side by side there; the output box plays no part)."""
        opts = self.options()
        kwargs = replace(opts, output="", workers=0, scheduler="", resume=False, zarr_format=2,
                         chunks="raw").engine_kwargs()
        scheduler = check_cluster(opts.workers, opts.scheduler)
        model, arch = self.model.value()
        self._save_settings(opts, self.model)
        return opts.task, model, {**kwargs, "arch": arch, "workers": opts.workers or None,
                                  "scheduler": scheduler or None, "resume": opts.resume,
                                  **files_kwargs(opts.files_as, opts.zarr_format, opts.chunks)}

    def _show(self, result: Any, source: dict, task: str, unc_out: Any = None, width: int = 0) -> None:
        if isinstance(result, list):  # a file written whole (what restore_file_iter wrote): read back
            def place(shape: tuple[int, ...]) -> Any:
                scale = max(1, round(shape[-1] / width)) if width else 1
                geometry = output_geometry(source["scale"], source["translate"], scale)
                return output_names(source["name"], task, scale), geometry, {"task": task}

            self._show_written(result, source, place)
            return
        if not hasattr(result, "mean"):  # a zarr store (a Path): show it lazily
            result = _stored(result, unc_out, width)  # a path, or a store's URL
        mean_name, unc_name = output_names(source["name"], task, result.scale)
        geometry = output_geometry(source["scale"], source["translate"], result.scale)
        from ..engine.inference.provenance import provenance, run_summary

        self.last_outputs = show_outputs(
            self.viewer, source, geometry, (mean_name, result.mean), (unc_name, result.uncertainty),
            provenance(result.info, result.normalisation),
        )
        mean = self.last_outputs[0]
        device = result.info.get("device")
        self.device.set_used(device)
        fill = (result.normalisation or {}).get("fill")
        region = result.info.get("region")
        self.status.setText(
            f"'{mean.name}'" + (" (rows {}:{}, columns {}:{} in view)".format(*region) if region else "")
            + f" in {self._elapsed():.1f} s on {device}"
            f" ({run_summary(result.info)})"
            + (f"; regions of value {fill:g} kept as fill (no data)" if fill is not None else "")
            + ("; NaN pixels kept as NaN (no data)" if (result.normalisation or {}).get("nan") else "")
        )


def _stored(out: Path | str, unc_out: Path | str | None, width: int) -> Any:
    """A restoration written to zarr, as the fields the display needs (dask arrays, read
    chunk by chunk while the viewer shows them)."""
    from types import SimpleNamespace

    from ..engine.io.zarr import open_zarr_readonly, store_exists

    attrs = dict(open_zarr_readonly(out).attrs)
    mean = lazy_volume(None, out)  # a list of levels for an OME-Zarr output
    unc = lazy_volume(None, unc_out) if unc_out is not None and store_exists(unc_out) else None
    full = mean[0] if isinstance(mean, list) else mean
    scale = max(1, round(full.shape[-1] / width)) if width else 1
    info = {k: v for k, v in attrs.items() if k != "normalisation"}
    return SimpleNamespace(mean=mean, uncertainty=unc, scale=scale, info={**info, "output": str(out)},
                           normalisation=attrs.get("normalisation"))


def _fine_pixel_note(model: str | None, arch: str | None, task: str, source: dict) -> str | None:
    """The engine's word on pixels far finer than the model learnt from, where the layer's
    size is known in nm (a scale the file gave, or nm units)."""
    from ..engine.inference.checks import pixel_size_note
    from ..engine.models.registry import load_model

    units = source["units"]
    in_nm = tuple(source["spacing"]) != tuple(source["scale"]) or bool(units) and str(units[-1]) in ("nm", "nanometer")
    if not in_nm:
        return None
    try:
        card = load_model(model, task=task, arch=arch).card  # cached: the run reuses it
    except Exception:  # noqa: BLE001 - the run itself says what is wrong with the model
        return None
    return pixel_size_note(card, tuple(source["spacing"]), "nm")
