"""Our RMSNorm is torch.nn.RMSNorm in fp32 and keeps an fp32 reduction for bf16 inputs."""

import torch

from seqboat_fairseq.modules.norms import RMSNorm


def test_rmsnorm_equals_torch_in_fp32_and_reduces_in_fp32():
    ours, theirs = RMSNorm(16), torch.nn.RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        ours.weight.normal_()
        theirs.weight.copy_(ours.weight)
    x = torch.randn(3, 5, 16) * 50
    assert torch.equal(ours(x), theirs(x))
    low = RMSNorm(16).to(torch.bfloat16)
    with torch.no_grad():
        low.weight.copy_(ours.weight)
    low = low(x.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    assert (low.float() - ours(x)).abs().max() < 0.05 * ours(x).abs().max()
