"""Blocked working-memory attention vs a dense banded reference."""

import itertools

import pytest
import torch

from conftest import assert_close
from seqboat_fairseq.modules.local_attention import local_attention
from seqboat_fairseq.modules.naive import dense_local_attention, rotary_complex
from seqboat_fairseq.modules.positions import RelativePositionalBias, apply_rotary

ACTIVATIONS = ["softmax", "relu2", "laplace"]
POSITIONS = ["simple", "rotary", "local_pos"]
# (slots, window): window divides, does not divide, exceeds the length; None = unbounded
SHAPES = [(12, 4), (13, 4), (7, 3), (5, 9), (1, 2), (11, None)]


def _inputs(slots, causal, positions, window):
    bsz, zdim, hdim = 3, 8, 5
    q = torch.randn(bsz, slots, zdim, dtype=torch.float64)
    k = torch.randn(bsz, slots, zdim, dtype=torch.float64)
    v = torch.randn(bsz, slots, hdim, dtype=torch.float64)
    valid = torch.ones(bsz, slots, dtype=torch.bool)
    valid[1, slots - slots // 3:] = False  # right padding
    valid[2, :] = False  # a row with nothing to attend to
    pos = torch.sort(torch.randint(0, 60, (bsz, slots)), dim=1).values + torch.arange(slots)
    bias = None
    if positions == "simple":
        bias = RelativePositionalBias.simple(max_positions=16).double()  # offsets beyond 15 clamp
    elif positions == "local_pos" and window is not None:
        bias = RelativePositionalBias.local(window).double()
        pos = torch.arange(slots).expand(bsz, slots)
    elif positions == "rotary":
        q, k = apply_rotary(q, pos), apply_rotary(k, pos)
    if bias is not None:
        with torch.no_grad():  # a bias as large as the scores, not the 0.02 of a fresh table
            bias.table.normal_(0.0, 1.0)
    return q, k, v, valid, pos, bias


@pytest.mark.parametrize(
    "slots,window,causal,activation,positions",
    [pytest.param(s, w, c, a, p, id=f"C{s}-w{w}-{'causal' if c else 'bidir'}-{a}-{p}")
     for (s, w), c, a, p in itertools.product(SHAPES, [True, False], ACTIVATIONS, POSITIONS)],
)
def test_blocked_matches_dense(slots, window, causal, activation, positions):
    q, k, v, valid, pos, bias = _inputs(slots, causal, positions, window)
    kwargs = dict(window=window, causal=causal, activation=activation, positions=pos, bias=bias)
    out = local_attention(q, k, v, valid, **kwargs)
    ref = dense_local_attention(q, k, v, valid, **kwargs)
    assert out.shape == ref.shape == (3, slots, 5)
    # padded query rows are discarded by callers; compare the rows that have keys
    atol = 1e-10
    assert_close("attention", out[:2], ref[:2], atol=atol)
    assert torch.isfinite(out).all()
    # the checked numbers depend on the positions and the normaliser far beyond the tolerance
    # (one slot attends only to itself: softmax weight 1 and rotary q.k unchanged, whatever they are)
    if slots > 1:
        changed = {"normaliser doubled": local_attention(q * 0.5, k, v, valid, **kwargs)}
        if bias is not None:
            changed["position bias negated"] = local_attention(q, k, v, valid, **dict(kwargs, bias=lambda o: -bias(o)))
        elif positions == "rotary":  # the same queries and keys, unrotated
            changed["rotary off"] = local_attention(apply_rotary(q, -pos), apply_rotary(k, -pos), v, valid, **kwargs)
        for what, other in changed.items():
            assert (other[:2] - out[:2]).abs().max() >= 100 * atol, what


def test_laplace_does_not_leak_through_masks():
    """Upstream bug H3: laplace(0) ~ 0.0061 gave masked keys weight. Ours gives them none."""
    q, k, v, valid, pos, _ = _inputs(10, True, "rotary", 3)
    out = local_attention(q, k, v, valid, window=3, causal=True, activation="laplace")
    v2 = v.clone()
    v2[1, ~valid[1]] = 1e6  # huge values behind the padding mask
    out2 = local_attention(q, k, v2, valid, window=3, causal=True, activation="laplace")
    assert_close("masked keys have no weight", out2[1, valid[1]], out[1, valid[1]], atol=1e-9)


def test_window_limits_the_memory():
    """Changing a key more than w slots back must not change the output."""
    q, k, v, valid, _, _ = _inputs(20, True, "rotary", 4)
    out = local_attention(q, k, v, valid, window=4, causal=True, activation="softmax")
    v2 = v.clone()
    v2[:, 5] += 100.0
    out2 = local_attention(q, k, v2, valid, window=4, causal=True, activation="softmax")
    changed = (out2 - out).abs().amax(-1)[0] > 1e-9
    assert changed.tolist() == [5 <= i <= 9 for i in range(20)]


def test_rotary_matches_complex_formulation():
    x = torch.randn(2, 9, 8)
    pos = torch.randint(0, 100000, (2, 9))  # far beyond any max_positions
    assert_close("rotary", apply_rotary(x, pos), rotary_complex(x, pos), atol=1e-4)


def test_simple_bias_closed_form():
    bias = RelativePositionalBias.simple(max_positions=5)
    table = bias.table.detach()
    offsets = torch.tensor([-10, -4, -1, 0, 3, 4, 9])
    expected = table[torch.tensor([0, 0, 3, 4, 7, 8, 8])]
    assert_close("bias", bias(offsets).detach(), expected, atol=0)
    assert bias.table.numel() == 9 and RelativePositionalBias.local(4).table.numel() == 23


def test_gradcheck_local_attention():
    q, k, v, valid, pos, bias = _inputs(7, True, "simple", 3)
    q, k, v = (t[:2].clone().requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda a, b, c: local_attention(a, b, c, valid[:2], window=3, causal=True, activation="softmax",
                                        positions=pos[:2], bias=bias), (q, k, v))
