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


# Under pytest-xdist (pytest.ini: -n 2) each worker runs one test at a time on one core: one torch
# thread, and OMP_NUM_THREADS=1 for every process a test starts, so that two workers never ask
# for more threads than the machine has cores (tests that need a count set their own).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

# SEQBOAT_TEST_DEVICE=cuda runs the module tests with CUDA as the default device (bench/device_check.sh)
TEST_DEVICE = torch.device(os.environ.get("SEQBOAT_TEST_DEVICE", "cpu"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    if TEST_DEVICE.type == "cpu":
        yield
    else:
        with torch.device(TEST_DEVICE):
            yield


PLUGIN_DIR = os.path.join(REPO_ROOT, "seqboat_fairseq")

from seqboat_fairseq.testing import build_from_cli, write_byte_dictionary, write_lra_dictionaries  # noqa: E402,F401


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """A data directory with a byte dictionary, for building language models."""
    return write_byte_dictionary(tmp_path_factory.mktemp("bytes"))


@pytest.fixture(scope="module")
def lra_dirs(tmp_path_factory):
    """Data directories for building LRA classifiers: ``text`` (dictionaries), ``aan`` (two
    documents, labels 0 / 1) and ``image`` (an empty pixel input directory)."""
    root = tmp_path_factory.mktemp("lra")
    os.makedirs(root / "image" / "input")
    return {"text": write_lra_dictionaries(root / "text"),
            "aan": write_lra_dictionaries(root / "aan", labels=("0", "1"), two_documents=True),
            "image": str(root / "image")}


def build_lm(data_dir, *cli_args):
    """Builds a SeqBoat LM exactly as fairseq-train would, from command-line arguments."""
    return build_from_cli(data_dir, "language_modeling", *cli_args)


def build_lra(data_dir, task, *cli_args):
    """Builds an LRA model exactly as fairseq-train would, from command-line arguments."""
    return build_from_cli(data_dir, task, "--criterion", "lra_cross_entropy", *cli_args)


def run_module(module, *args, cwd=REPO_ROOT, check=True, timeout=900, stdin=None, env=None):
    """Runs ``python -m <module> args`` (fairseq's console scripts) and returns the completed
    process; with ``check`` a non-zero exit fails the test with the output's tail."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))
    if check:
        assert proc.returncode == 0, f"{module} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc


@pytest.fixture(scope="session")
def pydoc_data_bin(tmp_path_factory):
    """A small enwik8-style byte data-bin (train/valid/test) from Python's pydoc text."""
    import subprocess

    data = tmp_path_factory.mktemp("pydoc") / "data-bin"
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "data_prep", "enwik8.py"), "--pydoc-demo",
                    "--max-bytes", "60000", "--destdir", str(data)], check=True, capture_output=True, timeout=600)
    return data


def write_tiny_hydra_config(config_dir, data, *, tokens_per_sample, layers, max_update, batch_size):
    """``config_dir/tiny.yaml``: a ``fairseq-hydra-train`` config (old ``# @package _group_`` header, as
    fairseq's own configs) that trains ``seqboat_lm_tiny`` on ``data`` on the CPU without saving."""
    os.makedirs(config_dir, exist_ok=True)
    with open(os.path.join(config_dir, "tiny.yaml"), "w") as f:
        f.write(f"""# @package _group_
common: {{cpu: true, log_format: simple, log_interval: 1, user_dir: {PLUGIN_DIR}}}
task: {{_name: language_modeling, data: {data}, tokens_per_sample: {tokens_per_sample}}}
model: {{_name: seqboat_lm_tiny, decoder_layers: {layers}}}
criterion: seqboat_cross_entropy
optimizer: {{_name: adam}}
lr_scheduler: fixed
optimization: {{max_update: {max_update}, lr: [0.001]}}
dataset: {{batch_size: {batch_size}, num_workers: 0, disable_validation: true}}
checkpoint: {{no_save: true}}
""")


def train_tiny_lm(data, save_dir, *extra, updates=2):
    """A few updates of seqboat_lm_tiny through fairseq-train (for tests that need a checkpoint,
    not a good model). Returns the path of checkpoint_last.pt."""
    run_module("fairseq_cli.train", data, "--user-dir", PLUGIN_DIR, "--task", "language_modeling",
               "--arch", "seqboat_lm_tiny", "--criterion", "seqboat_cross_entropy", "--tokens-per-sample", "64",
               "--batch-size", "4", "--optimizer", "adam", "--lr", "3e-3", "--max-update", str(updates),
               "--disable-validation", "--no-epoch-checkpoints", "--save-dir", save_dir, "--cpu",
               "--num-workers", "0", "--log-format", "simple", *extra)
    return os.path.join(str(save_dir), "checkpoint_last.pt")


