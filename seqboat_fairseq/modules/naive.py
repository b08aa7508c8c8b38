"""Slow, obviously-correct references written straight from the formulas. Tests only.

See docs/design.md, 'Reference implementations'.

Nothing in the model imports this file. Every function loops or materialises dense
matrices on purpose, and re-derives the math instead of calling the fast code, so a test
comparing the two can catch a bug in either.
"""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

MASK_VALUE = -5e4


# --------------------------------------------------------------------------- MD-EMA
def ema_kernel_direct(ema, length: int) -> Tensor:
    """K[d, l] = sum_n kappa gamma p beta phi^l with explicit powers, float64. (D', length)."""
    p = torch.sigmoid(ema.delta.double()).squeeze(-1)
    a = torch.sigmoid(ema.alpha.double()).squeeze(-1)
    phi = 1.0 - p * a
    coef = math.sqrt(1.0 / ema.ndim) * ema.gamma.double() * p * ema.beta.double().squeeze(-1)
    return torch.stack([(coef * phi ** lag).sum(-1) for lag in range(length)], dim=-1)


def fft_conv(u: Tensor, k: Tensor) -> Tensor:
    """y[..., d, t] = sum_{l <= t, l < K} k[d, l] u[..., d, t - l] by FFT of size 2L (no wrap-around).
    u: (..., D, L), k: (D, K). The MD-EMA's parallel form before the chunked one: a reference for
    tests and ``bench/ema_conv.py``."""
    n = 2 * u.size(-1)
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :u.size(-1)]


