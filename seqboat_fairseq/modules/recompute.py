"""The GAU's two projections, written to keep less for the backward pass than autograd keeps.

* ``silu_linear(x, linear)`` = ``SiLU(linear(x))``. Autograd keeps ``x`` (for the weight
  gradient) and the pre-activation ``u = linear(x)`` (for SiLU's derivative). ``u`` is the
  GAU's widest tensor, ``Z + 2H`` values per active token: 14 % of an LM training step's peak
  memory. This keeps ``x`` only and recomputes ``u`` in the backward pass, which costs one more
  matmul (+12 % step time), so the GAU uses it only with ``--recompute-gau``.
* ``gated_linear(a, b, linear)`` = ``linear(a * b)``. Autograd keeps ``a`` and ``b`` (for the
  product's derivative) and also the product (for the weight gradient). This keeps ``a`` and
  ``b`` and recomputes the product with one elementwise multiplication: 6 % of the peak, always
  on.

``python bench/profile_memory.py`` shows what a step keeps. Both are exact: the same products
in the same dtype. Under autocast, the backward pass recomputes in the dtype the forward pass
used. Without gradient recording (decoding, scoring), both are the plain composition, so the
few-row route of ``linear.Linear`` still applies. With it, the ``nn.Linear`` modules lend their
parameters only: their forward hooks do not run.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def silu_linear(x: Tensor, linear: nn.Linear) -> Tensor:
    """``F.silu(linear(x))``, keeping only ``x`` for the backward pass. x: ``(..., in)``."""
    if not torch.is_grad_enabled():
        return F.silu(linear(x))
    return _SiLULinear.apply(x, linear.weight, linear.bias)


def gated_linear(a: Tensor, b: Tensor, linear: nn.Linear) -> Tensor:
    """``linear(a * b)``, not keeping the product for the backward pass. a, b: ``(..., in)``."""
    if not torch.is_grad_enabled():
        return linear(a * b)
    return _GatedLinear.apply(a, b, linear.weight, linear.bias)


def _parameter_grads(ctx, grad_out: Tensor, inp: Optional[Tensor], bias):
    """The weight and bias gradients of ``F.linear(inp, weight, bias)`` for ``grad_out``, in its
    dtype; None where not needed (the Functions' last two inputs are the weight and the bias;
    ``inp`` is read only for the weight's)."""
    flat_grad = grad_out.reshape(-1, grad_out.size(-1))
    grad_weight = flat_grad.t() @ inp.reshape(-1, inp.size(-1)) if ctx.needs_input_grad[-2] else None
    grad_bias = flat_grad.sum(0) if bias is not None and ctx.needs_input_grad[-1] else None
    return grad_weight, grad_bias


def _cast(t, dtype):
    return None if t is None else t.to(dtype)


class _SiLULinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias):
        u = F.linear(x, weight, bias)  # under autocast: in the autocast dtype
        ctx.save_for_backward(x, weight, bias)
        ctx.compute_dtype = u.dtype
        return F.silu(u)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, bias = ctx.saved_tensors
        dtype = ctx.compute_dtype
        with torch.autocast(x.device.type, enabled=False):
            xc, wc, bc = x.to(dtype), weight.to(dtype), _cast(bias, dtype)
            u = F.linear(xc, wc, bc)  # the recomputation
            grad_u = torch.ops.aten.silu_backward(grad.to(dtype), u)
            del u  # the backward pass's own peak: one wide temporary at a time
            grad_x = grad_u @ wc if ctx.needs_input_grad[0] else None
            grad_w, grad_b = _parameter_grads(ctx, grad_u, xc, bc)
        return _cast(grad_x, x.dtype), _cast(grad_w, weight.dtype), _cast(grad_b, None if bias is None else bias.dtype)


class _GatedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, weight: Tensor, bias):
        product = a * b
        y = F.linear(product, weight, bias)
        ctx.save_for_backward(a, b, weight, bias)
        ctx.product_dtype, ctx.compute_dtype = product.dtype, y.dtype
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b, weight, bias = ctx.saved_tensors
        dtype = ctx.compute_dtype
        with torch.autocast(a.device.type, enabled=False):
            grad = grad.to(dtype)
            # the recomputation, freed before the wide gradients exist
            product = (a * b).to(dtype) if ctx.needs_input_grad[2] else None
            grad_w, grad_bias = _parameter_grads(ctx, grad, product, bias)
            del product
            grad_a = grad_b = None
            if any(ctx.needs_input_grad[:2]):
                grad_product = (grad @ weight.to(dtype)).to(ctx.product_dtype)
                grad_a = (grad_product * b).to(a.dtype) if ctx.needs_input_grad[0] else None
                # our own temporary: b's gradient can take its place
                grad_b = grad_product.mul_(a).to(b.dtype) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, _cast(grad_w, weight.dtype), _cast(grad_bias, None if bias is None else bias.dtype)
