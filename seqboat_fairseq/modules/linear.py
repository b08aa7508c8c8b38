"""``nn.Linear`` with a faster product for the few rows of a decoding step on the CPU.

A decoding step applies every projection to one row per sequence. For such inputs PyTorch's CPU
``F.linear`` (``x @ W^T``) goes to MKL's matrix-vector path, which runs on one thread and, on the
2-core AMD EPYC machines this project is measured on, at a third of the memory bandwidth: 535 us
for the GAU's 616 -> 2592 projection at one row, 1,035 us at two. The same product written as
``(W @ x^T)^T``, with at least two columns (a zero column is added to a single row), runs MKL's
multi-threaded GEMM: 190 us at one row, 200 at two, and still faster at 64 rows
(``python bench/linear_rows.py`` measures both on the machine at hand). Training and scoring
inputs have thousands of rows and keep ``F.linear``, as do other devices. Same parameters, same
state-dict keys, same result up to float rounding.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_ROWS = 64  # up to here W @ x^T was faster on every row count measured (1 to 64)


class Linear(nn.Linear):
    """``nn.Linear`` whose forward takes the column-GEMM route above for <= ``MAX_ROWS`` rows on
    the CPU."""

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // x.size(-1) if x.size(-1) else 0
        if x.device.type != "cpu" or rows == 0 or rows > MAX_ROWS or x.dtype != self.weight.dtype:
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, x.size(-1))
        if rows == 1:  # one column would be MKL's matrix-vector path again
            flat = F.pad(flat, (0, 0, 0, 1))
        if self.bias is None:
            out = torch.mm(self.weight, flat.t())
        else:
            out = torch.addmm(self.bias.unsqueeze(1), self.weight, flat.t())
        return out[:, :rows].t().reshape(*x.shape[:-1], self.out_features)
