"""MD-EMA: the chunked convolution vs direct sums and an FFT convolution, and the recurrent form
vs the convolution."""

import pytest
import torch

from conftest import assert_close
from seqboat_fairseq.modules.ema import MultiHeadEMA, _DecayScan, chunked_ema_conv
from seqboat_fairseq.modules.naive import ema_direct, ema_recurrence, fft_conv


def _ema(bidirectional, truncation, dim=6, ndim=4):
    ema = MultiHeadEMA(dim, ndim, bidirectional=bidirectional, truncation=truncation)
    with torch.no_grad():  # spread the decay rates so short and long memories both matter
        ema.alpha.uniform_(-2.0, 2.0)
        ema.delta.uniform_(-2.0, 2.0)
    return ema


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidir"])
@pytest.mark.parametrize("truncation", [None, 5, 40], ids=["full", "trunc5", "trunc40"])
@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("chunk", [None, 1, 4, 5], ids=["default", "c1", "c4", "c5"])
def test_parallel_form_matches_direct_sum(bidirectional, truncation, padded, chunk):
    """Chunks of 4 and 5 over 17 tokens: several chunks, a ragged last one, truncations inside a
    chunk (5 with c4), on a boundary (5 with c5) and beyond the sequence (40); c1 is the scan
    alone, the default a single chunk."""
    ema = _ema(bidirectional, truncation)
    x = torch.randn(17, 3, 6)
    pad = None
    if padded:
        pad = torch.zeros(3, 17, dtype=torch.bool)
        pad[0, 12:] = True
        pad[2, :3] = True  # left padding too
    assert_close("ema", ema(x, pad, chunk_size=chunk), ema_direct(ema, x, pad), atol=2e-5)


