"""Export a predictor as a bioimage.io model package (format 0.5), the way the bioimage
community shares models (BioImage Model Zoo, deepImageJ, ilastik, careamics).

The package holds the mean predictor's PyTorch weights with its architecture importable
from this package (``napari_emdiffuse.engine.core.networks.regression.RegressionUNet``), the
same network traced to TorchScript (for consumers without this package, e.g. deepImageJ),
the pre- and post-processing, a test input and output, a cover image, documentation and the
citation. Our own model card travels as an attachment (``emdiffuse-card.yaml``), so the same zip
loads back with ``--model PACKAGE.zip``.

A super-resolution package takes the low-resolution image: its network upsamples (bicubic) as
inference does, and a blur-conditioned one reads the acquisition blur off the image with its
own estimator unless the export fixes it.

An isotropic predictor of one factor (``demo-isotropic``) takes two neighbouring slices as two
channels and gives the ``factor - 1`` slices between them as channels, normalised jointly as
the pipeline normalises a volume. The every-factor model (``demo-isotropic-any``), told how
deep in the gap each slice lies, is exported for one factor chosen at export: its package runs
a pass per new slice inside one call (:class:`~..core.networks.regression.GapSlicesUNet`).

Diffusion models are not exported: their output is a sampler's result over many network
calls, which the format cannot describe.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import tifffile
import torch
from pydantic import ValidationError

from ..errors import EMDiffuseError, InputError
from ..io.common import refuse_url
from .cards import TAIL_CAP, TAIL_CURVATURE, ModelCard
from .files import PACKAGED_CARD_NAME, write_card
from .model import EMDiffuseModel
from ..core.networks.regression import GapSlicesUNet, RegressionUNetStd, SuperResolutionUNet

__all__ = ["export_bioimageio"]

_TEST_SIZE = 64
#: The largest factor an every-factor isotropic model is exported for (a pass per new slice).
MAX_EXPORT_FACTOR = 32


def _test_input(card: ModelCard, seed: int = 0) -> np.ndarray:
    """A smooth, EM-like test image with noise, (1, C, H, W) float32."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    c = card.cond_channels
    img = np.stack([gaussian_filter(rng.random((_TEST_SIZE, _TEST_SIZE)), 3) for _ in range(c)])
    img = (img - img.min()) / np.ptp(img) * 180 + 40 + rng.normal(0, 10, img.shape)
    return img[None].astype(np.float32)


def _is_volume(card: ModelCard) -> bool:
    return card.task.startswith("isotropic")


def _preprocess(x: np.ndarray, card: ModelCard) -> np.ndarray:
    """What the package's preprocessing does: the card's percentiles to [-1, 1] (of both slices
    together, for an isotropic model)."""
    rule = card.normalisation
    axes = (1, 2, 3) if _is_volume(card) else (2, 3)
    lo, hi = np.percentile(x, [rule.low, rule.high], axis=axes, keepdims=True)
    return ((x - lo) / (hi - lo + 1e-6) * 2 - 1).astype(np.float32)


