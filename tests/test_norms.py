"""Our RMSNorm is torch.nn.RMSNorm in fp32 and keeps an fp32 reduction for bf16 inputs; SequenceNorm's batch
norm is upstream's permuted BatchNorm1d."""

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


def test_sequence_batchnorm_equals_the_permuted_batchnorm():
    """SequenceNorm's batch norm normalises the (L * B, D) view; upstream applies BatchNorm1d to
    the (B, D, L) permute. Same statistics over batch and time (B = 3 here), the same running
    statistics after two training steps, the same gradients, and the same eval-mode output."""
    from seqboat_fairseq.modules.norms import SequenceNorm

    torch.manual_seed(0)
    ours = SequenceNorm("batchnorm", 8)
    reference = torch.nn.BatchNorm1d(8)
    with torch.no_grad():
        ours.norm.weight.normal_()
        ours.norm.bias.normal_()
    reference.load_state_dict(ours.norm.state_dict())
    for _ in range(2):
        x = (torch.randn(7, 3, 8) * 3 + torch.arange(8.0)).requires_grad_(True)
        y = ours(x)
        y_ref = reference(x.permute(1, 2, 0)).permute(2, 0, 1)
        assert y.shape == x.shape and y.is_contiguous()
        assert torch.allclose(y, y_ref, atol=1e-5)
        grad = torch.randn_like(y)
        got = torch.autograd.grad(y, [x, ours.norm.weight], grad)
        want = torch.autograd.grad(y_ref, [x, reference.weight], grad)
        for a, b in zip(got, want):
            assert torch.allclose(a, b, atol=1e-4)
    assert ours.norm.running_mean.abs().max() > 0.5  # the statistics moved
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(ours.norm, name).float(), getattr(reference, name).float(), atol=1e-6), name
    ours.eval()
    reference.eval()
    x = torch.randn(5, 2, 8)
    assert torch.allclose(ours(x), reference(x.permute(1, 2, 0)).permute(2, 0, 1), atol=1e-5)
