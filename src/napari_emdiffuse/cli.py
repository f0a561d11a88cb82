"""``emdiffuse``: the command line, a thin layer over the public API.

Exit status: 0 on success, 2 on a user error (bad input, bad option, unreadable file,
model/task mismatch) with a one-line reason on stderr and no traceback, 1 when a
verification fails, 130 when interrupted (Ctrl-C), 143 when terminated (SIGTERM: a cluster
job's time limit, ``scancel``, ``kill``), which stops a run as Ctrl-C does. Outputs are
written to a temporary name and renamed when complete, so a failed or cancelled run never
leaves a file that looks whole.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cli_parser import UsageError, build_parser
from .cli_progress import PROG, Terminated, drive

__all__ = ["main"]


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
    if getattr(args, "z_filter", None) is not None:
        kw["z_filter"] = args.z_filter
    if getattr(args, "region", None) is not None:
        kw["region"] = tuple(args.region)
    return kw


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _check_outputs(args: argparse.Namespace, *outs: str | None, urls: bool = False) -> list[Any]:
    """The outputs checked before any work; with ``urls``, a URL is one, kept as its URL: a
    ``.zarr`` store (:mod:`~.engine.io.zarrurl`), a TIFF or MRC file (written here, then
    uploaded: :mod:`~.engine.io.fileurl`)."""
    from .engine.errors import InputError
    from .engine.io.common import check_output_path, is_url
    from .engine.io.zarrurl import check_output_place

    inp = Path(args.input)
    checked: list[Any] = []
    for out in outs:
        if out is None:
            checked.append(None)
            continue
        if urls and is_url(out):
            if str(out).rstrip("/") == str(args.input).rstrip("/"):
                raise InputError(f"output '{out}' is the input file; choose another name")
            checked.append(check_output_place(out, resume=bool(getattr(args, "resume", False))))
            continue
        path = check_output_path(out)
        if _same_file(path, inp):
            raise InputError(f"output '{out}' is the input file; choose another name")
        checked.append(path)
    if len([p for p in checked if p]) == 2 and (checked[0] == checked[1] if isinstance(checked[0], str)
                                                else isinstance(checked[1], Path) and _same_file(checked[0], checked[1])):
        raise InputError("the output and the uncertainty output are the same file")
    return checked


# -- commands ------------------------------------------------------------------------------

def _load_restorer(args: argparse.Namespace, device: str | None = None) -> Any:
    from .engine.errors import InputError
    from .engine.models.device import resolve_device
    from .engine.models.registry import load_model

    model = load_model(args.model, task=args.task, arch=args.arch, device=resolve_device(device or args.device))
    if args.task == "super-resolve" and args.scale is not None and args.scale != model.card.scale:
        raise InputError(f"model '{model.card.name}' magnifies x{model.card.scale}, not x{args.scale}")
    return model


def _one_output(args: argparse.Namespace) -> None:
    """One input: its output's name gives the format; ``--to`` is a batch's."""
    from .engine.errors import InputError

    if args.to is not None:
        raise InputError(f"--to sets the format of a batch's results; name the output (e.g. "
                         f"'{Path(args.output).stem}{args.to}'), or give a folder (ending in /) for a batch")


def _cmd_restore(args: argparse.Namespace) -> int:
    from .engine.io.batch import check_one_image, is_batch

    if is_batch(args.input, args.output):
        return _restore_batch(args)
    _one_output(args)
    check_one_image(args.input[0])
    args.input = args.input[0]
    _check_encoding(args, batch=False)
    out, unc = _check_outputs(args, args.output, args.uncertainty, urls=True)
    return _restore_one(args, _load_restorer, out, unc)


def _restore_batch(args: argparse.Namespace) -> int:
    """Each file of a batch in turn, the model loaded once (:func:`~.batches.restore_files_iter`);
    a file that cannot be read is reported and skipped, and the exit status says whether any
    was. ``--resume`` leaves out the files whose outputs exist (written whole by an earlier run:
    outputs appear only when complete)."""
    from .engine.errors import InputError
    from .engine.events import Progress, duration, files_left
    from .batches import restore_files_iter
    from .files import ISOTROPIC_TASKS, note

    _check_encoding(args, batch=True)
    kw = _sampling_kwargs(args) | _encoding_kwargs(args)
    distributed = bool(args.workers or args.scheduler)
    if args.task in ISOTROPIC_TASKS:  # each volume's factor picks the bundled model: hand over the name
        model: Any = args.model
        kw.update(factor=args.factor, denoise=_denoiser(args))
    elif distributed:  # the workers load it by name or path; checked here first (task, scale)
        _load_restorer(args, "cpu")
        model = args.model
    else:
        model = lambda: _load_restorer(args)  # noqa: E731 - loaded once, after the plan is checked
    at = {"file": 0, "of": 0, "skipped": 0}
    start = time.monotonic()

    def told(gen: Any) -> Any:  # the file each event belongs to, the time left, for the lines and for Ctrl-C
        for ev in gen:
            if isinstance(ev, Progress) and ev.stage == "file" and ev.done < ev.total:
                at.update(file=ev.done + 1, of=ev.total)
                left = files_left(time.monotonic() - start, ev.done, ev.total)
                ev = note(f"[{ev.done + 1}/{ev.total}] {ev.message}" + (f" (about {duration(left)} left)" if left else ""))
            elif isinstance(ev, Progress) and ev.stage == "note" and ev.message.startswith("skipped "):
                at["skipped"] += 1
            yield ev

    try:
        done = drive(told(restore_files_iter(
            args.input, args.output, args.task, model, uncertainty_dir=args.uncertainty, ext=args.to,
            resume=args.resume, channel=args.channel, time=args.time, voxel_size=getattr(args, "voxel_size", None),
            workers=args.workers, scheduler=args.scheduler, zarr_format=args.zarr_format, **kw,
        )))
    except KeyboardInterrupt:
        if distributed:
            print(f"{PROG}: interrupted; the files written are complete, those in progress were not written "
                  "(--resume skips the complete ones)", file=sys.stderr)
            return 130
        k = at["file"]
        print(f"{PROG}: interrupted at file {k} of {at['of']}; the {max(k - 1 - at['skipped'], 0)} written before it "
              "are complete, this one was not written (--resume skips the complete ones)", file=sys.stderr)
        return 130
    if done.skipped:
        raise InputError(f"{len(done.skipped)} of {done.total} files were skipped (reasons above)")
    return 0


def _restore_one(args: argparse.Namespace, load: Any, out: Path, unc: Path | None) -> int:
    from .files import restore_file_iter

    kw = _sampling_kwargs(args) | _encoding_kwargs(args)
    kw.pop("arch")
    wrote = drive(restore_file_iter(
        args.input, out, args.task, lambda: load(args), uncertainty_out=unc, channel=args.channel, time=args.time,
        voxel_size=getattr(args, "voxel_size", None), workers=args.workers, scheduler=args.scheduler,
        model_ref=args.model, arch=args.arch, resume=args.resume, zarr_format=args.zarr_format, **kw,
    ))
    print(f"wrote {' and '.join(wrote)}", file=sys.stderr)
    return 0


def _denoiser(args: argparse.Namespace) -> Any:
    """``--denoise`` / ``--denoise-model``: the denoiser of an isotropic run's measured slices."""
    return args.denoise_model or (True if args.denoise else None)


