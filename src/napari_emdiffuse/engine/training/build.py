"""What a training run is made of: the model to train (a copy of the base, or a new small
network) and its data sets, built from a :class:`~.config.TrainConfig`."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from ..core.networks.widen import widen_unet
from ..errors import EMDiffuseError, InputError
from ..models.cards import ModelCard, Normalisation, UNetConfig
from ..models.factory import build_module
from ..models.registry import load_model
from .config import SMALL_NETWORK, TrainConfig, one_line
from .data.base import MixedData, TrainingData, check_image
from .data.noise import SimulatedNoiseData
from .data.pairs import pair_data, sr_data
from .data.registration import register_pair
from .data.volumes import IsotropicData
from .neighbours import neighbour_pairs

__all__ = ["build_model", "build_data", "registration_notes"]


def build_model(cfg: TrainConfig) -> tuple[ModelCard, torch.nn.Module, str | None]:
    """The card and module to train, and the base model's name: a copy of the base model, or a new small one."""
    base_name = None
    iso = cfg.task.startswith("isotropic")
    if cfg.base is not None:
        base = load_model(cfg.base, task=cfg.task, arch=cfg.arch, device="cpu", cache=False)
        card = base.card.model_copy(deep=True)
        if cfg.kind is not None and cfg.kind != card.kind:
            raise EMDiffuseError(f"base model '{card.name}' is a {card.kind} model, not {cfg.kind}")
        base_name = card.name
        card.task = cfg.task
        card.arch = None
        net = copy.deepcopy(base.module).cpu()
        width = cfg.network.get("inner_channel")
        if width is not None and width != card.network.inner_channel:
            net = _widened(card, net, int(width))
        if cfg.network.get("blur_level") and not card.network.blur_level:
            if not (card.task == "super-resolve" and card.kind == "regression" and card.cond_channels == 1):
                raise EMDiffuseError(f"blur_level converts a super-resolution predictor; '{card.name}' is not one")
            # Keep every weight; the embedding, which saw a constant level, learns the blur,
            # and a new estimator learns to read it.
            card.network = card.network.model_copy(update={"blur_level": True})
            net = _with_body_of(card, net)
        to_depth = bool(cfg.network.get("gap_depth")) and not card.network.gap_depth
        if to_depth and not (iso and card.kind == "regression" and card.cond_channels == 2):
            raise EMDiffuseError(f"gap_depth converts an isotropic predictor; '{card.name}' is not one")
        if iso and (to_depth or card.network.gap_depth):
            if to_depth:
                # Keep the body, start a one-slice head (zero: the linear interpolation) told
                # the depth of the slice to make.
                card.network = card.network.model_copy(update={"out_channel": 1, "gap_depth": True})
                net = _with_body_of(card, net)
            card.z_factor = None  # every factor
        elif iso:
            factor = cfg.factor or card.z_factor or 2
            if card.kind == "regression" and card.network.out_channel != factor - 1:
                # A predictor makes one output channel per new slice: keep its body and
                # start new output heads for the new factor.
                card.network = card.network.model_copy(update={"out_channel": factor - 1})
                net = _with_body_of(card, net)
            card.z_factor = factor
        if cfg.normalisation is not None:
            card.normalisation = cfg.normalisation
        if cfg.pixel_size_nm is not None:
            card.pixel_size_nm = cfg.pixel_size_nm
    else:
        card = _scratch_card(cfg)
    _apply_inference_defaults(cfg, card)
    if cfg.base is None:
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and run
        net = build_module(card)
    if cfg.freeze_encoder:
        unet = _unet(net)
        for part in (unet.input_blocks, unet.cond_embed):
            for p in part.parameters():
                p.requires_grad_(False)
    if cfg.train_layers == "full-resolution":
        for p in net.parameters():
            p.requires_grad_(False)
        for part in full_resolution_blocks(_unet(net)):
            for p in part.parameters():
                p.requires_grad_(True)
    return card, net, base_name


