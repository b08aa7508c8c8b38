"""The whole SeqBoat layer vs a dense masked reference (outputs and gradients), batch
invariance, NaN safety, routing gradients.

Every equivalence test runs at weights where each branch matters (``conftest.make_layer``)
and asserts inside the test that zeroing or scaling the GAU output, flipping the position
bias and doubling the attention normaliser each move the checked numbers by at least 100x
its tolerance (``conftest.assert_branches_matter``): a match then means something.
"""

import itertools

import pytest
import torch

from conftest import LAYER_DIMS, assert_branches_matter, assert_close, assert_partially_active, make_layer
from seqboat_fairseq.modules import SeqBoatLayer
from seqboat_fairseq.modules.naive import dense_seqboat_layer
from seqboat_fairseq.modules.sma import forced_activation

D = LAYER_DIMS[0]
F64 = torch.float64
# float64 comparisons with the dense reference. Its rotary (``naive.rotary_complex``, upstream's
# complex formulation) computes in fp32, as the fast code computes its rotation angles: rotary
# configurations agree to ~2e-7 only, everything else to ~1e-14.
ATOL_F64 = 1e-11
ATOL_F64_ROTARY = 1e-6


def _atol(layer):
    return ATOL_F64_ROTARY if layer.gau.rotary else ATOL_F64


CONFIGS = [
    dict(bidirectional=b, attention_activation=a, rel_pos=p, local_pos=lp, window=w, norm_type=n, prenorm=pre)
    for (b, a, (p, lp), w, (n, pre)) in itertools.product(
        [False, True], ["softmax", "relu2", "laplace"], [("simple", False), ("rotary", False), ("simple", True)],
        [3, None], [("layernorm", True), ("scalenorm", False)])
    if not (lp and w is None)  # local_pos needs a working memory
]


def _cfg_id(c):
    pos = "local_pos" if c["local_pos"] else c["rel_pos"]
    return (f"{'bidir' if c['bidirectional'] else 'causal'}-{c['attention_activation']}-{pos}-"
            f"w{c['window']}-{c['norm_type']}-{'pre' if c['prenorm'] else 'post'}")


def _padded_batch(seq_len=19, bsz=3, padded_row=1, pad_from=14):
    x = torch.randn(seq_len, bsz, D, dtype=F64)
    pad = torch.zeros(bsz, seq_len, dtype=torch.bool)
    pad[padded_row, pad_from:] = True
    return x, pad


@pytest.mark.parametrize("cfg", CONFIGS, ids=[_cfg_id(c) for c in CONFIGS])
def test_layer_matches_dense_reference(cfg):
    layer = make_layer(truncation=6, dtype=F64, **cfg)
    x, pad = _padded_batch()
    real = ~pad.t()
    y, act = layer(x, pad)
    y_ref, active_ref, conf_ref = dense_seqboat_layer(layer, x, pad)
    assert torch.equal(act.active, active_ref)
    assert_partially_active(act.active, pad, cfg["window"])
    atol = _atol(layer)
    assert_close("confidence", act.confidence, conf_ref, atol=atol)
    assert_close("layer output", y[real], y_ref[real], atol=atol)
    assert_branches_matter(_cfg_id(cfg), layer, lambda m: m(x, pad)[0][real], atol)


@pytest.mark.parametrize("variant", ["seqboat", "full", "always_active"])
def test_variants_match_reference(variant):
    kw = {"seqboat": dict(window=4), "full": dict(window=-1), "always_active": dict(always_active=True)}[variant]
    layer = make_layer(dtype=F64, **kw)
    x, pad = _padded_batch(24, 2, padded_row=0, pad_from=17)
    real = ~pad.t()
    y, act = layer(x, pad)
    y_ref, active_ref, _ = dense_seqboat_layer(layer, x, pad)
    assert torch.equal(act.active, active_ref)
    assert_close(variant, y[real], y_ref[real], atol=ATOL_F64)
    assert_branches_matter(variant, layer, lambda m: m(x, pad)[0][real], ATOL_F64)
    if variant == "always_active":
        assert act.active.equal(~pad) and layer.router is None and layer.hx_proj.out_features == D
    else:
        assert_partially_active(act.active, pad, layer.window)


