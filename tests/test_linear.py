"""modules/linear.py: both CPU routes for few rows equal nn.Linear, the route is chosen by measuring on
this machine once per shape and row bucket (cached), never with gradients on, and never while someone
else is measuring."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from conftest import assert_close
from seqboat_fairseq.modules import linear as linear_module
from seqboat_fairseq.modules.linear import MAX_ROWS, Linear


@pytest.fixture(autouse=True)
def fresh_decisions():
    linear_module.clear_route_decisions()
    yield
    linear_module.clear_route_decisions()


@pytest.fixture
def f_linear_calls(monkeypatch):
    """Shapes of the inputs F.linear received (the column route never calls it)."""
    calls = []
    original = F.linear

    def spy(*args, **kwargs):
        calls.append(tuple(args[0].shape))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    return calls


def force_route(monkeypatch, column: bool):
    """Every measurement answers ``column``; returns the list of measured row counts."""
    measured = []

    def measure(rows, weight, bias):
        measured.append(rows)
        return column

    monkeypatch.setattr(linear_module, "measure_column_route", measure)
    return measured


@pytest.mark.parametrize("column", [True, False], ids=["column_route", "f_linear_route"])
@pytest.mark.parametrize("shape", [(1, 24), (2, 24), (3, 1, 24), (1, 1, 24), (MAX_ROWS, 24), (MAX_ROWS + 1, 24),
                                   (4, 5, 24), (0, 24)], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_both_routes_equal_nn_linear(shape, bias, column, monkeypatch, f_linear_calls):
    force_route(monkeypatch, column)
    torch.manual_seed(0)
    layer = Linear(24, 40, bias=bias).double()
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
    rows = x.numel() // 24
    # the configuration exercises the route it claims to
    took_column = not f_linear_calls
    assert took_column == (column and 0 < rows <= MAX_ROWS), (f_linear_calls, shape)
    expected = F.linear(x, layer.weight, layer.bias)
    assert y.shape == expected.shape
    assert_close("values", y, expected, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 24), (3, 1, 24), (MAX_ROWS + 1, 24)], ids=str)
def test_with_gradients_on_f_linear_runs(shape, monkeypatch, f_linear_calls):
    """Training never measures nor takes the column route, whatever a measurement would say."""
    measured = force_route(monkeypatch, True)
    torch.manual_seed(0)
    layer = Linear(24, 40).double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert f_linear_calls == [tuple(shape)] and measured == []
    expected = F.linear(x, layer.weight, layer.bias)
    assert_close("values", y, expected, atol=1e-12)
    if x.numel():
        g = torch.randn_like(y)
        grads = torch.autograd.grad(y, [x, *layer.parameters()], g)
        expected_grads = torch.autograd.grad(expected, [x, *layer.parameters()], g)
        for name, a, b in zip(["x", "weight", "bias"], grads, expected_grads):
            assert_close(name, a, b, atol=1e-12)


def test_column_product_is_exact_in_float32():
    """The column route in the models' dtype: one row (padded with a zero column) and several."""
    torch.manual_seed(0)
    layer = Linear(616, 300)
    for rows in (1, 2, 7):
        x = torch.randn(rows, 616)
        assert_close(f"{rows} rows", linear_module.column_product(x, layer.weight, layer.bias),
                     F.linear(x, layer.weight, layer.bias), atol=1e-4)


@torch.no_grad()
def test_the_choice_is_measured_once_per_shape_and_cached(monkeypatch, f_linear_calls):
    measured = force_route(monkeypatch, True)
    a, b = Linear(8, 16), Linear(8, 16)
    for _ in range(3):
        a(torch.randn(1, 8))
        b(torch.randn(1, 8))  # same shape, another layer: the same decision
    assert measured == [1]
    a(torch.randn(2, 8))
    a(torch.randn(3, 8))  # rows 3 and 4 share the bucket 4, measured at 4 rows
    a(torch.randn(4, 8))
    a(torch.randn(MAX_ROWS + 1, 8))  # above MAX_ROWS: F.linear, nothing measured
    assert measured == [1, 2, 4]
    assert f_linear_calls == [(MAX_ROWS + 1, 8)]
    threads = torch.get_num_threads()
    assert linear_module.route_decisions() == {(r, 8, 16, True, torch.float32, threads): True for r in (1, 2, 4)}
    assert [linear_module.row_bucket(r) for r in (1, 2, 3, 4, 5, 33, 64)] == [1, 2, 4, 4, 8, 64, 64]


@torch.no_grad()
def test_a_slower_column_route_is_not_taken(monkeypatch, f_linear_calls):
    force_route(monkeypatch, False)
    Linear(8, 16)(torch.randn(1, 8))
    assert f_linear_calls == [(1, 8)]


@torch.no_grad()
def test_no_measurement_inside_a_flop_count_or_profile(monkeypatch, f_linear_calls):
    """Timing inside FlopCounterMode or the profiler would add its products to theirs: F.linear runs and
    the decision is left to a later call."""
    measured = force_route(monkeypatch, True)
    layer = Linear(8, 16)
    with FlopCounterMode(display=False) as counter:
        layer(torch.randn(1, 8))
    assert counter.get_total_flops() == 2 * 8 * 16
    with torch.profiler.profile():
        layer(torch.randn(1, 8))
    assert measured == [] and linear_module.route_decisions() == {}
    assert f_linear_calls == [(1, 8), (1, 8)]
    layer(torch.randn(1, 8))
    assert measured == [1]


def test_measurement_returns_a_decision():
    """The real measurement (a small shape: milliseconds) answers with a bool; the decision is cached."""
    layer = Linear(32, 48)
    with torch.no_grad():
        layer(torch.randn(1, 32))
    (decision,) = linear_module.route_decisions().values()
    assert isinstance(decision, bool)
