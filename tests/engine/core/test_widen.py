"""Widening a trained UNet: the wider network computes what the narrow one did, and can learn."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_emdiffuse.engine.core.networks import RegressionUNet, UNet
from napari_emdiffuse.engine.core.networks.widen import widen_unet

# a 24-wide body like the bundled predictors' (one group per channel at the first level)
BODY = dict(channel_mults=(1, 2, 4), res_blocks=1, dropout=0.0)


def _trained(net: nn.Module) -> nn.Module:
    """Random weights everywhere, the zero-initialised layers included, as after training."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.15)
    return net.eval()


def _wide(inner: int, base: int, **kw) -> UNet:
    r = inner / base
    return UNet(inner_channel=inner, norm_groups=int(base * r), num_head_channels=int(kw.pop("heads") * r),
                embed_channels=base, **kw)


@pytest.mark.parametrize("inner", [36, 48])
def test_widened_diffusion_unet_computes_the_same(inner):
    # attention in the encoder, middle and decoder, a slice embedding, an aleatoric head,
    # and varying noise levels / slice indices: every part of the layout
    kw = dict(in_channel=3, attn_res=(2,), slice_embedding=True, aleatoric=True, **BODY)
    old = _trained(UNet(inner_channel=24, num_head_channels=12, norm_groups=24, **kw))
    new = _wide(inner, 24, heads=12, **kw).eval()
    x = torch.randn(3, 3, 32, 32)
    level, idx = torch.tensor([0.05, 0.5, 0.99]), torch.tensor([0, 3, 7])
    before = [p.clone() for p in new.parameters()]
    widen_unet(old, new)
    assert any(not torch.equal(a, b) for a, b in zip(before, new.parameters()))
    with torch.no_grad():
        (eo, vo), (en, vn) = old(x, level, idx), new(x, level, idx)
    assert eo.abs().mean() > 0.1  # the check is not between two near-zero outputs
    torch.testing.assert_close(en, eo, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(vn, vo, atol=2e-5, rtol=1e-4)
    # control: a fresh network of the same width computes something else
    with torch.no_grad():
        assert (_wide(inner, 24, heads=12, **kw).eval()(x, level, idx)[0] - eo).abs().max() > 1e-2


def test_widened_predictor_learns_through_its_new_channels():
    old = RegressionUNet(1, 1, residual=True, aleatoric=True, inner_channel=24, num_head_channels=24,
                         attn_res=(), **BODY)
    _trained(old)
    new = RegressionUNet(1, 1, residual=True, aleatoric=True, inner_channel=36, num_head_channels=36,
                         norm_groups=36, embed_channels=24, attn_res=(), **BODY)
    widen_unet(old.net, new.net)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(new(x)[0], old(x)[0], atol=2e-5, rtol=1e-4)
    new.train()
    mean, _ = new(x)
    mean.square().mean().backward()
    # the stem's new channels feed the first block's old channels through weights that
    # start at zero: their gradient is not zero, so the new channels start to count
    w = new.net.input_blocks[1][0].in_layers[2].weight
    assert torch.count_nonzero(w[:24, 24:]) == 0
    assert w.grad[:24, 24:].abs().max() > 0


def test_widening_refuses_layouts_it_cannot_keep():
    kw = dict(in_channel=1, attn_res=(), **BODY)
    old = UNet(inner_channel=24, num_head_channels=24, norm_groups=24, **kw)
    # x4/3: the decoder's (h, skip) groups of 3 channels would take new channels
    with pytest.raises(ValueError, match="normalisation group") as err:
        widen_unet(old, UNet(inner_channel=32, num_head_channels=32, norm_groups=32, embed_channels=24, **kw))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="more channels"):
        widen_unet(old, UNet(inner_channel=16, num_head_channels=16, norm_groups=16, embed_channels=24, **kw))
    with pytest.raises(ValueError, match="levels, blocks"):
        widen_unet(old, UNet(inner_channel=48, num_head_channels=48, norm_groups=48, embed_channels=24,
                             **{**kw, "channel_mults": (1, 2)}))
    with pytest.raises(ValueError, match="level embedding"):  # the sinusoid's width must stay
        widen_unet(old, UNet(inner_channel=48, num_head_channels=48, norm_groups=48, **kw))