def full_resolution_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks of a UNet that read or write the input's grid: the stem, the first level's
    residual blocks and its downsampling, the upsampling into the last level, that level's
    blocks and the output heads. A paired fine-tune trains only these (``train_layers``):
    what one image teaches (its noise, its contrast) lives at the finest scale, and the coarse
    layers keep what the base learnt from many."""
    levels = len(unet.channel_mults)
    res_blocks = (len(unet.input_blocks) - levels) // levels  # stem + levels x blocks + (levels - 1) downs
    heads = [unet.out] + ([unet.out_var] if getattr(unet, "out_var", None) is not None else [])
    return [*unet.input_blocks[: res_blocks + 2], *unet.output_blocks[-(res_blocks + 2):], *heads]


def _unet(net: torch.nn.Module) -> torch.nn.Module:
    return getattr(net, "denoise_fn", getattr(net, "net", net))


def _widened(card: ModelCard, net: torch.nn.Module, width: int) -> torch.nn.Module:
    """``net`` grown to ``width`` channels computing what it did (core.networks.widen);
    ``card.network`` is updated to match."""
    old = card.network
    r = width / old.inner_channel
    if (old.norm_groups or min(32, old.inner_channel)) * r % 1 or old.num_head_channels * r % 1:
        why = (f"inner_channel {width} is not a whole multiple of the base's normalisation groups and attention "
               f"heads (x{r:g} of {old.inner_channel})")
    else:
        try:
            return _widen_to(card, net, width)
        except (ValidationError, ValueError) as exc:
            card.network = old
            why = one_line(exc, "network") if isinstance(exc, ValidationError) else str(exc)
    # the hint is tried, not guessed: a base whose normalisation groups straddle a decoder
    # concatenation (16 wide, groups of 1 channel at the stem) takes no width at all
    fits = [w for w in (old.inner_channel * 3 // 2, old.inner_channel * 2, old.inner_channel * 3)
            if w != width and _widens_to(card.model_copy(deep=True), net, w)]
    hint = f"widths that keep it: {', '.join(map(str, fits))}" if fits else "this base cannot be widened keeping its function"
    raise EMDiffuseError(f"cannot widen '{card.name}' to {width} channels: {why}; {hint}")


def _widen_to(card: ModelCard, net: torch.nn.Module, width: int) -> torch.nn.Module:
    """``net`` widened to ``width`` (``card.network`` updated); ValueError / ValidationError
    where the base's layout does not allow it."""
    old = card.network
    r = width / old.inner_channel
    card.network = UNetConfig.model_validate({
        **old.model_dump(), "inner_channel": width, "norm_groups": round((old.norm_groups or min(32, old.inner_channel)) * r),
        "num_head_channels": round(old.num_head_channels * r), "embed_channels": old.embed_channels or old.inner_channel,
    })  # fmt: skip
    wide = _with_body_of(card, net)
    widen_unet(_unet(net), _unet(wide))
    return wide


def _widens_to(card: ModelCard, net: torch.nn.Module, width: int) -> bool:
    old = card.network
    r = width / old.inner_channel
    if (old.norm_groups or min(32, old.inner_channel)) * r % 1 or old.num_head_channels * r % 1:
        return False
    try:
        _widen_to(card, net, width)
    except (ValidationError, ValueError):
        return False
    return True


def _with_body_of(card: ModelCard, net: torch.nn.Module) -> torch.nn.Module:
    """A new module for ``card`` holding every weight of ``net`` whose shape still fits."""
    fresh = build_module(card)
    own = fresh.state_dict()
    own.update({k: v for k, v in net.state_dict().items() if k in own and own[k].shape == v.shape})
    fresh.load_state_dict(own)
    return fresh


def _apply_inference_defaults(cfg: TrainConfig, card: ModelCard) -> None:
    try:
        if cfg.overlap is not None and cfg.overlap < card.tile:
            card.overlap = cfg.overlap  # before tile: the card checks overlap < tile
        if cfg.tile is not None:
            card.tile = cfg.tile
        if cfg.overlap is not None:
            card.overlap = cfg.overlap
        for key in ("log_snr_max", "start_log_snr", "fast_steps", "balanced_steps"):
            if getattr(cfg, key) is not None:
                setattr(card, key, getattr(cfg, key))
    except ValidationError as exc:
        raise EMDiffuseError(one_line(exc, "tile/overlap")) from None


