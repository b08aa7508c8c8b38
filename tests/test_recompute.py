"""The GAU's memory-lean projections (modules/recompute.py): the same values and gradients as the
plain composition, less kept for the backward pass."""

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close
from seqboat_fairseq.modules.linear import Linear
from seqboat_fairseq.modules.recompute import gated_linear, silu_linear


def _plain_silu(x, linear):
    return F.silu(F.linear(x, linear.weight, linear.bias))


def _plain_gated(a, b, linear):
    return F.linear(a * b, linear.weight, linear.bias)


CASES = {
    "silu_linear": (lambda t, lin: silu_linear(t[0], lin), lambda t, lin: _plain_silu(t[0], lin), 1),
    "gated_linear": (lambda t, lin: gated_linear(t[0], t[1], lin), lambda t, lin: _plain_gated(t[0], t[1], lin), 2),
}


def _inputs(count, dtype=torch.float32, rows=(2, 70)):
    return [torch.randn(*rows, 5, dtype=dtype, requires_grad=True) for _ in range(count)]


def _saved_bytes(fn) -> int:
    """Bytes autograd keeps for the backward pass of ``fn()`` (distinct storages)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gradcheck(name, bias):
    ours, _, count = CASES[name]
    linear = Linear(5, 7, bias=bias).double()
    tensors = _inputs(count, torch.float64, rows=(2, 3))
    params = [linear.weight] + ([linear.bias] if bias else [])
    assert torch.autograd.gradcheck(lambda *args: ours(args[:count], linear), (*tensors, *params))


def _outputs_and_grads(fns, tensors, linear, autocast=False):
    """For each fn: [output, grad of every tensor, weight grad, bias grad] after one backward
    (under bf16 autocast on the tensors' device when asked; backward outside it, as fairseq does)."""
    grad = torch.randn(2, 70, 7)
    results = []
    for fn in fns:
        linear.zero_grad()
        for t in tensors:
            t.grad = None
        with torch.autocast(tensors[0].device.type, dtype=torch.bfloat16, enabled=autocast):
            out = fn(tensors, linear)
        assert out.dtype == (torch.bfloat16 if autocast else torch.float32)
        out.float().backward(grad)
        results.append([out.detach().float()] + [t.grad.clone() for t in tensors]
                       + [linear.weight.grad.clone(), linear.bias.grad.clone()])
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_equal_to_the_plain_composition_and_keeps_less(name):
    ours, plain, count = CASES[name]
    linear = Linear(5, 7)
    tensors = _inputs(count)
    for i, (a, b) in enumerate(zip(*_outputs_and_grads((ours, plain), tensors, linear))):
        assert_close(f"{name} output/grad {i}", a, b, atol=1e-6, rtol=1e-6)
    # the point of the Function: the (rows x 7) pre-activation / the (rows x 5) product is not kept
    kept, kept_plain = (_saved_bytes(lambda fn=fn: fn(tensors, linear)) for fn in (ours, plain))
    wide = 2 * 70 * (7 if name == "silu_linear" else 5) * 4
    assert kept_plain - kept == wide - 7 * 4  # (the Function keeps the 7 bias values)


@pytest.mark.parametrize("name", list(CASES))
def test_autocast_bf16_matches_the_plain_composition(name):
    """Under autocast (bf16, on the tensors' device) the recomputation runs in the forward pass's
    dtype: values and gradients equal those of the plain composition under autocast."""
    ours, plain, count = CASES[name]
    linear = Linear(5, 7)
    tensors = _inputs(count)
    results = _outputs_and_grads((ours, plain), tensors, linear, autocast=True)
    assert all(t.grad.dtype == torch.float32 for t in tensors) and linear.weight.grad.dtype == torch.float32
    for i, (a, b) in enumerate(zip(*results)):
        assert_close(f"{name} bf16 output/grad {i}", a, b, atol=2e-2, rtol=2e-2)


def test_without_gradients_the_module_runs():
    """No gradient recording (decoding): the plain composition through the module itself, so
    Linear's few-row route (and any forward hook) applies."""
    linear = Linear(5, 7)
    calls = []
    linear.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(1, 5)
    with torch.no_grad():
        assert_close("silu_linear", silu_linear(x, linear), _plain_silu(x, linear), atol=1e-6)
        assert_close("gated_linear", gated_linear(x, x, linear), _plain_gated(x, x, linear), atol=1e-6)
    assert len(calls) == 2


# --------------------------------------------------------------------------- the layer's head and tail
def _layer_step(layer, x, mask, fused, monkeypatch):
    """Output, activation and input / parameter gradients of one forward + backward of ``layer``
    on x under the forced activation ``mask`` (None: always-active layer), with the fused head and
    tail (``silu_projection`` / ``gated_combine``) or the plain composition; also the bytes autograd
    keeps and whether the fused path ran."""
    import seqboat_fairseq.modules.seqboat_layer as seqboat_layer
    from seqboat_fairseq.modules.sma import forced_activation

    calls = []
    real = seqboat_layer.gated_combine
    monkeypatch.setattr(seqboat_layer, "gated_combine", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(seqboat_layer, "fused_head_tail_applies",
                        recompute_module.fused_head_tail_applies if fused else (lambda *t: False))
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    out = {}

    def forward():
        if mask is None:
            out["y"], out["act"] = layer(x)
        else:
            with forced_activation(layer, lambda active: mask.expand_as(active)):
                out["y"], out["act"] = layer(x)

    saved = _saved_bytes(forward)
    y, act = out["y"], out["act"]
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    grads = {"x": x.grad, **{n: p.grad for n, p in layer.named_parameters() if p.grad is not None}}
    return y.detach(), act.confidence.detach(), grads, saved, bool(calls)


import seqboat_fairseq.modules.recompute as recompute_module  # noqa: E402


@pytest.mark.parametrize("dropout,bsz", [(0.0, 1), (0.3, 1), (0.3, 2)], ids=["no_dropout", "dropout", "dropout_b2"])
@pytest.mark.parametrize("kind", ["seqboat_bidirectional", "seqboat_causal", "always_active_chunked"])
def test_layer_head_and_tail_equal_the_plain_pipeline_and_keep_less(kind, dropout, bsz, monkeypatch):
    """SeqBoatLayer's parallel pass through silu_projection / gated_combine gives the plain pipeline's
    output, gate and every gradient (router temperature included); at a 25 % rate it keeps at least
    two (L, B, D) fp32 tensors less (s and the pre-activation; the gated output is compressed). With
    dropout (on s, and in a causal layer on hx + G) both runs start from the same seed: the fused
    pass draws the plain pipeline's masks (the outputs differ from the dropout-free ones, shown), keeps
    them as bools and still keeps two (L, B, D) fp32 tensors less."""
    from seqboat_fairseq.modules.seqboat_layer import SeqBoatLayer

    torch.manual_seed(0)
    length, dim = 96, 12
    always = kind == "always_active_chunked"
    layer = SeqBoatLayer(dim, 6, 16, 4, bidirectional=kind != "seqboat_causal", window=8, truncation=None,
                         norm_type="batchnorm", always_active=always, chunked=always, max_positions=128,
                         ffn_dim=8, dropout=dropout).train()
    x = torch.randn(length, bsz, dim)
    mask = None if always else (torch.rand(bsz, length) < 0.25)
    torch.manual_seed(1)
    y0, g0, grads0, saved0, fused0 = _layer_step(layer, x, mask, False, monkeypatch)
    torch.manual_seed(1)
    y1, g1, grads1, saved1, fused1 = _layer_step(layer, x, mask, True, monkeypatch)
    assert fused1 and not fused0  # the two runs take the two paths
    assert 0.1 < float(g1.gt(0).float().mean()) < 0.45 or always  # a sparse rate: compression is exercised
    if dropout:  # the masks act: another seed gives other outputs
        torch.manual_seed(2)
        assert (_layer_step(layer, x, mask, True, monkeypatch)[0] - y1).abs().max() > 0.01
    assert_close("output", y1, y0, atol=1e-6)
    assert_close("gate", g1, g0, atol=0)
    assert grads1.keys() == grads0.keys() and "router.log_temperature" in grads1 or always
    for name in grads0:
        assert_close(f"grad {name}", grads1[name], grads0[name], atol=1e-5)
    one_tensor = length * bsz * dim * 4
    if always:
        assert saved1 < saved0 + one_tensor  # MEGA-chunk: the GAU reads s itself; no (L, B, D) tensor added
    else:
        assert saved1 <= saved0 - 2 * one_tensor, (saved0, saved1)
