"""Shared test helpers. Every test runs on CPU; fixed seeds keep them reproducible."""

import os
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def assert_close(name, actual, expected, atol=1e-5, rtol=0.0):
    """Fails on NaN/inf and reports max abs / rel error (never downgraded to a warning)."""
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    diff = (actual - expected).abs()
    max_abs = diff.max().item() if diff.numel() else 0.0
    max_rel = (diff / expected.abs().clamp(min=1e-12)).max().item() if diff.numel() else 0.0
    ok = bool((diff <= atol + rtol * expected.abs()).all())
    assert ok, f"{name}: max abs err {max_abs:.3e}, max rel err {max_rel:.3e} (atol={atol}, rtol={rtol})"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
