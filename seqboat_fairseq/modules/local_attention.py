"""Attention over the compressed sequence: working-memory (sliding window) or unbounded.

See docs/design.md, 'Attention' ('Windows', 'Scaling and activations', 'Masking').
Indices are *slots* of the compressed sequence (ranks among activated tokens). Key ``j``
is allowed for query ``i`` iff it is valid and

* causal, window w:        0 <= i - j <= w   (w previous activated tokens + itself)
* bidirectional, window w: |i - j| <= w      (w each side: the "2 x chunk" working memory)
* window None (SeqBoat-full): every earlier-or-equal (causal) / every (bidirectional) slot.

Activations: ``softmax`` (scale Z^-1/2; disallowed scores replaced by -5e4 so a fully
masked row is a finite uniform average), ``relu2`` and ``laplace`` (q scaled by 1/w causal,
1/(2w) bidirectional; by 1/n in full mode, n = i + 1 causal or the valid-key count).
For relu2 and laplace the weights are multiplied by the mask *after* the activation, so
laplace(0) != 0 never leaks through padding or out-of-window keys (upstream hazard H3,
see docs/design.md, 'Masking').

The windowed path is blocked (``WindowGeometry``): queries are cut into blocks of b slots, b
smaller than w (``attention_block``: at most 12.5 % of a frame's products fall outside the
window), and block i multiplies the frame of keys ``[i b - w', i b + b + w')`` (causal:
``[i b - w', i b + b)``), ``w' = ceil(w / b) b``: ``2w + b`` keys (causal ``w + b``) where the
window allows ``2w + 1`` (``w + 1``). The frames are strided views of k and v, so each product is
one bmm per row (edge blocks, whose frames reach past the row, one bmm each on the part inside it),
in two autograd Functions (``_FramedScores``, ``_FramedProduct``) whose backward passes are bmm
calls too. Memory and compute are O(C * w), never O(C^2). ``naive.dense_local_attention`` is the
dense reference.

``chunked_attention`` (``local_attention(..., chunked=True)``) is MEGA's chunked attention, the
MEGA-chunk baseline's: the slots are cut into fixed, non-overlapping chunks of ``c`` slots and a
query attends only inside its own chunk (causally in a causal layer), i.e. SeqBoat-full's
attention applied to each chunk separately: block-diagonal, O(C * c). Same activations, masking
and bias; relu2/laplace use the full-mode normaliser *per chunk* (1 / (index in the chunk + 1)
causal, 1 / (valid slots of the chunk) bidirectional), as MEGA does.
"""

import functools
import math
from typing import Callable, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .precision import upcast

ATTENTION_ACTIVATIONS = ("softmax", "relu2", "laplace")
MASK_VALUE = -5e4  # finite and fp16-safe, as upstream


LAPLACE_MU, LAPLACE_SIGMA = math.sqrt(0.5), math.sqrt(0.25 / math.pi)


def laplace(x: Tensor, mu: float = LAPLACE_MU, sigma: float = LAPLACE_SIGMA) -> Tensor:
    """0.5 * (1 + erf((x - mu) / (sigma sqrt 2))), the laplace attention function (MEGA)."""
    return 0.5 * (1.0 + torch.erf((x - mu) / (sigma * math.sqrt(2.0))))


def query_scale(activation: str, zdim: int, window: Optional[int], causal: bool) -> Optional[float]:
    """Constant multiplier on q, or None when it depends on the row (relu2/laplace full mode)."""
    if activation == "softmax":
        return zdim ** -0.5
    if window is None:
        return None
    return 1.0 / window if causal else 1.0 / (2 * window)


def attention_weights(scores: Tensor, mask: Tensor, activation: str) -> Tensor:
    """Apply the attention activation to fp32 scores; masked entries get weight 0
    (softmax: score -5e4). Returns fp32 weights."""
    if activation == "softmax":
        return torch.softmax(scores.masked_fill(~mask, MASK_VALUE), dim=-1)
    if activation == "relu2":
        return torch.relu(scores).square() * mask
    if activation == "laplace":
        return laplace(scores) * mask
    raise ValueError(f"unknown attention activation {activation!r}; expected one of {ATTENTION_ACTIVATIONS}")


