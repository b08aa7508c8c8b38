"""``forced_activation``: the official way to fix the routers' decisions (benchmarks, analyses)."""

import torch

from seqboat_fairseq.modules.seqboat_layer import SeqBoatLayer
from seqboat_fairseq.modules.sma import forced_activation


def test_forced_decisions_padding_and_restore():
    layer = SeqBoatLayer(16, 8, 24, 4, window=4, rel_pos="rotary").eval()
    x = torch.randn(10, 2, 16)
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1, 8:] = True
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[:, ::3] = True
    _, own = layer(x, pad)
    with forced_activation(layer, lambda active: mask):
        _, forced = layer(x, pad)
    assert forced.active.equal(mask & ~pad), "the forced decisions, pads never active"
    assert ((forced.confidence > 0) == forced.active).all() and (forced.confidence <= 1).all()
    with forced_activation(layer, torch.ones_like):
        _, every = layer(x, pad)
    assert every.active.equal(~pad)
    _, after = layer(x, pad)
    assert after.active.equal(own.active), "the router decides again after the block"
    assert not own.active.equal(forced.active)


def test_forced_gate_is_differentiable():
    layer = SeqBoatLayer(16, 8, 24, 4, window=4)
    mask = torch.rand(2, 10) < 0.5
    with forced_activation(layer, lambda active: mask):
        y, _ = layer(torch.randn(10, 2, 16))
    y.square().mean().backward()
    assert layer.router.log_temperature.grad.abs() > 0 and layer.hx_proj.weight.grad[:2].abs().sum() > 0
