"""Blocked working-memory attention vs a dense banded reference."""

import itertools

import pytest
import torch

from conftest import assert_close
from seqboat_fairseq.modules.local_attention import (MAX_BAND_WASTE, attention_block, local_attention,
                                                     memory_attention, window_geometry, window_products)
from seqboat_fairseq.modules.naive import dense_local_attention, rotary_complex
from seqboat_fairseq.modules.positions import RelativePositionalBias, apply_rotary

ACTIVATIONS = ["softmax", "relu2", "laplace"]
POSITIONS = ["simple", "rotary", "local_pos"]
# (slots, window): window divides, does not divide, exceeds the length; None = unbounded. w = 16
# cuts 45 slots into query blocks smaller than w (4 bidirectional, 2 causal): edge blocks at both
# ends, interior blocks between, the last block padded (test_blocking_is_exercised)
SHAPES = [(12, 4), (13, 4), (7, 3), (5, 9), (1, 2), (11, None), (45, 16), (12, 16)]


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


def test_blocking_is_exercised():
    """The shapes above reach every part of the windowed blocking: query blocks smaller than the
    window and larger than one slot, interior blocks (one bmm per row over strided frames), edge
    blocks (frames cut at the row's ends), a padded last block, and a single-block row."""
    for causal, block in ((False, 4), (True, 2)):
        geometry = window_geometry(16, 45, causal)
        assert geometry.block == block == attention_block(16, causal)
        assert len(geometry.interior) >= 2 and len(geometry.edges()) >= 2
        assert geometry.padded > 45 or not causal  # 45 = 22 * 2 + 1: padded causal; bidirectional 48
        assert geometry.frame == (33 + 3 if not causal else 16 + 2)
    assert window_geometry(16, 48, False).padded == 48 and window_geometry(4, 13, False).padded == 14
    assert window_geometry(9, 5, False).num_blocks == 1  # the whole row in reach: one block
    assert window_geometry(9, 5, True).num_blocks == 5  # causal: blocks (of 1), no upper triangle
    assert window_geometry(16, 12, True).num_blocks == 6 and not window_geometry(16, 12, True).interior


