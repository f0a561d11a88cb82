"""Growing a trained UNet wider without changing what it computes.

A network that has stopped improving at its width (every continuation of the bundled
denoiser since its sixth stage gained 0.00-0.03 dB) can be widened and trained on: each
layer keeps its trained channels and gains new ones whose contribution to the old channels
starts at zero, so the wider network begins exactly where the narrow one ended and training
only has to add. The new channels' incoming weights keep their fresh initialisation, so the
gradient reaches their (zero) outgoing weights at the first step.

The old channels stay in the same normalisation groups: a width ratio whose group layout
would mix old and new channels (24 -> 32 channels splits the decoder's (h, skip) groups) is
refused. Attention keeps its number of heads; each head widens, its old query weights
scaled for the wider head's softmax temperature and its new query dimensions zero.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .unet import AttentionBlock, ResBlock, UNet

__all__ = ["widen_unet", "widen_ratio"]

Parts = tuple[int, ...]  # a channel axis as concatenated blocks of old channels


def widen_ratio(old: UNet, new: UNet) -> float:
    """The width ratio of ``new`` over ``old``, checked: same depth, blocks, attention and
    embedding, and a ratio above 1.

    Raises
    ------
    ValueError
        With a one-line reason when ``new`` is not a widened ``old``.
    """
    r = new.inner_channel / old.inner_channel
    if r <= 1:
        raise ValueError(f"widening needs more channels than the base's {old.inner_channel}, got {new.inner_channel}")
    same = (
        old.channel_mults == new.channel_mults
        and (old.in_channel, old.out_channel) == (new.in_channel, new.out_channel)
        and len(old.input_blocks) == len(new.input_blocks)
        and len(old.output_blocks) == len(new.output_blocks)
        and old.slice_embedding == new.slice_embedding
        and old.aleatoric == new.aleatoric
        and old.embed_channels == new.embed_channels
        and [type(m) for m in old.modules()] == [type(m) for m in new.modules()]
    )
    if not same:
        raise ValueError("the wider network must have the base's levels, blocks, attention and level embedding")
    return r


def _head_parts(att: AttentionBlock, channels: int) -> Parts:
    return (channels // att.num_heads,) * att.num_heads


def _layouts(net: UNet) -> Iterator[tuple[str, tuple[Parts | None, ...]]]:
    """(parameter name, per-axis layout) for every parameter of ``net``; None: an axis that
    does not widen (image channels, the sinusoid)."""
    emb = net.cond_embed[0].out_features
    block_emb: Parts = (emb, emb) if net.slice_embedding else (emb,)
    for name in ("cond_embed", "channel_embed"):
        if hasattr(net, name):
            yield f"{name}.0.weight", ((emb,), None)
            yield f"{name}.0.bias", ((emb,),)
            yield f"{name}.2.weight", ((emb,), (emb,))
            yield f"{name}.2.bias", ((emb,),)
    stem = net.input_blocks[0][0]
    yield "input_blocks.0.0.weight", ((stem.out_channels,), None, None, None)
    yield "input_blocks.0.0.bias", ((stem.out_channels,),)
    # the decoder's inputs are (h, skip) concatenations, the skips in the encoder's order
    skips = [stem.out_channels]
    ch = stem.out_channels
    blocks: list[tuple[str, nn.Module, Parts]] = []
    for i, seq in enumerate(net.input_blocks[1:], start=1):
        for j, layer in enumerate(seq):
            blocks.append((f"input_blocks.{i}.{j}", layer, (ch,)))
            ch = _out_channels(layer, ch)
        skips.append(ch)
    for j, layer in enumerate(net.middle_block):
        blocks.append((f"middle_block.{j}", layer, (ch,)))
        ch = _out_channels(layer, ch)
    for i, seq in enumerate(net.output_blocks):
        parts: Parts = (ch, skips.pop())
        for j, layer in enumerate(seq):
            blocks.append((f"output_blocks.{i}.{j}", layer, parts))
            ch = _out_channels(layer, sum(parts))
            parts = (ch,)
    for prefix, layer, cin in blocks:
        if isinstance(layer, ResBlock):
            cout = (layer.out_layers[0].num_channels,)
            yield f"{prefix}.in_layers.0.weight", (cin,)
            yield f"{prefix}.in_layers.0.bias", (cin,)
            yield f"{prefix}.in_layers.2.weight", (cout, cin, None, None)
            yield f"{prefix}.in_layers.2.bias", (cout,)
            yield f"{prefix}.emb_layers.1.weight", (cout + cout, block_emb)
            yield f"{prefix}.emb_layers.1.bias", (cout + cout,)
            yield f"{prefix}.out_layers.0.weight", (cout,)
            yield f"{prefix}.out_layers.0.bias", (cout,)
            yield f"{prefix}.out_layers.3.weight", (cout, cout, None, None)
            yield f"{prefix}.out_layers.3.bias", (cout,)
            if isinstance(layer.skip_connection, nn.Conv2d):
                yield f"{prefix}.skip_connection.weight", (cout, cin, None, None)
                yield f"{prefix}.skip_connection.bias", (cout,)
        else:  # AttentionBlock
            (c,) = cin
            heads = _head_parts(layer, c)
            qkv = tuple(p for p in heads for _ in range(3))  # per head: q, k, v
            yield f"{prefix}.norm.weight", (cin,)
            yield f"{prefix}.norm.bias", (cin,)
            yield f"{prefix}.qkv.weight", (qkv, cin, None)
            yield f"{prefix}.qkv.bias", (qkv,)
            yield f"{prefix}.proj_out.weight", (cin, heads, None)
            yield f"{prefix}.proj_out.bias", (cin,)
    for head in ("out", "out_var"):
        if hasattr(net, head):
            yield f"{head}.0.weight", ((ch,),)
            yield f"{head}.0.bias", ((ch,),)
            yield f"{head}.2.weight", (None, (ch,), None, None)
            yield f"{head}.2.bias", (None,)


def _out_channels(layer: nn.Module, cin: int) -> int:
    return layer.out_layers[0].num_channels if isinstance(layer, ResBlock) else cin


def _positions(parts: Parts, r: float) -> np.ndarray:
    """Where the old channels of a concatenation go in its widened form (each block's old
    channels first, its new ones after them)."""
    out, start = [], 0
    for p in parts:
        out.append(np.arange(start, start + p))
        start += int(round(p * r))
    return np.concatenate(out)


def _check_groups(name: str, parts: Parts, r: float, groups_old: int, groups_new: int) -> None:
    pos = _positions(parts, r)
    size = sum(parts) // groups_old
    if size != int(round(sum(parts) * r)) // groups_new:
        raise ValueError(f"widening x{r:g} changes the normalisation group size at {name}")
    for g in range(groups_old):
        p = pos[g * size : (g + 1) * size]
        if p[0] % size or p[-1] != p[0] + size - 1:
            raise ValueError(
                f"widening x{r:g} would mix trained and new channels in one normalisation group "
                f"({name})"
            )


def widen_unet(old: UNet, new: UNet) -> None:
    """Load ``old``'s weights into the wider ``new`` (in place) so that both compute the same.

    ``new`` must be built like ``old`` with ``inner_channel`` (and ``norm_groups``,
    ``num_head_channels``) multiplied by the same ratio and ``embed_channels`` kept at
    ``old``'s. New channels keep ``new``'s initial weights, except their contributions to
    old channels, which are zero.

    Raises
    ------
    ValueError
        When ``new`` is not such a widening of ``old`` (one line).

    Examples
    --------
    >>> kw = dict(in_channel=1, channel_mults=(1, 2), attn_res=(), res_blocks=1, dropout=0.0)
    >>> old = UNet(inner_channel=24, num_head_channels=24, norm_groups=24, **kw)
    >>> _ = [nn.init.normal_(p, std=0.1) for p in old.parameters()]
    >>> new = UNet(inner_channel=36, num_head_channels=36, norm_groups=36, embed_channels=24, **kw)
    >>> widen_unet(old, new)
    >>> x, t = torch.randn(1, 1, 16, 16), torch.tensor([0.5])
    >>> bool(torch.allclose(old(x, t), new(x, t), atol=1e-5))
    True
    """
    r = widen_ratio(old, new)
    g_old = old.input_blocks[1][0].in_layers[0].num_groups
    g_new = new.input_blocks[1][0].in_layers[0].num_groups
    if abs(g_new - g_old * r) > 1e-6:
        raise ValueError(f"the wider network needs {g_old * r:g} normalisation groups (the base's {g_old} x{r:g})")
    heads_old = [m.num_heads for m in old.modules() if isinstance(m, AttentionBlock)]
    if heads_old != [m.num_heads for m in new.modules() if isinstance(m, AttentionBlock)]:
        raise ValueError("the wider network must keep the base's attention heads (widen each head instead)")
    osd, nsd = old.state_dict(), new.state_dict()
    layouts = dict(_layouts(old))
    if layouts.keys() != osd.keys():
        raise ValueError("this network has layers widening does not know")  # a new block type
    norms = {f"{n}.weight" for n, m in old.named_modules() if isinstance(m, nn.GroupNorm)}
    with torch.no_grad():
        for name, axes in layouts.items():
            src, dst = osd[name], nsd[name].clone()
            if name in norms:
                _check_groups(name.removesuffix(".weight"), axes[0], r, g_old, g_new)
            index = [np.arange(n) if a is None else _positions(a, r) for n, a in zip(src.shape, axes)]
            if src.dim() > 1 and axes[0] is not None:
                dst[index[0]] = 0.0  # old outputs: nothing from new inputs
            elif src.dim() > 1:
                dst.zero_()  # an output head: only its old inputs count
            dst[np.ix_(*index)] = src
            if name.endswith(("qkv.weight", "qkv.bias")):
                _rescale_queries(dst, axes[0], r)
            nsd[name] = dst
    new.load_state_dict(nsd)


def _rescale_queries(qkv: torch.Tensor, parts: Sequence[int], r: float) -> None:
    """Per head, the query's new rows zero and its old rows scaled by sqrt(new / old head
    width): the fused attention divides the logits by the head width's square root."""
    ho = parts[0]
    hn = int(round(ho * r))
    for h in range(len(parts) // 3):
        q0 = 3 * hn * h
        qkv[q0 : q0 + ho] *= (hn / ho) ** 0.5
        qkv[q0 + ho : q0 + hn] = 0.0