def _cmd_isotropic(args: argparse.Namespace) -> int:
    """One volume (a file, a store, a folder of 2D slices) into an output file; several, or a
    folder of volumes with an output folder, as a batch (:func:`_restore_batch`)."""
    from .engine.io.batch import check_one_image, is_batch
    from .files import reconstruct_file_iter

    args.task = f"isotropic-{args.mode}"
    if is_batch(args.input, args.output, folder_is_image=True):
        return _restore_batch(args)
    _one_output(args)
    check_one_image(args.input[0], "reconstruct")
    args.input = args.input[0]
    _check_encoding(args, batch=False)
    out, unc = _check_outputs(args, args.output, args.uncertainty, urls=True)
    kw = _sampling_kwargs(args) | _encoding_kwargs(args)
    wrote = drive(reconstruct_file_iter(
        args.input, out, args.model, factor=args.factor, mode=args.mode, uncertainty_out=unc, channel=args.channel,
        time=args.time, voxel_size=getattr(args, "voxel_size", None), workers=args.workers, scheduler=args.scheduler,
        denoise=_denoiser(args), resume=args.resume, zarr_format=args.zarr_format, **kw,
    ))
    print(f"wrote {' and '.join(wrote)}", file=sys.stderr)
    return 0


def _read_input(args: argparse.Namespace) -> Any:
    """The input as ``read_image`` reads it, with ``--voxel-size`` (:func:`~.files.read_input`);
    its notes told."""
    from .files import read_input

    data, notes = read_input(args.input, channel=args.channel, time=args.time, voxel_size=getattr(args, "voxel_size", None))
    for text in notes:
        print(f"{PROG}: {text}", file=sys.stderr)
    return data