GRAD_CONFIGS = [
    dict(attention_activation="softmax", rel_pos="simple", window=3, norm_type="layernorm", prenorm=True),
    dict(attention_activation="relu2", rel_pos="rotary", window=None, norm_type="rmsnorm", prenorm=False),
    dict(attention_activation="laplace", rel_pos="simple", local_pos=True, window=3, norm_type="scalenorm",
         prenorm=True, truncation=5),
]


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidir"])
@pytest.mark.parametrize("cfg", GRAD_CONFIGS, ids=["softmax-simple-w3", "relu2-rotary-full", "laplace-localpos-w3"])
def test_gradients_match_dense_reference(cfg, bidirectional):
    """d loss / d (inputs, every parameter) of the fast layer == of the dense reference, float64,
    with partial activation and padding; every parameter's gradient is far above the tolerance."""
    layer = make_layer(dtype=F64, bidirectional=bidirectional, **cfg)
    x, pad = _padded_batch(20, 3, padded_row=2, pad_from=15)
    real = ~pad.t()
    probe = torch.randn(20, 3, D, dtype=F64)  # a loss that weighs every output channel differently

    def gradients(forward):
        layer.zero_grad(set_to_none=True)
        inp = x.clone().requires_grad_()
        y, active = forward(inp)
        (y * probe)[real].sum().backward()
        grads = {"input": inp.grad[real]}
        grads.update((name, p.grad) for name, p in layer.named_parameters())
        return grads, active

    fast, active = gradients(lambda inp: (lambda out: (out[0], out[1].active))(layer(inp, pad)))
    ref, active_ref = gradients(lambda inp: dense_seqboat_layer(layer, inp, pad)[:2])
    assert torch.equal(active, active_ref)
    assert_partially_active(active, pad, layer.window)
    atol = _atol(layer)
    rtol = 1e-5 if layer.gau.rotary else 0.0  # gradients sum many fp32-rotated terms
    for name in fast:
        assert fast[name] is not None and ref[name] is not None, f"{name}: no gradient"
        assert_close(f"d loss / d {name}", fast[name], ref[name], atol=atol, rtol=rtol)
        largest = fast[name].abs().max().item()
        assert largest >= 100 * atol, f"{name}: gradient too small to test ({largest:.1e})"
    assert_branches_matter("gradient config", layer, lambda m: m(x, pad)[0][real], atol)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidir"])
@pytest.mark.parametrize("window", [2, None], ids=["w2", "full"])
def test_row_alone_equals_row_in_any_batch(bidirectional, window):
    """Upstream H1: a fully active batch mate disabled compression and changed every other
    row's window (and, causal relu2/laplace in full mode, its normaliser). Here a row's output
    never depends on its batch mates, fully active or longer (padded) ones included."""
    atol = ATOL_F64  # float64: batch dependence is then not hidden behind fp32 rounding
    layer = make_layer(bidirectional=bidirectional, window=window, attention_activation="relu2", dtype=F64)
    x = torch.randn(12, 3, D, dtype=F64)
    alone, act_alone = layer(x[:, :1])
    assert_partially_active(act_alone.active, window=window, what="row 0 alone")

    def row_0_beside_a_fully_active_row(module):
        def decide(active):
            active[1] = True
            return active

        with forced_activation(module, decide):
            y, act = module(x)
        assert act.active[1].all() and torch.equal(act.active[0], act_alone.active[0])
        return y[:, 0]

    assert_close("row 0 beside a fully active row", row_0_beside_a_fully_active_row(layer), alone[:, 0], atol=atol)
    assert_branches_matter("row 0 in a batch", layer, row_0_beside_a_fully_active_row, atol)

    x_long = torch.randn(16, 2, D, dtype=F64)
    x_long[:12, 0] = x[:, 0]
    pad = torch.zeros(2, 16, dtype=torch.bool)
    pad[0, 12:] = True
    padded, _ = layer(x_long, pad)
    assert_close("row 0 padded beside a longer row", padded[:12, 0], alone[:, 0], atol=atol)
    assert_branches_matter("padded row 0", layer, lambda m: m(x_long, pad)[0][:12, 0], atol)


