"""The whole SeqBoat layer vs a dense masked reference, batch invariance, NaN safety, gradients."""

import itertools

import pytest
import torch

from conftest import assert_close
from seqboat_fairseq.modules import SeqBoatLayer
from seqboat_fairseq.modules.naive import dense_seqboat_layer

D, Z, H, N = 16, 8, 12, 4


def make_layer(**kw):
    opts = dict(bidirectional=False, window=3, truncation=None, norm_type="layernorm", prenorm=True,
                attention_activation="softmax", rel_pos="simple", max_positions=32)
    opts.update(kw)
    layer = SeqBoatLayer(D, Z, H, N, **opts).eval()
    with torch.no_grad():  # a router that activates roughly half the tokens
        layer.hx_proj.weight[:2].normal_(0, 1.0)
    return layer


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


@pytest.mark.parametrize("cfg", CONFIGS, ids=[_cfg_id(c) for c in CONFIGS])
def test_layer_matches_dense_reference(cfg):
    layer = make_layer(truncation=6, **cfg)
    x = torch.randn(19, 3, D)
    pad = torch.zeros(3, 19, dtype=torch.bool)
    pad[1, 14:] = True
    y, act = layer(x, pad)
    y_ref, active_ref, conf_ref = dense_seqboat_layer(layer, x, pad)
    assert torch.equal(act.active, active_ref)
    assert 0.2 < act.active[~pad].float().mean() < 0.8, "test should exercise a partial activation"
    assert_close("confidence", act.confidence, conf_ref, atol=1e-6)
    assert_close("layer output", y[~pad.t()], y_ref[~pad.t()], atol=2e-5)


@pytest.mark.parametrize("variant", ["seqboat", "full", "always_active"])
def test_variants_match_reference(variant):
    kw = {"seqboat": dict(window=4), "full": dict(window=-1), "always_active": dict(always_active=True)}[variant]
    layer = make_layer(**kw)
    x = torch.randn(15, 2, D)
    pad = torch.zeros(2, 15, dtype=torch.bool)
    pad[0, 11:] = True
    y, act = layer(x, pad)
    y_ref, active_ref, _ = dense_seqboat_layer(layer, x, pad)
    assert torch.equal(act.active, active_ref)
    assert_close(variant, y[~pad.t()], y_ref[~pad.t()], atol=2e-5)
    if variant == "always_active":
        assert act.active.equal(~pad) and layer.router is None and layer.hx_proj.out_features == D


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidir"])
@pytest.mark.parametrize("window", [2, None], ids=["w2", "full"])
def test_row_alone_equals_row_in_any_batch(bidirectional, window):
    """Upstream H1: a fully active batch mate disabled compression and changed every other
    row's window. Here a row's output never depends on its batch mates, fully active or
    longer (padded) ones included."""
    layer = make_layer(bidirectional=bidirectional, window=window, attention_activation="relu2")
    x = torch.randn(12, 3, D)
    alone, act_alone = layer(x[:, :1])
    assert act_alone.active.any() and not act_alone.active.all()

    route = layer.router.forward

    def force_row_1_fully_active(logits, padding_mask=None, act_bias=0.0):
        active, gate = route(logits, padding_mask, act_bias)
        active = active.clone()
        active[1] = True
        return active, gate

    layer.router.forward = force_row_1_fully_active
    batched, act = layer(x)
    assert act.active[1].all()
    assert_close("row 0 beside a fully active row", batched[:, 0], alone[:, 0], atol=1e-6)

    layer.router.forward = route
    x_long = torch.randn(16, 2, D)
    x_long[:12, 0] = x[:, 0]
    pad = torch.zeros(2, 16, dtype=torch.bool)
    pad[0, 12:] = True
    padded, _ = layer(x_long, pad)
    assert_close("row 0 padded beside a longer row", padded[:12, 0], alone[:, 0], atol=1e-6)


@pytest.mark.parametrize("bias,first_inactive", [(1e4, False), (0.0, True)], ids=["none-active", "first-inactive"])
@pytest.mark.parametrize("window", [3, None], ids=["w3", "full"])
@pytest.mark.parametrize("activation", ["softmax", "relu2"])
def test_no_nan_when_nothing_or_only_later_tokens_active(bias, first_inactive, window, activation):
    """Upstream H2: full causal softmax gave NaN when token 0 was skipped."""
    layer = make_layer(window=window, attention_activation=activation)
    layer.act_bias = bias
    x = torch.randn(9, 2, D, requires_grad=True)
    if first_inactive:
        with torch.no_grad():
            layer.hx_proj.bias[0] = 0.0
    y, act = layer(x)
    if first_inactive:
        assert act.active.any()
    else:
        assert not act.active.any()
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_router_gradient_only_through_confidence():
    layer = make_layer(window=3).train()
    x = torch.randn(12, 2, D, requires_grad=True)
    seen = []
    handle = layer.gau.in_proj.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
    y, act = layer(x)
    handle.remove()
    assert act.active.any() and not act.active.all()
    y.pow(2).sum().backward()
    assert layer.router.log_temperature.grad.abs() > 0
    assert layer.hx_proj.weight.grad[:2].abs().sum() > 0  # router rows of hx_proj
    # the GAU ran on the compressed sequence only: C = max active count, not L
    assert seen == [torch.Size([2, int(act.active.sum(1).max()), D])]


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
