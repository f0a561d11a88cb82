"""Isotropic-reconstruction dock widget (vEMDiffuse-i / vEMDiffuse-a).

Generates ``factor - 1`` slices between each pair of neighbouring slices of an anisotropic
volume, in memory or into a zarr store shown lazily, by driving
:func:`napari_emdiffuse.engine.inference.volume.reconstruct_isotropic_iter` in a napari thread worker;
a TIFF, MRC or neuroglancer precomputed output is written as the command line writes one
(:func:`napari_emdiffuse.files.reconstruct_file_iter`) and shown from the file.
*Reconstruct files…* does the same to volume files on disk, into a folder (:mod:`._files`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QComboBox, QLabel, QWidget

from ..engine.events import VOLUME_STAGES
from ..engine.errors import EMDiffuseError, InputError
from ..engine.io.common import is_zarr_name
from ..engine.io.zarrurl import check_output_place
from ._base import DockWidget
from ._controls import (
    ModelPicker, advanced_section, chunks_box, files_as_box, resume_box, scheduler_box, spin_box, tiling_boxes,
    workers_box,
    output_row, zarr_format_box,
)
from ._files import FilesMixin
from ._layers import (
    LayerCombo, layer_image, layer_source, layer_spacing, lazy_volume, refuse_own_file, region_in_view,
    show_outputs, source_origin,
)  # fmt: skip
from ._settings import (
    PRESETS, WidgetOptions, check_cluster, check_preset, check_resume, check_tiling, check_workers,
    check_chunks_choice, check_files_as, check_zarr_format_choice, files_kwargs, sampling_kwargs,
)  # fmt: skip
from .restore import check_input_layer, layer_array

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = [
    "IsotropicWidget",
    "IsotropicOptions",
    "prefill_factor",
    "isotropic_geometry",
    "isotropic_names",
]

MODES = {"i": "-i: interpolate (vEMDiffuse-i)", "a": "-a: from lateral planes (vEMDiffuse-a)"}
MODE_TIPS = {
    "i": "A model trained on isotropic data learns to fill in slices between pairs",
    "a": "No isotropic training data: the model learns from the volume's own lateral (XY) planes",
}
MAX_FACTOR = 16


# ----------------------------------------------------------------------------------------------
# plain logic


@dataclass
class IsotropicOptions(WidgetOptions):
    """The widget's options as plain values (0 / -1 mean "let the engine choose").

    Attributes
    ----------
    mode : {"i", "a"}
        ``i``: a model trained on pairs of slices; ``a``: trained on the lateral planes of the
        volume itself (for volumes without isotropic training data).
    factor : int
        Output slices per input slice gap (z spacing / xy spacing).
    output : str
        Empty: keep the result in memory. A ``.zarr`` path: written block by block. A ``.tif``,
        ``.mrc`` or ``.precomputed`` path: written with its voxel size once whole (through a
        hidden store beside it when too large for memory), as ``emdiffuse isotropic -o`` does.
    uncertainty : bool
        Also compute the per-pixel uncertainty (std): a predictor's own, or the samples' spread.
    denoise_first : bool
        Denoise the measured slices with the bundled denoiser first (noisy volumes); the
        output's measured slices are then the denoised ones.
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
    in_view : bool
        Reconstruct only the rows and columns the viewer shows, normalised as the whole
        volume: a quick look before a long run, or with an output path a store of that part
        that records its place (it opens over the input).
    """

    mode: str = "i"
    factor: int = 4
    preset: str = "fast"
    steps: int = 0
    samples: int = 0
    tile: int = 0
    overlap: int = -1
    seed: int = 0
    device: str = "auto"
    output: str = ""
    uncertainty: bool = False
    denoise_first: bool = False
    workers: int = 0
    scheduler: str = ""
    resume: bool = False
    zarr_format: int = 2
    chunks: str = "raw"
    in_view: bool = False
    files_as: str = ""  # the files… button's results: "" each file's format, else BATCH_FORMATS

    @property
    def task(self) -> str:
        return f"isotropic-{self.mode}"

    def validate(self) -> "IsotropicOptions":
        if self.mode not in MODES:
            raise EMDiffuseError(f"unknown mode {self.mode!r}; choose i or a")
        if not 2 <= self.factor <= MAX_FACTOR:
            raise EMDiffuseError(f"factor must be between 2 and {MAX_FACTOR}, got {self.factor}")
        check_preset(self.preset)
        check_tiling(self)
        if self.output:
            check_output_place(self.output, resume=self.resume is True)
        check_workers(self.workers, self.output, self.scheduler)
        check_resume(self.resume, self.output)
        check_zarr_format_choice(self.zarr_format, self.output)
        check_chunks_choice(self.chunks, self.output)
        check_files_as(self.files_as)
        return self

    def engine_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``reconstruct_isotropic_iter`` (besides volume, model, spacing)."""
        self.validate()
        return sampling_kwargs(self) | {
            "factor": self.factor,
            "mode": self.mode,
            "out": check_output_place(self.output, resume=self.resume) if self.output else None,  # a path, or a URL
            "uncertainty": self.uncertainty,
            "denoise": True if self.denoise_first else None,
            "workers": self.workers or None,
            "scheduler": self.scheduler.strip() or None,
            "resume": self.resume,
            "zarr_format": self.zarr_format,
        }


