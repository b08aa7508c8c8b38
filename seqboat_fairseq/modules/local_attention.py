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

The windowed path is blocked: queries are cut into blocks of ``min(w, C)`` slots, each
attending to a frame made of the neighbouring key blocks, so memory and compute are
O(C * w), never O(C^2). ``naive.dense_local_attention`` is the dense reference.

``chunked_attention`` (``local_attention(..., chunked=True)``) is MEGA's chunked attention, the
MEGA-chunk baseline's: the slots are cut into fixed, non-overlapping chunks of ``c`` slots and a
query attends only inside its own chunk (causally in a causal layer), i.e. SeqBoat-full's
attention applied to each chunk separately: block-diagonal, O(C * c). Same activations, masking
and bias; relu2/laplace use the full-mode normaliser *per chunk* (1 / (index in the chunk + 1)
causal, 1 / (valid slots of the chunk) bidirectional), as MEGA does.
"""

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .precision import upcast

ATTENTION_ACTIVATIONS = ("softmax", "relu2", "laplace")
MASK_VALUE = -5e4  # finite and fp16-safe, as upstream


def laplace(x: Tensor, mu: float = math.sqrt(0.5), sigma: float = math.sqrt(0.25 / math.pi)) -> Tensor:
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


def _frames(x: Tensor, num_blocks: int, block: int, back: int, ahead: int) -> Tensor:
    """(B, num_blocks * block, *F) -> (B, num_blocks, (back + 1 + ahead) * block, *F):
    for every block the concatenation of blocks [b - back, b + ahead] (zeros outside)."""
    bsz = x.size(0)
    xb = x.reshape(bsz, num_blocks, block, *x.shape[2:])
    if back == 0 and ahead == 0:
        return xb
    pad_back = xb.new_zeros(bsz, back, *xb.shape[2:])
    pad_ahead = xb.new_zeros(bsz, ahead, *xb.shape[2:])
    xp = torch.cat([pad_back, xb, pad_ahead], dim=1)
    return torch.cat([xp[:, i:i + num_blocks] for i in range(back + 1 + ahead)], dim=2)


def _pad_slots(extra: int, q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor, positions: Optional[Tensor]):
    """Appends ``extra`` empty (invalid) slots so the slot count is a multiple of the block size."""
    if extra == 0:
        return q, k, v, key_valid, positions
    q, k, v = (F.pad(t, (0, 0, 0, extra)) for t in (q, k, v))
    key_valid = F.pad(key_valid, (0, extra), value=False)
    return q, k, v, key_valid, None if positions is None else F.pad(positions, (0, extra))


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
        positions: ``(B, C)`` integer positions fed to ``bias`` (offset = pos_k - pos_q).
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
    bsz, slots, zdim = q.shape
    scale = query_scale(activation, zdim, window, causal)
    if scale is None:  # relu2/laplace in full mode: 1 / (number of keys the row can see)
        if causal:
            n = torch.arange(1, slots + 1, device=q.device).expand(bsz, slots)
        else:
            n = key_valid.sum(-1, keepdim=True).clamp(min=1).expand(bsz, slots)
        q = q / n.unsqueeze(-1).to(q.dtype)
    else:
        q = q * scale

    if window is None:
        block, back, ahead = slots, 0, 0
    else:
        block = min(window, slots)
        num_blocks = -(-slots // block)
        back = min(-(-window // block), num_blocks - 1)
        ahead = 0 if causal else back
    num_blocks = -(-slots // block)
    padded = num_blocks * block
    q, k, v, key_valid, positions = _pad_slots(padded - slots, q, k, v, key_valid, positions)

    # Blocks of all rows, flattened: block i attends to blocks i + o, o in [-back, ahead] (0 or 1
    # each), as one batched matmul per offset on *views* of q, k and v, so autograd keeps q, k and
    # v themselves rather than frames of neighbouring blocks (2x k and v with back = 1, 3x
    # bidirectional). A shifted block may belong to the neighbouring row: the frame mask, built
    # per row, never allows it.
    q, k = upcast(q), upcast(k)
    qb = q.reshape(bsz * num_blocks, block, zdim)
    kb = k.reshape(bsz * num_blocks, block, zdim).transpose(1, 2)
    vb = v.reshape(bsz * num_blocks, block, v.size(-1))
    offsets = range(-back, ahead + 1)
    valid_f = _frames(key_valid, num_blocks, block, back, ahead)  # (B, nb, frame); False outside the row

    frame = (back + 1 + ahead) * block
    # slot offset key - query inside a frame; the same for every block
    rel = (torch.arange(frame, device=q.device).unsqueeze(0) - back * block
           - torch.arange(block, device=q.device).unsqueeze(1))  # (block, frame)
    if window is None:
        band = rel <= 0 if causal else torch.ones_like(rel, dtype=torch.bool)
    elif causal:
        band = (rel <= 0) & (rel >= -window)
    else:
        band = rel.abs() <= window
    mask = (band & valid_f.unsqueeze(2)).flatten(0, 1)  # (B nb, block, frame)

    scores = torch.cat([_shifted_bmm(qb, kb, o) for o in offsets], dim=-1)  # (B nb, block, frame)
    if bias is not None:
        pos_q = positions.reshape(bsz, num_blocks, block)
        pos_k = _frames(positions, num_blocks, block, back, ahead)
        scores = scores + upcast(bias(pos_k.unsqueeze(2) - pos_q.unsqueeze(3))).flatten(0, 1)
    weights = attention_weights(scores, mask, activation).type_as(v)
    if dropout is not None:
        weights = dropout(weights)
    first, *rest = (_shifted_bmm(w, vb, o) for w, o in zip(weights.split(block, dim=-1), offsets))
    out = sum(rest, first)  # not sum(parts): its start value 0 costs one more full-size add
    return out.reshape(bsz, padded, -1)[:, :slots]


def _shifted_bmm(a: Tensor, b: Tensor, offset: int) -> Tensor:
    """``out[i] = a[i] @ b[i + offset]`` for a, b ``(N, ., .)``; zeros where ``i + offset`` is
    outside ``[0, N)``. Slices of the leading axis are views, so nothing is copied."""
    if offset == 0:
        return torch.bmm(a, b)
    count = a.size(0) - abs(offset)
    zeros = a.new_zeros(min(abs(offset), a.size(0)), a.size(1), b.size(2))
    if count <= 0:
        return zeros
    if offset < 0:
        return torch.cat([zeros, torch.bmm(a[-offset:], b[:count])], dim=0)
    return torch.cat([torch.bmm(a[:count], b[offset:]), zeros], dim=0)


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
    if bias is not None:
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
        memory_k, memory_v: ``(B, M, Z)``, ``(B, M, H)``: the remembered activated tokens
            followed by the new token itself (it always attends to itself).
        memory_valid: ``(B, M)`` bool.
        offsets: ``(B, M)`` integer ``pos_key - pos_query`` for ``bias``.
    Returns ``(B, H)``.
    """
    scale = query_scale(activation, q.size(-1), window, causal=True)
    if scale is None:  # full mode relu2/laplace: 1 / (number of keys, itself included)
        scale = 1.0 / memory_valid.sum(-1, keepdim=True).clamp(min=1).to(q.dtype)
    scores = torch.einsum("bz,bmz->bm", upcast(q * scale), upcast(memory_k))
    if bias is not None:
        scores = scores + upcast(bias(offsets))
    weights = attention_weights(scores, memory_valid, activation).type_as(memory_v)
    if dropout is not None:
        weights = dropout(weights)
    return torch.einsum("bm,bmh->bh", weights, memory_v)
