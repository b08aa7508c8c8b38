"""The GAU's two projections and the SeqBoat layer's always-on head and tail (``silu_projection``,
``gated_combine``: see their section below), written to keep less for the backward pass than
autograd keeps.

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


# --------------------------------------------------------------------------- the layer's head and tail
# A SeqBoat layer's always-on path, around the GAU (seqboat_layer.py):
#     s = dropout(SiLU(e));  [u | hx] = hx_proj(s);  ...GAU on compress(s)...
#     y = SiLU(hx + extract(out * gate) + x)              bidirectional
#     y = SiLU(dropout(hx + extract(out * gate)) + x)     causal
# Autograd keeps, per token, e (SiLU's input), s (hx_proj's input), the uncompressed gated GAU
# output (the gate product's input) and the pre-activation (SiLU's input), plus each dropout's
# scaled mask in the input's dtype: four to six (L, B, D) tensors. ``silu_projection`` and
# ``gated_combine`` keep e, x (which the layer's prenorm keeps anyway), the GAU's *compressed*
# output and gate, and each dropout's mask as bools (a byte per value), and recompute s, hx and the
# pre-activation in the backward pass (one elementwise SiLU and one D x (D + 2) product per token).
# For SeqBoat at a 25 % rate that is 3 of the 4 tensors; for an always-active layer (MEGA-chunk)
# the GAU reads s itself and its output is uncompressed, so both keep what autograd kept.
# Exact: the forward values are the same products in the same order, and the recomputation is
# the forward's own ops on the same inputs. Dropout draws its mask as ``F.dropout`` does on the CPU
# (``bernoulli_(1 - p)`` into ``empty_like`` of the same tensor, divided by 1 - p, multiplied in), so
# on the CPU the masks, and the whole pass, equal the plain pipeline's under the same seed.

def fused_head_tail_applies(*tensors: Tensor) -> bool:
    """Whether ``silu_projection`` / ``gated_combine`` apply: gradients recorded, no autocast on
    the tensors' device, one floating dtype (else the layer runs the plain composition)."""
    device = tensors[0].device.type
    return (torch.is_grad_enabled() and not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device))
            and len({t.dtype for t in tensors}) == 1)


def silu_projection(e: Tensor, linear: nn.Linear, p: float = 0.0):
    """``s = dropout(SiLU(e), p)`` and ``linear(s.transpose(0, 1))``, keeping only ``e`` (and the
    dropout mask as bools) for the backward pass. e: ``(L, B, D)``; p: dropout rate in [0, 1), 0 =
    none. Returns ``(s (L, B, D), projection (B, L, out), keep)``; keep: the dropout's mask
    (``(L, B, D)`` bool, True = kept) or None, for ``gated_combine``'s recomputation of s."""
    return _SiLUProjection.apply(e, linear.weight, linear.bias, p)


def gated_combine(hx: Tensor, out: Tensor, gate: Optional[Tensor], plan, x: Tensor, e: Tensor,
                  linear: nn.Linear, offset: int, head_keep: Optional[Tensor] = None, p: float = 0.0,
                  tail_dropout: bool = False) -> Tensor:
    """``SiLU(hx.T + extract(out * gate, plan).T + x)`` (``.T``: dims 0, 1 swapped; with
    ``tail_dropout``: ``SiLU(dropout(hx.T + extract(...).T, p) + x)``, the causal layer's), keeping
    ``out``, ``gate``, ``x``, ``e`` and the dropout masks as bools: the backward pass recomputes ``hx``
    as ``linear(dropout(SiLU(e)).T)[..., offset:]`` (``silu_projection``'s output, of which hx must be
    that slice, with its mask ``head_keep``). hx: ``(B, L, D)``; out: ``(B, C, D)`` compressed GAU
    output; gate: ``(B, C)`` or None; plan: the ``sma.Compression`` of ``out``; x, e: ``(L, B, D)``;
    p: the dropout rate of both masks, in [0, 1). Returns ``(L, B, D)``."""
    return _GatedCombine.apply(hx, out, gate, x, e, linear.weight, linear.bias, head_keep, plan, offset,
                               p if tail_dropout else 0.0, p)