def export_bioimageio(
    model: EMDiffuseModel, out: str | Path, *, authors: list[str] | None = None, blur: float | None = None,
    factor: int | None = None,
) -> Path:
    """Write ``model`` as a bioimage.io model package (zip).

    Parameters
    ----------
    model : EMDiffuseModel
        A predictor (``kind: regression``) for denoising or super-resolution.
    out : str or Path
        The ``.zip`` to write (atomically: a temporary name, then renamed).
    authors : list of str, optional
        Names for the package's ``authors`` (default: the project).
    blur : float, optional
        For a blur-conditioned super-resolution predictor: the acquisition blur (probe width,
        high-resolution pixels) the package always tells the network. None (default): its
        estimator reads the blur off each image the package is given.
    factor : int, optional
        For an isotropic predictor of every factor (told each slice's depth in the gap): the
        factor the package makes, ``factor - 1`` new slices per gap (required for it, refused
        for other models).

    Returns
    -------
    Path
        The package.

    Examples
    --------
    >>> from napari_emdiffuse.engine.models.registry import load_model
    >>> export_bioimageio(load_model("demo-denoise"), "demo-denoise.zip")  # doctest: +SKIP
    PosixPath('demo-denoise.zip')
    """
    refuse_url(out, "a bioimage.io package")
    try:
        import bioimageio.spec.model.v0_5 as bio
        from bioimageio.spec import save_bioimageio_package
    except ImportError:
        raise EMDiffuseError("exporting to bioimage.io needs bioimageio.spec: pip install 'napari-emdiffuse[all]'") from None

    card = model.card
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise InputError(f"a bioimage.io package is a .zip file, not '{out.name}'")
    if not out.parent.is_dir():
        raise InputError(f"output folder '{out.parent}' does not exist")
    if card.kind != "regression":
        raise EMDiffuseError(
            f"model '{card.name}' is a diffusion model; only predictors (kind regression) export to "
            "bioimage.io, whose format describes one network pass"
        )
    if card.normalisation.mode != "percentile":
        raise EMDiffuseError(f"model '{card.name}': only percentile-normalised predictors export to bioimage.io")
    every = _is_volume(card) and bool(card.network.gap_depth)
    if _is_volume(card) and card.network.slice_embedding:
        raise EMDiffuseError(
            f"model '{card.name}' is told each new slice's index (slice embedding), which bioimage.io cannot "
            "describe: export a model of one factor or of every factor"
        )
    if every and factor is None:
        raise InputError(f"model '{card.name}' makes any factor: export it for one (factor=F, --factor F)")
    if factor is not None and not every:
        raise InputError(f"model '{card.name}' is not a model of every factor; export it without a factor")
    if every and (isinstance(factor, bool) or int(factor) != factor or not 2 <= factor <= MAX_EXPORT_FACTOR):
        raise InputError(f"factor must be a whole number from 2 to {MAX_EXPORT_FACTOR}, not {factor!r}")
    new_slices = int(factor) - 1 if every else card.network.out_channel
    scale = card.scale if card.task == "super-resolve" else 1
    if blur is not None and not (scale > 1 and card.network.blur_level):
        raise InputError(f"model '{card.name}' is not told the acquisition blur; export it without one")
    module = model.module.cpu().eval()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        x = _test_input(card)
        cond = torch.from_numpy(_preprocess(x, card))
        aleatoric = bool(getattr(module, "aleatoric", False))
        kw = {k: v for k, v in card.network.model_dump().items() if k not in ("in_channel", "out_channel")}
        kw = {"in_channel": card.network.in_channel, "out_channel": card.network.out_channel, **kw}
        kw.pop("slice_embedding", None)
        if aleatoric:  # the exported form returns (mean, std): same weights, an uncertainty map
            kw["std_scale"] = float(card.uncertainty_scale)
        if scale > 1:  # takes the low-resolution image and upsamples it, as inference does
            kw.update(scale=int(scale), blur=None if blur is None else float(blur))
            exported = SuperResolutionUNet(**kw)
        elif every:  # the factor's slices in one call, each with the factor's calibrated std
            kw.update(factor=int(factor), std_scale=float(card.std_scale(int(factor))))
            exported = GapSlicesUNet(**kw)
        elif aleatoric:
            exported = RegressionUNetStd(**kw)
        else:
            exported = module
        if exported is not module:
            exported.load_state_dict(module.state_dict())
        exported.eval()
        with torch.no_grad():
            res = exported(cond)
        mean, std = res if isinstance(res, tuple) else (res, None)
        np.save(d / "test_input.npy", x)
        np.save(d / "test_output.npy", mean.numpy().astype(np.float32))
        tifffile.imwrite(d / "sample_input.tif", x[0])
        tifffile.imwrite(d / "sample_mean.tif", mean.numpy()[0].astype(np.float32))
        torch.save({k: v.cpu() for k, v in module.state_dict().items()}, d / "weights.pt")
        # TorchScript too: deepImageJ and other consumers without this package installed run it
        # (traced once; the network has no size-dependent control flow, any size runs)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.jit.save(torch.jit.trace(exported, cond, check_trace=False), str(d / "weights.torchscript.pt"))
        packaged = card.model_copy(deep=True)
        packaged.weights = "weights.pt"
        write_card(packaged, d / PACKAGED_CARD_NAME)
        _cover(x[0, 0], mean.numpy()[0, 0], d / "cover.png")
        (d / "README.md").write_text(_documentation(card, blur, new_slices))
        # the network's input (upsampled, for super-resolution) must be a multiple of its size_multiple
        multiple = card.network.size_multiple
        step = multiple // math.gcd(multiple, scale)
        size = bio.ParameterizedSize(min=step * math.ceil(2 * multiple / scale / step), step=step)
        # an isotropic model: the slices above and below in, the new slices between them out
        names_in = ["slice_above", "slice_below"] if _is_volume(card) else ["em"]
        names_out = [f"new_slice_{k}" for k in range(1, new_slices + 1)] if _is_volume(card) else ["em"]
        axes_in = [bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier(n) for n in names_in]),
                   bio.SpaceInputAxis(id=bio.AxisId("y"), size=size), bio.SpaceInputAxis(id=bio.AxisId("x"), size=size)]

        def out_axes():
            ref = {"y": bio.SizeReference(tensor_id=bio.TensorId("input"), axis_id=bio.AxisId("y")),
                   "x": bio.SizeReference(tensor_id=bio.TensorId("input"), axis_id=bio.AxisId("x"))}
            return [bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier(n) for n in names_out]),
                    bio.SpaceOutputAxis(id=bio.AxisId("y"), size=ref["y"], scale=1 / scale),
                    bio.SpaceOutputAxis(id=bio.AxisId("x"), size=ref["x"], scale=1 / scale)]

        rule = card.normalisation
        pre = [
            bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(
                axes=[bio.AxisId(a) for a in (("channel", "y", "x") if _is_volume(card) else ("y", "x"))],
                min_percentile=rule.low, max_percentile=rule.high)),
            bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(gain=2.0, offset=-1.0)),
        ]
        outputs = [bio.OutputTensorDescr(
            id=bio.TensorId("mean"), axes=out_axes(), test_tensor=bio.FileDescr(source=d / "test_output.npy"),
            sample_tensor=bio.FileDescr(source=d / "sample_mean.tif"),
            description="restored image in model range: -1 and +1 are the input's "
                        f"{rule.low:g} and {rule.high:g} percentiles (not clipped)",
        )]
        if std is not None:
            np.save(d / "test_std.npy", std.numpy().astype(np.float32))
            tifffile.imwrite(d / "sample_std.tif", std.numpy()[0].astype(np.float32))
            outputs.append(bio.OutputTensorDescr(
                id=bio.TensorId("std"), axes=out_axes(),
                test_tensor=bio.FileDescr(source=d / "test_std.npy"),
                sample_tensor=bio.FileDescr(source=d / "sample_std.tif"),
                description="per-pixel standard deviation of the error (model range), from the aleatoric head",
            ))
        try:
            descr = _describe(bio, card, d, axes_in, outputs, pre, kw, type(exported).__name__,
                              authors or ["napari-emdiffuse developers"], int(factor) if every else None)
        except ValidationError as exc:
            raise EMDiffuseError(f"cannot describe '{card.name}' as a bioimage.io model: {_first_error(exc)}") from None
        partial = out.with_name(f".{out.name}.partial")
        try:
            save_bioimageio_package(descr, output_path=partial)
            partial.replace(out)
        finally:
            partial.unlink(missing_ok=True)
    return out


