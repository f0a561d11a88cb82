"""``emdiffuse``: the command line, a thin layer over the public API.

Exit status: 0 on success, 2 on a user error (bad input, bad option, unreadable file,
model/task mismatch) with a one-line reason on stderr and no traceback, 1 when a
verification fails, 130 when interrupted. Outputs are written to a temporary name and
renamed when complete, so a failed or cancelled run never leaves a file that looks whole.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .cli_progress import PROG, drive

__all__ = ["main", "build_parser"]


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
                   help="network arithmetic (default fp32; bf16 needs a GPU with native bf16)")
    c = p.add_mutually_exclusive_group()
    c.add_argument("--workers", type=_positive, help="run on a local dask cluster of N processes (zarr output)")
    c.add_argument("--scheduler", help="address of a running dask scheduler, e.g. tcp://host:8786 (zarr output)")


def build_parser() -> argparse.ArgumentParser:
    # The engine is the one place that knows task, architecture, preset and sampler names.
    from .api import FinetuneOptions
    from .engine.models.cards import ARCHITECTURES, TASKS
    from .engine.training.data.pairs import DOWNSAMPLING

    parser = _Parser(prog=PROG, description="Diffusion-model restoration of electron-microscopy images (EMDiffuse).")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    for name, helptext in (("denoise", "denoise a 2D image or a stack (slice by slice)"),
                           ("super-resolve", "x2 super-resolution of a 2D image or a stack")):
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("input", metavar="IN", nargs="+",
                       help="input .tif/.tiff, .mrc, .png/.jpg/.bmp or .zarr; several files or a folder: "
                            "a batch, with the model loaded once")
        p.add_argument("-o", "--output", metavar="OUT", required=True,
                       help="output .tif/.tiff, .mrc or .zarr; for a batch, a folder (made if missing) where each "
                            "result takes its input's name (pictures become .tif)")
        if name == "super-resolve":
            p.add_argument("--scale", type=_positive, default=None, help="magnification; must match the model (2)")
            p.add_argument("--blur", metavar="B", default=None,
                           help="how the low-resolution image was acquired, for models told it (the bundled one): "
                                "auto (default: read off the image), area (a detector averaging each pixel, or "
                                "binning), or the width (std) of the scan's probe in output pixels, 0 to 2")
        p.add_argument("--uncertainty", metavar="UNC_OUT",
                       help="also write the per-pixel uncertainty (std, input units) here; for a batch, a folder "
                            "(files named <name>_uncertainty)")
        _sampling_options(p)
        p.add_argument("--flips", action=argparse.BooleanOptionalAction, default=None,
                       help="mirror ensemble: samples 2-4 see the image mirrored (default: on for --preset balanced)")
        p.set_defaults(func=_cmd_restore, task=name)

    p = sub.add_parser("isotropic", help="make an anisotropic volume isotropic (vEMDiffuse)",
                       description="generate factor-1 slices between neighbouring slices of a ZYX volume")
    p.add_argument("input", metavar="IN",
                   help="input volume .tif/.tiff, .mrc or .zarr (ZYX), or a folder of 2D slices (one file each)")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="output .tif/.tiff, .mrc or .zarr")
    p.add_argument("--factor", type=int, help="z / xy spacing ratio (default: from the voxel size)")
    p.add_argument("--mode", choices=["i", "a"], default="i", help="i: model trained on isotropic data; a: on this volume's lateral planes")
    p.add_argument("--uncertainty", metavar="UNC_OUT", help="also write the per-pixel uncertainty (std, input units) here")
    p.add_argument("--denoise", action="store_true",
                   help="denoise the measured slices first (noisy volumes), with the bundled denoiser or "
                        "--denoise-model; the measured slices are then replaced by the denoised ones")
    p.add_argument("--denoise-model", metavar="MODEL", help="the denoising model for --denoise (implies it)")
    _sampling_options(p)
    p.set_defaults(func=_cmd_isotropic)

    p = sub.add_parser("info", help="what the restoration commands will read from files: shape, type, voxel size",
                       description="show how each file is read (shape, pixel type, axes, pixel size) and, for "
                                   "volumes with a voxel size, the isotropic factor it implies")
    p.add_argument("input", metavar="IN", nargs="+", help="image files, zarr stores or folders of slices")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("models", help="list bundled and user models")
    p.add_argument("--task", choices=list(TASKS))
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("export", help="write a predictor as a bioimage.io model package (.zip)")
    p.add_argument("model", metavar="MODEL", help="model name, directory or .zip")
    p.add_argument("-o", "--output", metavar="PACKAGE.zip", required=True)
    p.add_argument("--blur", metavar="auto|area|W", default="auto",
                   help="super-resolution told the acquisition blur: auto (default: the package reads it off "
                        "each image), area (2x2 area means) or a probe width in high-resolution pixels, fixed")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("import", help="turn a published best_Network.pth into a model directory")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--arch", required=True, choices=list(ARCHITECTURES))
    p.add_argument("-o", "--output", metavar="MODEL_DIR", required=True)
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser("verify-checkpoint", help="check a port of weights against reference outputs",
                       description="rebuild the network of REFERENCE.json, load CHECKPOINT and recompute "
                                   "every array of REFERENCE.npz; exit 0 only if all match to 1e-4")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("reference_json", metavar="REFERENCE.json")
    p.add_argument("reference_npz", metavar="REFERENCE.npz")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("train", help="train a model from a YAML recipe")
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--max-minutes", type=_number(float, lambda v: v > 0, "a positive number of minutes"),
                   default=None, metavar="MIN",
                   help="stop after this many minutes (wall clock), save the model and a checkpoint; "
                        "--resume continues")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("finetune", help="fine-tune a model on your own data")
    p.add_argument("--task", required=True, choices=list(TASKS))
    p.add_argument("--input", required=True, metavar="IN", help="degraded image (or volume for isotropic)")
    p.add_argument("--target", metavar="TGT", help="registered clean/high-resolution image (optional)")
    p.add_argument("--base", metavar="MODEL", help="model to start from (default: bundled model for the task)")
    p.add_argument("-o", "--output", metavar="MODEL_DIR", required=True)
    defaults = FinetuneOptions()  # the API's defaults
    p.add_argument("--iterations", type=_positive, default=defaults.iterations)
    p.add_argument("--patch", type=_positive, default=defaults.patch)
    p.add_argument("--batch", type=_positive, default=defaults.batch)
    p.add_argument("--lr", type=float, default=None,
                   help="default 5e-4 (predictors, denoising pairs), 2e-4 (other predictors), 1e-5 "
                        "(self-supervised) or 5e-5 (diffusion)")
    p.add_argument("--resample-noise", type=_unit, default=None, metavar="FRACTION",
                   help="denoising pairs: share of crops given the pair's own noise from elsewhere (default 1)")
    p.add_argument("--noise-gain", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="denoising pairs: scale the pair's noise by LOW..HIGH, e.g. 1 1.41 to also "
                        "restore scans at half the pair's dwell time (default 1 1: as recorded)")
    p.add_argument("--base-margin", type=_number(float, lambda v: 0.0 <= v <= 10.0, "a number of dB in [0, 10]"),
                   default=None, metavar="DB",
                   help="validation PSNR gain over the base model needed to keep the fine-tuned weights "
                        "(default 0.1 dB: smaller gains on a pair's held-back strip did not carry to the rest of "
                        "an image; 0 for denoising a clean input or self-supervised)")
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
        "--objective", choices=["supervised", "self-supervised"], default=None,
        help="denoise without --target: self-supervised (default; noisy images alone) or supervised "
        "(the input is clean: simulate noise)",
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
    p.add_argument("--freeze-encoder", action="store_true")
    p.set_defaults(func=_cmd_finetune)
    return parser


def _version() -> str:
    from . import __version__

    return f"{PROG} {__version__}"


# -- helpers -----------------------------------------------------------------------------

def _sampling_kwargs(args: argparse.Namespace) -> dict:
    kw = dict(
        arch=args.arch, preset=args.preset, steps=args.steps, samples=args.samples, tile=args.tile,
        overlap=args.overlap, batch=args.batch, seed=args.seed, device=args.device, precision=args.precision,
    )
    if getattr(args, "sampler", None):
        kw["sampler"] = args.sampler
    if getattr(args, "flips", None) is not None:
        kw["flips"] = args.flips
    if getattr(args, "refine", None) is not None:
        kw["refine"] = args.refine
    if getattr(args, "blur", None) is not None:
        kw["blur"] = args.blur
    return kw


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _check_outputs(args: argparse.Namespace, *outs: str | None) -> list[Path | None]:
    from .engine.errors import InputError
    from .engine.io.common import check_output_path

    inp = Path(args.input)
    checked = []
    for out in outs:
        if out is None:
            checked.append(None)
            continue
        path = check_output_path(out)
        if _same_file(path, inp):
            raise InputError(f"output '{out}' is the input file; choose another name")
        checked.append(path)
    if len([p for p in checked if p]) == 2 and _same_file(checked[0], checked[1]):
        raise InputError("the output and the uncertainty output are the same file")
    return checked


def _is_zarr(path: Path) -> bool:
    return path.suffix.lower() == ".zarr"


# -- commands ------------------------------------------------------------------------------

def _load_restorer(args: argparse.Namespace) -> Any:
    from .engine.errors import InputError
    from .engine.models.device import resolve_device
    from .engine.models.registry import load_model

    model = load_model(args.model, task=args.task, arch=args.arch, device=resolve_device(args.device))
    if args.task == "super-resolve" and args.scale is not None and args.scale != model.card.scale:
        raise InputError(f"model '{model.card.name}' magnifies x{model.card.scale}, not x{args.scale}")
    return model


def _cmd_restore(args: argparse.Namespace) -> int:
    from .engine.io.batch import is_batch

    if is_batch(args.input):
        return _restore_batch(args)
    args.input = args.input[0]
    out, unc = _check_outputs(args, args.output, args.uncertainty)
    return _restore_one(args, _load_restorer, out, unc)


def _restore_batch(args: argparse.Namespace) -> int:
    """Each file of a batch in turn, the model loaded once; a file that cannot be read is
    reported and skipped, and the exit status says whether any was."""
    from .engine.errors import InputError
    from .engine.io.batch import expand_inputs, plan_batch

    if args.workers or args.scheduler:
        raise InputError("--workers/--scheduler restore one zarr store; give a batch without them")
    plan = plan_batch(expand_inputs(args.input), args.output, args.uncertainty)
    model = _load_restorer(args)
    failed = []
    for k, (src, out, unc) in enumerate(plan, 1):
        print(f"[{k}/{len(plan)}] {src}", file=sys.stderr)
        args.input = str(src)
        try:
            _restore_one(args, lambda _args: model, out, unc)
        except InputError as exc:
            print(f"{PROG}: skipped {src}: {exc}", file=sys.stderr)
            failed.append(src)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted at file {k} of {len(plan)}; the {k - 1 - len(failed)} written before it "
                  "are complete, this one was not written", file=sys.stderr)
            return 130
    if failed:
        raise InputError(f"{len(failed)} of {len(plan)} files were skipped (reasons above)")
    return 0


def _restore_one(args: argparse.Namespace, load: Any, out: Path, unc: Path | None) -> int:
    from .engine.errors import InputError
    from .engine.io.images import read_image, write_image
    from .api import restore_iter, restore_to_zarr_iter
    from .engine.inference.checks import validate_image
    from .engine.inference.restore import provenance

    data = read_image(args.input)
    validate_image(data.data)
    model = load(args)
    kw = _sampling_kwargs(args)
    kw.pop("arch")
    distributed = args.workers or args.scheduler
    if distributed and not (_is_zarr(out) and _is_zarr(Path(args.input))):
        raise InputError("--workers/--scheduler need a .zarr input and a .zarr output")
    if _is_zarr(out):
        # Workers load the model themselves: hand them its name or path, not this process's copy.
        gen = restore_to_zarr_iter(
            data.data, out, args.task, args.model if distributed else model, uncertainty_out=unc,
            spacing=data.spacing, workers=args.workers, scheduler=args.scheduler,
            arch=args.arch if distributed else None, **kw,
        )
        if unc is not None and not _is_zarr(unc):
            raise InputError("with a .zarr output, give the uncertainty output as .zarr too")
        drive(gen)
        import zarr

        attrs = dict(zarr.open_array(str(out), mode="r").attrs)
        _note_fill(attrs.get("normalisation"))
        _note_blur(attrs)
        print(f"wrote {out}", file=sys.stderr)
        return 0
    result = drive(restore_iter(data.data, args.task, model, spacing=data.spacing, **kw))
    if result is None:  # pragma: no cover - the generator always ends with a result
        raise RuntimeError("restoration ended without a result")
    _note_fill(result.normalisation)
    _note_blur(result.info)
    axes = data.axes if data.axes and len(data.axes) == result.mean.ndim else None
    made = provenance(result.info, result.normalisation, source=str(args.input))
    write_image(out, result.mean, spacing=result.spacing, unit=data.unit or "nm", axes=axes, provenance=made)
    wrote = [str(out)]
    if unc is not None:
        if result.uncertainty is None:
            print(f"{PROG}: note: one sample gives no uncertainty; use --samples 2 or more", file=sys.stderr)
        else:
            write_image(unc, result.uncertainty, spacing=result.spacing, unit=data.unit or "nm", axes=axes,
                        provenance={**made, "what": "uncertainty (std, input units)"})
            wrote.append(f"{unc} (uncertainty)")
    print(f"wrote {' and '.join(wrote)}", file=sys.stderr)
    return 0


def _note_blur(info: dict) -> None:
    if info.get("blur") is not None:
        source = info.get("blur_source", "given")
        hint = "; give --blur if you know it" if source == "read off the image" else ""
        print(f"{PROG}: acquisition blur {info['blur']:g} px ({source}){hint}", file=sys.stderr)


def _note_fill(normalisation: dict | None) -> None:
    fill = (normalisation or {}).get("fill")
    if fill is not None:
        print(f"{PROG}: note: regions of value {fill:g} are taken as fill (no data) and kept as they are",
              file=sys.stderr)
    if (normalisation or {}).get("nan"):
        print(f"{PROG}: note: NaN pixels are taken as no data and kept as NaN (0 in integer outputs)", file=sys.stderr)


def _cmd_isotropic(args: argparse.Namespace) -> int:
    from .engine.errors import InputError
    from .engine.io.images import read_image, write_image
    from .api import reconstruct_isotropic_iter

    out, unc = _check_outputs(args, args.output, args.uncertainty)
    data = read_image(args.input)
    if data.data.ndim != 3:
        raise InputError(f"isotropic reconstruction needs a 3D (ZYX) volume; '{args.input}' has {data.data.ndim} dimensions")
    if args.factor is None and data.spacing is None:
        raise InputError(f"'{args.input}' does not say its voxel size; give the z / xy spacing ratio with --factor F")
    kw = _sampling_kwargs(args)
    distributed = bool(args.workers or args.scheduler)
    if distributed and not _is_zarr(out):
        raise InputError("--workers/--scheduler need a .zarr output")
    zarr_out = out if _is_zarr(out) else None
    denoise = args.denoise_model or (True if args.denoise else None)
    gen = reconstruct_isotropic_iter(
        data.data, args.factor, args.model, mode=args.mode, spacing=data.spacing, out=zarr_out,
        uncertainty=(str(unc) if zarr_out is not None and unc is not None else unc is not None),
        workers=args.workers, scheduler=args.scheduler, denoise=denoise, **kw,
    )
    result = drive(gen)
    _note_fill(result.info.get("normalisation"))
    if zarr_out is None:
        from .engine.inference.restore import provenance

        made = provenance(result.info, result.info.get("normalisation"), source=str(args.input))
        write_image(out, result.volume, spacing=result.spacing, unit=data.unit or "nm", axes="ZYX", provenance=made)
        if unc is not None and result.uncertainty is not None:
            write_image(unc, result.uncertainty, spacing=result.spacing, unit=data.unit or "nm", axes="ZYX",
                        provenance={**made, "what": "uncertainty (std, input units)"})
    print(f"wrote {out} ({result.factor}x more slices)", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .engine.errors import InputError
    from .engine.io.spacing import factor_from_spacing
    from .engine.io.images import read_image

    failed = 0
    for name in args.input:
        try:
            img = read_image(name)
        except InputError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            failed += 1
            continue
        shape = " x ".join(str(n) for n in img.data.shape)
        size = ("no pixel size" if img.spacing is None
                else " x ".join(f"{v:g}" for v in img.spacing) + f" {img.unit or '(unit unknown)'}")
        # .name, not str(): a big-endian MRC is '>f4' to numpy, float32 to a user (restoration converts it)
        line = f"{name}: {shape} {img.data.dtype.name}, axes {img.axes or 'not declared'}, {size}"
        if img.data.ndim == 3 and img.spacing is not None:
            try:
                line += f"; isotropic factor {factor_from_spacing(img.spacing)}"
            except InputError as exc:
                line += f"; no isotropic factor: {exc}"
        print(line)
    if failed:
        raise InputError(f"{failed} of {len(args.input)} inputs could not be read (reasons above)")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .engine.models.registry import list_models

    models = list_models(args.task)
    if not models:
        print("no models installed", file=sys.stderr)
        return 0
    home = Path.home()

    def short(path: Path) -> str:
        # bundled models live deep in site-packages: the folder name says enough
        p = Path(path)
        if "site-packages" in p.parts or "resources" in p.parts:
            return f".../{p.parent.name}/{p.name}"
        return f"~/{p.relative_to(home)}" if p.is_relative_to(home) else str(p)

    rows = [("NAME", "TASK", "KIND", "SOURCE", "PATH")]
    rows += [(m.name, m.task, "predictor" if m.kind == "regression" else m.kind, m.source, short(m.path)) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:4], widths)) + "  " + r[4])
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .engine.inference.canvas import resolve_blur
    from .engine.models.bioimageio import export_bioimageio
    from .engine.models.registry import load_model

    model = load_model(args.model, device="cpu")
    path = export_bioimageio(model, args.output, blur=resolve_blur(model.card, args.blur))
    print(f"wrote {path} (bioimage.io model package; load it back with --model {path})", file=sys.stderr)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from .engine.errors import InputError
    from .engine.models.cards import published_network
    from .engine.models.factory import import_published
    from .engine.models.files import read_card
    from .engine.models.registry import register_model

    out = Path(args.output)
    if out.exists() and any(out.iterdir()) if out.is_dir() else out.exists():
        raise InputError(f"'{out}' already exists; choose a new model directory")
    if not out.parent.is_dir():
        raise InputError(f"output folder '{out.parent}' does not exist")
    path = import_published(args.checkpoint, args.arch, out)
    register_model(path)
    net = read_card(path).network
    if net != published_network(args.arch):  # another width or depth, read off the shapes
        print(f"network read from the checkpoint: {net.inner_channel} channels, multipliers "
              f"{net.channel_mults}, {net.res_blocks} residual block(s) per level", file=sys.stderr)
    print(f"imported {args.arch} into {path}", file=sys.stderr)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .engine.models.verify import verify_checkpoint

    rows, ok = verify_checkpoint(args.checkpoint, args.reference_json, args.reference_npz, tolerance=args.tolerance)
    width = max(len(r[0]) for r in rows)
    for name, err, passed in rows:
        print(f"{name:<{width}}  max abs error {err:.3e}  {'ok' if passed else 'FAIL'}")
    print(f"{'PASS' if ok else 'FAIL'}: tolerance {args.tolerance:g}")
    return 0 if ok else 1


def _cmd_train(args: argparse.Namespace) -> int:
    from .engine.training.config import TrainConfig
    from .api import train_iter

    cfg = TrainConfig.from_yaml(args.config)
    if args.resume:
        cfg = cfg.model_copy(update={"resume": True})
    if args.max_minutes is not None:
        cfg.max_minutes = args.max_minutes
    path = drive(train_iter(cfg))
    print(f"saved model to {path}", file=sys.stderr)
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .api import finetune_iter
    from .engine.models.files import read_card
    from .engine.training.finetune import verdict

    path = drive(
        finetune_iter(
            args.task, args.input, args.target, base=args.base, out=args.output, iterations=args.iterations,
            patch=args.patch, batch=args.batch, lr=args.lr, val_fraction=args.val_fraction, seed=args.seed,
            device=args.device, freeze_encoder=args.freeze_encoder, factor=args.factor, objective=args.objective,
            **({} if args.resample_noise is None else {"resample_noise": args.resample_noise}),
            **({} if args.noise_gain is None else {"noise_gain": tuple(args.noise_gain)}),
            **({} if args.base_margin is None else {"base_margin": args.base_margin}),
            **({} if args.anchor is None else {"anchor": args.anchor}),
            **({} if args.patience is None else {"patience": args.patience or None}),
            **({} if args.downsampling is None else {"downsampling": args.downsampling}),
            **({} if args.register is None else {"register": args.register}),
            **({} if args.doses is None else {"doses": args.doses}),
            **({} if args.noise_correlation is None else {"noise_correlation": args.noise_correlation}),
        )
    )
    line = verdict(read_card(path).metrics)
    if line:
        print(line, file=sys.stderr)
    print(f"saved model to {path}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``emdiffuse`` command; returns the exit status."""
    from .engine.errors import EMDiffuseError

    logging.basicConfig(level=os.environ.get("EMDIFFUSE_LOG", "ERROR"))
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    except EMDiffuseError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
