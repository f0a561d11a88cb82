"""Guided-diffusion style UNet used by EMDiffuse (2D) and vEMDiffuse (slice-conditioned).

The module tree and parameter names follow the published EMDiffuse checkpoints
(``cond_embed``, ``input_blocks``, ``middle_block``, ``output_blocks``, ``out`` and, for
the vEM network, ``channel_embed``), so that their ``state_dict`` loads unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "nearest_up2", "noise_level_embedding"]


def noise_level_embedding(level: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a continuous noise level (or an integer slice index).

    The published models embed the cumulative noise level ``alpha_bar`` itself (a float
    in (0, 1)), not a step index. Computed in float32 whatever the autocast state, because
    bf16 cannot resolve the small differences between neighbouring noise levels.
    """
    level = level.reshape(-1).float()
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=level.device) / half
    )
    args = level[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 (as the original), cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x.float()).to(x.dtype)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class EmbedSequential(nn.Sequential):
    """Sequential that hands the embedding to the blocks that take one."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x



def nearest_up2(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling of an (N, C, H, W) tensor: each pixel repeated 2 x 2,
    the values of ``F.interpolate(x, scale_factor=2, mode="nearest")``. On the CPU, repeating
    by a broadcast view is quicker than interpolate's kernel for an NCHW tensor (the
    predictor's forward pass 7 % quicker on 2 cores); a channels-last one, and any on a GPU
    (not measured there), keep interpolate.

    Examples
    --------
    >>> nearest_up2(torch.arange(4.0).reshape(1, 1, 2, 2))[0, 0]
    tensor([[0., 0., 1., 1.],
            [0., 0., 1., 1.],
            [2., 2., 3., 3.],
            [2., 2., 3., 3.]])
    """
    if x.device.type != "cpu" or not x.is_contiguous():  # a GPU, channels-last: interpolate's own kernel
        return F.interpolate(x, scale_factor=2, mode="nearest")
    n, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


