"""Multi-dimensional damped EMA (MD-EMA), the state-space model of every SeqBoat layer.

Spec: ``shared/design/seqboat-reference.md`` section 3. Per channel ``d`` and EMA
dimension ``n``::

    p = sigmoid(delta), a = sigmoid(alpha), phi = 1 - p * a
    h_t = phi * h_{t-1} + p * beta * x_t          (hidden state, B x D x N)
    y_t = sum_n kappa * gamma_n * h_t[n] + omega * x_t

The parallel ``forward`` evaluates the same recurrence as an FFT convolution with the
kernel ``K[d, l] = sum_n kappa gamma p beta phi^l`` (optionally truncated to
``truncation`` lags). ``step`` / ``forward_chunk`` are the recurrent form used by
incremental decoding (``step`` one token, ``forward_chunk`` a prompt); they sit next to
``forward`` so the equivalence is visible.
"""

import math
from typing import Dict, Optional, Tuple

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
        """EMA kernel ``K[d, l] = sum_n kappa gamma p beta phi^l``, shape ``(D', length)``, fp32.

        phi^l is factored as phi^(a B) * phi^b with l = a B + b and B ~ sqrt(length), so the sum
        over n is one batched matmul of two (D', N, ~sqrt(length)) power tables: no (D', N, L)
        tensor is ever built (it dominated the layer's time and activation memory).
        """
        p_beta, phi = self.coefficients()
        coef = p_beta.squeeze(-1) * upcast(self.gamma) * self.scale  # (D', N)
        log_phi = torch.log(phi)  # (D', N, 1)
        block = max(1, math.isqrt(length - 1) + 1) if length > 1 else 1
        num_blocks = -(-length // block)
        steps = torch.arange(block, device=phi.device, dtype=phi.dtype)
        inner = torch.exp(steps * log_phi)  # phi^b, (D', N, B)
        outer = torch.exp(steps[:num_blocks] * block * log_phi) if num_blocks <= block else \
            torch.exp(torch.arange(num_blocks, device=phi.device, dtype=phi.dtype) * block * log_phi)
        k = torch.bmm((coef.unsqueeze(-1) * outer).transpose(1, 2), inner)  # (D', A, B)
        return k.flatten(1)[:, :length]

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
    # Decoding state (all fp32, batch first):
    #   hidden      (B, D, N)  h_t, the untruncated recurrence
    #   lag_hidden  (B, D, N)  h_{t - L_k}            } only with truncation L_k: the truncated
    #   inputs      (B, L_k, D) last L_k inputs, a    } kernel is y_t = C (h_t - phi^L_k h_{t-L_k}),
    #                          ring indexed by t % L_k } exact with O(D N) work per token.
    def init_state(self, batch_size: int, device=None) -> Dict[str, Tensor]:
        """The only place that decides the decoding-state shapes."""
        assert not self.bidirectional, "incremental decoding needs a causal (unidirectional) EMA"
        shape = (batch_size, self.embed_dim, self.ndim)
        state = {"hidden": torch.zeros(shape, device=device)}
        if self.truncation is not None:
            state["lag_hidden"] = torch.zeros(shape, device=device)
            state["inputs"] = torch.zeros(batch_size, self.truncation, self.embed_dim, device=device)
        return state

    def _readout(self, state: Dict[str, Tensor], phi: Tensor) -> Tensor:
        """y (without the omega skip) from a state: C h, or C (h - phi^L_k h_lag) if truncated.
        phi: ``(D, N)``."""
        h = state["hidden"]
        if self.truncation is not None:
            h = h - phi ** self.truncation * state["lag_hidden"]
        return torch.einsum("bdn,dn->bd", h, upcast(self.gamma) * self.scale)

    def step(self, x: Tensor, state: Dict[str, Tensor], position: Tensor,
             padding_mask: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        """One token: x ``(B, D)`` at absolute ``position`` ``(B,)``. Returns ``(y (B, D), state)``.

        h <- phi h + p beta x  (and, if truncated, h_lag <- phi h_lag + p beta x_{t - L_k}).
        """
        p_beta, phi = (c.squeeze(-1) for c in self.coefficients())
        u = upcast(x) if padding_mask is None else upcast(x).masked_fill(padding_mask.unsqueeze(-1), 0.0)
        new = {"hidden": phi * state["hidden"] + p_beta * u.unsqueeze(-1)}
        if self.truncation is not None:
            rows = torch.arange(x.size(0), device=x.device)
            slot = position % self.truncation
            inputs = state["inputs"].clone()
            evicted = inputs[rows, slot]  # x_{t - L_k} (zeros before the sequence start)
            inputs[rows, slot] = u.to(inputs.dtype)
            new["inputs"] = inputs
            new["lag_hidden"] = phi * state["lag_hidden"] + p_beta * evicted.unsqueeze(-1)
        y = self._readout(new, phi)
        return y.type_as(x) + x * self.omega, new

    def forward_chunk(self, x: Tensor, state: Dict[str, Tensor], position: Tensor,
                      padding_mask: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        """T tokens at once with a carried state (prompt prefill): equal to T ``step`` calls.

        x: ``(T, B, D)``; position ``(B,)`` of its first token; padding_mask ``(B, T)``.
        Returns ``(y (T, B, D), state)``.
        """
        seq_len = x.size(0)
        u = x if padding_mask is None else x.masked_fill(padding_mask.t().unsqueeze(-1), 0.0)
        u = upcast(u).permute(1, 2, 0)  # (B, D, T)
        y, hidden = self._scan(u, state["hidden"])
        new = {"hidden": hidden}
        if self.truncation is not None:
            trunc = self.truncation
            offsets = torch.arange(trunc, device=x.device)
            rows = torch.arange(x.size(1), device=x.device).unsqueeze(1)
            # the ring in chronological order (oldest first), then the new inputs
            history = state["inputs"][rows, (position.unsqueeze(1) + offsets) % trunc]  # (B, L_k, D)
            seq = torch.cat([history.transpose(1, 2), u], dim=2)  # (B, D, L_k + T)
            y = _causal_fft_conv(seq, self.kernel(trunc))[..., trunc:]
            # inputs leaving the ring advance h_lag; the last L_k inputs stay
            new["lag_hidden"] = self._scan(seq[..., :seq_len], state["lag_hidden"])[1]
            inputs = torch.empty_like(state["inputs"])
            inputs[rows, (position.unsqueeze(1) + seq_len + offsets) % trunc] = seq[..., seq_len:].transpose(1, 2)
            new["inputs"] = inputs
        return y.type_as(x).permute(2, 0, 1) + x * self.omega, new

    def _scan(self, u: Tensor, h0: Tensor) -> Tuple[Tensor, Tensor]:
        """The untruncated recurrence over a chunk, in parallel. u: ``(B, D, T)`` (>= fp32),
        h0: ``(B, D, N)``. Returns ``(C h_t for t < T (B, D, T), h_T)``, no omega skip."""
        seq_len = u.size(-1)
        p_beta, phi = self.coefficients()
        gamma = upcast(self.gamma) * self.scale
        lags = torch.arange(seq_len, device=u.device, dtype=phi.dtype).view(1, 1, seq_len)
        vander = torch.exp(lags * torch.log(phi))  # phi^l, (D, N, T)
        y = _causal_fft_conv(u, torch.einsum("dnl,dn->dl", p_beta * vander, gamma))
        decay = vander * phi  # phi^(t+1): how h_0 reaches y_t
        y = y + torch.einsum("dnt,dn,bdn->bdt", decay, gamma, h0)
        # h_T = sum_s p beta phi^(T-1-s) u_s + phi^T h_0
        h = torch.einsum("dnl,bdl->bdn", p_beta * vander.flip(-1), u) + decay[..., -1] * h0
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