@pytest.mark.parametrize("case", ["none-active", "first-inactive"])
@pytest.mark.parametrize("window", [3, None], ids=["w3", "full"])
@pytest.mark.parametrize("activation", ["softmax", "relu2"])
def test_no_nan_when_nothing_or_only_later_tokens_active(case, window, activation):
    """Upstream H2: full causal softmax gave NaN when token 0 was skipped."""
    layer = make_layer(window=window, attention_activation=activation)
    x = torch.randn(9, 2, D, requires_grad=True)

    def decide(active):
        if case == "none-active":
            return torch.zeros_like(active)
        active[:, 0] = False
        active[:, 1] = True
        return active

    with forced_activation(layer, decide):
        y, act = layer(x)
    assert act.active.any() != (case == "none-active") and not act.active[:, 0].any()
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_router_gradient_only_through_confidence():
    layer = make_layer(window=3).train()
    x = torch.randn(12, 2, D, requires_grad=True)
    seen = []
    project = layer.gau.project
    layer.gau.project = lambda s, positions: (seen.append(s.shape), project(s, positions))[1]
    y, act = layer(x)
    del layer.gau.project
    assert_partially_active(act.active)
    y.pow(2).sum().backward()
    assert layer.router.log_temperature.grad.abs() > 0
    assert layer.hx_proj.weight.grad[:2].abs().sum() > 0  # router rows of hx_proj
    # the GAU ran on the compressed sequence only: C = max active count (rounded up to a
    # multiple of the window w = 3 when above it), not L
    count = int(act.active.sum(1).max())
    assert seen == [torch.Size([2, -(-count // 3) * 3 if count > 3 else count, D])]


def test_skipped_tokens_get_no_gradient_via_gau_branch():
    """d y_t / d (GAU params) is zero for outputs at skipped positions."""
    layer = make_layer(window=3)
    x = torch.randn(12, 1, D)
    y, act = layer(x)
    skipped = (~act.active[0]).nonzero().flatten()
    assert len(skipped) > 0
    layer.zero_grad()
    y[skipped].sum().backward()
    for p in layer.gau.parameters():
        assert p.grad is None or (p.grad == 0).all()
    assert layer.router.log_temperature.grad is None or layer.router.log_temperature.grad == 0


@pytest.mark.parametrize("norm_type", ["layernorm", "scalenorm", "rmsnorm", "batchnorm", "syncbatchnorm"])
def test_all_norm_types_run(norm_type):
    layer = make_layer(norm_type=norm_type, bidirectional=True).train()
    y, _ = layer(torch.randn(8, 2, D))
    assert y.shape == (8, 2, D) and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="unknown norm type"):
        make_layer(norm_type="groupnorm")


def test_enwik8_base_layer_parameter_count():
    layer = SeqBoatLayer(616, 128, 1232, 16, bidirectional=False, window=1024, truncation=2048,
                         rel_pos="rotary", init_temp_scale=1.0)
    assert sum(p.numel() for p in layer.parameters()) == 2_781_883


def test_deterministic_mode_forward_backward():
    torch.use_deterministic_algorithms(True)
    try:
        layer = make_layer(window=3).train()
        x = torch.randn(10, 2, D, requires_grad=True)
        layer(x)[0].sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)


class _RecordingDropout(torch.nn.Module):
    """Stands in for a FairseqDropout with p > 0 in training: a mask that keeps everything, with
    the scale ``factor`` (distinct per module, so the output tells which module touched what);
    records each input and output."""

    def __init__(self, p, factor):
        super().__init__()
        self.p, self.factor, self.inputs, self.outputs = p, factor, [], []

    def forward(self, x, inplace=False):
        assert self.training, "dropout called outside training mode"
        y = x * self.factor
        self.inputs.append(x.detach().clone())
        self.outputs.append(y.detach().clone())
        return y


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
def test_dropout_placement_h23(bidirectional, monkeypatch):
    """Hazard H23 (docs/design.md), kept from upstream: in a causal layer the layer's dropout acts
    on ``hx + G`` before the residual, ``y = SiLU(dropout(hx + G) + x)``, and the GAU's own dropout
    is unused; in a bidirectional layer the GAU output gets the GAU's dropout (before the router's
    gate) and ``y = SiLU(hx + G + x)`` has none. Train mode, dropout 0.3 (both modules); the
    dropouts are replaced by recorders that scale by 2 (layer) and 3 (GAU). The plain pipeline:
    the fused head and tail (``recompute``) draw the same masks at the same places, shown in
    tests/test_recompute.py."""
    import seqboat_fairseq.modules.seqboat_layer as seqboat_layer

    monkeypatch.setattr(seqboat_layer, "fused_head_tail_applies", lambda *t: False)
    layer = make_layer(bidirectional=bidirectional, dropout=0.3).train()  # prenorm, no FFN
    assert layer.ffn is None and layer.prenorm
    layer_dropout = _RecordingDropout(layer.dropout.p, 2.0)
    gau_dropout = _RecordingDropout(layer.gau.dropout.p, 3.0)
    assert layer_dropout.p == gau_dropout.p == 0.3
    layer.dropout, layer.gau.dropout = layer_dropout, gau_dropout
    combined = []
    combine = layer.combine

    def spy(hx, gated, residual):
        combined.append((hx.detach().clone(), gated.detach().clone(), residual.detach().clone()))
        return combine(hx, gated, residual)

    layer.combine = spy
    x = torch.randn(12, 2, D)
    y, activation = layer(x)
    assert len(combined) == 1
    hx, gated, residual = combined[0]
    assert torch.equal(residual, x)
    assert_partially_active(activation.active, what="H23 layer")
    assert gated.abs().amax() > 0.1 and hx.abs().amax() > 0.1  # both terms of the sum matter
    if not bidirectional:
        # dropout on s (first call), then on exactly hx + G (second call); the residual is not dropped
        assert len(layer_dropout.inputs) == 2
        assert_close("causal: dropout input", layer_dropout.inputs[1], hx + gated, atol=1e-6)
        assert_close("causal: y", y, torch.nn.functional.silu(2.0 * (hx + gated) + x), atol=1e-5)
        assert gau_dropout.inputs == [], "causal: the GAU's own dropout must not act"
    else:
        # the layer's dropout only on s; the GAU's dropout on the GAU output, before the gate
        assert len(layer_dropout.inputs) == 1
        assert len(gau_dropout.inputs) == 1
        dropped = gau_dropout.outputs[0]  # (B, C, D) over the compressed sequence (the active tokens, in order)
        for b in range(x.size(1)):
            where = activation.active[b].nonzero().squeeze(-1)
            gate = activation.confidence[b, where].unsqueeze(-1)
            assert_close(f"bidirectional: G = extract(dropout(GAU output)) * gate, row {b}", gated[where, b],
                         dropped[b, :len(where)] * gate, atol=1e-6)
            assert not gated[~activation.active[b], b].any()
        assert_close("bidirectional: y", y, torch.nn.functional.silu(hx + gated + x), atol=1e-5)