def _dropout_noise(like: Tensor, p: float) -> Tensor:
    """F.dropout's CPU mask for ``like``: ``bernoulli(1 - p) / (1 - p)`` in ``like``'s dtype and layout."""
    return torch.empty_like(like).bernoulli_(1.0 - p).div_(1.0 - p)


def _noise_from(keep: Tensor, p: float, dtype) -> Tensor:
    """The scaled mask again from its bools: the same values as ``_dropout_noise`` drew (1 / (1 - p), 0)."""
    return keep.to(dtype).div_(1.0 - p)


def _head(e: Tensor, keep: Optional[Tensor], p: float) -> Tensor:
    s = F.silu(e)
    return s if keep is None else s * _noise_from(keep, p, s.dtype)


class _SiLUProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e: Tensor, weight: Tensor, bias, p: float):
        s = F.silu(e)
        keep = None
        if p > 0:
            noise = _dropout_noise(s, p)
            s = s * noise
            keep = noise != 0
        projection = F.linear(s.transpose(0, 1), weight, bias)
        ctx.save_for_backward(e, keep, weight, bias)
        ctx.p = p
        if keep is not None:
            ctx.mark_non_differentiable(keep)
        return s, projection, keep

    @staticmethod
    def backward(ctx, grad_s, grad_projection, grad_keep):
        e, keep, weight, bias = ctx.saved_tensors
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            flat_grad = grad_projection.reshape(-1, grad_projection.size(-1))
            grad_weight = flat_grad.t() @ _head(e, keep, ctx.p).transpose(0, 1).reshape(-1, e.size(-1))
        if bias is not None and ctx.needs_input_grad[2]:
            grad_bias = grad_projection.reshape(-1, grad_projection.size(-1)).sum(0)
        grad_e = None
        if ctx.needs_input_grad[0]:
            grad_s_total = (grad_projection @ weight).transpose(0, 1)
            if grad_s is not None:
                grad_s_total = grad_s_total + grad_s
            if keep is not None:
                grad_s_total = grad_s_total * _noise_from(keep, ctx.p, grad_s_total.dtype)
            grad_e = torch.ops.aten.silu_backward(grad_s_total, e)
        return grad_e, grad_weight, grad_bias, None


class _GatedCombine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hx: Tensor, out: Tensor, gate, x: Tensor, e: Tensor, weight: Tensor, bias, head_keep,
                plan, offset: int, p_tail: float, p_head: float):
        from .sma import extract

        gated = extract(out if gate is None else out * gate.unsqueeze(-1), plan)
        mixed = hx.transpose(0, 1) + gated.transpose(0, 1)
        tail_keep = None
        if p_tail > 0:  # the plain pipeline's dropout(hx + G), on a tensor of the same layout
            noise = _dropout_noise(mixed, p_tail)
            mixed = mixed * noise
            tail_keep = noise != 0
        ctx.save_for_backward(out, gate, x, e, weight, bias, head_keep, tail_keep)
        ctx.plan, ctx.offset, ctx.p_tail, ctx.p_head = plan, offset, p_tail, p_head
        return F.silu(mixed + x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        from .sma import compress, extract

        out, gate, x, e, weight, bias, head_keep, tail_keep = ctx.saved_tensors
        plan = ctx.plan
        hx = F.linear(_head(e, head_keep, ctx.p_head).transpose(0, 1), weight, bias)[..., ctx.offset:]  # recomputed
        gated = out if gate is None else out * gate.unsqueeze(-1)
        mixed = hx.transpose(0, 1) + extract(gated, plan).transpose(0, 1)
        del hx, gated
        tail_noise = None if tail_keep is None else _noise_from(tail_keep, ctx.p_tail, mixed.dtype)
        pre = (mixed if tail_noise is None else mixed * tail_noise) + x
        del mixed
        grad_pre = torch.ops.aten.silu_backward(grad, pre)
        del pre
        grad_mixed = grad_pre if tail_noise is None else grad_pre * tail_noise
        grad_gated = compress(grad_mixed.transpose(0, 1), plan)  # extract's adjoint: each slot has one token
        grad_out = grad_gated if gate is None else grad_gated * gate.unsqueeze(-1)
        grad_gate = (grad_gated * out).sum(-1) if gate is not None and ctx.needs_input_grad[2] else None
        return (grad_mixed.transpose(0, 1), grad_out, grad_gate, grad_pre, None, None, None, None, None, None, None,
                None)
