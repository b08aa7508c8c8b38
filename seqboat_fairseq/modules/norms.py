"""Sequence normalisation layers used by SeqBoat (docs/design.md, 'Normalisation and the FFN').

``SequenceNorm`` wraps one of layernorm / scalenorm / rmsnorm / batchnorm / syncbatchnorm
behind a time-major ``(L, B, D)`` interface. The wrapped module is stored as ``.norm`` so
parameter names match upstream checkpoints (``norm.norm.weight`` ...).
"""

import torch
from torch import Tensor, nn

from .precision import upcast

NORM_TYPES = ("layernorm", "scalenorm", "rmsnorm", "batchnorm", "syncbatchnorm")


class ScaleNorm(nn.Module):
    """y = g * x / sqrt(mean(x^2) + eps) with a scalar gain g (parameter ``scalar``)."""

    def __init__(self, dim: int = -1, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.scalar = nn.Parameter(torch.ones(1)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        mean_square = upcast(x).pow(2).mean(dim=self.dim, keepdim=True)
        y = (upcast(x) * torch.rsqrt(mean_square + self.eps)).type_as(x)
        return y * self.scalar if self.scalar is not None else y


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps) with a per-channel gain (parameter ``weight``).

    Not ``torch.nn.RMSNorm``: that one normalises in the input's dtype (and needs the gain in the
    same dtype), while this norm, like ``ScaleNorm``, always reduces in fp32 and casts back, which
    bf16/fp16 runs rely on (tests/test_precision.py). In fp32 the two are the same function."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        mean_square = upcast(x).pow(2).mean(dim=-1, keepdim=True)
        y = (upcast(x) * torch.rsqrt(mean_square + self.eps)).type_as(x)
        return y * self.weight if self.weight is not None else y


def _layer_norm(num_features: int, eps: float, affine: bool, export: bool) -> nn.Module:
    # fairseq's LayerNorm picks NVIDIA apex's FusedLayerNorm only when CUDA is available and
    # apex is importable, and falls back to torch.nn.LayerNorm otherwise (same math).
    from fairseq.modules import LayerNorm

    return LayerNorm(num_features, eps=eps, elementwise_affine=affine, export=export)


class SequenceNorm(nn.Module):
    """Normalisation of a time-major sequence ``(L, B, D)``.

    batchnorm / syncbatchnorm take statistics over batch and time, padding included
    (as upstream does). They normalise the ``(L * B, D)`` view, the same statistics as upstream's
    ``(B, D, L)`` permute: torch's CPU batch norm runs about 3x faster, forward and backward, on
    contiguous channels than on the permuted layout (SC10's 16,000 x 60 per layer).
    """

    def __init__(self, norm_type: str, embed_dim: int, eps: float = 1e-5,
                 affine: bool = True, export: bool = False):
        super().__init__()
        if norm_type == "layernorm":
            self.norm = _layer_norm(embed_dim, eps, affine, export)
        elif norm_type == "scalenorm":
            self.norm = ScaleNorm(dim=-1, eps=eps, affine=affine)
        elif norm_type == "rmsnorm":
            self.norm = RMSNorm(embed_dim, eps=eps, affine=affine)
        elif norm_type == "batchnorm":
            self.norm = nn.BatchNorm1d(embed_dim, eps=eps, affine=affine)
        elif norm_type == "syncbatchnorm":
            self.norm = nn.SyncBatchNorm(embed_dim, eps=eps, affine=affine)
        else:
            raise ValueError(f"unknown norm type {norm_type!r}; expected one of {NORM_TYPES}")
        self.norm_type = norm_type

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.norm, nn.modules.batchnorm._BatchNorm):
            if isinstance(self.norm, nn.SyncBatchNorm) and not _distributed_ready():
                # SyncBatchNorm only works inside an initialised process group; a single
                # process (CPU tests, one-GPU evaluation) computes plain batch statistics.
                return _plain_batch_norm(self.norm, x)
            return self.norm(x.reshape(-1, x.size(-1))).view_as(x)
        return self.norm(x)


def _distributed_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _plain_batch_norm(norm: nn.SyncBatchNorm, x: Tensor) -> Tensor:
    y = nn.functional.batch_norm(
        x.reshape(-1, x.size(-1)), norm.running_mean, norm.running_var, norm.weight, norm.bias,
        norm.training or not norm.track_running_stats, norm.momentum if norm.momentum is not None else 0.0,
        norm.eps,
    )
    if norm.training and norm.track_running_stats:
        norm.num_batches_tracked.add_(1)
    return y.view_as(x)