def _scratch_card(cfg: TrainConfig) -> ModelCard:
    kind = cfg.kind or "diffusion"
    iso = cfg.task.startswith("isotropic")
    factor = cfg.factor or 2
    cond = 2 if iso else 1
    depth = bool(cfg.network.get("gap_depth"))
    want = {
        "in_channel": cond + (1 if kind == "diffusion" else 0),
        "out_channel": factor - 1 if (iso and kind == "regression" and not depth) else 1,
        "slice_embedding": iso and kind == "diffusion",
    }
    for key, value in want.items():
        if key in cfg.network and cfg.network[key] != value:
            raise EMDiffuseError(f"network.{key} is {value} for a {kind} {cfg.task} model, not {cfg.network[key]}")
    try:
        network = UNetConfig(**{**SMALL_NETWORK, **cfg.network, **want})
        return ModelCard(
            name=cfg.name or Path(cfg.out).name,
            task=cfg.task,
            kind=kind,
            description=cfg.description,
            network=network,
            normalisation=cfg.normalisation or Normalisation(),
            scale=(cfg.scale or 2) if cfg.task == "super-resolve" else 1,
            z_factor=factor if iso and not depth else None,
            pixel_size_nm=cfg.pixel_size_nm,
        )
    except ValidationError as exc:
        raise EMDiffuseError(one_line(exc, "network config")) from None


def build_data(
    cfg: TrainConfig, card: ModelCard, mult: int, *, read_blur: Callable[[np.ndarray], float] | None = None
) -> TrainingData:
    """Load, check and (where needed) register the images; build the data sets.

    ``read_blur`` (a blur-conditioned model with a fitted estimator): the acquisition blur of
    a recorded low-resolution input, which its pairs are told (no blur is known for them).
    """
    common = dict(patch=cfg.patch, val_fraction=cfg.val_fraction, multiple=mult)
    rule = card.normalisation
    if cfg.task.startswith("isotropic"):
        sources = list(cfg.volume) + list(cfg.inputs)
        depth = card.network.gap_depth
        task_mode = cfg.task[-1]
        iso_parts: list[TrainingData] = []
        for mode in (task_mode, "a" if task_mode == "i" else "i"):
            group = [s for s in sources if {"z": "i", "lateral": "a", None: task_mode}[s.planes] == mode]
            if group:
                iso_parts.append(IsotropicData(
                    [check_image(s.load(), s.label, ndim=(3,)) for s in group], factor=card.z_factor or cfg.factor or 2,
                    mode=mode, rule=rule, kind=card.kind, names=[s.label for s in group], gap_depth=depth,
                    max_factor=cfg.max_factor if depth else None, condition_noise=cfg.condition_noise,
                    doses=cfg.doses, read_noise=cfg.read_noise, correlation=cfg.noise_correlation, seed=cfg.seed,
                    **common,
                ))
        # Lateral crops are as high as the stack is deep: the two kinds of plane share the
        # batches equally rather than by area, which a large anisotropic volume would take.
        return iso_parts[0] if len(iso_parts) == 1 else MixedData(iso_parts, shares=[1, 1])
    if cfg.objective != "supervised":
        return _self_supervised_data(cfg, card, common)
    scale = card.scale if cfg.task == "super-resolve" else 1
    targets = cfg.targets if cfg.targets is not None else [None] * len(cfg.inputs)
    pair_in, pair_t, pair_names, clean, clean_names = [], [], [], [], []
    for src, tgt in zip(cfg.inputs, targets):
        image = check_image(src.load(), src.label)
        if tgt is None:
            clean.append(image)
            clean_names.append(src.label)
            continue
        target = check_image(tgt.load(), tgt.label)
        image, target, how = _registered(cfg, image, target, scale, src.label, tgt.label)
        pair_in.append(image)
        pair_t.append(target)
        pair_names.append(f"{src.label} -> {tgt.label}{how}")
    for src in cfg.clean:
        clean.append(check_image(src.load(), src.label))
        clean_names.append(src.label)
    parts: list[TrainingData] = []
    blur = dict(input_blur=cfg.input_blur)
    if pair_in:
        levels = [read_blur(a) for a in pair_in] if read_blur is not None and scale > 1 else None
        parts.append(pair_data(pair_in, pair_t, rule=rule, scale=scale, names=pair_names, levels=levels,
                               resample_noise=cfg.resample_noise, noise_gain=cfg.noise_gain, **common, **blur))
    if clean:
        if cfg.task == "denoise":
            parts.append(
                SimulatedNoiseData(
                    clean, doses=cfg.doses, read_noise=cfg.read_noise, rule=rule, names=clean_names,
                    correlation=cfg.noise_correlation, invert=cfg.invert_contrast, zoom=cfg.zoom,
                    seed=cfg.seed, **common, **blur,
                )
            )
        else:
            parts.append(sr_data(clean, scale=scale, rule=rule, names=clean_names, downsampling=cfg.downsampling,
                                 levels=card.network.blur_level, input_noise=cfg.input_noise, **common, **blur))
    return parts[0] if len(parts) == 1 else MixedData(parts)


