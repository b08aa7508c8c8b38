"""modules/linear.py: the CPU column-GEMM route for few rows equals nn.Linear."""

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close
from seqboat_fairseq.modules.linear import MAX_ROWS, Linear


@pytest.mark.parametrize("shape", [(1, 24), (2, 24), (3, 1, 24), (1, 1, 24), (MAX_ROWS, 24), (MAX_ROWS + 1, 24),
                                   (4, 5, 24), (0, 24)], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_equals_nn_linear_values_and_gradients(shape, bias):
    torch.manual_seed(0)
    layer = Linear(24, 40, bias=bias).double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    expected = F.linear(x, layer.weight, layer.bias)
    assert y.shape == expected.shape
    assert_close("values", y, expected, atol=1e-12)
    if x.numel():
        g = torch.randn_like(y)
        grads = torch.autograd.grad(y, [x, *layer.parameters()], g)
        expected_grads = torch.autograd.grad(expected, [x, *layer.parameters()], g)
        for name, a, b in zip(["x", "weight", "bias"], grads, expected_grads):
            assert_close(name, a, b, atol=1e-12)


def test_few_rows_take_the_column_route():
    """The route is really taken for a decoding step's rows (and not for a training batch): a
    weight whose product through F.linear is poisoned shows which path ran."""
    layer = Linear(8, 8)
    calls = []
    original = F.linear

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    torch.nn.functional.linear, saved = spy, F.linear
    try:
        layer(torch.randn(1, 8))
        layer(torch.randn(MAX_ROWS, 8))
        assert calls == []
        layer(torch.randn(MAX_ROWS + 1, 8))
        assert calls == [(MAX_ROWS + 1, 8)]
    finally:
        torch.nn.functional.linear = saved