@pytest.mark.parametrize("truncation", [None, 100, 1000], ids=["full", "trunc100", "trunc1000"])
def test_chunked_conv_matches_fft_on_long_sequences(truncation):
    """At a real length (several default-size chunks, a long scan) the chunked form equals the
    FFT convolution of the explicit kernel, with slow decays so that far history matters."""
    ema = _ema(False, truncation, dim=8, ndim=4)
    with torch.no_grad():
        ema.alpha[:, :2].fill_(-6.0)
    x = torch.randn(700, 2, 8)
    u = x.permute(1, 2, 0)
    y_fft = fft_conv(u, ema.kernel(700 if truncation is None else min(truncation, 700)))
    y = ema(x) - x * ema.omega
    assert_close("chunked vs fft", y, y_fft.permute(2, 0, 1), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidir"])
def test_truncation_skips_exactly_the_channels_whose_lag_underflows(bidirectional):
    """A truncated kernel subtracts the state L_k tokens away read out with ``coef phi^L_k``; the
    channels whose phi^L_k is exactly zero in fp32 skip that readout. Half the channels here decay
    fast (phi ~ 0.005: phi^60 underflows in fp32, not in fp64), half slowly (phi ~ 0.997: the
    truncation changes their output). The fp32 pass, which skips the fast half, equals the fp64
    pass, which computes every channel, in value and in every gradient; a third configuration with
    only fast channels skips the readout altogether."""
    torch.manual_seed(0)
    truncation, seq_len = 60, 150
    for mixed in (True, False):
        u = torch.randn(6, 2, seq_len, dtype=torch.float64, requires_grad=True)
        directions = 2 if bidirectional else 1
        coef = torch.randn(directions * 6, 4, dtype=torch.float64)
        phi = torch.full((directions * 6, 4), 0.005, dtype=torch.float64)
        if mixed:
            phi.view(directions, 6, 4)[:, 3:] = 0.997
        log_phi = torch.log(phi)
        coef.requires_grad_(True)
        log_phi.requires_grad_(True)

        def conv(a, c, p):
            if not bidirectional:
                return chunked_ema_conv(a, c, p, chunk=4, truncation=truncation)
            return chunked_ema_conv(a, c[:6], p[:6], chunk=4, truncation=truncation, backward=(c[6:], p[6:]))

        lag32 = torch.exp(log_phi.detach().float() * truncation) != 0
        assert bool((torch.exp(log_phi.detach() * truncation) != 0).all())  # fp64 computes every channel
        assert lag32.any(-1).sum() == (directions * 3 if mixed else 0)  # fp32 skips the fast half / all
        y64 = conv(u, coef, log_phi)
        if mixed:  # the slow channels' truncation matters
            untruncated = chunked_ema_conv(u.detach(), coef.detach()[:6], log_phi.detach()[:6], chunk=4)
            if bidirectional:
                untruncated = untruncated + chunked_ema_conv(u.detach().flip(-1), coef.detach()[6:],
                                                             log_phi.detach()[6:], chunk=4).flip(-1)
            assert (y64.detach() - untruncated)[3:].abs().max() > 0.1
        inputs32 = [t.detach().float().requires_grad_(True) for t in (u, coef, log_phi)]
        y32 = conv(*inputs32)
        assert_close("value", y32, y64, atol=2e-4, rtol=1e-4)
        grad = torch.randn_like(y64)
        got = torch.autograd.grad(y32, inputs32, grad.float())
        want = torch.autograd.grad(y64, [u, coef, log_phi], grad)
        for name, a, b in zip(["u", "coef", "log_phi"], got, want):
            assert_close(f"grad {name}", a, b, atol=2e-3, rtol=1e-4)


def test_chunked_conv_gradients():
    """The chunked convolution (with its hand-written scan backward) against finite differences,
    for the input, the readout and the decay, truncated and not, several chunks."""
    u = torch.randn(3, 2, 11, dtype=torch.float64, requires_grad=True)
    coef = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    log_phi = torch.log(torch.rand(3, 2, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    for truncation in (None, 4, 6):
        assert torch.autograd.gradcheck(
            lambda a, b, c: chunked_ema_conv(a, b, c, chunk=3, truncation=truncation), (u, coef, log_phi))
    ends = torch.randn(2, 3, 9, 2, dtype=torch.float64, requires_grad=True)
    decay = (torch.rand(2, 2, dtype=torch.float64) * 0.9).requires_grad_(True)
    assert torch.autograd.gradcheck(_DecayScan.apply, (ends, decay))
    # lane 0 from the first chunk, lane 1 from the last (the bidirectional EMA's shared scan)
    assert torch.autograd.gradcheck(lambda e, d: _DecayScan.apply(e, d, 1), (ends, decay))
    with torch.no_grad():
        both = _DecayScan.apply(ends, decay, 1)
        assert_close("forward lane", both[..., :1], _DecayScan.apply(ends[..., :1], decay[:, :1]), atol=1e-12)
        assert_close("reversed lane", both[..., 1:],
                     _DecayScan.apply(ends[..., 1:].flip(2), decay[:, 1:]).flip(2), atol=1e-12)


@pytest.mark.parametrize("truncation", [None, 4, 6, 11], ids=["full", "trunc4", "trunc6", "trunc11"])
def test_bidirectional_chunked_conv_equals_two_passes(truncation):
    """Both directions on the same chunks (``backward=``) equal a causal pass plus a causal pass
    over the time-reversed input, flipped back, in value and in every gradient; 11 tokens in
    chunks of 3 (a ragged last chunk: the backward states start from its zero padding), with
    truncations inside the sequence, on a chunk boundary's neighbour and at its length."""
    torch.manual_seed(0)
    u = torch.randn(3, 2, 11, dtype=torch.float64, requires_grad=True)
    terms = [torch.randn(3, 2, dtype=torch.float64, requires_grad=True),
             torch.log(torch.rand(3, 2, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True),
             torch.randn(3, 2, dtype=torch.float64, requires_grad=True),
             torch.log(torch.rand(3, 2, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)]

    def two_passes(a, c, p, cb, pb):
        return (chunked_ema_conv(a, c, p, chunk=3, truncation=truncation)
                + chunked_ema_conv(a.flip(-1), cb, pb, chunk=3, truncation=truncation).flip(-1))

    def one_pass(a, c, p, cb, pb):
        return chunked_ema_conv(a, c, p, chunk=3, truncation=truncation, backward=(cb, pb))

    y, y_ref = one_pass(u, *terms), two_passes(u, *terms)
    # the backward kernel really contributes (the configuration exercises both directions)
    assert (y_ref - chunked_ema_conv(u, *terms[:2], chunk=3, truncation=truncation)).abs().max() > 0.1
    assert_close("bidirectional", y, y_ref, atol=1e-12)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, [u, *terms], grad)
    want = torch.autograd.grad(y_ref, [u, *terms], grad)
    for name, a, b in zip(["u", "coef", "log_phi", "coef'", "log_phi'"], got, want):
        assert_close(f"gradient of {name}", a, b, atol=1e-12)
    assert torch.autograd.gradcheck(one_pass, (u, *terms))


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


def _run_steps(ema, x, pad=None, state=None, start=0):
    state = state if state is not None else ema.init_state(x.size(1))
    ys = []
    for t, x_t in enumerate(x):
        position = torch.full((x.size(1),), start + t, dtype=torch.long)
        y_t, state = ema.step(x_t, state, position, None if pad is None else pad[:, start + t])
        ys.append(y_t)
    return torch.stack(ys), state


def test_step_equals_recurrence_and_convolution():
    ema = _ema(False, None)
    x = torch.randn(25, 2, 6)
    y, state = _run_steps(ema, x)
    y_ref, h_ref = ema_recurrence(ema, x)
    assert_close("step outputs", y, ema(x), atol=2e-5)
    assert_close("step outputs vs recurrence", y, y_ref, atol=2e-5)
    assert_close("final state", state["hidden"], h_ref, atol=2e-5)


@pytest.mark.parametrize("truncation", [None, 4, 7], ids=["untruncated", "trunc4", "trunc7"])
def test_decoding_is_exact_for_the_truncated_kernel(truncation):
    """Stepping reproduces the *truncated* training kernel exactly, far beyond L_k tokens
    (upstream's step ignored truncation: H6)."""
    ema = _ema(False, truncation)
    with torch.no_grad():
        ema.alpha[:, :2].fill_(-5.0)  # slow decays: the truncation really matters
    x = torch.randn(30, 2, 6)
    pad = torch.zeros(2, 30, dtype=torch.bool)
    pad[1, 3:6] = True  # padded steps inside the stream
    y, _ = _run_steps(ema, x, pad)
    real = ~pad.t()
    assert_close("step vs parallel", y[real], ema(x, pad)[real], atol=2e-5)


@pytest.mark.parametrize("truncation", [None, 5, 12], ids=["untruncated", "trunc5", "trunc12"])
@pytest.mark.parametrize("consumed_hint", [False, True], ids=["no_hint", "consumed_hint"])
def test_chunked_prefill_equals_steps(truncation, consumed_hint):
    """forward_chunk over several chunks == token-by-token, outputs and every state slot. With the
    ``consumed`` hint a state that has consumed fewer than L_k tokens convolves only those (chunks
    crossing L_k from below: 1 -> 9 with L_k 5, 9 -> 12 with L_k 12)."""
    ema = _ema(False, truncation)
    x = torch.randn(23, 3, 6)
    y_steps, s_steps = _run_steps(ema, x)
    state, ys, start = ema.init_state(3), [], 0
    for size in (1, 8, 3, 11):
        y_c, state = ema.forward_chunk(x[start:start + size], state, torch.full((3,), start),
                                       consumed=start if consumed_hint else None)
        ys.append(y_c)
        start += size
    assert_close("chunk outputs", torch.cat(ys), y_steps, atol=2e-5)
    assert_close("chunk outputs vs parallel", torch.cat(ys), ema(x), atol=2e-5)
    assert set(state) == set(s_steps)
    for key in state:
        if torch.is_tensor(state[key]):  # not the per-decode coefficients (None with gradients on)
            assert_close(key, state[key], s_steps[key], atol=2e-5)


@pytest.mark.parametrize("truncation", [None, 5], ids=["untruncated", "trunc5"])
def test_decoding_coefficients_follow_the_weights(truncation):
    """Without gradient recording, a decoding state carries the step coefficients computed once;
    steps then equal the per-step computation, and a state made after the weights change uses
    the new weights (the cache lives in the state, so it cannot go stale: hazard H14)."""
    ema = _ema(False, truncation)
    x = torch.randn(12, 2, 6)
    y_per_step, state = _run_steps(ema, x)
    assert state["coefficients"] is None
    with torch.no_grad():
        y_cached, state = _run_steps(ema, x)
        assert state["coefficients"] is not None
        assert_close("cached coefficients", y_cached, y_per_step, atol=1e-6)
        ema.alpha.add_(0.5)  # e.g. a checkpoint loaded into the same module
        ema.gamma.mul_(-1.0)
        y_new, _ = _run_steps(ema, x)
        assert_close("after new weights", y_new, ema(x), atol=2e-5)
        assert (y_new - y_cached).abs().max() > 100 * 2e-5


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
    ema_c = _ema(False, 3, dim=3, ndim=2).double()
    position = torch.zeros(2, dtype=torch.long)
    carried = torch.randn(2, 3, 2, dtype=torch.float64)

    def chunk_state(inp):  # forward_chunk updates its state in place: a fresh one per call
        state = {k: v.double() for k, v in ema_c.init_state(2).items() if torch.is_tensor(v)}
        state["hidden"].copy_(carried)
        _, state = ema_c.forward_chunk(inp, state, position)
        return state["lag_hidden"], state["hidden"]

    assert torch.autograd.gradcheck(chunk_state, (x,))


def test_parameter_shapes_and_init():
    ema = MultiHeadEMA(8, 4, bidirectional=True)
    assert ema.delta.shape == (16, 4, 1) and ema.gamma.shape == (16, 4) and ema.omega.shape == (8,)
    # beta = +-1 alternating along N plus TN(0, 0.02) noise
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0]).view(1, 4, 1)
    assert ((ema.beta - sign).abs() <= 0.04 + 1e-6).all()
    with pytest.raises(ValueError, match="truncation"):
        MultiHeadEMA(8, 4, truncation=0)
