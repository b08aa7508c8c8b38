"""Multi-dimensional damped EMA (MD-EMA), the state-space model of every SeqBoat layer.

Spec: ``shared/design/seqboat-reference.md`` section 3. Per channel ``d`` and EMA
dimension ``n``::

    p = sigmoid(delta), a = sigmoid(alpha), phi = 1 - p * a
    h_t = phi * h_{t-1} + p * beta * x_t          (hidden state, B x D x N)
    y_t = sum_n kappa * gamma_n * h_t[n] + omega * x_t

The parallel ``forward`` evaluates the same recurrence as an FFT convolution with the
kernel ``K[d, l] = sum_n kappa gamma p beta phi^l`` (optionally truncated to
``truncation`` lags). ``step`` / ``forward_with_state`` are the recurrent form used by
incremental decoding; they sit next to ``forward`` so the equivalence is visible.
"""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .precision import upcast


def trunc_normal_(tensor: Tensor, std: float) -> Tensor:
    """Normal(0, std^2) truncated to [-2 std, 2 std] (upstream's ``Normal`` helper)."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


class MultiHeadEMA(nn.Module):
    """MD-EMA over time-major inputs ``(L, B, D)``.

    Args:
        embed_dim: D.
        ndim: N, the EMA expansion dimension.
        bidirectional: add a second (backward-in-time) kernel; rows D..2D-1 of the
            parameters belong to it. Incremental decoding is causal only.
        truncation: kernel length cap L_k = min(truncation, L) in the parallel form
            (None = full length). The recurrent form always has infinite memory.
    """

    def __init__(self, embed_dim: int, ndim: int = 16, bidirectional: bool = False,
                 truncation: Optional[int] = None):
        super().__init__()
        if truncation is not None and truncation <= 0:
            raise ValueError(f"MD-EMA truncation must be positive or None, got {truncation}")
        self.embed_dim = embed_dim
        self.ndim = ndim
        self.bidirectional = bidirectional
        self.truncation = truncation
        self.scale = math.sqrt(1.0 / ndim)  # kappa
        kernel_dim = 2 * embed_dim if bidirectional else embed_dim
        self.delta = nn.Parameter(torch.empty(kernel_dim, ndim, 1))
        self.alpha = nn.Parameter(torch.empty(kernel_dim, ndim, 1))
        self.beta = nn.Parameter(torch.empty(kernel_dim, ndim, 1))
        self.gamma = nn.Parameter(torch.empty(kernel_dim, ndim))
        self.omega = nn.Parameter(torch.empty(embed_dim))
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            trunc_normal_(self.delta, 0.2)
            trunc_normal_(self.alpha, 0.2)
            # beta: small noise around the alternating sign pattern +1, -1, +1, ... along N
            sign = torch.ones(self.ndim, 1)
            sign[1::2] = -1.0
            trunc_normal_(self.beta, 0.02)
            self.beta.add_(sign)
            trunc_normal_(self.gamma, 1.0)
            trunc_normal_(self.omega, 1.0)

    # ------------------------------------------------------------------ coefficients
    def coefficients(self) -> Tuple[Tensor, Tensor]:
        """Returns ``(p * beta, phi)``, each ``(D', N, 1)``, in at least fp32."""
        p = torch.sigmoid(upcast(self.delta))
        a = torch.sigmoid(upcast(self.alpha))
        phi = 1.0 - p * a
        return p * upcast(self.beta), phi

    def kernel(self, length: int) -> Tensor:
        """EMA kernel ``K`` of shape ``(D', length)`` in fp32."""
        p_beta, phi = self.coefficients()
        lags = torch.arange(length, device=phi.device, dtype=phi.dtype).view(1, 1, length)
        vander = torch.exp(lags * torch.log(phi))  # phi^l, (D', N, length)
        gamma = upcast(self.gamma) * self.scale
        return torch.einsum("dnl,dn->dl", p_beta * vander, gamma)

    # ------------------------------------------------------------------ parallel form
    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """x: ``(L, B, D)``; padding_mask: ``(B, L)``, True = pad. Returns ``(L, B, D)``.

        Padded inputs are zeroed before the convolution so they never leak into real
        positions; the omega skip uses the unmasked input (harmless: callers mask pads).
        """
        seq_len = x.size(0)
        residual = x * self.omega
        u = x.permute(1, 2, 0)  # (B, D, L)
        if padding_mask is not None:
            u = u.masked_fill(padding_mask.unsqueeze(1), 0.0)
        kernel_len = seq_len if self.truncation is None else min(self.truncation, seq_len)
        k = self.kernel(kernel_len)
        if self.bidirectional:
            y = _bidirectional_fft_conv(upcast(u), k[: self.embed_dim], k[self.embed_dim:])
        else:
            y = _causal_fft_conv(upcast(u), k)
        return y.type_as(x).permute(2, 0, 1) + residual

    # ------------------------------------------------------------------ recurrent form
    def step(self, x: Tensor, prev_state: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """One token. x: ``(B, D)``; prev_state: ``(B, D, N)`` fp32 or None (zeros).

        Returns ``(y (B, D), new_state (B, D, N) fp32)``.
        """
        assert not self.bidirectional, "incremental decoding needs a causal (unidirectional) EMA"
        p_beta, phi = self.coefficients()
        h = p_beta.squeeze(-1) * upcast(x).unsqueeze(-1)  # (B, D, N)
        if prev_state is not None:
            h = h + phi.squeeze(-1) * prev_state
        y = torch.einsum("bdn,dn->bd", h, upcast(self.gamma) * self.scale)
        return y.type_as(x) + x * self.omega, h

    def forward_with_state(self, x: Tensor, prev_state: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """A chunk of T tokens in parallel, with exact (untruncated) recurrent semantics.

        x: ``(T, B, D)``; prev_state ``(B, D, N)`` or None. Equivalent to T calls of
        ``step`` (the prefill of incremental decoding). Returns ``(y (T, B, D), h_T)``.
        """
        assert not self.bidirectional, "incremental decoding needs a causal (unidirectional) EMA"
        seq_len = x.size(0)
        u = upcast(x.permute(1, 2, 0))  # (B, D, T)
        p_beta, phi = self.coefficients()
        gamma = upcast(self.gamma) * self.scale
        log_phi = torch.log(phi)  # (D, N, 1)
        lags = torch.arange(seq_len, device=x.device, dtype=phi.dtype).view(1, 1, seq_len)
        vander = torch.exp(lags * log_phi)  # phi^l, (D, N, T)
        k = torch.einsum("dnl,dn->dl", p_beta * vander, gamma)
        y = _causal_fft_conv(u, k)  # (B, D, T)
        # h_T = sum_s p beta phi^(T-1-s) x_s  (+ phi^T h_0)
        h = torch.einsum("dnl,bdl->bdn", p_beta * vander.flip(-1), u)
        if prev_state is not None:
            # contribution of h_0 to y_t is sum_n kappa gamma phi^(t+1) h_0
            decay = vander * phi  # phi^(t+1), (D, N, T)
            y = y + torch.einsum("dnt,dn,bdn->bdt", decay, gamma, prev_state)
            h = h + decay[..., -1] * prev_state
        y = y.type_as(x).permute(2, 0, 1) + x * self.omega
        return y, h

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, ndim={self.ndim}, "
                f"bidirectional={self.bidirectional}, truncation={self.truncation}")


def _causal_fft_conv(u: Tensor, k: Tensor) -> Tensor:
    """y[b, d, t] = sum_{l <= t, l < K} k[d, l] u[b, d, t - l]. u: (B, D, L) fp32, k: (D, K)."""
    seq_len = u.size(-1)
    n = 2 * seq_len  # >= L + K - 1: no circular wrap-around
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y[..., :seq_len]


def _bidirectional_fft_conv(u: Tensor, k_fwd: Tensor, k_bwd: Tensor) -> Tensor:
    """y[t] = sum_l k_fwd[l] u[t - l] + sum_l k_bwd[l] u[t + l] (lag 0 counted twice)."""
    seq_len, kernel_len = u.size(-1), k_fwd.size(-1)
    # combined kernel of length 2K-1 centred at K-1: backward lags reversed, then forward lags
    k = F.pad(k_fwd, (kernel_len - 1, 0)) + F.pad(k_bwd.flip(-1), (0, kernel_len - 1))
    u = F.pad(u, (kernel_len - 1, 0))
    n = 2 * (seq_len + kernel_len - 1)
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    start = 2 * kernel_len - 2
    return y[..., start:start + seq_len]