def _products(geometry, causal, window, slots):
    """(products computed, products allowed by the window) for one row of ``slots`` valid slots."""
    computed = 0
    for i in range(geometry.num_blocks):
        first, end, _ = geometry.key_range(i)
        computed += geometry.block * (end - first)
    i = torch.arange(slots).unsqueeze(1)
    j = torch.arange(slots).unsqueeze(0)
    allowed = ((i - j >= 0) & (i - j <= window)) if causal else ((i - j).abs() <= window)
    return computed, int(allowed.sum())


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_masked_work_is_at_most_15_percent(causal):
    """Products outside the window are at most 15 % of the windowed attention's: per frame
    (interior), and over whole rows at the benches' shapes (w = 128 at LRA Text / SC10 at 10-50 %
    of 4,000 / 16,000 tokens, w = 1024 for the LM at 25 % of 8,192); compression rounds the slot
    count to the query block, so a row has no empty slots of its own here. The old blocking
    (query blocks of w, frames of 3w / 2w keys) wasted 33 % / 50 % per frame."""
    for window in (16, 64, 128, 256, 1024):
        block = attention_block(window, causal)
        frame = window_geometry(window, 10 * window, causal).frame
        allowed = window + 1 if causal else 2 * window + 1
        assert 1 < block < window and 1 - allowed / frame <= MAX_BAND_WASTE <= 0.15, (window, block, frame)
    for window, slots in ((128, 400), (128, 1000), (128, 2000), (128, 1600), (128, 4000), (128, 8000),
                          (1024, 819), (1024, 2048), (1024, 4096)):
        slots = -(-slots // attention_block(window, causal)) * attention_block(window, causal)
        computed, allowed = _products(window_geometry(window, slots, causal), causal, window, slots)
        assert 1 - allowed / computed <= 0.15, (window, slots, 1 - allowed / computed)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_window_products_counts_what_the_blocks_multiply(causal):
    """``window_products`` (the count bench/masked_work.py reports) equals the brute-force count:
    products per block frame, and the window's allowed pairs from an (i, j) mask."""
    for window, slots in ((16, 45), (16, 48), (9, 5), (16, 12), (128, 400), (5, 37)):
        geometry = window_geometry(window, slots, causal)
        assert window_products(window, slots, causal) == _products(geometry, causal, window, slots)
    computed, allowed = window_products(16, 48, causal, valid=40)  # empty slots: fewer allowed
    assert computed == _products(window_geometry(16, 48, causal), causal, 16, 48)[0]
    assert allowed == _products(window_geometry(16, 40, causal), causal, 16, 40)[1]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_decode_equals_parallel(activation):
    """One query at a time over its working memory (``memory_attention``, the decoding step: the w
    previous valid slots and itself) == the blocked parallel pass, causal, with padding and a
    position bias, at a window cut into query blocks of 2 (edges and interior)."""
    window, slots = 16, 45
    q, k, v, valid, pos, bias = _inputs(slots, True, "simple", window)
    valid[0, 20:23] = False  # invalid slots inside a row
    out = local_attention(q, k, v, valid, window=window, causal=True, activation=activation, positions=pos, bias=bias)
    for i in range(slots):
        lo = max(0, i - window)
        memory_valid = valid[:, lo:i + 1]
        step = memory_attention(q[:, i], k[:, lo:i + 1], v[:, lo:i + 1], memory_valid, window=window,
                                activation=activation, offsets=pos[:, lo:i + 1] - pos[:, i:i + 1], bias=bias)
        rows = valid[:, i] & memory_valid.any(-1)
        assert_close(f"slot {i}", step[rows], out[rows, i], atol=1e-10)


def test_slot_offset_bias_needs_no_positions():
    """``positions=None`` biases slot offsets (``--local-pos``), as the slot indices do."""
    for window, causal in ((16, True), (16, False), (None, True), (3, False)):
        q, k, v, valid, pos, bias = _inputs(45, causal, "local_pos", window or 4)
        kwargs = dict(window=window, causal=causal, activation="softmax", bias=bias)
        assert_close("slot offsets", local_attention(q, k, v, valid, positions=None, **kwargs)[:2],
                     local_attention(q, k, v, valid, positions=pos, **kwargs)[:2], atol=1e-12)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_gradcheck_blocked_rows(causal):
    """Gradients through the strided frames, the edge blocks and the overlap-add, two rows."""
    q, k, v, valid, pos, bias = _inputs(19, causal, "simple", 8)
    assert window_geometry(8, 19, causal).block == 2 and len(window_geometry(8, 19, causal).interior) > 0
    q, k, v = (t[:2].clone().requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda a, b, c: local_attention(a, b, c, valid[:2], window=8, causal=causal, activation="relu2",
                                        positions=pos[:2], bias=bias), (q, k, v))


@pytest.mark.parametrize("activation", ["relu2", "laplace"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_activated_product_keeps_the_scores_only_and_equals_the_unfused_composition(activation, causal, monkeypatch):
    """The windowed path's relu2 / laplace weights and product in one Function
    (``_FramedActivatedProduct``): the unfused composition's output and gradients (q, k, v and the
    position bias), one (B, nb, block, frame) fp32 tensor less kept for the backward pass."""
    import sys

    la = sys.modules[local_attention.__module__]

    def run(fused):
        if not fused:
            monkeypatch.setattr(la._FramedActivatedProduct, "apply", lambda s, m, v, g, a: la._FramedProduct.apply(
                la.attention_weights(s, m, a).type_as(v), v, g))
        torch.manual_seed(0)
        q, k, v, valid, pos, bias = _inputs(37, causal, "simple", 5)
        leaves = [t.clone().double().requires_grad_() for t in (q, k, v)]
        bias = bias.double()
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = local_attention(*leaves, valid, window=5, causal=causal, activation=activation, positions=pos,
                                  bias=bias)
        (out[:2] * torch.linspace(-1, 1, out[:2].numel()).view_as(out[:2])).sum().backward()
        monkeypatch.undo()
        return out.detach(), [t.grad for t in leaves] + [bias.table.grad], sum(storages.values())

    out0, grads0, saved0 = run(False)
    out1, grads1, saved1 = run(True)
    assert_close("output", out1[:2], out0[:2], atol=1e-12)
    for name, a, b in zip(["q", "k", "v", "bias"], grads1, grads0):
        assert b.abs().max() > 0, name  # every input gets a gradient: the check is not vacuous
        assert_close(f"grad {name}", a, b, atol=1e-12)
    geometry = la.window_geometry(5, 37, causal)
    one_score_tensor = 3 * geometry.num_blocks * geometry.block * geometry.frame * 8  # (B, nb, block, frame) fp64
    assert saved1 <= saved0 - one_score_tensor, (saved0, saved1)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_short_causal_rows_are_cut_into_eight_blocks_and_equal_dense(activation):
    """A causal row no longer than the window (a short compressed sequence: the LM at 10 % of 8,192
    tokens keeps 820 for w = 1024) is cut into 8 query blocks of ceil(C / 8) instead of blocks of
    ``attention_block(w)``: a ninth of the products fall above the diagonal, whatever C. Compression
    rounds C to the blocking's ``padded`` count, whose blocking is the same one. The output equals the
    dense reference at such rows, with invalid slots and a position bias."""
    window = 64
    assert attention_block(window, True) == 8
    for slots in (20, 37, 57):
        geometry = window_geometry(window, slots, True)
        assert geometry.block == -(-slots // 8) <= 8 and geometry.num_blocks <= 8 and not geometry.interior
        q, k, v, valid, pos, bias = _inputs(slots, True, "simple", window)
        valid[0, 5:8] = False
        kwargs = dict(window=window, causal=True, activation=activation, positions=pos, bias=bias)
        out = local_attention(q, k, v, valid, **kwargs)
        ref = dense_local_attention(q, k, v, valid, **kwargs)
        assert_close(f"C={slots}", out[:2], ref[:2], atol=1e-10)
    # the LM's row at 10 %: 820 slots of w = 1024 -> 8 blocks of 103 (824 slots), 11.6 % masked
    geometry = window_geometry(1024, 820, True)
    assert (geometry.block, geometry.num_blocks, geometry.padded) == (103, 8, 824)
    computed, allowed = window_products(1024, 824, True, valid=820)
    assert 1 - allowed / computed <= 0.125
    for window, causal in ((1024, True), (128, True), (128, False), (16, True)):
        for count in range(1, 3 * window):
            padded = window_geometry(window, count, causal).padded
            assert padded >= count and window_geometry(window, padded, causal).padded == padded, (window, count)
