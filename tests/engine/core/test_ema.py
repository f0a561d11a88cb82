import pytest
import torch
from torch import nn

from napari_emdiffuse.engine.core.ema import EMA


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _set(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_before_start_step_shadow_unchanged_then_exact_copy():
    net = _net()
    ema = EMA(net, decay=0.9, start_step=10)
    initial = {n: t.clone() for n, t in ema.shadow.items()}
    _set(net, 5.0)
    for step in range(10):
        ema.update(net, step)
    assert ema.num_updates == 0
    for n, t in ema.shadow.items():
        assert torch.equal(t, initial[n])
    ema.update(net, 10)  # start_step copies the weights exactly, no averaging
    assert ema.num_updates == 1
    assert all(torch.equal(t, torch.full_like(t, 5.0)) for t in ema.shadow.values())


def test_decay_arithmetic_matches_hand_computation():
    net = _net()
    ema = EMA(net, decay=0.9, start_step=0, update_every=2)
    _set(net, 1.0)
    ema.update(net, 0)  # shadow = 1
    _set(net, 3.0)
    ema.update(net, 1)  # skipped: not a multiple of update_every
    assert all(torch.equal(t, torch.ones_like(t)) for t in ema.shadow.values())
    ema.update(net, 2)  # 0.9 * 1 + 0.1 * 3 = 1.2
    _set(net, -1.0)
    ema.update(net, 4)  # 0.9 * 1.2 + 0.1 * -1 = 0.98
    for t in ema.shadow.values():
        assert t.dtype == torch.float32
        assert torch.allclose(t, torch.full_like(t, 0.98), atol=1e-6)
    assert ema.num_updates == 3


def test_shadow_is_float32_for_half_precision_model():
    net = nn.Linear(2, 2).to(torch.float16)
    ema = EMA(net, decay=0.9999)
    _set(net, 1.0)
    ema.update(net, 0)
    _set(net, 2.0)
    ema.update(net, 1)
    # 1 + 1e-4 is representable in float32 but rounds back to 1 in float16.
    assert all(t.dtype == torch.float32 for t in ema.shadow.values())
    assert all(torch.allclose(t, torch.full_like(t, 1.0001)) for t in ema.shadow.values())


def test_buffers_are_copied_not_averaged():
    net = _net()
    ema = EMA(net, decay=0.99)
    net.train()
    net(torch.randn(8, 3))  # moves batch-norm running statistics
    ema.update(net, 1)
    assert torch.equal(ema.buffers["1.running_mean"], net[1].running_mean)


def test_averaged_swaps_in_and_restores_even_on_exception():
    net = _net()
    ema = EMA(net, decay=0.5)
    original = _weights(net)
    for t in ema.shadow.values():
        t.fill_(7.0)
    with ema.averaged(net) as m:
        assert m is net
        assert all(torch.equal(p, torch.full_like(p, 7.0)) for p in net.parameters())
    assert all(torch.equal(p, original[n]) for n, p in net.named_parameters())

    with pytest.raises(RuntimeError, match="boom"):
        with ema.averaged(net):
            raise RuntimeError("boom")
    assert all(torch.equal(p, original[n]) for n, p in net.named_parameters())


def test_copy_to_and_shadow_module():
    net = _net()
    ema = EMA(net)
    for t in ema.shadow.values():
        t.fill_(2.0)
    original = _weights(net)
    clone = ema.shadow_module()
    assert clone is not net
    assert all(torch.equal(p, torch.full_like(p, 2.0)) for p in clone.parameters())
    assert all(torch.equal(p, original[n]) for n, p in net.named_parameters())
    ema.copy_to(net)
    assert all(torch.equal(p, torch.full_like(p, 2.0)) for p in net.parameters())


def test_state_dict_round_trip():
    net = _net()
    ema = EMA(net, decay=0.95, start_step=3, update_every=2)
    _set(net, 4.0)
    ema.update(net, 3)
    _set(net, 0.0)
    ema.update(net, 5)
    state = ema.state_dict()

    other = EMA(_net())
    other.load_state_dict(state)
    assert (other.decay, other.start_step, other.update_every, other.num_updates) == (0.95, 3, 2, 2)
    for n, t in ema.shadow.items():
        assert torch.equal(other.shadow[n], t)
    # The saved state is a copy: further updates don't change it.
    ema.update(net, 7)
    assert not torch.equal(state["shadow"]["0.weight"], ema.shadow["0.weight"])
    # And it survives torch.save / torch.load with weights_only.
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    third = EMA(_net())
    third.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(third.shadow["2.bias"], other.shadow["2.bias"])


def test_invalid_settings():
    with pytest.raises(ValueError):
        EMA(_net(), decay=1.5)
    with pytest.raises(ValueError):
        EMA(_net(), update_every=0)