# --------------------------------------------------------------------------- layers where every branch matters
# Equivalence tests (fast layer vs the dense reference, step vs parallel, batch invariance, ...)
# prove something only at weights where each branch moves the checked numbers far more than the
# tolerance: at the default initialisation (q/k gamma std 0.02) the GAU contributes ~1e-5 to a
# layer's output, so a dropped GAU would pass every test. ``make_layer`` builds a layer
# at such weights; ``assert_branches_matter`` asserts, inside a test, that it is so.
LAYER_DIMS = (16, 8, 12, 4)  # D, Z, H, N


def weight_drawer(seed):
    """``normal_(p, std, mean=0.0)``: redraws ``p`` in place from N(mean, std^2), from a private
    generator seeded with ``seed`` (independent of the global RNG and test order)."""
    g = torch.Generator().manual_seed(seed)

    def normal_(p, std, mean=0.0):
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * std + mean)

    return normal_


def strong_gau_weights_(normal_, gau, in_proj_std=0.4):
    """The GAU's share of :func:`strong_weights_` (at D=16, H=12; stds scale with 1/sqrt(fan-in)):
    q/k gamma N(0, 0.6^2), beta N(0, 0.3^2); ``in_proj`` N(0, in_proj_std^2), bias N(0, 0.1^2);
    ``out_proj`` N(0, 0.3^2), bias N(0, 0.1^2); relative-position table N(0, 0.6^2)."""
    per_d, per_h = (16 / gau.in_proj.in_features) ** 0.5, (12 / gau.out_proj.in_features) ** 0.5
    normal_(gau.qk_gamma, 0.6)
    normal_(gau.qk_beta, 0.3)
    normal_(gau.in_proj.weight, in_proj_std * per_d)
    normal_(gau.in_proj.bias, 0.1)
    normal_(gau.out_proj.weight, 0.3 * per_h)
    normal_(gau.out_proj.bias, 0.1)
    if getattr(gau, "rel_pos", None) is not None:
        normal_(gau.rel_pos.table, 0.6)


def strong_norm_weight_(normal_, name, p):
    """A norm parameter at strong weights: gains 1 + N(0, 0.2^2), biases N(0, 0.1^2)."""
    if name.endswith("bias"):
        normal_(p, 0.1)
    else:
        normal_(p, 0.2, mean=1.0)


def strong_weights_(layer, seed=0):
    """Re-draws, in place, the weights of one ``SeqBoatLayer`` so that every branch matters.
    At D=16, H=12 (projection stds scale with 1/sqrt(fan-in) for other sizes): q/k gamma N(0, 0.6^2),
    beta N(0, 0.3^2); ``gau.in_proj`` N(0, 0.4^2); ``gau.out_proj`` N(0, 0.3^2);
    relative-position table N(0, 0.6^2); router rows of ``hx_proj`` N(0, 1) (about half of the
    tokens active, gates not saturated), its always-on rows N(0, 0.2^2); norm gains
    1 + N(0, 0.2^2), norm biases N(0, 0.1^2). The MD-EMA keeps its initialisation.
    Drawn from a private generator (``seed``): independent of the global RNG and test order."""
    normal_ = weight_drawer(seed)
    per_d = (16 / layer.hx_proj.in_features) ** 0.5
    with torch.no_grad():
        strong_gau_weights_(normal_, layer.gau)
        logits = 0 if layer.router is None else 2  # hx_proj = [router logits (2) | always-on path (D)]
        normal_(layer.hx_proj.weight[:logits], 1.0 * per_d)
        normal_(layer.hx_proj.weight[logits:], 0.2 * per_d)
        normal_(layer.hx_proj.bias, 0.05)
        for name, p in layer.norm.named_parameters():
            strong_norm_weight_(normal_, name, p)
    return layer


def make_layer(*, dims=LAYER_DIMS, seed=0, dtype=torch.float32, **options):
    """A ``SeqBoatLayer(*dims, **options)`` in eval mode at weights where every branch matters
    (``strong_weights_``). Defaults: causal, window 3, softmax, simple bias, max_positions 32."""
    from seqboat_fairseq.modules import SeqBoatLayer

    opts = dict(bidirectional=False, window=3, truncation=None, norm_type="layernorm", prenorm=True,
                attention_activation="softmax", rel_pos="simple", max_positions=32)
    opts.update(options)
    layer = SeqBoatLayer(*dims, **opts)
    return strong_weights_(layer, seed).to(dtype).eval()


