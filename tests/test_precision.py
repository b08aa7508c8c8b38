"""Mixed precision: bf16 / fp16 weights and autocast keep the numerically sensitive parts
(FFT convolution, softmax, router, compress/extract, the decoding state of the EMA) in fp32 and
stay close to the fp32 result. Runs on the CPU, or on ``SEQBOAT_TEST_DEVICE`` (e.g. cuda)."""

import pytest
import torch

from conftest import TEST_DEVICE
from seqboat_fairseq.modules import SeqBoatLayer

LOW_PRECISION = [torch.bfloat16, torch.float16]


def _layer(**kw):
    torch.manual_seed(0)
    layer = SeqBoatLayer(32, 16, 48, 8, window=8, truncation=64, rel_pos="rotary", **kw).eval()
    with torch.no_grad():
        layer.hx_proj.weight[:2].normal_(0, 1.0)
    return layer


def _rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["bf16", "fp16"])
@pytest.mark.parametrize("bidirectional,activation", [(False, "softmax"), (True, "relu2")])
def test_low_precision_weights_match_fp32(bidirectional, activation, dtype):
    layer = _layer(bidirectional=bidirectional, attention_activation=activation)
    x = torch.randn(200, 2, 32)
    y32, act32 = layer(x)
    layer16 = _layer(bidirectional=bidirectional, attention_activation=activation).to(dtype)
    y16, act16 = layer16(x.to(dtype))
    assert y16.dtype == dtype and torch.isfinite(y16.float()).all()
    # the router decides in fp32: near-ties may flip, but almost every decision agrees
    assert (act16.active == act32.active).float().mean() > 0.97
    assert _rel_err(y16, y32) < 0.05


def test_bf16_autocast_forward_backward():
    layer = _layer().train()
    x = torch.randn(300, 2, 32, requires_grad=True)
    with torch.autocast(TEST_DEVICE.type, dtype=torch.bfloat16):
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


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["bf16", "fp16"])
def test_low_precision_decoding_follows_the_parallel_forward(dtype):
    """Stepping a bf16 / fp16 layer stays close to its own parallel forward (the EMA state is fp32)."""
    layer = _layer().to(dtype)
    x = torch.randn(40, 2, 32).to(dtype)
    with torch.no_grad():
        y, act = layer(x)
        state = layer.init_state(2, x.device, dtype)
        steps = torch.stack([layer.step(x[t], state)[0] for t in range(40)])
    assert torch.isfinite(steps.float()).all()
    same = (act.active.t().unsqueeze(-1))  # near-tie routing decisions may flip between the two paths
    assert _rel_err(steps, y) < 0.05 or _rel_err(steps * same, y * same) < 0.05
