"""Sampling a whole canvas with per-step tile merging (the heart of seamless restoration).

At each sampler step the state of every item (a sample of an image, or a slice to
generate) is cut into overlapping tiles, the tiles are batched through the network, and
the noise predictions are merged back with smooth weights before the sampler update. The
sampler therefore sees one consistent whole-image prediction, and no seams form even with
small overlaps; merely blending independently sampled tiles afterwards leaves bands.

The mirror ensemble flips each tile, not the canvas: a mirrored sample runs the same tiles
as the unmirrored one, so it too is the same whatever the block layout (:mod:`.tiling`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..core import samplers
from ..core.diffusion import condition_start
from ..core.networks.blur import BLUR_MAX, area_blur
from ..errors import EMDiffuseError, InputError
from ..events import Progress
from ..models.cards import ModelCard
from ..models.device import BF16_NEEDS, native_bf16
from ..models.model import EMDiffuseModel
from .tiling import TileGrid, TilePlan, check_tiling, context_margin, position_noise, round_up

__all__ = [
    "PRESETS", "SAMPLING_KEYS", "SamplingOptions", "Item", "resolve_options", "sampling_request", "sample_canvas",
    "auto_tile", "check_precision", "resolve_blur", "CPU_BATCH_PIXELS",
    "block_tiles", "is_multistep", "tiles_in_nodata", "covered_by",
]  # fmt: skip

PRESETS: dict[str, dict] = {
    # few-step deterministic solver, one sample: the default; steps from the model card
    # (``fast_steps``, 10 unless the model was tuned for fewer)
    "fast": {"sampler": "dpm++", "steps": None, "samples": 1},
    # several samples give the mean and a pixel-wise uncertainty (``balanced_steps``, 20);
    # samples 2-4 see the image mirrored (left-right, up-down, both), so the mean also
    # averages out orientation-dependent errors of the network
    "balanced": {"sampler": "dpm++", "steps": None, "samples": 4, "flips": True},
    # the published method: 1000-step ancestral DDPM on the test schedule, 2 samples
    "reference": {"sampler": "ddpm", "steps": None, "samples": 2},
}
# Predictors (kind regression) take one pass per view: fast is one view, balanced and
# reference average the 4 mirrored views (see resolve_options).
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
#: The sampling choices a user makes (see resolve_options); everything else is set by the run.
SAMPLING_KEYS = frozenset(
    ("preset", "sampler", "steps", "samples", "eta", "tile", "overlap", "batch", "seed", "precision",
     "channels_last", "compile", "start_log_snr", "flips", "refine", "blur")
)  # fmt: skip


@dataclass
class SamplingOptions:
    """Resolved, validated sampling options for one run."""

    preset: str = "fast"
    sampler: str = "dpm++"
    steps: int | None = 10
    samples: int = 1
    eta: float = 0.0
    tile: int = 256
    overlap: int = 32
    batch: int = 4
    seed: int = 0
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    start_log_snr: float | None = None
    flips: bool = False  # 2D: samples cycle through the 4 mirror images of the input
    # Predictors with a refiner: residual samples drawn around the mean (0: no refinement)
    # and the sampler steps of each.
    refine_samples: int = 0
    refine_steps: int = 0
    # Blur-conditioned super-resolution: the acquisition blur (probe width, high-resolution
    # pixels) the network is told; None: read off the image once per run.
    blur: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return self.steps or 0


#: Axes of a (C, H, W) tile to flip for the mirror ensemble: identity, left-right, up-down,
#: both.
MIRRORS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


@dataclass(frozen=True)
class Item:
    """One state to sample: which condition image, which slice index (vEM), which noise stream."""

    cond: int
    stream: tuple[int, ...]
    slice_index: int | None = None
    # Level-conditioned predictors: how far into the gap the slice lies, j / factor
    # (gap depth), or the acquisition blur (blur-conditioned super-resolution).
    level: float | None = None
    # Axes along which the network sees this item's tiles mirrored (mirror ensemble); its
    # state and noise stay in place, so every pixel gets the noise of its own position.
    flip: tuple[int, ...] = ()


#: Pixels per batch on a CPU: 8 tiles of 64 px ran the bundled predictors 25-30 % faster than
#: 2 (2 cores; 2 tiles of 128 px were fastest at that size), and larger tiles keep 2.
CPU_BATCH_PIXELS = 32768


def auto_tile(model: EMDiffuseModel, device: torch.device, requested: int | None) -> int:
    """Tile edge: the request, else the card's, shrunk to fit free CUDA memory."""
    tile = requested or model.card.tile
    if device.type == "cuda" and requested is None:
        free, _ = torch.cuda.mem_get_info(device)
        # ~ activation bytes per pixel per batch item, measured by benchmarks/speed.py
        per_px = 48 * model.card.network.inner_channel * 4
        while tile > 64 and per_px * tile * tile * 2 > 0.5 * free:
            tile //= 2
    return tile