class WindowGeometry(NamedTuple):
    """How the windowed path cuts a row of slots into query blocks and key frames.

    Query block ``i`` (slots ``[i b, (i + 1) b)``) multiplies the frame of keys
    ``[i b - before, i b + b + after)``: ``before = ceil(w / b) b`` and ``after`` the same
    (bidirectional) or 0 (causal), so ``frame = before + b + after`` keys, ``2w + b`` / ``w + b``
    when b divides w. Of a frame, a query may use ``2w + 1`` keys (causal: ``w + 1``); the other
    products are masked. The first ``before / b`` and last ``after / b`` blocks, whose frames
    reach past the row, multiply only the part of the frame inside it (``key_range``).
    """

    block: int
    before: int
    after: int
    num_blocks: int

    @property
    def frame(self) -> int:
        return self.before + self.block + self.after

    @property
    def padded(self) -> int:
        return self.num_blocks * self.block

    @property
    def interior(self) -> range:
        """Blocks whose frame lies inside the row."""
        return range(self.before // self.block, self.num_blocks - self.after // self.block)

    def edges(self) -> list:
        """The other blocks (at most ``(before + after) / b``)."""
        inner = self.interior
        return [i for i in range(self.num_blocks) if i not in inner]

    def key_range(self, i: int):
        """``(first key, end key, frame column of the first key)`` of block i inside the row."""
        start = i * self.block - self.before
        first, end = max(start, 0), min(start + self.frame, self.padded)
        return first, end, first - start


# most a frame may waste inside the sequence (out-of-window products / frame): the largest query
# block b with (b - 1) / (2w + b) (bidirectional) or (b - 1) / (w + b) (causal) at most this
MAX_BAND_WASTE = 0.125


@functools.lru_cache(maxsize=None)
def attention_block(window: int, causal: bool) -> int:
    """The query block b of a window w: the largest b <= w whose frame wastes at most
    ``MAX_BAND_WASTE`` of its products on keys outside the window. w = 128: 32 bidirectional
    (frame 288, 10.8 % wasted), 16 causal (frame 144, 10.4 %); w = 1024 causal: 130 (frame 1170,
    12.4 %)."""
    best = 1
    for block in range(1, window + 1):
        before = -(-window // block) * block
        frame = before + block + (0 if causal else before)
        if 1.0 - ((window + 1) if causal else (2 * window + 1)) / frame <= MAX_BAND_WASTE:
            best = block
    return best


# a causal row no longer than the window is cut into this many query blocks: block i multiplies the
# keys of blocks 0..i, so the products above the diagonal are 1 / (SHORT_ROW_BLOCKS + 1) of the
# computed ones (11 %), whatever the row's length
SHORT_ROW_BLOCKS = 8


def window_geometry(window: int, slots: int, causal: bool) -> WindowGeometry:
    """The blocking of ``slots`` for a window w. One block, whose frame is the row, when every
    product is allowed (bidirectional, at most ``w + 1`` slots) or the row is one block. A causal
    row no longer than the window (a short compressed sequence: every key is in reach) is cut into
    ``SHORT_ROW_BLOCKS`` blocks of ceil(slots / 8) (at most the window's block), so that the
    products above the diagonal are about a ninth of the work; a longer row into blocks of
    ``attention_block(w)``. ``padded`` is the slot count the blocking needs without a copy, and the
    blocking of ``padded`` slots is the same one (compression rounds the slot count to it)."""
    block = attention_block(window, causal)
    if (not causal and slots <= window + 1) or slots <= block:
        return WindowGeometry(max(slots, 1), 0, 0, 1)
    if causal and slots <= window:
        block = min(block, -(-slots // SHORT_ROW_BLOCKS))
    before = -(-window // block) * block
    return WindowGeometry(block, before, 0 if causal else before, -(-slots // block))


def window_products(window: int, slots: int, causal: bool, valid: Optional[int] = None) -> Tuple[int, int]:
    """``(computed, allowed)``: the query-key products the windowed path multiplies for one row of
    ``slots`` slots (its first ``valid`` ones holding tokens, default all), and those the window
    allows between valid slots (``|i - j| <= w``; causal: ``0 <= i - j <= w``). ``1 - allowed /
    computed`` is the share of masked work (``bench/masked_work.py``)."""
    valid = slots if valid is None else valid
    geometry = window_geometry(window, slots, causal)
    computed = 0
    for i in range(geometry.num_blocks):
        first, end, _ = geometry.key_range(i)
        computed += geometry.block * (end - first)
    allowed = 0
    for q in range(valid):  # keys max(q - w, 0) .. min(q + w, valid - 1) (causal: .. q)
        allowed += (q if causal else min(q + window, valid - 1)) - max(q - window, 0) + 1
    return computed, allowed


def scale_queries(q: Tensor, key_valid: Tensor, activation: str, window: Optional[int], causal: bool) -> Tensor:
    """q times the activation's scale (docs/design.md, 'Scaling and activations')."""
    scale = query_scale(activation, q.size(-1), window, causal)
    if scale is not None:
        return q * scale
    # relu2/laplace in full mode: 1 / (number of keys the row can see)
    bsz, slots = key_valid.shape
    if causal:
        n = torch.arange(1, slots + 1, device=q.device).expand(bsz, slots)
    else:
        n = key_valid.sum(-1, keepdim=True).clamp(min=1).expand(bsz, slots)
    return q / n.unsqueeze(-1).to(q.dtype)


def local_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_valid: Tensor,
    *,
    window: Optional[int],
    causal: bool,
    activation: str,
    positions: Optional[Tensor] = None,
    bias: Optional[Callable[[Tensor], Tensor]] = None,
    dropout: Optional[Callable[[Tensor], Tensor]] = None,
    chunked: bool = False,
) -> Tensor:
    """Attention over a slot sequence.

    Args:
        q, k: ``(B, C, Z)`` queries and keys (rotary already applied, not yet scaled).
        v: ``(B, C, H)``.
        key_valid: ``(B, C)`` bool, False for padded slots.
        window: working-memory size w (> 0), or None for unbounded (SeqBoat-full).
        positions: ``(B, C)`` integer positions fed to ``bias`` (offset = pos_k - pos_q); None
            with a bias: the slot indices (the bias of slot offsets, ``--local-pos``).
        bias: maps integer offsets to an additive score bias (RelativePositionalBias).
        dropout: applied to the attention weights.
        chunked: ``window`` is a chunk size c: MEGA's chunked attention (``chunked_attention``).
    Returns:
        ``(B, C, H)``; rows of padded query slots hold finite junk.
    """
    if chunked:
        return chunked_attention(q, k, v, key_valid, chunk=window, causal=causal, activation=activation,
                                 positions=positions, bias=bias, dropout=dropout)
    if window is not None and window <= 0:
        raise ValueError(f"window must be positive or None, got {window}")
    q = scale_queries(q, key_valid, activation, window, causal)
    if window is None:
        return _full_attention(q, k, v, key_valid, causal, activation, positions, bias, dropout)
    geometry = window_geometry(window, q.size(1), causal)
    scores = _FramedScores.apply(q, k, geometry)  # (B, nb, block, frame)
    if bias is not None:
        scores = scores + upcast(bias(_frame_offsets(positions, geometry, q.device)))
    mask = _window_mask(key_valid, geometry, window, causal)
    if activation != "softmax" and torch.is_grad_enabled() and not _dropout_applies(dropout):
        return _FramedActivatedProduct.apply(upcast(scores), mask, v, geometry, activation)
    weights = attention_weights(upcast(scores), mask, activation).type_as(v)
    if dropout is not None:
        weights = dropout(weights)
    return _FramedProduct.apply(weights, v, geometry)


def _dropout_applies(dropout) -> bool:
    """Whether a ``FairseqDropout`` (or None) changes its input now."""
    return dropout is not None and dropout.p > 0 and (dropout.training or dropout.apply_during_inference)


def _full_attention(q, k, v, key_valid, causal, activation, positions, bias, dropout) -> Tensor:
    """SeqBoat-full: every valid key (causal: every earlier-or-equal one), ``(B, C, C)`` scores."""
    slots = q.size(1)
    scores = torch.bmm(upcast(q), upcast(k).transpose(1, 2))
    if bias is not None:
        if positions is None:
            positions = torch.arange(slots, device=q.device).unsqueeze(0)
        scores = scores + upcast(bias(positions.unsqueeze(1) - positions.unsqueeze(2)))
    mask = key_valid.unsqueeze(1)
    if causal:
        index = torch.arange(slots, device=q.device)
        mask = mask & (index.unsqueeze(0) <= index.unsqueeze(1))
    weights = attention_weights(scores, mask, activation).type_as(v)
    if dropout is not None:
        weights = dropout(weights)
    return torch.bmm(weights, v)


# ----------------------------------------------------------------------------- windowed: masks, bias
def _frame_view(x: Tensor, geometry: WindowGeometry, value) -> Tensor:
    """``(B, C)`` -> ``(B, nb, frame)``: the frame of every block (``value`` outside the row), a
    strided view of one padded copy (for masks and positions; no gradient)."""
    bsz, slots = x.shape
    row = geometry.before + geometry.padded + geometry.after
    buffer = F.pad(x, (geometry.before, row - geometry.before - slots), value=value)
    return buffer.as_strided((bsz, geometry.num_blocks, geometry.frame), (row, geometry.block, 1))


def _band(geometry: WindowGeometry, window: int, causal: bool, device) -> Tensor:
    """``(block, frame)`` bool: frame key f lies in the window of the block's query t."""
    rel = (torch.arange(geometry.frame, device=device) - geometry.before).unsqueeze(0) \
        - torch.arange(geometry.block, device=device).unsqueeze(1)  # key slot - query slot
    return (rel <= 0) & (rel >= -window) if causal else rel.abs() <= window


def _window_mask(key_valid: Tensor, geometry: WindowGeometry, window: int, causal: bool) -> Tensor:
    """``(B, nb, block, frame)`` bool: the window band and the key's validity (False outside the row)."""
    valid = _frame_view(key_valid, geometry, False)
    return _band(geometry, window, causal, key_valid.device) & valid.unsqueeze(2)


def _frame_offsets(positions: Optional[Tensor], geometry: WindowGeometry, device) -> Tensor:
    """Integer ``pos_key - pos_query`` of every product, ``(B, nb, block, frame)``; for slot
    offsets (``positions`` None) the same for every block, ``(block, frame)``."""
    if positions is None:
        return (torch.arange(geometry.frame, device=device) - geometry.before).unsqueeze(0) \
            - torch.arange(geometry.block, device=device).unsqueeze(1)
    keys = _frame_view(positions, geometry, 0)
    queries = _blocks(positions.unsqueeze(-1), geometry)  # (B, nb, block, 1)
    return keys.unsqueeze(2) - queries


# ----------------------------------------------------------------------------- windowed: products
# Three framed products, each a few large bmm calls: one per row over its interior blocks, whose
# frames are one strided *view* of the row's keys (``as_strided``, nothing copied), and one per
# edge block position over all rows, on the part of the frame inside the row.
#   _to_frames(a, keys):   a[v] @ frame[v]^T     (B, nb, b, F) x (B, P, F) -> (B, nb, b, frame)
#   _from_frames(w, keys): w[v] @ frame[v]       (B, nb, b, frame) x (B, P, F) -> (B, nb, b, F)
#   _onto_keys(w, a):      sum over the frames holding each key of w[v]^T @ a[v] -> (B, P, F)
def _interior_frames(keys: Tensor, geometry: WindowGeometry) -> Tensor:
    """The interior blocks' frames of one row, ``(n, frame, F)``, a view of keys ``(P, F)``."""
    inner = geometry.interior
    start = inner.start * geometry.block - geometry.before
    row = keys[start:]
    return row.as_strided((len(inner), geometry.frame, keys.size(-1)),
                          (geometry.block * row.stride(0), row.stride(0), row.stride(1)))


def _to_frames(a: Tensor, keys: Tensor, geometry: WindowGeometry) -> Tensor:
    bsz, nb, block = a.shape[:3]
    out = a.new_empty(bsz, nb, block, geometry.frame)
    inner = geometry.interior
    if len(inner):
        for r in range(bsz):
            torch.bmm(a[r, inner.start:inner.stop], _interior_frames(keys[r], geometry).transpose(1, 2),
                      out=out[r, inner.start:inner.stop])
    for i in geometry.edges():
        first, end, column = geometry.key_range(i)
        out[:, i, :, :column] = 0
        out[:, i, :, column + end - first:] = 0
        out[:, i, :, column:column + end - first] = torch.bmm(a[:, i], keys[:, first:end].transpose(1, 2))
    return out


def _from_frames(w: Tensor, keys: Tensor, geometry: WindowGeometry) -> Tensor:
    bsz, nb, block = w.shape[:3]
    out = w.new_empty(bsz, nb, block, keys.size(-1))
    inner = geometry.interior
    if len(inner):
        for r in range(bsz):
            torch.bmm(w[r, inner.start:inner.stop], _interior_frames(keys[r], geometry),
                      out=out[r, inner.start:inner.stop])
    for i in geometry.edges():
        first, end, column = geometry.key_range(i)
        out[:, i] = torch.bmm(w[:, i, :, column:column + end - first], keys[:, first:end])
    return out


def _onto_keys(w: Tensor, a: Tensor, geometry: WindowGeometry) -> Tensor:
    bsz, nb, block = a.shape[:3]
    out = a.new_zeros(bsz, nb, block, a.size(-1))  # the keys, in blocks
    inner = geometry.interior
    if len(inner):
        # frame sub-block j of interior block inner.start + t is key block t + j
        for r in range(bsz):
            grad_frames = torch.bmm(w[r, inner.start:inner.stop].transpose(1, 2), a[r, inner.start:inner.stop])
            for j in range(geometry.frame // block):
                out[r, j:j + len(inner)] += grad_frames[:, j * block:(j + 1) * block]
    flat = out.view(bsz, geometry.padded, a.size(-1))
    for i in geometry.edges():
        first, end, column = geometry.key_range(i)
        flat[:, first:end] += torch.bmm(w[:, i, :, column:column + end - first].transpose(1, 2), a[:, i])
    return flat


def _blocks(x: Tensor, geometry: WindowGeometry) -> Tensor:
    """``(B, C, F)`` -> ``(B, nb, block, F)`` (a view, or a padded copy when C < padded)."""
    if geometry.padded > x.size(1):
        x = F.pad(x, (0, 0, 0, geometry.padded - x.size(1)))
    return x.reshape(x.size(0), geometry.num_blocks, geometry.block, x.size(-1))


def _rows(x: Tensor, geometry: WindowGeometry) -> Tensor:
    """``(B, C, F)`` -> ``(B, padded, F)`` with unit stride along F (a view, or a copy)."""
    if geometry.padded > x.size(1):
        return F.pad(x, (0, 0, 0, geometry.padded - x.size(1)))
    return x if x.stride(-1) == 1 else x.contiguous()


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype a bmm of these would run in: autocast's where it is on, else the promoted one."""
    device = tensors[0].device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


class _FramedScores(torch.autograd.Function):
    """``scores = q_block @ k_frame^T`` for every block, ``(B, nb, block, frame)``, from q, k
    ``(B, C, Z)``; 0 in the columns of edge blocks outside the row. Keeps q and k. Products in
    the dtype autocast would use (forward and backward, as autograd through autocast's bmm)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, geometry: WindowGeometry) -> Tensor:
        dtype = _compute_dtype(q, k)
        with torch.autocast(q.device.type, enabled=False):
            q_blocks, keys = _blocks(q.to(dtype), geometry), _rows(k.to(dtype), geometry)
            scores = _to_frames(q_blocks, keys, geometry)
        ctx.save_for_backward(q_blocks, keys)
        ctx.geometry, ctx.slots, ctx.dtypes = geometry, q.size(1), (q.dtype, k.dtype)
        return scores

    @staticmethod
    def backward(ctx, grad: Tensor):
        q_blocks, keys = ctx.saved_tensors
        geometry, (q_dtype, k_dtype) = ctx.geometry, ctx.dtypes
        grad = grad.to(q_blocks.dtype).contiguous()
        grad_q = grad_k = None
        with torch.autocast(grad.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_q = _unblock(_from_frames(grad, keys, geometry), ctx.slots).to(q_dtype)
            if ctx.needs_input_grad[1]:
                grad_k = _onto_keys(grad, q_blocks, geometry)[:, :ctx.slots].to(k_dtype)
        return grad_q, grad_k, None


class _FramedProduct(torch.autograd.Function):
    """``out_block = weights @ v_frame`` for every block: weights ``(B, nb, block, frame)``, v
    ``(B, C, H)`` -> ``(B, C, H)``. Keeps the weights and v. As ``_FramedScores``."""

    @staticmethod
    def forward(ctx, weights: Tensor, v: Tensor, geometry: WindowGeometry) -> Tensor:
        dtype, weights_dtype = _compute_dtype(weights, v), weights.dtype
        with torch.autocast(v.device.type, enabled=False):
            weights, values = weights.to(dtype), _rows(v.to(dtype), geometry)
            out = _from_frames(weights, values, geometry)
        ctx.save_for_backward(weights, values)
        ctx.geometry, ctx.slots, ctx.dtypes = geometry, v.size(1), (weights_dtype, v.dtype)
        return _unblock(out, v.size(1))

    @staticmethod
    def backward(ctx, grad: Tensor):
        weights, values = ctx.saved_tensors
        geometry, (weights_dtype, v_dtype) = ctx.geometry, ctx.dtypes
        grad = _blocks(grad.to(weights.dtype), geometry).contiguous()
        grad_weights = grad_v = None
        with torch.autocast(grad.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_weights = _to_frames(grad, values, geometry).to(weights_dtype)
            if ctx.needs_input_grad[1]:
                grad_v = _onto_keys(weights, grad, geometry)[:, :ctx.slots].to(v_dtype)
        return grad_weights, grad_v, None


class _FramedActivatedProduct(torch.autograd.Function):
    """``_FramedProduct`` of ``attention_weights(scores, mask, activation)`` (relu2 / laplace, no
    dropout), keeping the scores instead of the weights and the activation's own intermediate
    (relu2: relu(scores); laplace: erf's input): one ``(B, nb, block, frame)`` tensor less per
    layer. The backward pass recomputes the weights and their closed-form derivative from the scores
    (``_activation_and_slope``), so the gradients are the ones of the unfused composition."""

    @staticmethod
    def forward(ctx, scores: Tensor, mask: Tensor, v: Tensor, geometry: WindowGeometry, activation: str) -> Tensor:
        weights = attention_weights(scores, mask, activation).type_as(v)
        dtype = _compute_dtype(weights, v)
        with torch.autocast(v.device.type, enabled=False):
            values = _rows(v.to(dtype), geometry)
            out = _from_frames(weights.to(dtype), values, geometry)
        ctx.save_for_backward(scores, mask, values)
        ctx.geometry, ctx.slots, ctx.v_dtype, ctx.activation = geometry, v.size(1), v.dtype, activation
        return _unblock(out, v.size(1))

    @staticmethod
    def backward(ctx, grad: Tensor):
        scores, mask, values = ctx.saved_tensors
        geometry = ctx.geometry
        # the weights and their derivative from the scores in a few in-place passes (the activation's
        # closed-form derivative: recomputing it under autograd costs twice the passes and temporaries)
        weights, slope = _activation_and_slope(scores, mask, ctx.activation)
        weights = weights.type_as(values.new_empty((), dtype=ctx.v_dtype))
        dtype = values.dtype
        grad = _blocks(grad.to(dtype), geometry).contiguous()
        grad_scores = grad_v = None
        with torch.autocast(grad.device.type, enabled=False):
            if ctx.needs_input_grad[2]:
                grad_v = _onto_keys(weights.to(dtype), grad, geometry)[:, :ctx.slots].to(ctx.v_dtype)
            if ctx.needs_input_grad[0]:
                grad_scores = _to_frames(grad, values, geometry).to(slope.dtype).mul_(slope)
        return grad_scores, None, grad_v, None, None


def _activation_and_slope(scores: Tensor, mask: Tensor, activation: str) -> Tuple[Tensor, Tensor]:
    """``attention_weights(scores, mask, activation)`` (relu2 / laplace) and its derivative with
    respect to the scores, both zero where ``mask`` is False. Same dtype as ``scores``."""
    if activation == "relu2":
        slope = torch.relu(scores).mul_(mask)  # relu(s), masked
        return slope.square(), slope.mul_(2.0)
    if activation == "laplace":
        # laplace(s) = 0.5 (1 + erf(z)), z = (s - mu) / (sigma sqrt 2); d/ds = exp(-z^2) / (sigma sqrt(2 pi))
        mu, sigma = LAPLACE_MU, LAPLACE_SIGMA
        z = (scores - mu).mul_(1.0 / (sigma * math.sqrt(2.0)))
        weights = torch.erf(z).add_(1.0).mul_(0.5).mul_(mask)
        slope = z.square_().neg_().exp_().mul_(1.0 / (sigma * math.sqrt(2.0 * math.pi))).mul_(mask)
        return weights, slope
    raise ValueError(f"no closed-form slope for attention activation {activation!r}")


def _unblock(x: Tensor, slots: int) -> Tensor:
    """``(B, nb, block, F)`` -> ``(B, C, F)`` (a view)."""
    x = x.flatten(1, 2)
    return x[:, :slots] if slots < x.size(1) else x


def _pad_slots(extra: int, q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor, positions: Optional[Tensor]):
    """Appends ``extra`` empty (invalid) slots so the slot count is a multiple of the block size."""
    if extra == 0:
        return q, k, v, key_valid, positions
    q, k, v = (F.pad(t, (0, 0, 0, extra)) for t in (q, k, v))
    key_valid = F.pad(key_valid, (0, extra), value=False)
    return q, k, v, key_valid, None if positions is None else F.pad(positions, (0, extra))


def chunked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_valid: Tensor,
    *,
    chunk: int,
    causal: bool,
    activation: str,
    positions: Optional[Tensor] = None,
    bias: Optional[Callable[[Tensor], Tensor]] = None,
    dropout: Optional[Callable[[Tensor], Tensor]] = None,
) -> Tensor:
    """MEGA's chunked attention over a slot sequence (the MEGA-chunk baseline).

    Slots are cut into fixed, non-overlapping chunks ``[m c, (m + 1) c)``; key ``j`` is allowed for
    query ``i`` iff it is valid, ``j // c == i // c`` and (causal) ``j <= i``. Nothing crosses a
    chunk boundary. Arguments and return value as :func:`local_attention` (``chunk`` = c > 0).

    Scaling: softmax ``Z^-1/2``; relu2 / laplace divide q by the number of keys the query may see
    inside its chunk, as SeqBoat-full does for the whole sequence: ``i mod c + 1`` causal, the
    chunk's number of valid slots bidirectional (MEGA's ``lengths``). Blocked by chunk:
    ``(B, C / c, c, c)`` scores, O(C * c) time and memory.
    """
    if chunk is None or chunk <= 0:
        raise ValueError(f"chunked attention needs a positive chunk size, got {chunk}")
    bsz, slots, zdim = q.shape
    block = min(chunk, max(slots, 1))  # one chunk covers a sequence shorter than c
    num_blocks = -(-slots // block)
    padded = num_blocks * block
    q, k, v, key_valid, positions = _pad_slots(padded - slots, q, k, v, key_valid, positions)
    qb = q.reshape(bsz, num_blocks, block, zdim)
    kb = k.reshape(bsz, num_blocks, block, zdim)
    vb = v.reshape(bsz, num_blocks, block, v.size(-1))
    valid_b = key_valid.reshape(bsz, num_blocks, block)
    index = torch.arange(block, device=q.device)
    if activation == "softmax":
        qb = qb * zdim ** -0.5
    elif causal:  # keys of the chunk up to the query itself
        qb = qb / (index + 1).to(qb.dtype).view(1, 1, block, 1)
    else:  # every valid key of the chunk
        qb = qb / valid_b.sum(-1).clamp(min=1).to(qb.dtype).view(bsz, num_blocks, 1, 1)
    mask = valid_b.unsqueeze(2)  # (B, nb, 1, block)
    if causal:
        mask = mask & (index.unsqueeze(0) <= index.unsqueeze(1))  # (B, nb, block, block)
    scores = torch.einsum("bnqz,bnkz->bnqk", upcast(qb), upcast(kb))
    if bias is not None and positions is None:  # slot offsets: the same for every chunk
        scores = scores + upcast(bias(index.unsqueeze(0) - index.unsqueeze(1)))
    elif bias is not None:
        pos = positions.reshape(bsz, num_blocks, block)
        scores = scores + upcast(bias(pos.unsqueeze(2) - pos.unsqueeze(3)))
    weights = attention_weights(scores, mask.expand_as(scores), activation).type_as(v)
    if dropout is not None:
        weights = dropout(weights)
    out = torch.einsum("bnqk,bnkh->bnqh", weights, vb)
    return out.reshape(bsz, padded, -1)[:, :slots]


def memory_attention(
    q: Tensor,
    memory_k: Tensor,
    memory_v: Tensor,
    memory_valid: Tensor,
    *,
    window: Optional[int],
    activation: str,
    offsets: Optional[Tensor] = None,
    bias: Optional[Callable[[Tensor], Tensor]] = None,
    dropout: Optional[Callable[[Tensor], Tensor]] = None,
) -> Tensor:
    """One causal query per row over its working memory (decoding; ``local_attention`` with
    a single new slot).

    Args:
        q: ``(B, Z)`` query of the new token (rotary applied, not scaled).
        memory_k, memory_v: ``(B, M, Z)``, ``(B, M, H)``: the working memory, the new token's
            key and value included (it always attends to itself); in any slot order (the GAU's
            ring holds the token of rank r in slot r % M, so the new token is in slot count % M).
        memory_valid: ``(B, M)`` bool.
        offsets: ``(B, M)`` integer ``pos_key - pos_query`` for ``bias``.
    Returns ``(B, H)``.
    """
    scale = query_scale(activation, q.size(-1), window, causal=True)
    if scale is None:  # full mode relu2/laplace: 1 / (number of keys, itself included)
        scale = 1.0 / memory_valid.sum(-1, keepdim=True).clamp(min=1).to(q.dtype)
    # bmm rather than einsum: einsum's planning (permutes, reshapes) costs more than these
    # one-query products on a CPU
    scores = torch.bmm(upcast(memory_k), upcast(q * scale).unsqueeze(-1)).squeeze(-1)  # (B, M)
    if bias is not None:
        scores = scores + upcast(bias(offsets))
    if activation == "softmax":  # in place: the scores are this function's own tensor
        weights = torch.softmax(scores.masked_fill_(~memory_valid, MASK_VALUE), dim=-1)
    else:
        weights = attention_weights(scores, memory_valid, activation)
    weights = weights.type_as(memory_v)
    if dropout is not None:
        weights = dropout(weights)
    return torch.bmm(weights.unsqueeze(1), memory_v).squeeze(1)
