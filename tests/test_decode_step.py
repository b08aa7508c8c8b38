"""The decoding step's shortcuts (``SeqBoatLayer._decode_token``) without gradients, where they run:
one stacked product for the router / always-on / GAU projections, the GAU ring written at slot
``count % S`` whether or not the token is active, the EMA ring and the rotary rotation addressed
by the host count, and (CPU) the router read on the host, the GAU skipped for a token no row
activates. Each equivalence shows that its configuration exercises the shortcut."""

import pytest
import torch

from conftest import LAYER_DIMS, assert_close, make_layer
from seqboat_fairseq.modules.gau import rotary_step_table
from seqboat_fairseq.modules.positions import apply_rotary
from seqboat_fairseq.modules.seqboat_layer import SeqBoatLayer
from seqboat_fairseq.modules.sma import forced_activation

D = LAYER_DIMS[0]
ATOL = 1e-5


@pytest.fixture
def branch_free(monkeypatch):
    """The step every device can take (no host branch: the one CUDA runs), also on the CPU."""
    monkeypatch.setattr(SeqBoatLayer, "skip_inactive_on_host", False)


@pytest.fixture(params=["host_branch", "branch_free"])
def either_step(request, monkeypatch):
    monkeypatch.setattr(SeqBoatLayer, "skip_inactive_on_host", request.param == "host_branch")


@pytest.mark.parametrize("rel_pos,local_pos,chunked", [("rotary", False, False), ("simple", False, False),
                                                      ("simple", True, False), ("simple", False, True)],
                         ids=["rotary", "simple", "local_pos", "chunked"])
def test_skipped_tokens_in_a_full_ring_leave_decoding_exact(rel_pos, local_pos, chunked, either_step):
    """Steps (no gradients) and prefill chunks after them == the parallel forward, with tokens
    skipped while the ring is full: their entries land in the ring slot of the next activated
    token (shown below) and no query ever reads them."""
    window = 3
    layer = make_layer(window=window, truncation=5, rel_pos=rel_pos, local_pos=local_pos, chunked=chunked)
    x = torch.randn(24, 2, D)
    mask = torch.rand(2, 24, generator=torch.Generator().manual_seed(1)) < 0.6
    mask[:, :6] = True  # fill the ring (S = w + 1 = 4 slots; chunked: c = 3) ...
    mask[:, 6:9] = False  # ... then skip tokens while it is full, right before a prefill chunk
    with torch.no_grad(), forced_activation(layer, lambda active: mask[:, :active.size(1)]
                                            if active.size(1) == 24 else active):
        y_par, act = layer(x)
    assert torch.equal(act.active, mask)
    state = layer.init_state(2)
    ys, stale = [], 0
    with torch.no_grad():
        for t in range(24):
            if t == 9:  # a chunk right after the skipped steps
                with forced_activation(layer, lambda active: mask[:, 9:13]):
                    y, _, state = layer.forward_chunk(x[9:13], state)
                ys.extend(y)
            if 9 <= t < 13:
                continue
            with forced_activation(layer, lambda active, t=t: mask[:, t:t + 1]):
                y, _, state = layer.step(x[t], state)
            ys.append(y)
            gau = state["gau"]
            slot = gau["count"] % gau["key"].size(1)
            written = gau["position"].gather(1, slot.unsqueeze(1))[:, 0] == t
            stale += int((written & ~mask[:, t] & (gau["count"] >= gau["key"].size(1) - int(chunked))).sum())
    assert stale > 0, "no skipped token was written into a full ring"
    assert_close("steps and chunks vs parallel", torch.stack(ys), y_par, atol=ATOL)


def test_stacked_projection_follows_weight_updates(branch_free):
    """The stacked [hx_proj; in_proj] weight is cached across steps; an in-place change of either
    weight (an optimizer step, ``load_state_dict``) is seen by the next step."""
    layer = make_layer(window=3, rel_pos="rotary")
    x = torch.randn(6, 1, D)
    with torch.no_grad():
        state = layer.init_state(1)
        layer.step(x[0], state)
        cached = layer.__dict__["_stacked_projection"][1]
        layer.gau.in_proj.weight.mul_(1.5)
        layer.load_state_dict({**layer.state_dict(), "hx_proj.bias": layer.hx_proj.bias + 0.5})
        y_par = layer(x)[0]
        state = layer.init_state(1)
        ys = [layer.step(x[t], state)[0] for t in range(6)]
    assert layer.__dict__["_stacked_projection"][1] is not cached
    assert_close("steps after a weight update vs parallel", torch.stack(ys), y_par, atol=ATOL)


def test_steps_with_and_without_gradients_agree(branch_free):
    """Gradient recording takes the unstacked projections; both paths give the same outputs."""
    layer = make_layer(window=3, truncation=5, rel_pos="rotary")
    x = torch.randn(10, 2, D)
    outs = []
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            state = layer.init_state(2)
            outs.append(torch.stack([layer.step(x[t], state)[0] for t in range(10)]).detach())
    assert "_stacked_projection" in layer.__dict__
    assert_close("no-grad steps vs grad steps", outs[1], outs[0], atol=ATOL)


@pytest.mark.parametrize("bsz", [1, 2])
@pytest.mark.parametrize("window", [3, None], ids=["w3", "full"])
def test_host_branch_skips_the_gau_and_equals_the_branch_free_step(bsz, window, monkeypatch):
    """On the CPU a step whose token no row activates skips the GAU (``skip_inactive_on_host``).
    Its outputs, decisions and gates equal the branch-free step's over 40 tokens with the ring full
    and skipped tokens between activated ones; the GAU ran for fewer steps than were taken."""
    layer = make_layer(window=window, truncation=5, rel_pos="rotary")
    x = torch.randn(40, bsz, D)
    mask = torch.rand(bsz, 40, generator=torch.Generator().manual_seed(3)) < 0.4
    calls = []
    original = layer.gau.step_projected

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(layer.gau, "step_projected", counted)
    runs = {}
    for host in (True, False):
        monkeypatch.setattr(SeqBoatLayer, "skip_inactive_on_host", host)
        calls.clear()
        ys, gates = [], []
        with torch.no_grad():
            state = layer.init_state(bsz)
            for t in range(40):
                with forced_activation(layer, lambda active, t=t: mask[:, t:t + 1]):
                    y, activation, state = layer.step(x[t], state)
                ys.append(y)
                gates.append(activation.confidence)
        runs[host] = (torch.stack(ys), torch.stack(gates), len(calls), state["gau"]["count"].clone())
    skipped_steps = int((~mask.any(0)).sum())
    assert skipped_steps >= 5 and mask.sum() >= 10  # the configuration skips and activates
    assert runs[True][2] == 40 - skipped_steps and runs[False][2] == 40
    assert torch.equal(runs[True][3], runs[False][3]) and torch.equal(runs[True][3], mask.sum(1))
    assert_close("host-branch vs branch-free outputs", runs[True][0], runs[False][0], atol=ATOL)
    assert_close("host-branch vs branch-free gates", runs[True][1], runs[False][1], atol=ATOL)


def test_rotary_step_table_matches_apply_rotary_as_it_grows():
    qk = torch.randn(3, 2, 8)
    for position in (0, 7, 1500, 4100):  # past the first table (1024) and its doubling
        table = rotary_step_table(8, position + 1, qk.device)
        assert table.size(0) > position
        rotated = torch.view_as_real(torch.view_as_complex(qk.unflatten(-1, (-1, 2))) * table[position]).flatten(-2)
        expected = apply_rotary(qk, torch.full((3, 1), position))
        assert_close(f"position {position}", rotated, expected, atol=1e-5)
