"""Factories driven by typed configs (names kept from the original code).

``define_network`` / ``define_loss`` / ``define_metric`` build the parts, ``create_model``
builds a complete :class:`~.model.EMDiffuseModel` from a model card, ``create_EMDiffuse``
builds one of the published configurations by name, and ``import_published`` turns a
published checkpoint into a model directory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from ..core.diffusion import Network
from ..core.losses import LOSSES
from ..core.networks import RegressionUNet, UNet
from ..errors import EMDiffuseError, ModelFileError
from ..io.common import refuse_url
from .cards import ARCHITECTURES, TASKS, ModelCard, UNetConfig, published_card, published_network, validation_message
from .files import check_state_dict, clean_published_state_dict, save_model_dir, torch_load
from .model import REFINER_PREFIX, EMDiffuseModel

__all__ = [
    "define_network",
    "define_loss",
    "define_metric",
    "build_module",
    "build_refiner",
    "expected_shapes",
    "create_model",
    "create_EMDiffuse",
    "import_published",
    "network_from_shapes",
    "published_card_for",
]

_TASK_TO_ARCH = {task: arch for arch, task in ARCHITECTURES.items()}


def define_network(cfg: UNetConfig | Mapping, kind: str = "diffusion") -> nn.Module:
    """Build the denoising UNet (``kind="diffusion"``) or the one-pass regression UNet.

    Examples
    --------
    >>> net = define_network({"inner_channel": 16, "channel_mults": [1, 2], "res_blocks": 1})
    >>> type(net).__name__
    'UNet'
    """
    if not isinstance(cfg, UNetConfig):
        try:
            cfg = UNetConfig(**cfg)
        except ValidationError as exc:
            raise EMDiffuseError(validation_message(exc, "network config")) from None
    kw = cfg.model_dump()
    residual, gap_depth, blur_level = kw.pop("residual"), kw.pop("gap_depth"), kw.pop("blur_level")
    if kind == "diffusion":
        if residual or gap_depth or blur_level:
            raise EMDiffuseError(
                "network.residual, gap_depth and blur_level apply to regression (predictor) models only"
            )
        return UNet(**kw)
    if kind == "regression":
        in_ch, out_ch = kw.pop("in_channel"), kw.pop("out_channel")
        return RegressionUNet(in_ch, out_ch, residual=residual, gap_depth=gap_depth, blur_level=blur_level, **kw)
    raise EMDiffuseError(f"unknown network kind {kind!r}; choose diffusion or regression")


def define_loss(name: str, **kwargs) -> Callable:
    """A loss by name: mse_loss, l1_loss, mse_var_loss, pin_loss, PinballLoss, FocalLoss."""
    if name not in LOSSES:
        raise EMDiffuseError(f"unknown loss {name!r}; choose one of {', '.join(sorted(LOSSES))}")
    fn = LOSSES[name]
    return fn(**kwargs) if isinstance(fn, type) else fn


def define_metric(name: str) -> Callable:
    """A metric by name: mae, psnr, ssim, frc_resolution, inception_score."""
    # lazy: metrics import scikit-image, which restoring and training from a card never need
    from ..core.metrics import METRICS

    if name not in METRICS:
        raise EMDiffuseError(f"unknown metric {name!r}; choose one of {', '.join(sorted(METRICS))}")
    return METRICS[name]


def build_module(card: ModelCard) -> nn.Module:
    """The torch module a card describes (a diffusion ``Network`` or a regression UNet)."""
    net = define_network(card.network, card.kind)
    if card.kind == "diffusion":
        return Network(net, card.beta_schedule.model_dump())
    return net


def build_refiner(card: ModelCard) -> Network | None:
    """The diffusion ``Network`` of a predictor's refiner, or None when the card has none."""
    if card.refiner is None:
        return None
    return Network(define_network(card.refiner.network, "diffusion"), card.refiner.beta_schedule.model_dump())


