"""The ``emdiffuse`` command's arguments: one parser, each option checked as it is read, so
that a bad value is one line and exit status 2 (``cli.main``). The engine is the one place that
knows task, architecture, preset and sampler names; the parser reads them from it."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from .cli_progress import PROG

__all__ = ["UsageError", "build_parser"]


class UsageError(Exception):
    """Raised instead of argparse's exit so that every error is one line, status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message}")


def _number(kind: type, ok: Any, what: str) -> Any:
    """An argparse type: ``kind`` (int or float) for which ``ok(value)`` holds."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


_positive = _number(int, lambda v: v > 0, "a positive integer")
_non_negative = _number(int, lambda v: v >= 0, "an integer >= 0")
_fraction = _number(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
_unit = _number(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
_positive_float = _number(float, lambda v: v > 0 and v < float("inf"), "a positive number")


def _z_filter(text: str) -> str | float:
    """``--z-filter``: auto, off or a width in slices (checked again, with the input, by the engine)."""
    from .engine.inference.zfilter import Z_FILTERS

    if text in Z_FILTERS:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {' or '.join(Z_FILTERS)} or a width in slices, got {text!r}") from None


_z_filter.__name__ = "z filter"


def _pick_options(p: argparse.ArgumentParser) -> None:
    """--channel / --time: one of several channels (two detectors, CLEM) or time points."""
    p.add_argument("--channel", type=_non_negative, metavar="C", default=None,
                   help="for an image with several channels and declared axes (ImageJ hyperstack, OME-TIFF, "
                        "OME-Zarr): the one to read, from 0")
    p.add_argument("--time", type=_non_negative, metavar="T", default=None,
                   help="likewise, the time point to read, from 0")


def _region_option(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument("--region", type=_non_negative, nargs=4, metavar=("Y0", "Y1", "X0", "X1"), default=None,
                   help=f"{verb} only rows Y0:Y1 and columns X0:X1 (input pixels; of every slice), normalised as the "
                        "whole image and made by its tiles that reach them (the whole run's pixels there): a quick "
                        "look at a large image's result, or with a .zarr output a part of any size (a batch: the "
                        "same region of each file)")


def _voxel_option(p: argparse.ArgumentParser) -> None:
    """--voxel-size: the input's calibration where the file records none, or a wrong one."""
    p.add_argument("--voxel-size", type=_positive_float, nargs="+", metavar="NM", default=None,
                   help="the input's pixel size in nm, in place of what the file says: y x (or one value) for an "
                        "image, z y x for a volume; results are written with it, and a volume's isotropic "
                        "factor follows from it")


def _batch_format_option(p: argparse.ArgumentParser) -> None:
    from .engine.io.batch import BATCH_FORMATS

    p.add_argument("--to", choices=list(BATCH_FORMATS), default=None,
                   help="a batch: the format of every result (default: each input's, TIFF or MRC; .zarr into an "
                        "object store's folder, -o s3://bucket/clean/, where .tif and .mrc files are uploaded whole). "
                        "A .zarr result is written block by block, and --resume continues an unfinished one")


def _encoding_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoding", choices=["raw", "jpeg"], default="raw",
                   help="a .precomputed output's chunks: raw (default; exact) or jpeg (8-bit images only; lossy and "
                        "several times smaller, as large EM volumes are served to neuroglancer)")
    p.add_argument("--jpeg-quality", type=int, default=90, metavar="Q",
                   help="the JPEG quality of --encoding jpeg, 1 to 100 (default 90)")


def _zarr_format_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--zarr-format", type=int, choices=[2, 3], default=2, metavar="{2,3}",
                   help=".zarr output: 2 (default; every zarr reader opens it) or 3 "
                        "(zarr v3, OME-Zarr 0.5 for a .ome.zarr name: each block one shard of 512-px chunks, which "
                        "viewers read piece by piece)")