class ResBlock(nn.Module):
    """Residual block with scale-shift conditioning; optionally resamples by 2."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        *,
        groups: int = 32,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.up, self.down = up, down
        self.in_layers = nn.Sequential(
            GroupNorm32(groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(groups, out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return nearest_up2(x)
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.up or self.down:
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.in_layers[2](self._resample(h))
            x = self._resample(x)
        else:
            h = self.in_layers(x)
        scale, shift = self.emb_layers(emb).to(h.dtype)[..., None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        for layer in self.out_layers[1:]:
            h = layer(h)
        return self.skip_connection(x) + h


# The explicit attention of the original is kept for A/B checks (tests, benchmarks).
_FUSED_ATTENTION = True


class AttentionBlock(nn.Module):
    """Spatial self-attention, heads split before q/k/v (the original "legacy" order)."""

    def __init__(self, channels: int, num_head_channels: int, *, groups: int = 32) -> None:
        super().__init__()
        self.num_heads = max(1, channels // num_head_channels) if num_head_channels > 0 else 1
        self.norm = GroupNorm32(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        flat = x.reshape(b, c, hgt * wid)
        qkv = self.qkv(self.norm(flat))
        ch = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, 3 * ch, -1).split(ch, dim=1)
        if _FUSED_ATTENTION:
            # Fused (flash) kernel: never materialises the (hw)^2 weights, 4 GB for one 512^2
            # tile of a 3-level net. Its default scale ch**-1/2 equals the original's ch**-1/4
            # on q and k. It wants (batch, heads, positions, channels), contiguous.
            q, k, v = (u.reshape(b, self.num_heads, ch, -1).transpose(-1, -2).contiguous() for u in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, -1)
        else:
            scale = 1.0 / math.sqrt(math.sqrt(ch))  # on q and k separately: fp16 logits stay in range
            weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
            weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
            a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
        return (flat + self.proj_out(a)).reshape(b, c, hgt, wid)


class UNet(nn.Module):
    """Conditional UNet predicting the noise of ``y_t`` given a condition image.

    Parameters
    ----------
    in_channel : int
        Channels of ``cat([condition, y_t])``: 2 for EMDiffuse, 3 for vEMDiffuse.
    out_channel : int
        Predicted channels (1 for grey-scale EM).
    inner_channel : int
        Width of the first level; the embedding MLP is ``4 * inner_channel`` wide.
    channel_mults : sequence of int
        Width multiplier per resolution level.
    attn_res : sequence of int
        Downsampling rates (1, 2, 4, ...) that get self-attention. The middle block always has it.
    num_head_channels : int
        Channels per attention head.
    res_blocks : int
        Residual blocks per level.
    dropout : float
        Dropout before the last convolution of each residual block.
    slice_embedding : bool
        vEMDiffuse: embed the index of the slice to generate and concatenate it to the
        noise-level embedding.
    aleatoric : bool
        Add a head ``out_var`` that predicts a per-pixel log-variance.
    norm_groups : int, optional
        GroupNorm groups; defaults to ``min(32, inner_channel)`` (32 for the published
        networks, 16 for the inner-16 fixtures).
    embed_channels : int, optional
        Width of the sinusoidal level (and slice) embedding; defaults to ``inner_channel``.
        A network widened from a trained one (:func:`.widen.widen_unet`) keeps the
        narrower network's, since the sinusoid's frequencies depend on its width.
    """

    def __init__(
        self,
        in_channel: int = 2,
        out_channel: int = 1,
        inner_channel: int = 32,
        channel_mults: Sequence[int] = (1, 2, 4, 8),
        attn_res: Sequence[int] = (16,),
        num_head_channels: int = 32,
        res_blocks: int = 2,
        dropout: float = 0.0,
        *,
        slice_embedding: bool = False,
        aleatoric: bool = False,
        norm_groups: int | None = None,
        embed_channels: int | None = None,
        image_size: int | None = None,  # accepted for config compatibility; unused
    ) -> None:
        super().__init__()
        groups = norm_groups or min(32, inner_channel)
        self.in_channel, self.out_channel, self.inner_channel = in_channel, out_channel, inner_channel
        self.embed_channels = embed = int(embed_channels or inner_channel)
        self.channel_mults = tuple(int(m) for m in channel_mults)
        self.slice_embedding, self.aleatoric = slice_embedding, aleatoric
        emb_dim = inner_channel * 4
        self.cond_embed = nn.Sequential(nn.Linear(embed, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if slice_embedding:
            self.channel_embed = nn.Sequential(nn.Linear(embed, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        block_emb = emb_dim * (2 if slice_embedding else 1)

        def res(cin: int, cout: int, **kw) -> ResBlock:
            return ResBlock(cin, block_emb, dropout, cout, groups=groups, **kw)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, num_head_channels, groups=groups)

        ch = first = int(self.channel_mults[0] * inner_channel)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channel, ch, 3, padding=1))])
        skips, ds = [ch], 1
        for level, mult in enumerate(self.channel_mults):
            for _ in range(res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * inner_channel))]
                ch = int(mult * inner_channel)
                if ds in attn_res:
                    layers.append(attn(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                skips.append(ch)
            if level != len(self.channel_mults) - 1:
                self.input_blocks.append(EmbedSequential(res(ch, ch, down=True)))
                skips.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(self.channel_mults))[::-1]:
            for i in range(res_blocks + 1):
                layers = [res(ch + skips.pop(), int(mult * inner_channel))]
                ch = int(mult * inner_channel)
                if ds in attn_res:
                    layers.append(attn(ch))
                if level and i == res_blocks:
                    layers.append(res(ch, ch, up=True))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(groups, ch), nn.SiLU(), _zero(nn.Conv2d(first, out_channel, 3, padding=1)))
        if aleatoric:
            self.out_var = nn.Sequential(GroupNorm32(groups, ch), nn.SiLU(), _zero(nn.Conv2d(first, out_channel, 3, padding=1)))

    @property
    def size_multiple(self) -> int:
        """Spatial sizes must be a multiple of this (one halving per level below the top)."""
        return 2 ** (len(self.channel_mults) - 1)

    def embed(self, noise_level: torch.Tensor, slice_index: torch.Tensor | None = None) -> torch.Tensor:
        # float32 even under autocast: bf16 would round neighbouring noise levels together
        with torch.autocast(device_type=noise_level.device.type, enabled=False):
            emb = self.cond_embed(noise_level_embedding(noise_level, self.embed_channels).float())
        if self.slice_embedding:
            if slice_index is None:
                raise ValueError("the vEM network needs the index of the slice to generate")
            idx = slice_index.reshape(-1).to(emb.device)
            if idx.numel() == 1 and emb.shape[0] > 1:
                idx = idx.expand(emb.shape[0])
            emb = torch.cat([emb, self.channel_embed(noise_level_embedding(idx, self.embed_channels))], dim=1)
        return emb

    def forward(
        self, x: torch.Tensor, noise_level: torch.Tensor, slice_index: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        noise_level = noise_level.reshape(-1).to(x.device)
        if noise_level.numel() == 1 and x.shape[0] > 1:
            noise_level = noise_level.expand(x.shape[0])
        emb = self.embed(noise_level, slice_index)
        hs = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        eps = self.out(h).float()
        if self.aleatoric:
            return eps, self.out_var(h).float()
        return eps
