"""Latent configurator and compress / extract."""

import math

import pytest
import torch

from conftest import assert_close
from seqboat_fairseq.modules.naive import compress_loop, extract_loop
from seqboat_fairseq.modules.sma import LatentConfigurator, compress, extract, plan_compression


def _active(rows):
    return torch.tensor(rows, dtype=torch.bool)


CASES = {
    "mixed": [[1, 0, 1, 1, 0, 0, 1], [0, 0, 0, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1, 1]],
    "nothing": [[0] * 5, [0] * 5],
    "everything": [[1] * 5, [1] * 5],
    "one_row_empty": [[0, 0, 0, 0], [0, 1, 1, 0]],
}


@pytest.mark.parametrize("block", [None, 1, 2, 3], ids=["noblock", "block1", "block2", "block3"])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_round_trip_matches_loops(case, block):
    """With ``block`` (the rounding MEGA-chunk's chunks ask for), a slot count above it is rounded up
    to a multiple of it (possibly past the sequence length: 5 of 5 active tokens with block 2 or 3 in
    'mixed')."""
    active = _active(CASES[case])
    x = torch.randn(*active.shape, 3)
    plan = plan_compression(active, round_slots=None if block is None else
                            (lambda n: -(-n // block) * block if n > block else n))
    compressed = compress(x, plan)
    counts = active.sum(1)
    slots = max(1, int(counts.max()))
    if block is not None and slots > block and not plan.identity:
        slots = -(-slots // block) * block
    assert compressed.size(1) == slots
    assert_close("compress", compressed[:, :max(1, int(counts.max()))], compress_loop(x, active), atol=0)
    # zero padding of empty slots and the slot bookkeeping
    for b, c in enumerate(counts.tolist()):
        assert (compressed[b, c:] == 0).all()
        assert plan.slot_valid[b].tolist() == [j < c for j in range(compressed.size(1))]
        assert plan.index[b, :c].tolist() == [t for t in range(active.size(1)) if active[b, t]]
    restored = extract(compressed, plan)
    assert_close("extract", restored, extract_loop(compressed, active), atol=0)
    assert_close("round trip", restored, x * active.unsqueeze(-1), atol=0)


def test_everything_active_is_identity_and_nothing_active_is_one_zero_slot():
    plan = plan_compression(torch.ones(2, 6, dtype=torch.bool))
    assert plan.identity
    plan = plan_compression(torch.zeros(2, 6, dtype=torch.bool))
    assert not plan.identity and plan.index.shape == (2, 1) and not plan.slot_valid.any()
    y = extract(torch.randn(2, 1, 4), plan)
    assert (y == 0).all()


def test_gradients_reach_only_active_tokens():
    active = _active(CASES["mixed"])
    x = torch.randn(*active.shape, 3, requires_grad=True)
    plan = plan_compression(active)
    extract(compress(x, plan) * 2.0, plan).sum().backward()
    assert_close("grad", x.grad, 2.0 * active.unsqueeze(-1).expand_as(x).double(), atol=0)


def test_deterministic_algorithms_do_not_raise():
    torch.use_deterministic_algorithms(True)
    try:
        active = torch.rand(4, 50) > 0.5
        x = torch.randn(4, 50, 8, requires_grad=True)
        plan = plan_compression(active)
        extract(compress(x, plan), plan).pow(2).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)


def test_router_decision_confidence_and_temperature():
    router = LatentConfigurator(embed_dim=80, init_temp_scale=0.3)
    assert math.isclose(router.log_temperature.item(), math.log(0.3 * math.sqrt(80)), rel_tol=1e-6)
    logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.0, 3.0]]])
    pad = torch.tensor([[False, False, False, True]])
    active, gate = router(logits, pad)
    assert active.tolist() == [[True, False, False, False]]  # tie -> skip, pad never active
    tau = math.exp(router.log_temperature.item())
    p1 = 1 / (1 + math.exp(-1.0 / tau))
    assert_close("gate", gate, torch.tensor([[p1, 0.0, 0.0, 0.0]]), atol=1e-6)
    # act_bias is added to the skip option and reduces activation
    active_b, _ = router(logits, pad, act_bias=5.0)
    assert not active_b.any()


def test_router_gradient_flows_through_confidence_only():
    router = LatentConfigurator(embed_dim=4, init_temp_scale=1.0)
    logits = torch.randn(3, 10, 2, requires_grad=True)
    active, gate = router(logits)
    gate.sum().backward()
    assert router.log_temperature.grad.abs() > 0
    # skipped tokens have gate 0 and receive no gradient
    assert (logits.grad[~active] == 0).all()
    assert (logits.grad[active] != 0).any()
    with pytest.raises(ValueError, match="init-temp-scale"):
        LatentConfigurator(4, init_temp_scale=0.0)


def test_compress_does_not_keep_its_input_for_the_backward_pass():
    """compress gathers with index_select, which keeps only the index: the layer relies on it not to
    keep the uncompressed (B, L, D) input alive (recompute.silu_projection drops it)."""
    active = _active(CASES["mixed"])
    x = torch.randn(*active.shape, 64, requires_grad=True)
    plan = plan_compression(active)
    assert not plan.identity
    kept = []

    def pack(t):
        kept.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = compress(x, plan)
    assert x.untyped_storage().data_ptr() not in kept
    y.sum().backward()
    expected = torch.zeros_like(x)
    expected[active] = 1.0
    assert_close("grad", x.grad, expected, atol=0)
