"""Networks: shapes, published parameter names, reference outputs, variants, speed options."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_emdiffuse.engine.models.files import SCHEDULE_BUFFERS
from napari_emdiffuse.engine.core.diffusion import Network
from napari_emdiffuse.engine.models.factory import create_EMDiffuse, define_network
from napari_emdiffuse.engine.core.networks import RegressionUNet, UNet, noise_level_embedding

from tests.conftest import TINY


def test_unet_output_shape_and_dtype():
    net = UNet(2, 1, **TINY).eval()
    x = torch.randn(3, 2, 32, 48)
    out = net(x, torch.rand(3))
    assert out.shape == (3, 1, 32, 48) and out.dtype == torch.float32


def test_noise_embedding_is_cos_then_sin_of_gamma():
    emb = noise_level_embedding(torch.tensor([0.0, 0.5]), 8)
    assert emb.shape == (2, 8)
    np.testing.assert_allclose(emb[0, :4].numpy(), 1.0)  # cos(0)
    np.testing.assert_allclose(emb[0, 4:].numpy(), 0.0)  # sin(0)
    np.testing.assert_allclose(emb[1, 0].item(), np.cos(0.5), rtol=1e-6)


def test_vem_network_needs_slice_index_and_uses_it():
    net = UNet(3, 1, slice_embedding=True, **TINY).eval()
    for p in net.parameters():
        if p.abs().sum() == 0:  # zero-initialised convs would hide the embedding
            torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="slice"):
        net(x, torch.rand(2))
    a = net(x, torch.full((2,), 0.3), torch.tensor([0, 0]))
    b = net(x, torch.full((2,), 0.3), torch.tensor([1, 1]))
    assert not torch.allclose(a, b)


def test_aleatoric_head_returns_log_variance():
    net = UNet(2, 1, aleatoric=True, **TINY).eval()
    eps, logvar = net(torch.randn(1, 2, 32, 32), torch.rand(1))
    assert eps.shape == logvar.shape == (1, 1, 32, 32)
    # The published keys are untouched by the extra head.
    assert all(not k.startswith("out_var") for k in UNet(2, 1, **TINY).state_dict())


def test_regression_unet_single_pass():
    net = RegressionUNet(1, 1, **TINY).eval()
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 1, 32, 32)


@pytest.mark.parametrize("arch,expected", [("EMDiffuse-n", 15_677_345), ("vEMDiffuse-i", 16_615_873)])
def test_published_parameter_names_shapes_and_count(shared_data, arch, expected):
    keys = json.loads((shared_data / "reference" / "original_state_dict_keys.json").read_text())
    want = {k: tuple(v) for k, v in keys[arch].items() if k not in SCHEDULE_BUFFERS}
    model = create_EMDiffuse(arch)
    have = {k: tuple(v.shape) for k, v in model.module.state_dict().items()}
    assert have == want
    assert sum(p.numel() for p in model.module.parameters()) == expected == keys[f"{arch}#params"]


@pytest.mark.parametrize("stem", ["emdiffuse2d", "vemdiffuse"])
def test_reference_outputs_reproduced(shared_data, stem):
    from napari_emdiffuse.engine.models.verify import verify_checkpoint

    ref = shared_data / "reference"
    rows, ok = verify_checkpoint(ref / f"{stem}_checkpoint.pth", ref / f"{stem}_reference.json", ref / f"{stem}_reference.npz")
    assert ok, [r for r in rows if not r[2]]
    assert len(rows) == 20
    assert max(e for n, e, _ in rows if n.endswith("_eps")) < 1e-4


def test_reference_step_from_own_eps_matches_where_well_conditioned(shared_data):
    """At low t the whole step (network + arithmetic) is compared directly."""
    from napari_emdiffuse.engine.models.cards import read_original_config

    ref = shared_data / "reference"
    unet, sched, _ = read_original_config(ref / "emdiffuse2d_reference.json")
    net = Network(define_network(unet), sched.model_dump()).eval()
    sd = torch.load(ref / "emdiffuse2d_checkpoint.pth", weights_only=True)
    net.load_state_dict({k: v for k, v in sd.items() if k not in SCHEDULE_BUFFERS})
    d = np.load(ref / "emdiffuse2d_reference.npz")
    for t in (50, 0):
        out = net.p_mean_variance(torch.from_numpy(d["y_cond"]), torch.from_numpy(d["y_t"]), t)
        for name in ("eps", "x0_clamped", "posterior_mean", "posterior_log_variance"):
            assert np.abs(out[name].numpy() - d[f"t{t}_{name}"]).max() <= 1e-4, (t, name)


def test_fused_attention_matches_the_original_explicit_attention(monkeypatch):
    from napari_emdiffuse.engine.core.networks import unet as unet_module

    torch.manual_seed(0)
    block = unet_module.AttentionBlock(32, 8, groups=8).eval()
    torch.nn.init.normal_(block.proj_out.weight)  # zero-initialised: would hide the attention
    x = torch.randn(2, 32, 12, 20)  # non-square, several heads
    with torch.no_grad():
        fused = block(x)
        monkeypatch.setattr(unet_module, "_FUSED_ATTENTION", False)
        explicit = block(x)
    assert fused.shape == x.shape
    assert torch.allclose(fused, explicit, rtol=1e-5, atol=1e-5 * float(explicit.abs().max()))
    assert not torch.allclose(explicit, x)  # the attention contributes


def test_speed_options_match_eager():
    torch.manual_seed(0)
    net = UNet(2, 1, **TINY).eval()
    for p in net.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    x, g = torch.randn(2, 2, 32, 32), torch.full((2,), 0.4)
    with torch.no_grad():
        ref = net(x, g)
        cl = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last), g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = net(x, g)
        traced = torch.jit.trace(net, (x, g))
        ts = traced(x, g)
    torch.testing.assert_close(cl, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ts, ref, atol=1e-5, rtol=1e-4)
    assert bf.dtype == torch.float32  # the network hands back float32 eps
    assert (bf - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3


@pytest.mark.slow
def test_torch_compile_matches_eager():
    net = UNet(2, 1, **TINY).eval()
    x, g = torch.randn(1, 2, 32, 32), torch.full((1,), 0.4)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(net)(x, g), net(x, g), atol=1e-4, rtol=1e-4)


def test_engine_import_loads_no_gui_modules():
    code = (
        "import sys, napari_emdiffuse.engine, napari_emdiffuse.engine.inference.restore, napari_emdiffuse.engine.training.finetune, "
        "napari_emdiffuse.engine.models.factory, napari_emdiffuse.cli;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('napari','qtpy','PyQt5','PySide6','vispy','magicgui','superqt')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_nearest_up2_gives_interpolates_values_and_gradient():
    """The UNet's 2x upsampling (a broadcast view on the CPU) gives F.interpolate's values for
    NCHW and channels-last tensors of odd sizes, and the same gradient (each input pixel sums
    its 2 x 2 copies). Control: a 2x bilinear upsampling differs."""
    import torch.nn.functional as F

    from napari_emdiffuse.engine.core.networks.unet import nearest_up2

    x = torch.randn(3, 5, 7, 9, requires_grad=True)
    want = F.interpolate(x, scale_factor=2, mode="nearest")
    got = nearest_up2(x)
    assert got.shape == (3, 5, 14, 18) and torch.equal(got, want)
    assert torch.equal(nearest_up2(x.contiguous(memory_format=torch.channels_last)), want)
    weights = torch.randn_like(want)
    (g_want,) = torch.autograd.grad((want * weights).sum(), x)
    (g_got,) = torch.autograd.grad((nearest_up2(x) * weights).sum(), x)
    assert torch.allclose(g_got, g_want, atol=1e-5)
    assert not torch.allclose(F.interpolate(x, scale_factor=2, mode="bilinear"), got)
