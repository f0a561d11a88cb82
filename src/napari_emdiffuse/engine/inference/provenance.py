"""What made a result: the run's settings (:func:`run_info`), a few words on them for a
status line (:func:`run_summary`) and the record that goes into a file's or a layer's
metadata (:func:`provenance`)."""

from __future__ import annotations

from typing import Any

import torch

from ..models.model import EMDiffuseModel
from .canvas import SamplingOptions

__all__ = ["provenance", "run_info", "run_summary"]


def run_info(m: EMDiffuseModel, opts: SamplingOptions, dev: torch.device) -> dict:
    """The model, preset, sampler, steps, samples, tiling, seed, precision and device of a run."""
    # A predictor has no sampler or steps: one pass per mirrored view ("samples" counts them).
    diffusion = m.card.kind != "regression"
    return {
        "model": m.card.name,
        "task": m.card.task,
        "preset": opts.preset,
        "sampler": opts.sampler if diffusion else None,
        "steps": opts.steps if diffusion else None,
        "samples": opts.samples,
        "tile": opts.tile,
        "overlap": opts.overlap,
        "batch": opts.batch,
        "seed": opts.seed,
        "precision": opts.precision,
        "device": str(dev),
        **({"refine": {"samples": opts.refine_samples, "steps": opts.refine_steps}} if opts.refine_samples else {}),
        **({"blur": opts.blur, "blur_source": opts.extra.get("blur_source", "given")}
           if m.card.network.blur_level and opts.blur is not None else {}),
    }


def run_summary(info: dict) -> str:
    """How a result was computed, in a few words, from :func:`run_info`.

    Examples
    --------
    >>> run_summary({"steps": None, "samples": 1}), run_summary({"steps": None, "samples": 4})
    ('one pass', '4 mirrored views')
    >>> run_summary({"sampler": "dpm++", "steps": 10, "samples": 2})
    'dpm++, 10 steps, 2 samples'
    >>> run_summary({"steps": None, "samples": 1, "blur": 0.96, "blur_source": "read off the image"})
    'one pass, acquisition blur 0.96 px (read off the image)'
    >>> run_summary({"steps": None, "samples": 1, "z_filter": 0.8})
    'one pass, averaged along z over 0.8 slices (std)'
    """
    samples = int(info.get("samples") or 1)
    if info.get("steps") is None:  # a predictor
        text = "one pass" if samples == 1 else f"{samples} mirrored views"
    else:
        text = f"{info.get('sampler')}, {info['steps']} step{'s' * (info['steps'] != 1)}, " \
               f"{samples} sample{'s' * (samples != 1)}"
    refine = info.get("refine")
    text += f", refined with {refine['samples']} residual samples" if refine else ""
    if info.get("blur") is not None:
        text += f", acquisition blur {info['blur']:g} px ({info.get('blur_source', 'given')})"
    if info.get("z_filter"):
        text += f", averaged along z over {info['z_filter']:g} slices (std)"
    return text


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
