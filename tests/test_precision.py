"""Mixed precision on CPU: bf16 weights and bf16 autocast keep the numerically sensitive parts
(FFT convolution, softmax, router, compress/extract) in fp32 and stay close to the fp32 result."""

import pytest
import torch

from seqboat_fairseq.modules import SeqBoatLayer


def _layer(**kw):
    torch.manual_seed(0)
    layer = SeqBoatLayer(32, 16, 48, 8, window=8, truncation=64, rel_pos="rotary", **kw).eval()
    with torch.no_grad():
        layer.hx_proj.weight[:2].normal_(0, 1.0)
    return layer


def _rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("bidirectional,activation", [(False, "softmax"), (True, "relu2")])
def test_bf16_weights_match_fp32(bidirectional, activation):
    layer = _layer(bidirectional=bidirectional, attention_activation=activation)
    x = torch.randn(200, 2, 32)
    y32, act32 = layer(x)
    layer16 = _layer(bidirectional=bidirectional, attention_activation=activation).to(torch.bfloat16)
    y16, act16 = layer16(x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16 and torch.isfinite(y16.float()).all()
    # the router decides in fp32: near-ties may flip, but almost every decision agrees
    assert (act16.active == act32.active).float().mean() > 0.97
    assert _rel_err(y16, y32) < 0.05


def test_cpu_bf16_autocast_forward_backward():
    layer = _layer().train()
    x = torch.randn(300, 2, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = layer(x)
    y.float().pow(2).mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)
    ref, _ = _layer().train()(x.detach())
    assert _rel_err(y, ref) < 0.05


def test_fp16_decoding_state_stays_fp32():
    layer = _layer().to(torch.float16)
    state = layer.init_state(2, dtype=torch.float16)
    assert state["ema"]["hidden"].dtype == torch.float32 and state["ema"]["inputs"].dtype == torch.float32
    assert state["gau"]["key"].dtype == torch.float16