def _sampling_options(p: argparse.ArgumentParser, *, samplers: bool = True) -> None:
    from .engine.core.samplers import SAMPLERS
    from .engine.inference.canvas import PRESETS
    from .engine.models.cards import ARCHITECTURES

    g = p.add_argument_group("sampling")
    g.add_argument("--model", help="bundled/user model name, model directory or .zip, or a published .pth (with --arch)")
    g.add_argument("--arch", choices=list(ARCHITECTURES),
                   help="architecture of a published checkpoint given with --model")
    g.add_argument("--preset", choices=list(PRESETS), default="fast",
                   help="fast (default): one pass for predictors (the bundled models), few-step DPM-Solver++ "
                        "for diffusion models; balanced: 4 mirrored views or samples, averaged; reference: as "
                        "balanced for predictors, the published 1000-step DDPM for diffusion models")
    g.add_argument("--steps", type=_positive, help="sampler steps (overrides the preset)")
    g.add_argument("--samples", type=_positive, help="samples per pixel; >1 gives an uncertainty map")
    if samplers:
        g.add_argument("--sampler", choices=list(SAMPLERS), help="sampler (overrides the preset)")
    g.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                   help="predictors with a refiner: sample the residual around the mean (default: the presets "
                        "the model card lists)")
    g.add_argument("--tile", type=_positive, help="tile edge in pixels (default: model card / device memory)")
    g.add_argument("--overlap", type=_non_negative, help="overlap between tiles in pixels")
    g.add_argument("--batch", type=_positive, help="tiles per network call")
    g.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                   help="network arithmetic (default fp32; bf16 needs a GPU or a CPU with native bf16)")
    c = p.add_mutually_exclusive_group()
    c.add_argument("--workers", type=_positive, help="run on a local dask cluster of N processes, one GPU each (they "
                   "write a zarr output, or a temporary store beside a TIFF, MRC or precomputed one, which is then "
                   "written from it, a precomputed folder by them too; an input that is not zarr is copied for them "
                   "first). A batch: N files side by side, any output")
    c.add_argument("--scheduler", metavar="ADDRESS|FILE",
                   help="a running dask cluster: its scheduler's address, e.g. tcp://host:8786, or the file it wrote "
                        "(dask scheduler --scheduler-file sched.json, as on HPC) (as --workers, on storage the workers "
                        "reach; a result by URL must be a .zarr store; a batch: its files)")
    p.add_argument("--resume", action="store_true",
                   help="zarr output: if the run fails or is stopped, keep its finished blocks (beside the output, "
                        "unfinished); run the same command with --resume again to continue from them. A TIFF or MRC "
                        "output too large for memory: the same for its temporary store. A batch: leave out the files "
                        "whose outputs exist")
    _zarr_format_option(p)
    _encoding_options(p)