def tile_note(model: EMDiffuseModel, opts: SamplingOptions) -> str | None:
    """A word when a denoising predictor runs on tiles of another edge than its card's.

    Its GroupNorm layers normalise each tile's features over the tile, and it learnt on crops
    of the card's edge: other tiles shift those statistics. The bundled denoiser (64 px) lost
    0.10 / 0.23 / 0.66 dB at 96 / 128 / 256 px on FIB-SEM (liver_1, dose 30) and 0.36 at 32;
    the super-resolution and isotropic predictors moved by 0.03 dB at most.
    """
    card = model.card
    if card.task != "denoise" or card.kind != "regression" or opts.tile == card.tile:
        return None
    return (f"tile {opts.tile} px: this denoiser normalises its features per tile and learnt on {card.tile} px "
            f"crops, so other tiles cost quality (the bundled one: -0.2 dB at 128 px, -0.7 at 256); "
            f"leave the tile unset unless memory requires it")


def resolve_options(
    model: EMDiffuseModel,
    device: torch.device,
    *,
    preset: str | None = "fast",
    sampler: str | None = None,
    steps: int | None = None,
    samples: int | None = None,
    eta: float | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    batch: int | None = None,
    seed: int | None = 0,
    precision: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
    start_log_snr: float | None = None,
    flips: bool | None = None,
    refine: bool | None = None,
    blur: float | str | None = None,
) -> SamplingOptions:
    """Fill unset options from the preset and the model card; refuse impossible ones.

    ``refine`` (predictors with a refiner): sample the residual around the mean; default
    for the presets the card's refiner lists. ``blur`` (blur-conditioned super-resolution):
    the acquisition blur, ``"area"`` or a probe width in high-resolution pixels (0 to
    :data:`~..core.networks.blur.BLUR_MAX`); unset or ``"auto"``: read off the image.
    """
    preset = preset or "fast"
    if preset not in PRESETS:
        raise EMDiffuseError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base = PRESETS[preset]
    sampler = sampler or base["sampler"]
    if sampler not in samplers.SAMPLERS:
        raise EMDiffuseError(f"unknown sampler {sampler!r}; choose one of {', '.join(samplers.SAMPLERS)}")
    if steps is not None and (not isinstance(steps, (int, np.integer)) or steps < 1):
        raise EMDiffuseError(f"steps must be a positive integer, got {steps!r}")
    if samples is not None and (not isinstance(samples, (int, np.integer)) or samples < 1):
        raise EMDiffuseError(f"samples must be a positive integer, got {samples!r}")
    if batch is not None and (not isinstance(batch, (int, np.integer)) or batch < 1):
        raise EMDiffuseError(f"batch must be a positive integer, got {batch!r}")
    check_tiling(tile, overlap)
    card = model.card
    area = isinstance(blur, str) and blur.strip().lower() == "area"
    blur = resolve_blur(card, blur)
    refine_samples = refine_steps = 0
    if refine and (card.refiner is None or model.refiner is None):
        raise EMDiffuseError(f"model '{card.name}' has no refiner; leave refine unset")
    if card.kind == "regression" and card.refiner is not None and model.refiner is not None:
        if refine if refine is not None else preset in card.refiner.presets:
            ref = card.refiner
            refine_samples = ref.samples
            refine_steps = steps or (ref.beta_schedule.test.n_timestep if sampler == "ddpm" else ref.steps)
    if card.kind == "regression":
        # A predictor is deterministic: its only ensemble is the mirror one (up to 4 views).
        # fast: one pass; balanced and reference: the 4 mirrored views, averaged.
        steps = 1
        views = min(4, samples or base["samples"])
        flips = views > 1 if flips is None else flips
        samples = views if flips else 1
    if steps is None and sampler != "ddpm":
        steps = {"fast": card.fast_steps, "balanced": card.balanced_steps}.get(preset, 10)
    if sampler == "ddpm" and steps is None:
        steps = card.beta_schedule.test.n_timestep
    if start_log_snr is None and preset != "reference" and sampler != "ddpm":
        start_log_snr = card.start_log_snr
    precision = check_precision(precision, device)
    mult = model.card.network.size_multiple
    tile = round_up(auto_tile(model, device, tile), mult)
    overlap = model.card.overlap if overlap is None else overlap
    overlap = min(overlap, tile // 2)
    if batch is None:
        batch = 8 if device.type != "cpu" else max(2, CPU_BATCH_PIXELS // (tile * tile))
    return SamplingOptions(
        preset=preset,
        sampler=sampler,
        steps=int(steps),
        samples=int(samples or base["samples"]),
        eta=float(eta or 0.0),
        tile=int(tile),
        overlap=int(overlap),
        batch=int(batch),
        seed=int(seed or 0),
        precision=precision,
        channels_last=channels_last,
        compile=compile,
        start_log_snr=start_log_snr,
        flips=bool(base.get("flips", False) if flips is None else flips),
        refine_samples=refine_samples,
        refine_steps=int(refine_steps),
        blur=blur,
        extra={} if blur is None else {"blur_source": "area mean" if area else "given"},
    )


def resolve_blur(card: ModelCard, blur: float | str | None) -> float | None:
    """The acquisition blur a user gave, as a probe width (None: to be read off the image).

    Examples
    --------
    >>> from napari_emdiffuse.engine.models.cards import ModelCard, UNetConfig
    >>> card = ModelCard(name="m", task="super-resolve", kind="regression", scale=2,
    ...                  network=UNetConfig(in_channel=1, blur_level=True))
    >>> resolve_blur(card, "area"), resolve_blur(card, "auto"), resolve_blur(card, 1)
    (0.505, None, 1.0)
    """
    if blur is None or (isinstance(blur, str) and blur.strip().lower() == "auto"):
        return None
    if not card.network.blur_level:
        raise EMDiffuseError(
            f"model '{card.name}' is not told the acquisition blur; leave blur unset (a blur-conditioned "
            "super-resolution model takes it)"
        )
    if isinstance(blur, str) and blur.strip().lower() == "area":
        # told 0.1 px less than its equivalent width, demo-sr2 restores area means best
        return round(area_blur(card.scale) - 0.1, 3)
    try:
        value = float(blur)
    except (TypeError, ValueError):
        raise EMDiffuseError(f"blur must be auto, area or a probe width in pixels, got {blur!r}") from None
    if not 0.0 <= value <= BLUR_MAX:
        raise EMDiffuseError(f"blur must be between 0 and {BLUR_MAX:g} high-resolution pixels (or auto, area), got {blur!r}")
    return value


def sampling_request(**sampling: Any) -> dict[str, Any]:
    """The user's sampling choices as given (unset ones dropped), checked by name: what
    :func:`resolve_options` turns into options for one device (workers resolve it again for
    theirs)."""
    unknown = set(sampling) - SAMPLING_KEYS
    if unknown:
        raise EMDiffuseError(f"unknown option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(SAMPLING_KEYS))}")
    return {k: v for k, v in sampling.items() if v is not None}


def check_precision(precision: str | None, device: torch.device) -> str:
    """The arithmetic to run the network in: fp32 unless asked (``auto`` means fp32).

    Reduced precision is opt-in, because it changes results: ``bf16`` needs a CUDA GPU with
    native bf16 (compute capability 8 or newer; ``is_bf16_supported`` also reports emulated
    bf16, which is slower than fp32) or a CPU with native bf16
    (:func:`~..models.device.native_bf16`: 1.5x faster for the bundled denoiser, which
    then moved 17 % of the pixels of a 1024² slice by 1-2 grey levels, -0.004 dB), ``fp16`` a
    CUDA or MPS device.

    Examples
    --------
    >>> check_precision(None, torch.device("cpu"))
    'fp32'
    """
    precision = precision or "fp32"
    if precision not in PRECISIONS:
        raise EMDiffuseError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "fp32"
    if precision == "bf16" and not native_bf16(device):
        emulated = " (this CPU would emulate it, slower than fp32)" if device.type == "cpu" else ""
        raise EMDiffuseError(f"bf16 needs {BF16_NEEDS}, not {device}{emulated}")
    if precision == "fp16" and device.type not in ("cuda", "mps"):
        raise EMDiffuseError(f"fp16 needs a CUDA or MPS device, not {device}")
    return precision


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _network(model: EMDiffuseModel, opts: SamplingOptions) -> torch.nn.Module:
    net = model.unet
    if opts.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if opts.compile:
        compiled = getattr(model, "_compiled", None)
        if compiled is None:
            compiled = torch.compile(net)
            model._compiled = compiled  # cached: compiling costs seconds to minutes
        net = compiled
    return net


def tiles_in_nodata(model: EMDiffuseModel, opts: SamplingOptions, nodata: np.ndarray | None,
                    plan: TilePlan) -> list[bool] | None:
    """Per tile of ``plan``, whether it lies wholly in ``nodata`` (a bool mask of the canvas:
    fill, NaN, whose output the caller replaces), for :func:`sample_canvas`'s ``skip``; None
    where no tile does, or where the model is not a one-pass predictor (a diffusion sampler's
    or a refiner's tiles share their noisy state)."""
    if nodata is None or model.card.kind != "regression" or opts.refine_samples or not nodata.any():
        return None
    skip = [bool(nodata[y : y + plan.tile_h, x : x + plan.tile_w].all()) for y, x in plan.tiles]
    return skip if any(skip) else None


def covered_by(plan: TilePlan, skip: Sequence[bool]) -> np.ndarray:
    """The canvas pixels that a tile not skipped covers (the others :func:`sample_canvas` leaves 0)."""
    covered = np.zeros((plan.height, plan.width), dtype=bool)
    for (y, x), skipped in zip(plan.tiles, skip):
        if not skipped:
            covered[y : y + plan.tile_h, x : x + plan.tile_w] = True
    return covered


def sample_canvas(
    model: EMDiffuseModel,
    cond: torch.Tensor,
    items: Sequence[Item],
    opts: SamplingOptions,
    *,
    plan: TilePlan | None = None,
    offset: tuple[int, int] = (0, 0),
    progress_offset: int = 0,
    progress_total: int | None = None,
    start: torch.Tensor | None = None,
    std_scale: float | None = None,
    skip: Sequence[bool] | None = None,
) -> Generator[Progress, None, tuple[torch.Tensor, torch.Tensor | None]]:
    """Sample every item over the whole canvas ``cond`` (N_cond, C, H, W), model range.

    ``plan``: the tiles, where the canvas lies in the whole image's canvas (its ``origin``
    seeds the noise) and the whole canvas's size (:meth:`~.tiling.TileGrid.window`); by
    default the canvas is the whole and its tiles are spread over it. ``offset``: where that
    whole lies in a larger image (a region restored on its own), for the noise's positions.

    With ``opts.start_log_snr``, sampling starts from ``start`` (default: the condition, or
    for vEM the interpolation of its two slices) noised to that level.

    ``std_scale`` (predictors): the factor on the predicted std, default the card's
    ``uncertainty_scale``.

    ``skip`` (predictors): per tile of the plan, True where the network need not see it (it
    lies wholly in no data, :func:`tiles_in_nodata`); the pixels no other tile covers
    come out 0, and every other pixel as without it (each is the weighted mean of the tiles
    that cover it, and none of those is skipped).

    H and W must be at least one tile (callers pad). Returns the samples (N_items, H, W)
    on the CPU and, for networks with an aleatoric head, the predicted variance of the
    last step (same shape) or None.
    """
    device = cond.device
    _, _, height, width = cond.shape
    mult = model.card.network.size_multiple
    if plan is None:
        plan = TilePlan(height, width, min(opts.tile, height), min(opts.tile, width), opts.overlap)
    elif (plan.height, plan.width) != (height, width):
        raise ValueError(f"a tile plan of {plan.height}x{plan.width} for a canvas of {height}x{width}")
    tile_h, tile_w = plan.tile_h, plan.tile_w
    origin = (plan.origin[0] + offset[0], plan.origin[1] + offset[1])
    if tile_h % mult or tile_w % mult:
        raise InputError(f"canvas {height}x{width} is not a multiple of {mult}; pad it first")
    weights, total_w = plan.weights(device)
    tiles = plan.tiles
    net = _network(model, opts)
    card = model.card
    aleatoric = bool(getattr(model.unet, "aleatoric", False))
    # A predictor makes every output channel (all slices of a gap) in one pass: run it once
    # per distinct condition, then give each item its channel. A level-conditioned predictor
    # (gap depth, blur) makes one image per pass: run it once per distinct (condition, level).
    runs = items
    by_level = bool(card.network.gap_depth or card.network.blur_level)
    if card.kind == "regression":
        keys = dict.fromkeys((it.cond, it.level if by_level else None, it.flip) for it in items)
        runs = [Item(cond=c, stream=(), level=d, flip=f) for c, d, f in keys]
    if skip is not None and (card.kind != "regression" or len(skip) != len(tiles)):
        raise ValueError("tiles are skipped for a predictor's one pass, one flag per tile")
    used = [t for t in range(len(tiles)) if skip is None or not skip[t]]
    state = {"batch": max(1, opts.batch), "logvar": None}
    n_batches = math.ceil(len(runs) * len(tiles) / state["batch"])
    steps = opts.n_steps if card.kind == "diffusion" else 1
    total = progress_total or steps * n_batches
    counter = {"done": progress_offset}
    slice_idx = torch.tensor([it.slice_index or 0 for it in items], device=device)
    memory_format = torch.channels_last if opts.channels_last else torch.contiguous_format

    def run(inp: torch.Tensor, level: torch.Tensor, sidx: torch.Tensor):
        inp = inp.contiguous(memory_format=memory_format)
        with torch.no_grad(), _autocast(device, opts.precision):
            if card.kind == "regression":
                return net(inp, level) if by_level else net(inp)
            if card.network.slice_embedding:
                return net(inp, level, sidx)
            return net(inp, level)

    def model_fn(x: torch.Tensor | None, gamma: float, its: Sequence[Item] = items):
        jobs = [(i, t) for i in range(len(its)) for t in used]
        out = torch.zeros(len(its), card.network.out_channel, height, width, device=device)
        var = torch.zeros_like(out) if aleatoric else None
        pos = 0
        while pos < len(jobs):
            chunk = jobs[pos : pos + state["batch"]]
            parts = []
            for i, t in chunk:
                y, xx = tiles[t]
                sl = (slice(y, y + tile_h), slice(xx, xx + tile_w))
                c = cond[its[i].cond, :, sl[0], sl[1]]
                c = c if x is None else torch.cat([c, x[i, :, sl[0], sl[1]]], dim=0)
                parts.append(torch.flip(c, its[i].flip) if its[i].flip else c)
            inp = torch.stack(parts)
            if by_level and x is None:
                level = torch.tensor([its[i].level for i, _ in chunk], dtype=torch.float32, device=device)
            else:
                level = torch.full((len(chunk),), gamma, dtype=torch.float32, device=device)
            try:
                res = run(inp, level, slice_idx[[i for i, _ in chunk]])
            except torch.cuda.OutOfMemoryError:
                if state["batch"] == 1:
                    raise
                torch.cuda.empty_cache()
                state["batch"] = max(1, state["batch"] // 2)  # deterministic: tiles are independent
                continue
            eps, logvar = (res if isinstance(res, tuple) else (res, None))
            eps = eps.float()
            for k, (i, t) in enumerate(chunk):
                y, xx = tiles[t]
                f = its[i].flip
                out[i, :, y : y + tile_h, xx : xx + tile_w] += (torch.flip(eps[k], f) if f else eps[k]) * weights[t]
                if var is not None and logvar is not None:
                    lv = logvar[k].float()
                    var[i, :, y : y + tile_h, xx : xx + tile_w] += (torch.flip(lv, f) if f else lv) * weights[t]
            pos += len(chunk)
            counter["done"] += 1
            yield Progress(
                "sampling",
                min(counter["done"], total),
                total,
                extra={"tiles": len(tiles), "items": len(its), "gamma": gamma},
            )
        if len(used) < len(tiles):  # the skipped tiles' batches count as done, so a run's bar ends full
            counter["done"] = progress_offset + n_batches
            yield Progress("sampling", min(counter["done"], total), total,
                           extra={"tiles": len(tiles), "items": len(its), "gamma": gamma})
        if var is not None:
            state["logvar"] = (var / total_w, gamma)
        return out / total_w

    if card.kind == "regression":
        pred = yield from model_fn(None, 1.0, runs)  # type: ignore[arg-type]
        row = {(c.cond, c.level, c.flip): r for r, c in enumerate(runs)}
        if by_level:
            pick = ([row[(it.cond, it.level, it.flip)] for it in items], [0] * len(items))
        else:
            pick = ([row[(it.cond, None, it.flip)] for it in items], [max(0, it.slice_index or 0) for it in items])
        # Not clipped: the normalisation's percentiles are not the image's limits, and the
        # darkest membranes lie below the 0.5th percentile (to_dtype clips to the dtype).
        samples = pred[pick].cpu()
        variance = None
        if state["logvar"] is not None:
            # the card's calibration: predicted variances scaled to the errors on held-out crops
            scale = card.uncertainty_scale if std_scale is None else std_scale
            variance = state["logvar"][0][pick].exp().cpu() * scale**2
        return samples, variance

    def noise_fn(step: int) -> torch.Tensor:
        return torch.stack([
            position_noise(height, width, seed=opts.seed, origin=origin, stream=(*it.stream, step), device=device)
            for it in items
        ])[:, None]  # fmt: skip

    x = noise_fn(-1)
    if opts.start_log_snr is not None:
        # Start from a noised copy of the condition: fewer steps from a less noisy level.
        from ..core.schedules import gamma_from_log_snr

        g0 = float(gamma_from_log_snr(opts.start_log_snr))
        # vEM: the slice to make lies between the two conditions; start from their linear
        # interpolation at its depth.
        if start is None:
            rows = cond[[it.cond for it in items]]
            index = torch.tensor([it.slice_index or 0 for it in items]) if cond.shape[1] == 2 else None
            start = condition_start(rows, index, card.z_factor)
        x = math.sqrt(g0) * start + math.sqrt(1 - g0) * x
    result = yield from samplers.sample(
        model_fn,
        x,
        sampler=opts.sampler,
        train=model.module.train_schedule,
        test=model.module.test_schedule,
        steps=opts.steps,
        noise_fn=noise_fn,
        eta=opts.eta,
        start_log_snr=opts.start_log_snr,
        log_snr_max=card.log_snr_max,
    )
    variance = None
    if state["logvar"] is not None:
        logvar, g = state["logvar"]
        # Noise variance at the last step, seen through x0 = (x - sqrt(1-g) eps) / sqrt(g).
        variance = ((1 - g) / g * logvar.exp())[:, 0].cpu()
    return result[:, 0].cpu(), variance


def combined_std(samples: np.ndarray, variance: np.ndarray | None) -> np.ndarray | None:
    """Std of the output from K samples (K, H, W) and the network's variance (K, H, W).

    The law of total variance: the mean predicted (aleatoric) variance plus the variance of
    the samples around their mean (their spread). None when neither is available.

    Examples
    --------
    >>> s = np.array([[[0.0]], [[2.0]]]); v = np.full((2, 1, 1), 3.0)
    >>> float(combined_std(s, v)[0, 0])  # sqrt(3 + 1)
    2.0
    """
    k = samples.shape[0]
    if variance is None and k < 2:
        return None
    total = np.zeros(samples.shape[1:], np.float64)
    if k > 1:
        total += samples.var(axis=0, ddof=1 if variance is None else 0)
    if variance is not None:
        total += variance.mean(axis=0)
    return np.sqrt(total).astype(np.float32)


def canvas_size(n: int, mult: int) -> int:
    """Canvas edge for an image edge: a multiple of the network's, and never so small
    that the coarsest level's normalisation sees a single pixel."""
    return max(round_up(n, mult), round_up(32, mult), 2 * mult)


def is_multistep(model: EMDiffuseModel, opts: SamplingOptions) -> bool:
    """Whether a tile's input depends on its neighbours' earlier outputs (a sampler of
    several steps, or a refiner): such a run needs context around a block."""
    steps = opts.n_steps if model.card.kind == "diffusion" else 1
    return steps > 1 or bool(opts.refine_samples)


def block_tiles(
    model: EMDiffuseModel, opts: SamplingOptions, whole: tuple[int, int], rows: slice, cols: slice, *, scale: int = 1
) -> TilePlan:
    """The tiles that run for the pixels ``rows`` x ``cols`` (input pixels) of an image of
    ``whole`` pixels: those of the whole image's grid (:class:`~.tiling.TileGrid`) that reach
    them or their context (:func:`~.tiling.context_margin`).

    Examples
    --------
    >>> from napari_emdiffuse.engine.models.registry import load_model
    >>> m = load_model("demo-denoise", device="cpu")
    >>> opts = resolve_options(m, torch.device("cpu"), tile=64, overlap=16)
    >>> plan = block_tiles(m, opts, (500, 500), slice(100, 200), slice(0, 50))
    >>> plan.origin, plan.height, plan.width
    ((44, 0), 196, 108)
    """
    mult = model.card.network.size_multiple
    h, w = canvas_size(whole[0] * scale, mult), canvas_size(whole[1] * scale, mult)
    grid = TileGrid(h, w, min(opts.tile, h), min(opts.tile, w), opts.overlap)
    margin = context_margin(max(grid.tile_h, grid.tile_w), opts.overlap, multistep=is_multistep(model, opts))
    return grid.window(slice(rows.start * scale, rows.stop * scale), slice(cols.start * scale, cols.stop * scale),
                       margin=margin)  # fmt: skip