def ema_direct(ema, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
    """Direct double sum of the MD-EMA convolution (docs/design.md, 'MD-EMA') in float64.
    x: (L, B, D) -> (L, B, D)."""
    seq_len, _, dim = x.shape
    kernel_len = seq_len if ema.truncation is None else min(ema.truncation, seq_len)
    k = ema_kernel_direct(ema, kernel_len)
    u = x.double()
    if padding_mask is not None:
        u = u * (~padding_mask).t().unsqueeze(-1)
    y = torch.zeros_like(u)
    for t in range(seq_len):
        for lag in range(kernel_len):
            if t - lag >= 0:
                y[t] += k[:dim, lag] * u[t - lag]
            if ema.bidirectional and t + lag < seq_len:
                y[t] += k[dim:, lag] * u[t + lag]
    return y + x.double() * ema.omega.double()


def ema_recurrence(ema, x: Tensor) -> Tuple[Tensor, Tensor]:
    """h_t = phi h_{t-1} + p beta x_t, y_t = kappa gamma . h_t + omega x_t, float64 loop.
    x: (L, B, D). Returns (y (L, B, D), final state (B, D, N))."""
    p = torch.sigmoid(ema.delta.double()).squeeze(-1)
    a = torch.sigmoid(ema.alpha.double()).squeeze(-1)
    phi, p_beta = 1.0 - p * a, p * ema.beta.double().squeeze(-1)
    gamma = math.sqrt(1.0 / ema.ndim) * ema.gamma.double()
    h = torch.zeros(x.size(1), x.size(2), ema.ndim, dtype=torch.float64)
    ys = []
    for x_t in x.double():
        h = phi * h + p_beta * x_t.unsqueeze(-1)
        ys.append((h * gamma).sum(-1) + ema.omega.double() * x_t)
    return torch.stack(ys), h


# --------------------------------------------------------------------------- compress / extract
def compress_loop(x: Tensor, active: Tensor) -> Tensor:
    """(B, L, *F) -> (B, max(C, 1), *F) with a Python loop over rows and tokens."""
    rows = [[x[b, t] for t in range(x.size(1)) if active[b, t]] for b in range(x.size(0))]
    slots = max(1, max(len(r) for r in rows))
    out = x.new_zeros(x.size(0), slots, *x.shape[2:])
    for b, row in enumerate(rows):
        for j, value in enumerate(row):
            out[b, j] = value
    return out


def extract_loop(y: Tensor, active: Tensor) -> Tensor:
    """(B, C, *F) -> (B, L, *F): the j-th active token of row b gets y[b, j], others 0."""
    out = y.new_zeros(y.size(0), active.size(1), *y.shape[2:])
    for b in range(y.size(0)):
        j = 0
        for t in range(active.size(1)):
            if active[b, t]:
                out[b, t] = y[b, j]
                j += 1
    return out


# --------------------------------------------------------------------------- attention
def allowed_keys(slots: int, window: Optional[int], causal: bool) -> Tensor:
    """(C, C) bool: may query slot i attend to key slot j (ignoring key validity)."""
    i = torch.arange(slots).unsqueeze(1)
    j = torch.arange(slots).unsqueeze(0)
    if window is None:
        return j <= i if causal else torch.ones(slots, slots, dtype=torch.bool)
    return (i - j >= 0) & (i - j <= window) if causal else (i - j).abs() <= window


def dense_local_attention(q, k, v, key_valid, *, window, causal, activation,
                          positions=None, bias=None) -> Tensor:
    """Dense (C x C) attention with a banded mask; same contract as ``local_attention``."""
    slots, zdim = q.size(1), q.size(2)
    mask = allowed_keys(slots, window, causal).unsqueeze(0) & key_valid.unsqueeze(1)
    if activation == "softmax":
        q = q / math.sqrt(zdim)
    elif window is not None:
        q = q / (window if causal else 2 * window)
    elif causal:
        q = q / torch.arange(1, slots + 1, dtype=q.dtype).view(1, slots, 1)
    else:
        q = q / key_valid.sum(-1).clamp(min=1).to(q.dtype).view(-1, 1, 1)
    scores = q @ k.transpose(1, 2)
    if bias is not None:
        scores = scores + bias(positions.unsqueeze(1) - positions.unsqueeze(2))
    if activation == "softmax":
        weights = torch.softmax(torch.where(mask, scores, torch.full_like(scores, MASK_VALUE)), -1)
    elif activation == "relu2":
        weights = torch.where(mask, torch.relu(scores) ** 2, torch.zeros_like(scores))
    else:  # laplace, 0.5 * (1 + erf((x - mu) / (sigma sqrt 2)))
        mu, sigma = math.sqrt(0.5), math.sqrt(1.0 / (4 * math.pi))
        lap = 0.5 * (1 + torch.erf((scores - mu) / (sigma * math.sqrt(2))))
        weights = torch.where(mask, lap, torch.zeros_like(scores))
    return weights @ v


def rotary_complex(x: Tensor, positions: Tensor) -> Tensor:
    """Upstream's rotary: view pairs as complex numbers and multiply by e^{i t theta}."""
    zdim = x.size(-1)
    theta = 1.0 / (10000 ** (torch.arange(0, zdim, 2)[: zdim // 2].float() / zdim))
    rho = torch.polar(torch.ones_like(theta), positions.float().unsqueeze(-1) * theta)
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * rho).flatten(-2).to(x.dtype)


# --------------------------------------------------------------------------- whole layer
def dense_seqboat_layer(layer, x: Tensor, padding_mask: Optional[Tensor] = None
                        ) -> Tuple[Tensor, Tensor, Tensor]:
    """docs/design.md, 'Data flow of one layer', for one ``SeqBoatLayer`` in eval mode,
    one batch row at a time, with loops for the selection and dense masked attention.
    x: (L, B, D).

    Returns (y (L, B, D), active (B, L), confidence (B, L))."""
    gau = layer.gau
    seq_len, bsz, dim = x.shape
    residual = x
    h = layer.norm(x) if layer.prenorm else x
    s = F.silu(ema_direct(layer.ema, h, padding_mask).to(x.dtype)).transpose(0, 1)  # (B, L, D)
    proj = s @ layer.hx_proj.weight.t() + layer.hx_proj.bias
    pad = padding_mask if padding_mask is not None else torch.zeros(bsz, seq_len, dtype=torch.bool)
    if layer.router is None:
        hx, active, confidence = proj, ~pad, (~pad).to(x.dtype)
    else:
        u, hx = proj[..., :2], proj[..., 2:]
        u = u + torch.tensor([layer.act_bias, 0.0], dtype=u.dtype)
        probs = torch.softmax(u / layer.router.log_temperature.exp(), dim=-1)
        active = (probs[..., 1] > probs[..., 0]) & ~pad
        confidence = probs.max(-1).values * active
    gated = torch.zeros_like(s)
    for b in range(bsz):
        idx = [t for t in range(seq_len) if active[b, t]]
        if not idx:
            continue
        sb = s[b, idx]
        zrv = F.silu(sb @ gau.in_proj.weight.t() + gau.in_proj.bias)
        z, r, v = zrv.split([gau.zdim, gau.hdim, gau.hdim], dim=-1)
        q, k = z * gau.qk_gamma[0] + gau.qk_beta[0], z * gau.qk_gamma[1] + gau.qk_beta[1]
        pos = torch.tensor(idx)
        if gau.rotary:
            q, k = rotary_complex(q, pos), rotary_complex(k, pos)
        bias_pos = torch.arange(len(idx)) if gau.local_pos else pos
        attended = dense_local_attention(
            q[None], k[None], v[None], torch.ones(1, len(idx), dtype=torch.bool), window=gau.window,
            causal=gau.causal, activation=gau.activation, positions=bias_pos[None],
            bias=None if gau.rotary else (lambda off: _table_bias(gau.rel_pos, off)))[0]
        g = (attended * r) @ gau.out_proj.weight.t() + gau.out_proj.bias
        gated[b, idx] = g * confidence[b, idx].unsqueeze(-1)
    y = F.silu((hx + gated).transpose(0, 1) + residual)
    if not layer.prenorm:
        y = layer.norm(y)
    if layer.ffn is not None:
        y = layer.ffn(y)
    return y, active, confidence


def _table_bias(rel_pos, offset: Tensor) -> Tensor:
    table = rel_pos.table
    return table[(offset + rel_pos.center).clamp(0, table.numel() - 1)]