def _self_supervised_data(cfg: TrainConfig, card: ModelCard, common: dict) -> TrainingData:
    if cfg.task != "denoise":
        raise EMDiffuseError(f"{cfg.objective} training denoises; it cannot train a {cfg.task} model")
    if card.kind != "regression":
        # a diffusion model would learn to sample the noisy targets
        raise EMDiffuseError(
            f"{cfg.objective} training needs a predictor (kind regression); '{card.name}' is a {card.kind} model"
        )
    if cfg.targets is not None and any(t is not None for t in cfg.targets):
        raise EMDiffuseError(f"{cfg.objective} training learns from noisy images alone; give no targets")
    sources = list(cfg.inputs) + list(cfg.clean)
    images = [check_image(s.load(), s.label) for s in sources]
    if cfg.objective == "neighbour-slices":
        pairs = [neighbour_pairs(im) for im in images]  # refuses a 2D image or too few slices
        return pair_data([p[0] for p in pairs], [p[1] for p in pairs], rule=card.normalisation,
                         names=[f"{s.label} (neighbouring slices)" for s in sources], **common)
    # Input and target are the same noisy crop; the blind spot hides the target's pixels.
    return pair_data(images, images, rule=card.normalisation, names=[f"{s.label} (noisy only)" for s in sources],
                     **common)


def _registered(
    cfg: TrainConfig, image: np.ndarray, target: np.ndarray, scale: int, a: str, b: str
) -> tuple[np.ndarray, np.ndarray, str]:
    """The pair on one grid, and what registration did (for the model card's data list). A 2D
    image stored as a volume of one slice (a zarr or precomputed result) pairs as 2D."""
    if image.ndim != target.ndim and 2 in (image.ndim, target.ndim):
        image, target = (a[0] if a.ndim == 3 and a.shape[0] == 1 else a for a in (image, target))
    expected = image.shape[:-2] + (image.shape[-2] * scale, image.shape[-1] * scale)
    if target.shape == expected and cfg.register == "off":
        return image, target, ""  # same grid: taken as registered
    if image.ndim != 2 or target.ndim != 2:
        raise InputError(
            f"{a} {tuple(image.shape)} and {b} {tuple(target.shape)} do not match; "
            "register stacks slice by slice first"
        )

    reg = register_pair(image, target, scale=scale, warp="translation" if cfg.register == "translation" else "affine")
    drift = f", drift up to {reg.max_correction:.2f} px" if reg.warp == "affine" else ""
    return reg.moving, reg.fixed, f" [registered, {reg.warp}: shift ({reg.shift[0]:g}, {reg.shift[1]:g}) px{drift}]"


def registration_notes(description: Any) -> list[str]:
    """The pairs that registration moved, from the data's description (the card's list)."""
    if isinstance(description, dict):
        return [n for v in description.values() for n in registration_notes(v)]
    if isinstance(description, list):
        return [n for v in description for n in registration_notes(v)]
    if isinstance(description, str) and " [registered, " in description:
        pair, how = description.split(" [registered, ", 1)
        return [f"registered {pair}: {how.rstrip(']')}"]
    return []