def _package_name(name: str) -> str:
    """The card's name as the spec takes it: 5 to 128 characters."""
    name = name.replace("-", " ").strip()
    return (name if len(name) >= 5 else f"EMDiffuse {name}".strip())[:128]


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    return f"{loc}: {first.get('msg', 'invalid')}".strip(": ").splitlines()[0]


def _describe(bio, card: ModelCard, d: Path, axes_in, outputs, pre, kw: dict, callable_name: str,
              authors: list[str], factor: int | None = None):
    """The package's description (raises pydantic's ValidationError when the spec refuses)."""
    return bio.ModelDescr(
        name=_package_name(card.name),
        description=(card.description or f"napari-emdiffuse {card.task} predictor")[:1000],
        authors=[bio.Author(name=a) for a in authors],
        cite=[bio.CiteEntry(text=card.citation, doi=bio.Doi("10.1038/s41467-024-49125-z"))],
        license=bio.LicenseId("BSD-3-Clause"),
        documentation=bio.FileDescr(source=d / "README.md"),
        covers=[bio.FileDescr(source=d / "cover.png")],
        tags=["electron-microscopy", card.task, "napari-emdiffuse", "pytorch"],
        inputs=[bio.InputTensorDescr(
            id=bio.TensorId("input"), axes=axes_in, test_tensor=bio.FileDescr(source=d / "test_input.npy"),
            sample_tensor=bio.FileDescr(source=d / "sample_input.tif"),
            preprocessing=pre, description=("two neighbouring slices of an EM volume (as channels), any intensity "
                                            "range" if _is_volume(card) else "an EM image, any intensity range"),
        )],
        outputs=outputs,
        weights=bio.WeightsDescr(pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=d / "weights.pt",
            architecture=bio.ArchitectureFromLibraryDescr(
                callable=bio.Identifier(callable_name),
                import_from="napari_emdiffuse.engine.core.networks.regression",
                kwargs=json.loads(json.dumps(kw)),
            ),
            pytorch_version=bio.Version(torch.__version__.split("+")[0]),
        ), torchscript=bio.TorchscriptWeightsDescr(
            source=d / "weights.torchscript.pt", parent="pytorch_state_dict",
            pytorch_version=bio.Version(torch.__version__.split("+")[0]),
        )),
        attachments=[bio.FileDescr(source=d / PACKAGED_CARD_NAME)],
        config={
            # the std map can be small: a tolerance relative to it, not 1e-3 absolute
            "bioimageio": {"reproducibility_tolerance": [{"absolute_tolerance": 1e-5, "relative_tolerance": 1e-3}]},
            "napari_emdiffuse": {"card": PACKAGED_CARD_NAME, "task": card.task, **({"factor": factor} if factor else {})},
        },
    )


