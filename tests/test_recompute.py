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
