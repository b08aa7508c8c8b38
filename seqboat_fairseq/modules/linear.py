"""``nn.Linear`` that picks, by measurement on the machine at hand, the faster CPU product for few rows.

A decoding step applies every projection to one row per sequence. For such inputs PyTorch's CPU
``F.linear`` (``x @ W^T``) may go to a single-threaded matrix-vector product, and the same product
written as ``(W @ x^T)^T`` (with at least two columns: a zero column is added to a single row) may
go to a multi-threaded GEMM instead. Which one is faster depends on the CPU and its BLAS: on a
2-core AMD EPYC the column route was 2.4x faster at one row of the 616 -> 2592 GAU projection, on a
2-core Intel Xeon (AVX-512) 3.8x slower (``python bench/linear_rows.py`` measures both).

So nothing is hard-coded: the first time a CPU input of ``rows <= MAX_ROWS`` rows, with gradients
off (decoding, generation), meets a given (row bucket, in, out, bias, dtype, torch threads), where the
bucket is ``rows`` rounded up to a power of two, both routes are timed at the bucket's row count on
copies of that weight (enough copies to leave the cache, as the layers of a model do), interleaved,
and the column route is kept only when it is at least ``MARGIN`` times faster; the decision is cached
for the process (:func:`route_decisions`): at most 7 measurements per weight shape. A measurement
costs a few ms to tens of ms (more on a busy machine), happens in a model's first decoding step (a
benchmark's warm-up), with no tensor-to-Python conversion (no host synchronisation); it is never made
while a dispatch mode (``FlopCounterMode``), the profiler, tracing or compilation is active: then
``F.linear`` runs and nothing is cached. Other devices, other dtypes, inputs above ``MAX_ROWS`` rows
and every call with gradients on (training) take ``F.linear``. Same parameters, same state-dict keys,
same result up to float rounding.
"""

import time
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_ROWS = 64  # above this, F.linear is a full GEMM already: nothing to choose
MARGIN = 1.2  # the column route must beat F.linear by this factor (noise must not flip the choice)
ROUNDS = 5  # interleaved timing rounds per route; the median is compared
CACHE_BYTES = 40 * 2 ** 20  # the weight copies timed together exceed a large last-level cache
MAX_COPIES = 8

RouteKey = Tuple[int, int, int, bool, torch.dtype, int]
_DECISIONS: Dict[RouteKey, bool] = {}  # key -> True: the column route is faster here


def row_bucket(rows: int) -> int:
    """``rows`` rounded up to a power of two: the row count a decision is measured at and cached for."""
    return 1 << (rows - 1).bit_length()


def column_product(flat: Tensor, weight: Tensor, bias) -> Tensor:
    """``flat (rows, in) -> (rows, out)`` as ``(W @ flat^T)^T`` (+ bias): a GEMM with >= 2 columns."""
    rows = flat.size(0)
    if rows == 1:  # one column would be a matrix-vector product again
        flat = F.pad(flat, (0, 0, 0, 1))
    out = torch.mm(weight, flat.t()) if bias is None else torch.addmm(bias.unsqueeze(1), weight, flat.t())
    return out[:, :rows].t()


def route_decisions() -> Dict[RouteKey, bool]:
    """A copy of the decisions made so far: ``(row bucket, in, out, bias, dtype, threads) -> column route?``."""
    return dict(_DECISIONS)


def clear_route_decisions() -> None:
    """Forgets every decision (the next few-row call of each shape measures again)."""
    _DECISIONS.clear()


def _measuring_is_unsafe() -> bool:
    """True while timing would pollute or break someone else's measurement or graph."""
    return (torch._C._len_torch_dispatch_stack() > 0 or torch.autograd.profiler._is_profiler_enabled
            or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling())


def measure_column_route(rows: int, weight: Tensor, bias) -> bool:
    """Times ``F.linear`` and :func:`column_product` for ``rows`` rows of this weight's shape (median of
    ``ROUNDS`` interleaved rounds, each over every copy of the weight); True if the column route is at
    least ``MARGIN`` times faster."""
    with torch.no_grad():
        copies = max(1, min(MAX_COPIES, -(-CACHE_BYTES // max(weight.numel() * weight.element_size(), 1))))
        weights = [weight.detach().clone() for _ in range(copies)]
        biases = [None if bias is None else bias.detach().clone() for _ in range(copies)]
        x = torch.randn(rows, weight.size(1), dtype=weight.dtype)
        routes = (lambda w, b: F.linear(x, w, b), lambda w, b: column_product(x, w, b))
        for route in routes:  # warm-up: first-call allocations and BLAS thread start-up
            route(weights[0], biases[0])
        times = ([], [])
        for r in range(ROUNDS):
            for i in (0, 1) if r % 2 == 0 else (1, 0):  # alternate the order: drifts hit both
                start = time.perf_counter()
                for w, b in zip(weights, biases):
                    routes[i](w, b)
                times[i].append(time.perf_counter() - start)
    linear_s, column_s = (sorted(t)[len(t) // 2] for t in times)
    return column_s * MARGIN <= linear_s


def routed_linear(x: Tensor, weight: Tensor, bias) -> Tensor:
    """``F.linear(x, weight, bias)``; a CPU input of <= ``MAX_ROWS`` rows without gradients takes the
    column-GEMM route where it was measured to be faster for this weight's shape (module docstring).
    Also used for weights that are not one module's (the decoding step's fused projections)."""
    rows = x.numel() // x.size(-1) if x.size(-1) else 0
    if (x.device.type != "cpu" or rows == 0 or rows > MAX_ROWS or x.dtype != weight.dtype
            or torch.is_grad_enabled()):
        return F.linear(x, weight, bias)
    bucket = row_bucket(rows)
    key = (bucket, weight.size(1), weight.size(0), bias is not None, x.dtype, torch.get_num_threads())
    column = _DECISIONS.get(key)
    if column is None:
        if _measuring_is_unsafe():
            return F.linear(x, weight, bias)
        column = _DECISIONS[key] = measure_column_route(bucket, weight, bias)
    if not column:
        return F.linear(x, weight, bias)
    out = column_product(x.reshape(rows, x.size(-1)), weight, bias)
    return out.reshape(*x.shape[:-1], weight.size(0))


class Linear(nn.Linear):
    """``nn.Linear`` whose CPU forward for <= ``MAX_ROWS`` rows without gradients takes the column-GEMM
    route where it was measured to be faster for that shape (module docstring, ``routed_linear``)."""

    def forward(self, x: Tensor) -> Tensor:
        return routed_linear(x, self.weight, self.bias)