def _encoding_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """A ``.precomputed`` output's chunks (``--encoding``, ``--jpeg-quality``)."""
    return {"chunk_encoding": args.encoding, "jpeg_quality": args.jpeg_quality}


def _check_encoding(args: argparse.Namespace, batch: bool) -> None:
    """``--encoding`` and ``--jpeg-quality`` before any work: JPEG chunks need a
    ``.precomputed`` output (a batch: ``--to .precomputed``)."""
    from .engine.errors import InputError
    from .engine.io.precomputed_write import check_encoding

    check_encoding(args.encoding, args.jpeg_quality)
    if args.encoding != "raw" and batch and args.to != ".precomputed":
        raise InputError(f"--encoding {args.encoding} sets .precomputed outputs' chunks; add --to .precomputed")
    if not batch:
        check_encoding(args.encoding, args.jpeg_quality, args.output)


def _cmd_convert(args: argparse.Namespace) -> int:
    from .engine.errors import InputError
    from .engine.io.batch import check_one_image, expand_inputs, is_batch, plan_batch

    batch = is_batch(args.input, args.output)
    _check_encoding(args, batch)
    if batch and (args.workers or args.scheduler) and args.to != ".precomputed":
        raise InputError("--workers / --scheduler write .precomputed folders; add --to .precomputed, or leave them out")
    if not batch:
        check_one_image(args.input[0], "convert")
        args.input = args.input[0]
        (out,) = _check_outputs(args, args.output, urls=True)
        return _convert_one(args, out)
    if args.zarr_format != 2 and not (args.to or "").endswith(".zarr"):
        raise InputError(f"--zarr-format {args.zarr_format} is the format of .zarr outputs; add --to .zarr")
    plan = plan_batch(expand_inputs(args.input), args.output, ext=args.to)
    failed = 0
    with _cluster_of(args) as client:  # one for the batch, not one per file
        for k, (src, out, _) in enumerate(plan, 1):
            print(f"[{k}/{len(plan)}] {src}", file=sys.stderr)
            args.input = str(src)
            try:
                _convert_one(args, out, client)
            except InputError as exc:
                print(f"{PROG}: skipped {src}: {exc}", file=sys.stderr)
                failed += 1
    if failed:
        raise InputError(f"{failed} of {len(plan)} files were skipped (reasons above)")
    return 0


def _cluster_of(args: argparse.Namespace, client: Any = None) -> Any:
    """The dask client of ``convert --workers / --scheduler`` (``client`` where one is open
    already), for the length of a ``with``; None without them."""
    import contextlib

    if client is not None or not (args.workers or args.scheduler):
        return contextlib.nullcontext(client)
    from .engine.parallel.runner import cluster_client

    return cluster_client(args.workers, args.scheduler)