def expected_shapes(card: ModelCard) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the weights file for a card (checked before loading)."""
    with torch.device("meta"):
        module, refiner = build_module(card), build_refiner(card)
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if refiner is not None:
        shapes.update({f"{REFINER_PREFIX}{k}": tuple(v.shape) for k, v in refiner.state_dict().items()})
    return shapes


def create_model(card: ModelCard | Mapping, state_dict: Mapping[str, torch.Tensor] | None = None):
    """A complete model from a card, optionally with weights (checked key by key).

    A predictor's refiner weights are the keys under ``refiner.`` in the same state dict.
    """
    if not isinstance(card, ModelCard):
        try:
            card = ModelCard(**card)
        except ValidationError as exc:
            raise ModelFileError(validation_message(exc, "model card")) from None
    module, refiner = build_module(card), build_refiner(card)
    if state_dict is not None:
        check_state_dict(
            {k: tuple(v.shape) for k, v in state_dict.items()}, expected_shapes(card), f"weights of '{card.name}'"
        )
        n = len(REFINER_PREFIX)
        module.load_state_dict({k: v for k, v in state_dict.items() if not k.startswith(REFINER_PREFIX)})
        if refiner is not None:
            refiner.load_state_dict({k[n:]: v for k, v in state_dict.items() if k.startswith(REFINER_PREFIX)})
    return EMDiffuseModel(card, module, refiner=refiner)


def create_EMDiffuse(task: str = "EMDiffuse-n", *, name: str | None = None, **network_overrides):
    """A model with the published configuration of a task (randomly initialised).

    Parameters
    ----------
    task : str
        A published architecture (``EMDiffuse-n``, ``EMDiffuse-r``, ``vEMDiffuse-i``,
        ``vEMDiffuse-a``) or a task (``denoise``, ``super-resolve``, ``isotropic-i``,
        ``isotropic-a``).
    **network_overrides
        Changes to the network config, e.g. ``inner_channel=16`` for a small model.

    Examples
    --------
    >>> m = create_EMDiffuse("EMDiffuse-n")
    >>> m.card.network.inner_channel, m.card.beta_schedule.test.n_timestep
    (32, 1000)
    """
    arch = _TASK_TO_ARCH.get(task, task)
    if arch not in ARCHITECTURES:
        raise EMDiffuseError(
            f"unknown task {task!r}; choose one of {', '.join(list(ARCHITECTURES) + list(TASKS))}"
        )
    card = published_card(arch, name=name)
    if network_overrides:
        try:
            card.network = UNetConfig(**{**card.network.model_dump(), **network_overrides})
        except ValidationError as exc:
            raise EMDiffuseError(validation_message(exc, "network config")) from None
    return create_model(card)


def network_from_shapes(shapes: Mapping[str, tuple[int, ...]], arch: str) -> UNetConfig | None:
    """The network of a published-style checkpoint read off its tensor shapes, or None.

    Width (``inner_channel``), input and output channels, depth (``channel_mults``,
    ``res_blocks``) and the levels with attention (``attn_res``) follow from the keys and
    shapes. ``num_head_channels`` changes no shape and stays the published 32, as in every
    configuration the original repository ships. The result is returned only where a network
    built from it has exactly the checkpoint's keys and shapes.

    Examples
    --------
    >>> net = define_network({"inner_channel": 16, "channel_mults": [1, 2], "res_blocks": 1})
    >>> shapes = {f"denoise_fn.{k}": tuple(v.shape) for k, v in net.state_dict().items()}
    >>> cfg = network_from_shapes(shapes, "EMDiffuse-n")
    >>> cfg.inner_channel, cfg.channel_mults, cfg.res_blocks
    (16, [1, 2], 1)
    """
    p = "denoise_fn."
    first, last = shapes.get(p + "input_blocks.0.0.weight"), shapes.get(p + "out.2.weight")
    if first is None or last is None or len(first) != 4 or len(last) != 4:
        return None
    inner = int(first[0])
    # input_blocks: a stem conv, then per level res_blocks ResBlocks (each maybe followed by
    # attention) and, between levels, a downsampling ResBlock; try each depth that fits the count.
    widths, attn_at = [], []
    while (conv := shapes.get(f"{p}input_blocks.{len(widths) + 1}.0.in_layers.2.weight")) is not None:
        widths.append(int(conv[0]))
        attn_at.append(f"{p}input_blocks.{len(widths)}.1.qkv.weight" in shapes)
    for res_blocks in range(1, 9):
        levels, rest = divmod(len(widths) + 1, res_blocks + 1)
        if rest or levels < 1:
            continue
        starts = [lv * (res_blocks + 1) for lv in range(levels)]
        if any(widths[s] % inner for s in starts):
            continue
        attn = {2**lv for lv, s in enumerate(starts) if any(attn_at[s : s + res_blocks])}
        try:
            cfg = UNetConfig.model_validate({
                **published_network(arch).model_dump(), "in_channel": int(first[1]), "out_channel": int(last[0]),
                "inner_channel": inner, "channel_mults": [widths[s] // inner for s in starts],
                "res_blocks": res_blocks, "attn_res": sorted(attn),
            })
            expected = expected_shapes(published_card(arch, network=cfg))
        except (ValidationError, EMDiffuseError, RuntimeError, ValueError):
            continue
        if expected.keys() == shapes.keys() and all(tuple(shapes[k]) == v for k, v in expected.items()):
            return cfg
    return None


def published_card_for(shapes: Mapping[str, tuple[int, ...]], arch: str, *, name: str, source: str) -> ModelCard:
    """The card of a published checkpoint with these tensor shapes (schedule buffers dropped).

    The published network where it fits; else the network read off the shapes
    (:func:`network_from_shapes`), for checkpoints trained with another width or depth; else a
    one-line error naming the first key that does not fit the published network.
    """
    card = published_card(arch, name=name)
    expected = expected_shapes(card)
    if expected.keys() == shapes.keys() and all(tuple(shapes[k]) == v for k, v in expected.items()):
        return card
    network = network_from_shapes(shapes, arch)
    if network is None:
        check_state_dict(shapes, expected, source)  # raises, naming the first offending key
    card = published_card(arch, name=name, network=network)
    card.description += (
        f" Network read from the checkpoint: {network.inner_channel} channels, multipliers "
        f"{network.channel_mults}, {network.res_blocks} residual block(s) per level."
    )
    return card


def import_published(
    checkpoint: str | Path, arch: str, out_dir: str | Path, *, network: UNetConfig | None = None
) -> Path:
    """Turn a downloaded ``best_Network.pth`` into a model directory.

    Without ``network``, the published network, or one of another width or depth read off the
    checkpoint's shapes (:func:`published_card_for`); the saved schedule buffers are ignored.
    A checkpoint that fits neither gets a one-line error naming the first offending key.
    """
    refuse_url(out_dir, "a model")
    if not Path(checkpoint).is_file():
        raise ModelFileError(f"checkpoint '{checkpoint}' does not exist")
    sd = clean_published_state_dict(torch_load(Path(checkpoint)))
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    source = f"'{checkpoint}' as {arch}"
    if network is None:
        card = published_card_for(shapes, arch, name=Path(out_dir).name, source=source)
    else:
        card = published_card(arch, name=Path(out_dir).name, network=network)
        check_state_dict(shapes, expected_shapes(card), source)
    return save_model_dir(out_dir, card, sd)