def prefill_factor(scale: tuple[float, ...]) -> int | None:
    """The factor implied by a layer's scale (z over the lateral spacing, the engine's
    rule), or None when that is not close to a whole number of at least 2 (an uncalibrated
    or already isotropic layer)."""
    if len(scale) < 3:
        return None
    z, y = float(scale[-3]), float(scale[-2])
    if not (math.isfinite(z) and math.isfinite(y)) or y <= 0 or z <= 0:
        return None
    try:
        from ..engine.io.spacing import factor_from_spacing

        factor = int(factor_from_spacing(tuple(float(v) for v in scale[-3:])))
    except EMDiffuseError:
        return None
    return factor if 2 <= factor <= MAX_FACTOR else None


def isotropic_geometry(
    scale: tuple[float, ...], translate: tuple[float, ...], factor: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Scale and translate of the reconstructed volume.

    Output slice ``k * factor`` is input slice ``k`` (the volume has ``(Z - 1) * factor + 1``
    slices), so the z scale is divided by ``factor`` and the translate is unchanged: the
    output overlays the input exactly.
    """
    scale = tuple(float(v) for v in scale)
    return (scale[0] / factor,) + scale[1:], tuple(float(v) for v in translate)


def isotropic_names(layer_name: str) -> tuple[str, str]:
    """``img`` -> ``img_isotropic`` and ``img_isotropic_uncertainty``."""
    return f"{layer_name}_isotropic", f"{layer_name}_isotropic_uncertainty"


# ----------------------------------------------------------------------------------------------
# Qt


def _is_volume_candidate(layer: Any) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image)


class IsotropicWidget(FilesMixin, DockWidget):
    """Reconstruct an isotropic volume from an anisotropic one (vEMDiffuse).

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        Injected by napari.
    """

    SETTINGS = "isotropic"
    OPTIONS = IsotropicOptions
    NOT_RESTORED = ("output",)  # a big store from last time is not today's default target
    FILES_VERB = "reconstruct"

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.last_outputs: list[Any] = []

        self.layer_combo = LayerCombo(napari_viewer, accept=_is_volume_candidate)
        self.layer_combo.setToolTip("Anisotropic ZYX volume (never modified)")
        self.mode = QComboBox()
        for key, text in MODES.items():
            self.mode.addItem(text, key)
            self.mode.setItemData(self.mode.count() - 1, MODE_TIPS[key], Qt.ToolTipRole)
        self.mode.setToolTip("\n".join(f"{MODES[k]}: {MODE_TIPS[k]}" for k in MODES))
        self.factor = spin_box(2, MAX_FACTOR, 4, None, "Times finer z becomes: z spacing / xy spacing")
        self.factor_hint = QLabel("")
        self.factor_hint.setWordWrap(True)
        # "(default for the task)": the bundled model for the factor (see default_model)
        self.model = ModelPicker("isotropic-i", allow_default=True)
        self.preset = QComboBox()
        self.preset.addItems(PRESETS)
        self.steps = spin_box(0, 1000, 0, "preset", "Sampler steps")
        self.samples = spin_box(0, 64, 0, "preset", "Samples averaged per generated slice")
        self.tile, self.overlap, self.seed = tiling_boxes()
        self.uncertainty = QCheckBox("uncertainty")
        self.uncertainty.setToolTip(
            "Also compute the per-pixel uncertainty (std): a predictor's own, or the spread of 2+ samples"
        )
        self.workers = workers_box()
        self.scheduler = scheduler_box()
        self.resume = resume_box()
        self.zarr_format = zarr_format_box()
        self.chunks = chunks_box()
        self.files_as = files_as_box()
        advanced = advanced_section(
            [
                ("steps", self.steps),
                ("samples", self.samples),
                ("tile", self.tile),
                ("overlap", self.overlap),
                ("seed", self.seed),
                ("workers", self.workers),
                ("cluster", self.scheduler),
                ("", self.resume),
                ("zarr format", self.zarr_format),
                ("precomputed chunks", self.chunks),
                ("files… as", self.files_as),
                ("", self.uncertainty),
            ]
        )
        self.denoise_first = QCheckBox("denoise the slices first")
        self.denoise_first.setToolTip(
            "For noisy volumes: denoise every measured slice with the bundled denoiser, then generate\n"
            "the new slices from the denoised ones (the measured slices are replaced by the denoised ones)"
        )
        self.in_view = QCheckBox("region in view only")
        self.in_view.setToolTip(
            "Reconstruct only the rows and columns the viewer shows (an XY view; zoom in first), normalised as the "
            "whole volume: a quick look before a long run; the whole run then replaces it. With a .zarr output: "
            "a store of that part that opens over the input"
        )
        self.output, out_row = output_row(self, "in memory, or a .zarr/.tif/.mrc/.precomputed path",
                                           "Write the isotropic volume to")
        self._lay_out(
            [
                ("volume", self.layer_combo),
                ("mode", self.mode),
                ("factor", self.factor),
                ("", self.factor_hint),
                ("model", self.model),
                ("preset", self.preset),
                ("", self.denoise_first),
                ("", self.in_view),
                ("output", out_row),
            ],
            advanced,
            self.make_files_button(
                "Make volume files on disk (TIFF, MRC, DM, HDF5, ...) isotropic into a folder, with the options "
                "above; each volume's factor comes from its voxel size (the factor above for a file that records "
                "none), each result takes its file's name; with 'uncertainty' (Advanced) that goes into an 'uncertainty' folder inside"
            ),
        )
        self.mode.currentIndexChanged.connect(lambda *_: self.model.set_task(f"isotropic-{self.mode.currentData()}"))
        self.layer_combo.currentIndexChanged.connect(self._prefill)
        self._load_settings(self.model)
        self._prefill()

    # -- options ---------------------------------------------------------------------------------

    def _prefill(self, *_: Any) -> None:
        layer = self.layer_combo.layer()
        if layer is None or layer.ndim != 3:
            self.factor_hint.setText("")
            return
        scale = tuple(float(v) for v in layer.scale)
        spacing = layer_spacing(layer, scale)
        where = "layer's scale" if spacing == scale else "file's voxel size"
        factor = prefill_factor(spacing)
        if factor is None:
            z, y = float(spacing[-3]), float(spacing[-2])
            self.factor_hint.setText(f"{where}: z/y = {z / y:.3g}; set the factor by hand")
        else:
            self.factor.setValue(factor)
            self.factor_hint.setText(f"from the {where} (z/y = {factor})")

    # -- running ---------------------------------------------------------------------------------

    def _start(self) -> None:
        """Reconstruct the chosen volume."""
        layer = self.layer_combo.layer()
        check_input_layer(layer, volume=True)
        if layer_array(layer).shape[0] < 2:
            raise InputError(f"layer '{layer.name}' has a single slice; isotropic reconstruction needs 2 or more")
        opts = self.options()
        kwargs = opts.engine_kwargs()
        model, arch = self.model.value()
        if arch is not None:  # a published checkpoint
            kwargs["arch"] = arch
        self._save_settings(opts, self.model)
        data = layer_array(layer)
        source = layer_source(layer)
        origin = source_origin(source)  # of the whole layer: a region moves it in the engine
        if opts.in_view:  # the rows and columns on screen; the result overlays them
            kwargs["region"], source = region_in_view(self.viewer, layer, tuple(data.shape), source)
        scale = source["spacing"]

        out, unc_out = kwargs["out"], None
        if out is not None and not is_zarr_name(out):
            from ..engine.io.zarr import uncertainty_beside

            refuse_own_file(out, layer)
            unc_out = check_output_place(str(uncertainty_beside(out))) if opts.uncertainty else None

        def factory():
            if out is not None and not is_zarr_name(out):  # a TIFF, MRC or precomputed volume, as the command line writes one
                from ..files import reconstruct_file_iter

                drop = ("out", "uncertainty", "zarr_format")
                file_kwargs = {k: v for k, v in kwargs.items() if k not in drop}
                encoding, quality = check_chunks_choice(opts.chunks, str(out))
                return reconstruct_file_iter(layer_image(data, source, layer, origin=origin), out, model,
                                             uncertainty_out=unc_out, chunk_encoding=encoding, jpeg_quality=quality,
                                             **file_kwargs)
            from ..api import reconstruct_isotropic_iter

            return reconstruct_isotropic_iter(data, model=model, spacing=scale, origin=origin, **kwargs)

        self._start_engine(
            factory,
            status=f"reconstructing '{layer.name}' x{opts.factor}…",
            desc=f"EMDiffuse isotropic x{opts.factor}: {layer.name}",
            stages=("sampling", "block", *VOLUME_STAGES),  # block: distributed runs
            on_result=lambda result: self._show(result, source, out, opts.factor),
            source=f"layer '{layer.name}'",
        )

    def files_job(self) -> tuple[str, Any, dict[str, Any]]:
        """*Reconstruct files…*: the task, model and options of ``restore_files_iter``; each
        volume's factor from its voxel size, the factor box's where a file records none
        (Advanced > workers or cluster: files side by side there; the output box plays no part)."""
        opts = self.options()
        replace(opts, output="", workers=0, scheduler="", resume=False, zarr_format=2, chunks="raw").validate()
        scheduler = check_cluster(opts.workers, opts.scheduler)
        model, arch = self.model.value()
        self._save_settings(opts, self.model)
        kwargs = sampling_kwargs(opts) | {"default_factor": opts.factor, "denoise": True if opts.denoise_first else None,
                                          "uncertainty": opts.uncertainty, "workers": opts.workers or None,
                                          "scheduler": scheduler or None,
                                          "resume": opts.resume, **files_kwargs(opts.files_as, opts.zarr_format, opts.chunks)}
        return opts.task, model, kwargs | ({"arch": arch} if arch is not None else {})

    def _show(self, result: Any, source: dict, out: Path | None, factor: int = 0) -> None:
        if isinstance(result, list):  # a file written whole (what reconstruct_file_iter wrote): read back
            geometry = isotropic_geometry(source["scale"], source["translate"], factor)
            self._show_written(result, source, lambda shape: (isotropic_names(source["name"]), geometry,
                                                              {"factor": factor}))
            return
        factor = int(result.factor)
        name, unc_name = isotropic_names(source["name"])
        geometry = isotropic_geometry(source["scale"], source["translate"], factor)
        unc_data = None
        if result.uncertainty is not None:
            unc_data = lazy_volume(result.uncertainty, getattr(result, "uncertainty_path", None))
        vol_data = lazy_volume(result.volume, getattr(result, "path", None) or out)
        from ..engine.inference.provenance import provenance

        info = result.info if isinstance(result.info, dict) else {}
        self.last_outputs = show_outputs(
            self.viewer, source, geometry, (name, vol_data), (unc_name, unc_data),
            provenance(info, info.get("normalisation"), factor=factor),
        )
        vol = self.last_outputs[0]
        device = result.info.get("device") if isinstance(result.info, dict) else None
        self.device.set_used(device)
        where = f" -> {out}" if out is not None else ""
        made_by = f" by {info['model']}" if info.get("model") else ""  # the default depends on the factor
        if info.get("region"):
            made_by += " (rows {}:{}, columns {}:{} in view)".format(*info["region"])
        self.status.setText(f"'{vol.name}' {tuple(vol.data.shape)}{made_by} in {self._elapsed():.1f} s on {device}{where}")