def decode_reordered_beams(layer, x, order, prefix):
    """fairseq's beam-search path through a causal layer: decodes ``x[:prefix]`` (``(L, B, D)``)
    one token at a time through ``incremental_state``, reorders the beams by ``order`` and decodes
    the rest. Returns ``(outputs of the rest, the input that these continue: x with its prefix
    reordered)``."""
    incremental_state = {}
    for t in range(prefix):
        layer(x[t:t + 1], incremental_state=incremental_state)
    layer.reorder_incremental_state(incremental_state, order)
    reordered = torch.cat([x[:prefix, order], x[prefix:]], dim=0)
    y_inc = torch.cat([layer(x[t:t + 1], incremental_state=incremental_state)[0] for t in range(prefix, len(x))])
    return y_inc, reordered


def seqboat_layers(module):
    """Every ``SeqBoatLayer`` in ``module`` (itself included)."""
    from seqboat_fairseq.modules import SeqBoatLayer

    return [m for m in module.modules() if isinstance(m, SeqBoatLayer)]


def _scale_gau_output_(layer, factor):
    layer.gau.out_proj.weight.mul_(factor)
    layer.gau.out_proj.bias.mul_(factor)


def _flip_positions_(layer):
    if getattr(layer.gau, "rel_pos", None) is not None:
        layer.gau.rel_pos.table.neg_()
    else:
        layer.gau.rotary = False


def _halve_queries_(layer):  # = a doubled attention normaliser (q is scaled by 1 / normaliser)
    layer.gau.qk_gamma[0].mul_(0.5)
    layer.gau.qk_beta[0].mul_(0.5)


# (name, in-place edit of one SeqBoatLayer): each removes or distorts one branch of the GAU
BRANCH_MUTATIONS = (
    ("GAU output zeroed", lambda layer: _scale_gau_output_(layer, 0.0)),
    ("GAU output scaled by 0.9", lambda layer: _scale_gau_output_(layer, 0.9)),
    ("position bias negated / rotary off", _flip_positions_),
    ("attention normaliser doubled", _halve_queries_),
)


def assert_branches_matter(what, module, run, atol, factor=100.0, mutations=BRANCH_MUTATIONS):
    """Asserts that every mutation in ``mutations``, applied to every ``SeqBoatLayer`` of a
    deep copy of ``module``, changes ``run(copy)`` (the quantity a test checks, any tensor) by
    at least ``factor * atol`` (max abs). ``module`` itself is left untouched.
    Returns ``{mutation: change}``."""
    import copy

    with torch.no_grad():
        baseline = run(module).detach().double()
    changes = {}
    for name, mutate in mutations:
        mutated = copy.deepcopy(module)
        layers = seqboat_layers(mutated)
        assert layers, f"{what}: no SeqBoatLayer to mutate"
        with torch.no_grad():
            for layer in layers:
                mutate(layer)
            out = run(mutated).detach().double()
        assert out.shape == baseline.shape
        change = (out - baseline).abs().max().item()
        assert change >= factor * atol, (
            f"{what}: {name} changes the checked quantity by only {change:.2e} < {factor:g} x tolerance "
            f"{atol:g}: the test cannot tell a broken GAU from a working one")
        changes[name] = change
    return changes


def assert_partially_active(active, padding_mask=None, window=None, what="activation"):
    """Every row routes some but not all of its real tokens to the GAU (and, with a working
    memory of ``window`` slots, more than ``window + 1`` of them, so the window binds).
    active, padding_mask: ``(B, L)`` bool."""
    valid = torch.ones_like(active) if padding_mask is None else ~padding_mask
    counts, lengths = (active & valid).sum(1), valid.sum(1)
    assert not (active & ~valid).any(), f"{what}: a pad is active"
    assert bool(((counts > 0) & (counts < lengths)).all()), \
        f"{what}: not partial per row: {counts.tolist()} of {lengths.tolist()} tokens active"
    if window is not None:
        assert bool((counts > window + 1).all()), f"{what}: window {window} never binds: {counts.tolist()} active"


def pytest_collection_modifyitems(items):
    """Every slow test that is not a learning check is an end-to-end run: ``-m e2e`` / ``-m learning``.
    Slow tests run first (otherwise in file order), so that under pytest-xdist the last tests that a
    worker takes are short ones and both workers finish together."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("learning"):
            item.add_marker(pytest.mark.e2e)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def assert_prep_error(capsys, main, error_prefix, argv, *fragments):
    """A data prep's ``main(argv)`` returns 2 and prints exactly one ``<prog>: error: ...`` line
    containing every fragment; returns that line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(error_prefix), err
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]