def build_parser() -> argparse.ArgumentParser:
    # The engine is the one place that knows task, architecture, preset and sampler names.
    from .api import FinetuneOptions
    from .engine.models.cards import ARCHITECTURES, TASKS
    from .engine.io.batch import BATCH_FORMATS
    from .engine.training.data.pairs import DOWNSAMPLING

    parser = _Parser(prog=PROG, description="Diffusion-model restoration of electron-microscopy images (EMDiffuse).")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    for name, helptext in (("denoise", "denoise a 2D image or a stack (slice by slice)"),
                           ("super-resolve", "x2 super-resolution of a 2D image or a stack")):
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("input", metavar="IN", nargs="+",
                       help="input .tif/.tiff, .mrc, .dm3/.dm4, .h5 (file.h5/dataset), .png/.jpg/.bmp or .zarr; several files or a folder: "
                            "a batch, with the model loaded once")
        p.add_argument("-o", "--output", metavar="OUT", required=True,
                       help="output .tif/.tiff, .mrc, .zarr or .precomputed (neuroglancer; a .zarr store may be an object store's URL, "
                            "s3://bucket/out.zarr); for a batch, a folder (made if missing) where each "
                            "result takes its input's name (pictures, .h5 and .dm3/.dm4 become .tif)")
        if name == "denoise":
            p.add_argument("--z-filter", metavar="auto|off|W", type=_z_filter, default="auto",
                           help="a stack: average the denoised slices along z over W slices (std, 0-3). auto "
                                "(default): only where neighbouring slices look alike (FIB-SEM, block-face SEM), "
                                "over a width chosen by cross-validation along z")
        if name == "super-resolve":
            p.add_argument("--scale", type=_positive, default=None, help="magnification; must match the model (2)")
            p.add_argument("--blur", metavar="B", default=None,
                           help="how the low-resolution image was acquired, for models told it (the bundled one): "
                                "auto (default: read off the image), area (a detector averaging each pixel, or "
                                "binning), or the width (std) of the scan's probe in output pixels, 0 to 2")
        p.add_argument("--uncertainty", metavar="UNC_OUT",
                       help="also write the per-pixel uncertainty (std, input units) here; for a batch, a folder "
                            "(files named <name>_uncertainty)")
        _batch_format_option(p)
        _pick_options(p)
        _voxel_option(p)
        _sampling_options(p)
        _region_option(p, "restore")
        p.add_argument("--flips", action=argparse.BooleanOptionalAction, default=None,
                       help="mirror ensemble: samples 2-4 see the image mirrored (default: on for --preset balanced)")
        p.set_defaults(task=name)

    p = sub.add_parser("isotropic", help="make an anisotropic volume isotropic (vEMDiffuse)",
                       description="generate factor-1 slices between neighbouring slices of a ZYX volume")
    p.add_argument("input", metavar="IN", nargs="+",
                   help="input volume .tif/.tiff, .mrc, .dm3/.dm4, .h5 (file.h5/dataset) or .zarr (ZYX), or a folder of 2D slices "
                        "(one file each); several volumes, or a folder of them with an output folder: a batch, "
                        "each volume with its own voxel size")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="output .tif/.tiff, .mrc, .zarr or .precomputed (neuroglancer; a .zarr store may be an object store's URL, "
                        "s3://bucket/iso.zarr); for a batch, a folder (made if missing; end it with / "
                        "for a folder of volumes) where each result takes its input's name")
    p.add_argument("--factor", type=int, help="z / xy spacing ratio (default: from the voxel size; for a batch, "
                   "every volume's)")
    p.add_argument("--mode", choices=["i", "a"], default="i", help="i: model trained on isotropic data; a: on this volume's lateral planes")
    p.add_argument("--uncertainty", metavar="UNC_OUT", help="also write the per-pixel uncertainty (std, input units) here; "
                   "for a batch, a folder (files named <name>_uncertainty)")
    p.add_argument("--denoise", action="store_true",
                   help="denoise the measured slices first (noisy volumes), with the bundled denoiser or "
                        "--denoise-model; the measured slices are then replaced by the denoised ones")
    p.add_argument("--denoise-model", metavar="MODEL", help="the denoising model for --denoise (implies it)")
    _region_option(p, "reconstruct")
    _batch_format_option(p)
    _pick_options(p)
    _voxel_option(p)
    _sampling_options(p)

    p = sub.add_parser("convert", help="write an image in another format, with its pixel size",
                       description="read any input this tool reads (DigitalMicrograph, Velox, N5, HDF5, MRC, zarr, "
                                   "TIFF, pictures, precomputed) and write it as TIFF (Fiji sees the pixel size), MRC, zarr or neuroglancer precomputed; a "
                                   "stack larger than memory is copied slice by slice")
    p.add_argument("input", metavar="IN", nargs="+",
                   help="the image, e.g. scan.dm4, stem.emd/HAADF, vol.n5/em/s0; or several files or a folder "
                        "(a session's .dm4 or .emd files)")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="output .tif/.tiff, .mrc, .zarr or .precomputed (neuroglancer; a .zarr store may be an object store's URL, "
                        "s3://bucket/stack.ome.zarr); for several inputs a folder (made if missing) where each "
                        "takes its input's name")
    p.add_argument("--to", choices=list(BATCH_FORMATS), default=".tif",
                   help="several inputs: the format every output takes (default .tif; into an object store's "
                        "folder, -o s3://bucket/stacks/, .tif and .mrc files and .precomputed folders are uploaded "
                        "whole)")
    p.add_argument("--bin", type=_positive, default=1, metavar="N",
                   help="average each N x N block of pixels (as a detector binning N x N); the pixel size "
                        "grows N times. For images sampled far finer than their detail (high magnification), "
                        "before denoising")
    p.add_argument("--region", type=_non_negative, nargs=4, metavar=("Y0", "Y1", "X0", "X1"), default=None,
                   help="write only rows Y0:Y1 and columns X0:X1 (of every slice): a cutout of a large or remote "
                        "volume, of which only those chunks are read")
    p.add_argument("--slices", type=_non_negative, nargs=2, metavar=("Z0", "Z1"), default=None,
                   help="a stack or volume: write only its sections Z0:Z1")
    c = p.add_mutually_exclusive_group()
    c.add_argument("--workers", type=_positive, metavar="N",
                   help="a .precomputed output: written by a local dask cluster of N processes, each scale's blocks "
                        "side by side, from the input read in place (a whole zarr, N5, HDF5, precomputed or CZI "
                        "image, a TIFF read page by page, an MRC, DM or TIFF file of 1 GiB or more; a batch, --to .precomputed: one file after another)")
    c.add_argument("--scheduler", metavar="ADDRESS|FILE",
                   help="as --workers, by a running dask cluster (its scheduler's address, e.g. tcp://host:8786, or "
                        "the file it wrote) whose workers reach the input and the output")
    _encoding_options(p)
    _zarr_format_option(p)
    _pick_options(p)
    _voxel_option(p)

    p = sub.add_parser("info", help="what the restoration commands will read from files: shape, type, voxel size",
                       description="show how each file is read (shape, pixel type, axes, pixel size) and, for "
                                   "volumes with a voxel size, the isotropic factor it implies")
    p.add_argument("input", metavar="IN", nargs="+", help="image files, zarr stores or folders of slices")
    _pick_options(p)
    p.add_argument("--json", action="store_true",
                   help="one JSON object per input (path, shape, dtype, axes, spacing, unit, note, ...), for scripts")

    p = sub.add_parser("score", help="how close images come to a reference: PSNR, SSIM, FRC, uncertainty calibration",
                       description="score images of one field (an input, its restorations, another tool's) against a "
                                   "reference of it (a long-dwell scan, a clean image): PSNR, SSIM, mean absolute "
                                   "error, FRC resolution, the darkest and brightest 1 % of the reference's pixels' "
                                   "bias and, with --uncertainty, how well each map marks the errors")
    p.add_argument("input", metavar="IMAGE", nargs="+",
                   help="images of one grid (2D or ZYX stacks), any format read; or one folder of results, "
                        "scored against a folder of references whose images pair with them by name")
    p.add_argument("--reference", metavar="REF", required=True,
                   help="the same field, as well recorded as you have it (a folder, for a folder of results)")
    p.add_argument("--uncertainty", metavar="U", nargs="+", default=None,
                   help="an uncertainty map per image (- for none), as --uncertainty writes them: coverage of the "
                        "reference by +-2 std, the rank correlation of 32-px tiles' std and error, and the 1 %% "
                        "worst pixels' std over the median")
    p.add_argument("--region", type=_non_negative, nargs=4, metavar=("Y0", "Y1", "X0", "X1"), default=None,
                   help="score only rows Y0:Y1 and columns X0:X1 of every file (say the half a fine-tune did not see)")
    p.add_argument("--register", choices=("translation", "affine"), default=None,
                   help="align the reference onto the images first (two scans drift: a shift costs every method "
                        "alike), then score their overlap; the images are never resampled")
    p.add_argument("--data-range", type=_positive_float, metavar="R", default=None,
                   help="the PSNR's peak (default: 255 for an 8-bit reference, else its max - min)")
    p.add_argument("--factor", type=_positive, metavar="F", default=None,
                   help="the images are isotropic reconstructions with factor F: score only the slices they made "
                        "(index not a multiple of F; the measured ones are the input's own)")
    _pick_options(p)  # applied to the files that declare channels or time points
    p.add_argument("--json", action="store_true", help="one JSON object per image, for scripts")

    p = sub.add_parser("models", help="list bundled and user models")
    p.add_argument("--task", choices=list(TASKS), help="only the models for this task")

    p = sub.add_parser("export", help="write a predictor as a bioimage.io model package (.zip)")
    p.add_argument("model", metavar="MODEL", help="model name, directory or .zip")
    p.add_argument("-o", "--output", metavar="PACKAGE.zip", required=True)
    p.add_argument("--blur", metavar="auto|area|W", default="auto",
                   help="super-resolution told the acquisition blur: auto (default: the package reads it off "
                        "each image), area (2x2 area means) or a probe width in high-resolution pixels, fixed")
    p.add_argument("--factor", type=_positive, metavar="F",
                   help="an isotropic model of every factor (demo-isotropic-any): the factor the package makes "
                        "(F - 1 new slices between two slices)")

    p = sub.add_parser("import", help="turn a published best_Network.pth into a model directory",
                       description="read a published EMDiffuse / vEMDiffuse checkpoint (its network read off the "
                                   "weights' shapes) and write it as a model directory that every command, the "
                                   "API and the widgets load by its path")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="the published weights (.pth, .pt, .ckpt, .bin or .safetensors)")
    p.add_argument("--arch", required=True, choices=list(ARCHITECTURES),
                   help="what the checkpoint was trained for: EMDiffuse-n (denoise), EMDiffuse-r (x2 "
                        "super-resolution), vEMDiffuse-i / vEMDiffuse-a (isotropic reconstruction)")
    p.add_argument("-o", "--output", metavar="MODEL_DIR", required=True, help="the model directory to write")

    p = sub.add_parser("verify-checkpoint", help="check a port of weights against reference outputs",
                       description="rebuild the network of REFERENCE.json, load CHECKPOINT and recompute "
                                   "every array of REFERENCE.npz; exit 0 only if all match to 1e-4")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="the weights to check")
    p.add_argument("reference_json", metavar="REFERENCE.json", help="the network and the inputs the reference used")
    p.add_argument("reference_npz", metavar="REFERENCE.npz", help="the original implementation's outputs")
    p.add_argument("--tolerance", type=_positive_float, default=1e-4, help="largest absolute difference (default 1e-4)")

    p = sub.add_parser("train", help="train a model from a YAML recipe")
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--max-minutes", type=_number(float, lambda v: v > 0, "a positive number of minutes"),
                   default=None, metavar="MIN",
                   help="stop after this many minutes (wall clock), save the model and a checkpoint; "
                        "--resume continues")

    p = sub.add_parser("finetune", help="fine-tune a model on your own data")
    p.add_argument("--task", required=True, choices=list(TASKS))
    p.add_argument("--input", required=True, metavar="IN", nargs="+",
                   help="degraded image (or volume for isotropic); several: several images (pairs), each with "
                        "its held-back strip; a folder with a --target folder: their images, paired by name")
    _pick_options(p)
    p.add_argument("--target", metavar="TGT", nargs="+",
                   help="registered clean/high-resolution image (optional); one for each --input, in order")
    p.add_argument("--base", metavar="MODEL", help="model to start from (default: bundled model for the task)")
    p.add_argument("-o", "--output", metavar="MODEL_DIR", required=True)
    defaults = FinetuneOptions()  # the API's defaults
    p.add_argument("--iterations", type=_positive, default=defaults.iterations)
    p.add_argument("--patch", type=_positive, default=defaults.patch)
    p.add_argument("--batch", type=_positive, default=defaults.batch)
    p.add_argument("--lr", type=_number(float, lambda v: 0 < v < 1, "a learning rate in (0, 1)"), default=None,
                   help="default 1e-3 (predictors, denoising pairs: only the full-resolution layers train), "
                        "5e-4 (the same with --freeze-encoder), 2e-4 (other predictors, self-supervised too), "
                        "5e-5 (self-supervised with --freeze-encoder; 1e-5 with --anchor 0) or 5e-5 (diffusion)")
    p.add_argument("--resample-noise", type=_unit, default=None, metavar="FRACTION",
                   help="denoising pairs: share of crops given the pair's own noise from elsewhere (default 1)")
    p.add_argument("--noise-gain", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="denoising pairs: scale the pair's noise by LOW..HIGH, e.g. 1 1.41 to also "
                        "restore scans at half the pair's dwell time (default 1 1: as recorded)")
    p.add_argument("--base-margin", type=_number(float, lambda v: -10.0 <= v <= 10.0, "a number of dB in [-10, 10]"),
                   default=None, metavar="DB",
                   help="validation PSNR gain over the base model needed to keep the fine-tuned weights "
                        "(default 0.1 dB: smaller gains on a pair's held-back strip did not carry to the rest of "
                        "an image; 0.06 for a denoising pair from a predictor, which saves the mean of its "
                        "weights; 0 for denoising a clean input; -0.1 self-supervised from a predictor, whose "
                        "blind-spot score cannot rank the base: negative is a loss tolerated)")
    p.add_argument("--patience", type=_non_negative, default=None, metavar="N",
                   help="stop after N validations without a gain (default 2; 0: run every iteration; "
                        "a denoising pair from a predictor always runs every iteration: it saves the mean of its weights)")
    p.add_argument("--anchor", type=_number(float, lambda v: 0.0 <= v <= 1e6, "a weight in [0, 1e6]"),
                   default=None, metavar="WEIGHT",
                   help="self-supervised: keep the output near the base model's away from the blind spots "
                        "(default 10; 0: the blind spot alone, which lost 0.6-0.8 dB on real SEM noise)")
    p.add_argument("--downsampling", nargs="+", choices=DOWNSAMPLING, default=None,
                   metavar="WAY", help="super-resolve without --target: how the input is halved to make pairs: "
                                       "area (default; block means), gaussian (centred samples after a 0.5 or 1 px "
                                       "blur), decimate (image[::2, ::2] after a 0-1 px blur); several mix")
    p.add_argument("--register", choices=["translation", "affine"], default=None,
                   help="align --target to --input first, to a fraction of a pixel: affine also removes the "
                        "drift and magnification difference of two scans (default: a target of another shape "
                        "is registered (affine), one of the same shape is taken as registered)")
    p.add_argument("--factor", type=int, default=None, help="isotropic: slices per gap (default: the base model's)")
    p.add_argument(
        "--objective", choices=["supervised", "self-supervised", "neighbour-slices"], default=None,
        help="denoise without --target: self-supervised (the default: a blind spot, noisy images alone), "
        "neighbour-slices (a stack whose neighbouring slices are alike, e.g. FIB-SEM: each slice learns from "
        "the mean of its two neighbours; restoring averages such a stack along z anyway) or supervised (the "
        "input is clean: simulate noise)",
    )
    p.add_argument("--doses", type=_positive_float, nargs="+", metavar="D", default=None,
                   help="denoise --objective supervised without --target (a clean input): the simulated "
                        "doses, detected electrons at white (default 20 50 100 200 500); match your recordings")
    p.add_argument("--noise-correlation", type=_unit, metavar="A", default=None,
                   help="with --doses' route: neighbour weight of the simulated noise's [A, 1, A] kernel per "
                        "axis (default 0: white; 0.35 gives the ~0.5 neighbour correlation of short-dwell SEM)")
    p.add_argument("--val-fraction", type=_fraction, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=defaults.precision,
                   help="training arithmetic (default auto: bf16 mixed precision on a GPU or CPU with native bf16, "
                        "1.45x faster on such a CPU with the same validation; else fp32)")
    p.add_argument("--freeze-encoder", action="store_true")
    return parser


def _version() -> str:
    from . import __version__

    return f"{PROG} {__version__}"