def _cover(inp: np.ndarray, out: np.ndarray, path: Path) -> None:
    from PIL import Image

    def u8(a: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(a, [0.5, 99.5])
        return (np.clip((a - lo) / (hi - lo + 1e-9), 0, 1) * 255).astype(np.uint8)

    f = out.shape[0] // inp.shape[0]  # a super-resolution input, shown at the output's size
    inp = np.repeat(np.repeat(inp, f, 0), f, 1)
    pair = np.concatenate([u8(inp), np.full((inp.shape[0], 4), 255, np.uint8), u8(out)], axis=1)
    Image.fromarray(pair).resize((pair.shape[1] * 4, pair.shape[0] * 4), Image.NEAREST).save(path)


def _documentation(card: ModelCard, blur: float | None, new_slices: int) -> str:
    metrics = card.metrics.get("held_out") or {k: v for k, v in card.metrics.items() if not isinstance(v, dict)}
    sr = card.task == "super-resolve"
    use = (
        f"Input: one 2D EM image (any dtype){', at the low resolution' if sr else ''}. Preprocessing maps its "
        f"{card.normalisation.low:g}/{card.normalisation.high:g} percentiles to -1/+1; the output `mean` is in the "
        "same range (map it back with the input's percentiles) and `std` is its per-pixel uncertainty."
    )
    if sr:
        use += (f" The network upsamples the input {card.scale}x (bicubic) itself, so the outputs are "
                f"{card.scale}x larger than the input.")
    if sr and card.network.blur_level:
        use += (f" It is told the acquisition blur: {blur:g} high-resolution pixels (fixed at export)."
                if blur is not None else
                " It is told the acquisition blur, which its own estimator reads off each image it is given "
                "(export with `--blur` to fix it).")
    if card.uncertainty_structure > 0 or card.uncertainty_tail > 0:
        use += (" `std` is the aleatoric head's; napari-emdiffuse also adds a structure term (weight "
                f"{card.uncertainty_structure:g} on the squared Laplacian of the smoothed mean) to the variance"
                + (f", then multiplies the std by 1 + {card.uncertainty_tail:g} * min(|Laplacian| / {TAIL_CURVATURE:g}, "
                   f"{TAIL_CAP:g})^2 "
                   "(the sharpest places, where the largest errors are)" if card.uncertainty_tail > 0 else "") + ".")
    if _is_volume(card):
        use = (
            "Input: two neighbouring slices of an anisotropic EM volume, as the two channels (above, below). "
            f"Preprocessing maps the {card.normalisation.low:g}/{card.normalisation.high:g} percentiles of both "
            f"together to -1/+1; the output `mean` holds the {new_slices} slices between them, in "
            "order, in the same range (map them back with the input's percentiles), and `std` their per-pixel "
            f"uncertainty. The z spacing of the result is the input's divided by {new_slices + 1}. "
            "napari-emdiffuse normalises a whole volume at once, from evenly spaced slices; a pair alone is "
            "normalised on itself here."
        )
    command = "super-resolve" if sr else ("isotropic --factor " + str(new_slices + 1) if _is_volume(card)
                                          else "denoise")
    return (
        f"# {card.name}\n\n{card.description}\n\n"
        f"## Use\n\n{use}\n\n"
        "In napari or on the command line: `pip install napari-emdiffuse`, then "
        f"`emdiffuse {command} IMAGE.tif -o OUT.tif --model THIS.zip`.\n\n"
        f"## Training\n\n```\n{json.dumps(card.training, indent=1, default=str)[:3000]}\n```\n\n"
        "## Validation\n\nScored on held-out EM images no training step saw (`benchmarks/quality.py` of "
        "napari-emdiffuse):\n\n"
        f"```\n{json.dumps(metrics, indent=1, default=str)[:3000]}\n```\n\n"
        f"## Citation\n\n{card.citation}\n"
    )
