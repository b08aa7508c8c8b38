"""Precision policy: numerically sensitive parts (the MD-EMA convolution, softmax, router) run in at least fp32.

``upcast`` lifts fp16/bf16 to fp32 and leaves fp32/fp64 alone, so float64 gradchecks
exercise the same code paths as training.
"""

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def upcast(x: Tensor) -> Tensor:
    return x.float() if x.dtype in _LOW_PRECISION else x
