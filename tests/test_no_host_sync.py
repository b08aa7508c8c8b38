"""A decoding step never waits on the device: no tensor is turned into a Python bool / int /
float / list inside ``SeqBoatLayer.step`` or the decoder's single-token call, so a decode step
can be captured in a CUDA graph. On CUDA (``SEQBOAT_TEST_DEVICE=cuda``) torch's own sync
debug mode checks the same; on CPU the conversions are patched to raise."""

import contextlib

import pytest
import torch

from conftest import TEST_DEVICE as DEVICE
from conftest import build_lm, write_byte_dictionary
from seqboat_fairseq.modules.seqboat_layer import SeqBoatLayer
CONVERSIONS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy", "cpu")


class HostSync(AssertionError):
    pass


@contextlib.contextmanager
def no_host_sync():
    """Every Tensor -> Python conversion raises (and, on CUDA, every synchronising call)."""
    originals = {name: getattr(torch.Tensor, name) for name in CONVERSIONS}

    def refuse(name):
        def method(self, *args, **kwargs):
            raise HostSync(f"Tensor.{name} called inside a decoding step (a host synchronisation)")
        return method

    for name in CONVERSIONS:
        setattr(torch.Tensor, name, refuse(name))
    if DEVICE.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
        if DEVICE.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")


@pytest.fixture(autouse=True)
def branch_free(monkeypatch):
    """The step CUDA takes. On the CPU a layer reads its router's decision on the host to skip the GAU
    for a token no row activates (not a synchronisation there); these tests check the branch-free step,
    which ``SeqBoatLayer.skip_inactive_on_host = False`` selects on the CPU as well."""
    monkeypatch.setattr(SeqBoatLayer, "skip_inactive_on_host", False)


def test_the_guard_catches_a_sync():
    x = torch.ones(2, device=DEVICE)
    with pytest.raises((HostSync, RuntimeError)), no_host_sync():
        bool(x.any())


@pytest.mark.parametrize("config", [
    dict(window=4, truncation=6, rel_pos="rotary"),
    dict(window=4, truncation=None, rel_pos="simple", local_pos=True, attention_activation="relu2"),
    dict(window=None, truncation=6, rel_pos="simple", attention_activation="laplace"),
    dict(window=4, truncation=None, rel_pos="simple", always_active=True),
], ids=["rotary-w4-trunc", "localpos-relu2", "full-laplace", "always-active"])
def test_layer_step_has_no_host_sync(config):
    layer = SeqBoatLayer(16, 8, 24, 4, max_positions=64, **config).to(DEVICE).eval()
    state = layer.init_state(3, DEVICE)
    x = torch.randn(12, 3, 16, device=DEVICE)
    pad = torch.zeros(3, 12, dtype=torch.bool, device=DEVICE)
    pad[1, 10:] = True
    with torch.no_grad():
        layer.forward_chunk(x[:5], state, pad[:, :5])  # prefill may synchronise (shapes follow the data)
        with no_host_sync():
            for t in range(5, 12):
                y, activation, state = layer.step(x[t], state, pad[:, t])
    assert y.shape == (3, 16) and activation.active.shape == (3, 1)


def test_decoder_single_token_call_has_no_host_sync(tmp_path):
    model, _, _ = build_lm(write_byte_dictionary(tmp_path), "--arch", "seqboat_lm_tiny", "--tokens-per-sample", "64")
    model = model.to(DEVICE).eval()
    tokens = torch.randint(4, 260, (2, 12), device=DEVICE)
    incremental_state = {}
    with torch.no_grad():
        model(tokens[:, :6], incremental_state=incremental_state)
        with no_host_sync():
            for t in range(7, 13):
                logits, _ = model(tokens[:, :t], incremental_state=incremental_state)
    assert logits.shape == (2, 1, 260)
