"""Published-style checkpoints of another width or depth load with their network read off the
tensor shapes, and reproduce the original implementation's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_emdiffuse.engine.core.diffusion import Network
from napari_emdiffuse.engine.errors import ModelFileError
from napari_emdiffuse.engine.models.cards import read_original_config
from napari_emdiffuse.engine.models.factory import (
    create_EMDiffuse,
    define_network,
    import_published,
    network_from_shapes,
)
from napari_emdiffuse.engine.models.registry import load_model


def _shapes(net: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {f"denoise_fn.{k}": tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("cfg", [
    {"inner_channel": 16, "channel_mults": [1, 2], "res_blocks": 1, "attn_res": []},
    {"inner_channel": 8, "channel_mults": [1, 2, 2], "res_blocks": 2, "attn_res": [2]},
    {"inner_channel": 16, "channel_mults": [1, 3], "res_blocks": 3, "attn_res": [1, 2], "in_channel": 3},
])
def test_network_read_off_shapes(cfg):
    net = define_network({**cfg, "num_head_channels": 8})
    found = network_from_shapes(_shapes(net), "EMDiffuse-n")
    assert found is not None
    for key, value in cfg.items():
        assert getattr(found, key) == value


def test_published_network_is_kept_and_foreign_shapes_are_refused():
    sd = create_EMDiffuse("EMDiffuse-n").module.state_dict()
    assert network_from_shapes({k: tuple(v.shape) for k, v in sd.items()}, "EMDiffuse-n") is not None
    # control: a checkpoint missing one tensor, or of another architecture, fits no network
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    shapes.pop("denoise_fn.out.2.bias")
    assert network_from_shapes(shapes, "EMDiffuse-n") is None
    assert network_from_shapes({"conv.weight": (8, 2, 3, 3)}, "EMDiffuse-n") is None


@pytest.mark.parametrize("stem,arch", [("emdiffuse2d", "EMDiffuse-n"), ("vemdiffuse", "vEMDiffuse-i")])
def test_narrow_reference_checkpoint_loads_and_reproduces_the_original(shared_data, stem, arch):
    ref = shared_data / "reference"
    model = load_model(ref / f"{stem}_checkpoint.pth", arch=arch, device="cpu", cache=False)
    assert model.card.network.inner_channel == 16 and model.card.network.channel_mults == [1, 2, 4]
    assert "read from the checkpoint" in model.card.description
    # the network as loaded, under the reference's own schedule, gives the original's noise prediction
    _, sched, _ = read_original_config(ref / f"{stem}_reference.json")
    net = Network(model.module.denoise_fn, sched.model_dump()).eval()
    d = np.load(ref / f"{stem}_reference.npz")
    index = torch.from_numpy(d["slice_index"]) if "slice_index" in d.files else None
    with torch.no_grad():
        for t in (999, 50):
            eps = net.p_mean_variance(torch.from_numpy(d["y_cond"]), torch.from_numpy(d["y_t"]), t, index)["eps"]
            assert float(np.abs(eps.numpy() - d[f"t{t}_eps"]).max()) < 1e-4


def test_import_of_narrow_checkpoint_and_clean_refusal(shared_data, tmp_path):
    ref = shared_data / "reference" / "emdiffuse2d_checkpoint.pth"
    out = import_published(ref, "EMDiffuse-n", tmp_path / "narrow")
    assert load_model(out, device="cpu", cache=False).card.network.inner_channel == 16
    sd = torch.load(ref, weights_only=True)
    sd["denoise_fn.out.2.weight"] = torch.zeros(1, 8, 3, 3)  # fits no network
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(ModelFileError, match="denoise_fn.") as info:
        import_published(bad, "EMDiffuse-n", tmp_path / "bad-model")
    assert "\n" not in str(info.value) and not (tmp_path / "bad-model").exists()
