"""MD-EMA: FFT convolution vs direct sums, and the recurrent form vs the convolution."""

import pytest
import torch

from conftest import assert_close
from seqboat_fairseq.modules.ema import MultiHeadEMA
from seqboat_fairseq.modules.naive import ema_direct, ema_recurrence


def _ema(bidirectional, truncation, dim=6, ndim=4):
    ema = MultiHeadEMA(dim, ndim, bidirectional=bidirectional, truncation=truncation)
    with torch.no_grad():  # spread the decay rates so short and long memories both matter
        ema.alpha.uniform_(-2.0, 2.0)
        ema.delta.uniform_(-2.0, 2.0)
    return ema


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidir"])
@pytest.mark.parametrize("truncation", [None, 5, 40], ids=["full", "trunc5", "trunc40"])
@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
def test_fft_matches_direct_sum(bidirectional, truncation, padded):
    ema = _ema(bidirectional, truncation)
    x = torch.randn(17, 3, 6)
    pad = None
    if padded:
        pad = torch.zeros(3, 17, dtype=torch.bool)
        pad[0, 12:] = True
        pad[2, :3] = True  # left padding too
    assert_close("ema", ema(x, pad), ema_direct(ema, x, pad), atol=2e-5)


def test_padding_never_leaks_into_real_positions():
    ema = _ema(True, None)
    x = torch.randn(10, 2, 6)
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1, 7:] = True
    y1 = ema(x, pad)
    x2 = x.clone()
    x2[7:, 1] = 1e3  # garbage in the padded slots
    y2 = ema(x2, pad)
    assert_close("real positions", y2[:7, 1], y1[:7, 1], atol=1e-5)


def test_step_equals_convolution():
    ema = _ema(False, None)
    x = torch.randn(25, 2, 6)
    state, ys = None, []
    for x_t in x:
        y_t, state = ema.step(x_t, state)
        ys.append(y_t)
    y_ref, h_ref = ema_recurrence(ema, x)
    assert_close("step outputs", torch.stack(ys), ema(x), atol=2e-5)
    assert_close("step outputs vs recurrence", torch.stack(ys), y_ref, atol=2e-5)
    assert_close("final state", state, h_ref, atol=2e-5)


def test_forward_with_state_equals_steps():
    """Chunked prefill with a carried state == token-by-token stepping (outputs and state)."""
    ema = _ema(False, None)
    x = torch.randn(30, 2, 6)
    y_ref, h_ref = ema_recurrence(ema, x)
    y1, h1 = ema.forward_with_state(x[:11], None)
    y2, h2 = ema.forward_with_state(x[11:12], h1)
    y3, h3 = ema.forward_with_state(x[12:], h2)
    assert_close("chunked outputs", torch.cat([y1, y2, y3]), y_ref, atol=2e-5)
    assert_close("chunked state", h3, h_ref, atol=2e-5)


def test_truncated_kernel_differs_from_recurrence():
    """Guard that truncation really truncates (a slow decay makes the tail matter)."""
    ema = _ema(False, 3)
    with torch.no_grad():
        ema.alpha.fill_(-6.0)  # phi close to 1
    x = torch.randn(20, 1, 6)
    assert (ema(x) - ema_recurrence(ema, x)[0]).abs().max() > 1e-3


def test_gradcheck_small():
    ema = _ema(True, 4, dim=3, ndim=2).double()
    x = torch.randn(7, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: ema(inp), (x,))
    ema_c = _ema(False, None, dim=3, ndim=2).double()
    assert torch.autograd.gradcheck(lambda inp: ema_c.forward_with_state(inp, None)[1], (x,))


def test_parameter_shapes_and_init():
    ema = MultiHeadEMA(8, 4, bidirectional=True)
    assert ema.delta.shape == (16, 4, 1) and ema.gamma.shape == (16, 4) and ema.omega.shape == (8,)
    # beta = +-1 alternating along N plus TN(0, 0.02) noise
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0]).view(1, 4, 1)
    assert ((ema.beta - sign).abs() <= 0.04 + 1e-6).all()
    with pytest.raises(ValueError, match="truncation"):
        MultiHeadEMA(8, 4, truncation=0)