def _convert_one(args: argparse.Namespace, out: Path | str, client: Any = None) -> int:
    import numpy as np

    from .engine.errors import InputError
    from .engine.inference.checks import check_fits_in_memory
    from .engine.io.common import MRC_SUFFIXES, PRECOMPUTED_SUFFIX, is_url, is_zarr_name, streams_lazily, suffix_of
    from .engine.io.views import cutout
    from .engine.io.images import write_image
    from .engine.io.sources import source_of
    from .engine.io.spacing import output_origin
    from .outputs import writing

    cluster = args.workers or args.scheduler
    if cluster and (is_url(str(out)) or suffix_of(Path(str(out))) != PRECOMPUTED_SUFFIX):
        raise InputError(f"--workers / --scheduler write a .precomputed folder on a path they reach, not "
                         f"'{Path(str(out)).name}'; leave them out for other outputs")
    if cluster and (args.region is not None or args.slices is not None or args.bin > 1):
        raise InputError("--workers / --scheduler convert a whole image, read in place; leave out --region, --slices "
                         "and --bin, or convert in one process")
    data = _read_input(args)
    ndim = data.data.ndim
    if args.region is not None or args.slices is not None:
        data.data = cutout(data.data, region=args.region, slices=args.slices)
        y0, x0 = (args.region[0], args.region[2]) if args.region is not None else (0, 0)
        start = (args.slices[0] if args.slices is not None else 0, y0, x0)[-ndim:]
        data.origin = output_origin(data.origin, data.spacing, ndim, start=start)  # the cut-out's place
    if args.bin > 1:
        from .engine.io.pyramid import bin_lateral

        if min(data.data.shape[-2:]) < args.bin:
            raise InputError(f"'{args.input}' is {' x '.join(str(n) for n in data.data.shape)}: smaller than one "
                             f"{args.bin} x {args.bin} bin")
        data.data = bin_lateral(data.data, args.bin)
        if is_zarr_name(out):  # a bin's pixel centre; TIFF counts from corners, where a bin starts with its pixels
            data.origin = output_origin(data.origin, data.spacing, ndim, scale=1 / args.bin)
        if data.spacing is not None:
            data.spacing = (*data.spacing[:-2], *(v * args.bin for v in data.spacing[-2:]))
    if cluster and source_of(data.data) is None:  # read whole here (a small file, a picture, DM): no work to spread
        print(f"{PROG}: note: '{args.input}' is read here, not in place by workers (they open zarr, N5, HDF5, "
              "precomputed and CZI images, TIFFs read page by page and files of 1 GiB or more): it is converted in this process", file=sys.stderr)
        cluster = None
    if not cluster and not is_zarr_name(out) and not isinstance(data.data, np.ndarray) and not streams_lazily(data.data):
        check_fits_in_memory(tuple(data.data.shape), data.data.dtype, uncertainty=False)  # a lazy 2D image
    axes = data.axes if data.axes and len(data.axes) == data.data.ndim else None
    if not is_zarr_name(out) and suffix_of(Path(str(out))) in MRC_SUFFIXES:
        axes = None  # MRC has one layout: a series of frames is stored as its sections
    made = {"converted from": str(args.input), **({"region": list(args.region)} if args.region is not None else {}),
            **({"slices": list(args.slices)} if args.slices is not None else {})}

    def write(told: Any) -> Any:
        return write_image(out, data.data, spacing=data.spacing, unit=data.unit or "nm", axes=axes, origin=data.origin,
                           provenance=made, zarr_format=args.zarr_format, chunk_encoding=args.encoding,
                           jpeg_quality=args.jpeg_quality,
                           progress=None if told is None else (lambda stage, done, total: told(out, stage, done, total)))

    if cluster:  # each scale's blocks written by the workers, from the input where it is stored
        from .outputs import precomputed_on_cluster

        with _cluster_of(args, client) as on:
            drive(precomputed_on_cluster(on, out, data.data, spacing=data.spacing, unit=data.unit or "nm",
                                         origin=data.origin, made=made, chunk_encoding=args.encoding,
                                         jpeg_quality=args.jpeg_quality))
    else:
        # an input read lazily goes piece by piece, with a bar (a cutout by URL reads as it goes)
        lazy = not isinstance(data.data, np.ndarray) if is_zarr_name(out) else streams_lazily(data.data)
        drive(writing(write, out, pieces=lazy))
    size = "no pixel size" if data.spacing is None else " x ".join(f"{v:g}" for v in data.spacing) + f" {data.unit or ''}"
    print(f"wrote {out} ({' x '.join(str(n) for n in data.data.shape)} {data.data.dtype}, {size.strip()})", file=sys.stderr)
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

    first: dict[str, Path] = {}  # --model NAME loads the first model of that name (bundled ones first)
    for m in list_models():
        first.setdefault(m.name, m.path)

    def source(m: Any) -> str:
        return m.source if first.get(m.name) == m.path else f"{m.source} (name taken: --model PATH)"

    rows = [("NAME", "TASK", "KIND", "SOURCE", "PATH")]
    rows += [(m.name, m.task, "predictor" if m.kind == "regression" else m.kind, source(m), short(m.path)) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:4], widths)) + "  " + r[4])
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .engine.inference.canvas import resolve_blur
    from .engine.models.bioimageio import export_bioimageio
    from .engine.models.registry import load_model

    model = load_model(args.model, device="cpu")
    path = export_bioimageio(model, args.output, blur=resolve_blur(model.card, args.blur), factor=args.factor)
    print(f"wrote {path} (bioimage.io model package; load it back with --model {path})", file=sys.stderr)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from .engine.errors import InputError
    from .engine.io.common import refuse_url
    from .engine.models.cards import published_network
    from .engine.models.factory import import_published
    from .engine.models.files import read_card
    from .engine.models.registry import register_model

    refuse_url(args.output, "a model")
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
    args.saved_model = cfg.out  # where a stop saves the model so far (main says so)
    path = drive(train_iter(cfg), between_events=True)
    print(f"saved model to {path}", file=sys.stderr)
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .api import finetune_iter
    from .engine.models.files import read_card
    from .engine.training.finetune import verdict

    def one(path: str) -> Any:  # one channel or time point of a file: as a recipe names it
        if args.channel is None and args.time is None:
            return path
        return {"path": path, "channel": args.channel, "time": args.time}

    def named(paths: list[str] | None) -> Any:  # one file as itself, several as a list
        if paths is None:
            return None
        return one(paths[0]) if len(paths) == 1 else [one(p) for p in paths]

    if args.target is not None:  # pairs one by one, or two folders whose images share names
        from .engine.io.batch import matched_pairs

        args.input, args.target = matched_pairs(args.input, args.target)
    args.saved_model = args.output  # where a stop saves the best model so far (main says so)
    path = drive(
        finetune_iter(
            args.task, named(args.input), named(args.target), base=args.base, out=args.output, iterations=args.iterations,
            patch=args.patch, batch=args.batch, lr=args.lr, val_fraction=args.val_fraction, seed=args.seed,
            device=args.device, precision=args.precision, freeze_encoder=args.freeze_encoder, factor=args.factor,
            objective=args.objective, **({} if args.resample_noise is None else {"resample_noise": args.resample_noise}),
            **({} if args.noise_gain is None else {"noise_gain": tuple(args.noise_gain)}),
            **({} if args.base_margin is None else {"base_margin": args.base_margin}),
            **({} if args.anchor is None else {"anchor": args.anchor}),
            **({} if args.patience is None else {"patience": args.patience or None}),
            **({} if args.downsampling is None else {"downsampling": args.downsampling}),
            **({} if args.register is None else {"register": args.register}),
            **({} if args.doses is None else {"doses": args.doses}),
            **({} if args.noise_correlation is None else {"noise_correlation": args.noise_correlation}),
        ),
        between_events=True,
    )
    line = verdict(read_card(path).metrics)
    if line:
        print(line, file=sys.stderr)
    print(f"saved model to {path}", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .cli_info import info_command

    return info_command(args)


def _cmd_score(args: argparse.Namespace) -> int:
    from .cli_score import score_command

    return score_command(args)


#: What each subcommand of ``cli_parser.build_parser`` runs.
COMMANDS = {
    "denoise": _cmd_restore, "super-resolve": _cmd_restore, "isotropic": _cmd_isotropic, "info": _cmd_info,
    "convert": _cmd_convert, "score": _cmd_score,
    "models": _cmd_models, "export": _cmd_export, "import": _cmd_import, "verify-checkpoint": _cmd_verify,
    "train": _cmd_train, "finetune": _cmd_finetune,
}


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM outside a driven run (reading, checking): stop at once, cleaning up as Ctrl-C
    does (a driven run stops at its next event: :func:`~.cli_progress.drive`)."""
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``emdiffuse`` command; returns the exit status."""
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if on_main else None
    try:
        return _main(argv)
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _main(argv: Sequence[str] | None) -> int:
    from .engine.errors import EMDiffuseError, InputError

    level = os.environ.get("EMDIFFUSE_LOG") or "ERROR"
    logging.basicConfig(level=level)
    # dask.distributed sets its own loggers to INFO when it is imported (by --workers): every
    # scheduler and nanny message would reach stderr through the handler above.
    import dask

    dask.config.set({"distributed.logging.distributed": level.lower()})
    args = None
    try:
        args = build_parser().parse_args(argv)
        return int(COMMANDS[args.command](args) or 0)
    except UsageError as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    except EMDiffuseError as exc:
        print(f"{PROG}: error: {exc}{'' if isinstance(exc, InputError) else _kept(args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"{PROG}: {'terminated (SIGTERM)' if terminated else 'interrupted'}; {_stopped(args)}", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:  # `emdiffuse models | head`: the reader has gone; nothing more to say
        try:  # and no second error when Python flushes stdout on the way out
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 0
    except (RuntimeError, ValueError, OSError) as exc:  # a damaged chunk of the input: the user's to fix
        from .engine.io.common import damaged_reason

        why = damaged_reason(exc, source=_inputs_named(args))
        if why is None:
            raise
        print(f"{PROG}: error: {why}{_kept(args)}", file=sys.stderr)
        return 2


def _inputs_named(args: argparse.Namespace | None) -> str | None:
    """The command's inputs, quoted, for a message that cannot say which one failed (a damaged
    chunk); None where they are many (a batch names each file itself)."""
    names: list[str] = []
    for given in (getattr(args, "input", None), getattr(args, "target", None)):
        names += [given] if isinstance(given, (str, os.PathLike)) else list(given or ())
    if not names or len(names) > 2:
        return None
    return " or ".join(f"'{n}'" for n in names)


def _stopped(args: argparse.Namespace | None) -> str:
    """What a stopped run leaves (``main``'s last words): a training's model so far, or no
    output (and a --resume run's finished blocks)."""
    from .engine.models.files import CARD_NAME

    saved = getattr(args, "saved_model", None)
    if saved is not None and (Path(saved) / CARD_NAME).is_file():
        resume = " (emdiffuse train CONFIG --resume continues it)" if args.command == "train" else ""
        return f"the model so far is saved in '{saved}'{resume}"
    return f"no output written{_kept(args)}"


def _kept(args: argparse.Namespace | None) -> str:
    """What a stopped --resume run leaves for the next (``main``'s last words)."""
    if not getattr(args, "resume", False):
        return ""
    return "; blocks already finished (if any) are kept beside it: run the same command again to continue"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
