"""The MEGA-chunk and SPADE baselines (docs/design.md 'Baselines'): chunked attention
against a dense block-diagonal reference, chunk boundaries, decoding equivalence (step and
forward_chunk == the parallel forward, per layer and for the whole LM), shapes, parameter counts
matched to the SeqBoat presets they are compared with, clear errors, and (slow) a few updates of
each LM baseline through fairseq-train, then fairseq-eval-lm and fairseq-interactive.

Every equivalence runs at weights where each branch matters and asserts it (``assert_matters``:
the conftest mutations of the GAU, plus removing the chunking / the MD-EMA branch / changing the
window), so a broken attention cannot pass.
"""

import copy
import itertools
import math
import os
import re

import pytest
import torch

from conftest import (BRANCH_MUTATIONS, LAYER_DIMS, PLUGIN_DIR, assert_close, build_lm, build_lra,
                      decode_reordered_beams, make_layer, run_module, strong_gau_weights_, strong_norm_weight_,
                      strong_weights_, weight_drawer)
from seqboat_fairseq.modules.gau import GatedAttentionUnit
from seqboat_fairseq.modules.local_attention import local_attention
from seqboat_fairseq.modules.positions import RelativePositionalBias
from seqboat_fairseq.modules.seqboat_layer import SeqBoatLayer
from seqboat_fairseq.modules.spade_layer import SpadeLayer
from test_incremental import chunked, state_numel, step_all
from test_no_host_sync import no_host_sync

D = LAYER_DIMS[0]
ATOL = 1e-5
# MEGA's relu2 / laplace normaliser is per chunk, 1 / (i mod c + 1) causal: the first query of a chunk is
# not scaled down at all, so at these weights relu2 outputs reach ~500, where fp32 rounding alone is
# ~1e-4. A relative tolerance of 1e-5 (about 100 ulp) joins the absolute one in the MEGA-chunk checks.
RTOL = 1e-5
MASK_VALUE = -5e4


# --------------------------------------------------------------------------- helpers
def strong_spade_weights_(layer: SpadeLayer, seed=0):
    """``conftest.strong_weights_`` for a SpadeLayer: the same draws for the GAU and the norms, except
    ``gau.in_proj`` N(0, 0.25^2) (a SPADE GAU reads the normalised input, of unit variance, where
    SeqBoat's reads the smaller SiLU(MD-EMA); 0.4 would put relu2 outputs in the hundreds), plus the
    merge of the two branches and the FFN at N(0, 0.3^2) (at D=16; stds scale with 1/sqrt(fan-in)),
    so that every branch moves the output. Private generator (``seed``)."""
    normal_ = weight_drawer(seed)
    with torch.no_grad():
        strong_gau_weights_(normal_, layer.gau, in_proj_std=0.25)
        if layer.merge is not None:
            normal_(layer.merge.weight, 0.3 * (16 / layer.merge.in_features) ** 0.5)
            normal_(layer.merge.bias, 0.05)
        if layer.ffn is not None:
            for fc in (layer.ffn.fc1, layer.ffn.fc2):
                normal_(fc.weight, 0.3 * (16 / fc.in_features) ** 0.5)
                normal_(fc.bias, 0.05)
        for name, p in layer.named_parameters():
            if ".norm." in f".{name}" and not name.startswith("gau."):
                strong_norm_weight_(normal_, name, p)
    return layer


def make_spade_layer(seed=0, **options):
    """A causal SpadeLayer at D, Z, H, N = LAYER_DIMS, window 3, FFN 8, in eval mode at strong weights."""
    opts = dict(global_branch=True, bidirectional=False, window=3, truncation=None, norm_type="layernorm",
                prenorm=True, attention_activation="softmax", rel_pos="simple", max_positions=32, ffn_dim=8)
    opts.update(options)
    return strong_spade_weights_(SpadeLayer(*LAYER_DIMS, **opts), seed).eval()


def make_mega_chunk_layer(**options):
    """A MEGA-chunk layer (always active, chunks of c = 4) at conftest's strong weights."""
    return make_layer(**dict(dict(always_active=True, chunked=True, window=4, max_positions=32), **options))


def gau_layers(module):
    """Every layer holding a GAU (SeqBoatLayer and SpadeLayer), ``module`` itself included."""
    return [m for m in module.modules() if isinstance(getattr(m, "gau", None), GatedAttentionUnit)]


def on_layers(edit, which=lambda layer: True):
    def mutate(module):
        for layer in gau_layers(module):
            if which(layer):
                edit(layer)
    return mutate


GAU_MUTATIONS = tuple((name, on_layers(edit)) for name, edit in BRANCH_MUTATIONS)
CHUNK_MUTATIONS = GAU_MUTATIONS + (
    ("chunks replaced by a sliding window of c", on_layers(lambda layer: setattr(layer.gau, "chunked", False))),
)


def _drop_ema_branch(layer):
    layer.merge.weight[:, :layer.embed_dim].zero_()


SPADE_MUTATIONS = GAU_MUTATIONS + (
    ("window widened by 2", on_layers(lambda layer: setattr(layer.gau, "window", layer.gau.window + 2))),
    ("MD-EMA branch dropped", on_layers(_drop_ema_branch, lambda layer: getattr(layer, "merge", None) is not None)),
)


def assert_matters(what, module, run, atol, mutations, factor=100.0):
    """Like ``conftest.assert_branches_matter``, for any layer holding a GAU: every mutation (an
    in-place edit of a deep copy of ``module``) changes ``run(copy)`` by >= factor * atol."""
    with torch.no_grad():
        baseline = run(module).detach().double()
    changes = {}
    for name, mutate in mutations:
        mutated = copy.deepcopy(module)
        with torch.no_grad():
            mutate(mutated)
            out = run(mutated).detach().double()
        change = (out - baseline).abs().max().item()
        assert change >= factor * atol, (
            f"{what}: {name} changes the checked quantity by only {change:.2e} < {factor:g} x {atol:g}: "
            "the test cannot tell a broken layer from a working one")
        changes[name] = change
    return changes


def pieces(layer, x, sizes, pad=None):
    """Decodes x (T, B, D) in pieces of the given sizes from a fresh state (size 1: ``step``, more:
    ``forward_chunk``), with the padding mask ``pad`` (B, T). Returns the outputs (T, B, D)."""
    state, ys, start = layer.init_state(x.size(1)), [], 0
    for size in sizes:
        piece_pad = None if pad is None else pad[:, start:start + size]
        if size == 1:
            y, _, state = layer.step(x[start], state, None if piece_pad is None else piece_pad[:, 0])
            y = y.unsqueeze(0)
        else:
            y, _, state = layer.forward_chunk(x[start:start + size], state, piece_pad)
        ys.append(y)
        start += size
    assert start == x.size(0)
    return torch.cat(ys)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- chunked attention
def dense_chunked_reference(q, k, v, key_valid, *, chunk, causal, activation, positions=None, bias=None):
    """Dense float64 attention with a block-diagonal mask, written from the definition: query i
    may attend to valid key j iff i // c == j // c (and j <= i causal); relu2 / laplace divide q by
    the number of keys the query may see in its chunk (i mod c + 1 causal, valid keys of the chunk
    bidirectional)."""
    q, k, v = q.double(), k.double(), v.double()
    slots, zdim = q.shape[1], q.shape[2]
    i = torch.arange(slots).unsqueeze(1)
    j = torch.arange(slots).unsqueeze(0)
    same_chunk = (i // chunk) == (j // chunk)
    allowed = same_chunk & (j <= i) if causal else same_chunk
    mask = allowed.unsqueeze(0) & key_valid.unsqueeze(1)
    if activation == "softmax":
        q = q / math.sqrt(zdim)
    elif causal:
        q = q / (i % chunk + 1).double().unsqueeze(0)
    else:
        seen = (same_chunk.unsqueeze(0) & key_valid.unsqueeze(1)).sum(-1).clamp(min=1)  # (B, C)
        q = q / seen.double().unsqueeze(-1)
    scores = q @ k.transpose(1, 2)
    if bias is not None:
        scores = scores + bias(positions.unsqueeze(1) - positions.unsqueeze(2)).double()
    if activation == "softmax":
        weights = torch.softmax(torch.where(mask, scores, torch.full_like(scores, MASK_VALUE)), -1)
    elif activation == "relu2":
        weights = torch.where(mask, torch.relu(scores) ** 2, torch.zeros_like(scores))
    else:
        mu, sigma = math.sqrt(0.5), math.sqrt(1.0 / (4 * math.pi))
        weights = torch.where(mask, 0.5 * (1 + torch.erf((scores - mu) / (sigma * math.sqrt(2)))),
                              torch.zeros_like(scores))
    return weights @ v


@pytest.mark.parametrize("activation", ["softmax", "relu2", "laplace"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("slots,chunk", [(13, 4), (16, 4), (3, 8), (9, 1)],
                         ids=["ragged", "multiple", "shorter-than-chunk", "chunk1"])
def test_chunked_attention_equals_dense_block_diagonal_reference(activation, causal, slots, chunk):
    bsz, zdim, hdim = 3, 8, 6
    q, k = torch.randn(bsz, slots, zdim) * 1.5, torch.randn(bsz, slots, zdim) * 1.5
    v = torch.randn(bsz, slots, hdim)
    key_valid = torch.arange(slots).unsqueeze(0) < torch.tensor([slots, slots - 2, max(slots - 5, 1)]).unsqueeze(1)
    positions = torch.sort(torch.randperm(3 * slots)[:slots]).values.expand(bsz, slots)  # gaps, as compressed
    bias = RelativePositionalBias.simple(3 * slots)
    with torch.no_grad():
        bias.table.normal_(0, 0.6)
    kw = dict(causal=causal, activation=activation, positions=positions, bias=bias)
    out = local_attention(q, k, v, key_valid, window=chunk, chunked=True, **kw)
    ref = dense_chunked_reference(q, k, v, key_valid, chunk=chunk, **kw)
    real = key_valid.unsqueeze(-1).expand_as(ref)  # outputs of invalid query slots are junk by contract
    assert_close("chunked vs dense", out[real], ref[real], atol=ATOL, rtol=1e-5)  # fp32 scores vs float64
    if slots > chunk:  # the chunks matter: the window attention of the same span crosses their boundaries
        window = local_attention(q, k, v, key_valid, window=chunk, **kw)
        assert (window - out)[real].abs().max() > 100 * ATOL


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
def test_no_attention_across_a_chunk_boundary(bidirectional):
    """Perturbing the tokens of chunk 1 (their queries, keys and values) changes the GAU output of
    chunk 1 and nothing else: not the next chunk's, nor (bidirectional) the previous chunk's; in
    the parallel pass and, causal, when decoding token by token (the chunk's memory is reset at the
    boundary). A sliding window of the same span does cross the boundary (the control)."""
    layer = make_mega_chunk_layer(bidirectional=bidirectional, rel_pos="simple")
    gau, c = layer.gau, layer.window
    s = torch.randn(2, 14, D) * 0.5
    active = torch.ones(2, 14, dtype=torch.bool)
    perturbed = s.clone()
    perturbed[:, c:2 * c] += torch.randn(2, c, D)
    with torch.no_grad():
        out, out_p = gau(s, active), gau(perturbed, active)
    others = torch.cat([out[:, :c], out[:, 2 * c:]], 1), torch.cat([out_p[:, :c], out_p[:, 2 * c:]], 1)
    assert torch.equal(*others), f"a change in chunk 1 crossed a chunk boundary: {(others[0] - others[1]).abs().max()}"
    assert (out_p[:, c:2 * c] - out[:, c:2 * c]).abs().max() > 1e-2
    window = copy.deepcopy(gau)
    window.chunked = False
    with torch.no_grad():
        crossed = (window(perturbed, active) - window(s, active))[:, 2 * c:].abs().max()
    assert crossed > 1e-2, "control: a sliding window of c sees the previous chunk"
    if bidirectional:
        return
    outs = []
    for inputs in (s, perturbed):
        state, ys = gau.init_state(2), []
        with torch.no_grad():
            for t in range(14):
                ys.append(gau.step(inputs[:, t], active[:, t], torch.full((2,), t), state, max_count=t + 1))
        outs.append(torch.stack(ys, 1))
        assert_close("GAU steps vs parallel", outs[-1], gau(inputs, active), atol=ATOL)
    assert torch.equal(outs[0][:, 2 * c:], outs[1][:, 2 * c:])
    assert state["key"].shape[1] == c, "the decoding memory is one chunk of c slots"


# --------------------------------------------------------------------------- MEGA-chunk decoding
POSITIONS = [("simple", False), ("rotary", False), ("simple", True)]
MEGA_CONFIGS = [dict(attention_activation=a, rel_pos=p, local_pos=lp, truncation=tr)
                for (a, (p, lp)), tr in zip(itertools.product(["softmax", "relu2", "laplace"], POSITIONS),
                                            itertools.cycle([None, 6]))]


def _id(cfg):
    pos = "local_pos" if cfg["local_pos"] else cfg["rel_pos"]
    return f"{cfg['attention_activation']}-{pos}-trunc{cfg['truncation']}"


def parallel(x, pad=None):
    return lambda layer: layer(x, pad)[0]


@pytest.mark.parametrize("cfg", MEGA_CONFIGS, ids=[_id(c) for c in MEGA_CONFIGS])
def test_mega_chunk_layer_decodes_as_the_parallel_forward(cfg):
    """Steps, and prompts + steps with pieces that start and end inside chunks or on their
    boundaries, equal the parallel forward over 30 tokens (7.5 chunks of c = 4); the state stays one
    chunk of c slots (plus the MD-EMA's)."""
    layer = make_mega_chunk_layer(**cfg)
    x = torch.randn(30, 3, D)
    y_par, activation = layer(x)
    assert activation.active.all() and layer.router is None
    y_steps, _, _, sizes = step_all(layer, x)
    assert_close("steps vs parallel", y_steps, y_par, atol=ATOL, rtol=RTOL)
    assert len(set(sizes)) == 1, f"constant state size expected, got {sizes}"
    for sizes in [(9, 1, 6, 9, 1, 1, 3), (4, 1, 3, 8, 14), (30,)]:
        y_chunks, _ = chunked(layer, x, sizes)
        assert_close(f"pieces {sizes}", y_chunks, y_steps, atol=ATOL, rtol=RTOL)
    assert_matters(_id(cfg), layer, parallel(x), ATOL, CHUNK_MUTATIONS)


def test_mega_chunk_left_padded_prompt():
    """A left-padded row: chunks are counted over its real tokens (activation ranks), in the
    parallel pass and when decoding."""
    layer = make_mega_chunk_layer(rel_pos="rotary", attention_activation="relu2")
    x = torch.randn(18, 2, D)
    pad = torch.zeros(2, 18, dtype=torch.bool)
    pad[1, :5] = True
    y_par, activation = layer(x, pad)
    assert torch.equal(activation.active, ~pad)
    y_inc, _, _, _ = step_all(layer, x, pad)
    real = ~pad.t()
    assert_close("padded steps", y_inc[real], y_par[real], atol=ATOL, rtol=RTOL)
    y_pieces = pieces(layer, x, (7, 1, 10), pad)
    assert_close("padded pieces", y_pieces[real], y_par[real], atol=ATOL, rtol=RTOL)
    alone, _ = layer(x[5:, 1:2])  # row 1 without its pads (rotary: only offsets matter)
    assert_close("padded row vs alone", y_par[5:, 1], alone[:, 0], atol=ATOL, rtol=RTOL)
    assert_matters("padded", layer, lambda m: parallel(x, pad)(m)[real], ATOL, CHUNK_MUTATIONS)


# --------------------------------------------------------------------------- SPADE decoding
SPADE_CONFIGS = [dict(global_branch=g, attention_activation=a, rel_pos=p, local_pos=lp,
                      truncation=6 if g and a == "relu2" else None)
                 for g, a, (p, lp) in itertools.product([True, False], ["softmax", "relu2", "laplace"], POSITIONS)]


def _spade_id(cfg):
    pos = "local_pos" if cfg["local_pos"] else cfg["rel_pos"]
    kind = "global" if cfg["global_branch"] else "local"
    return f"{kind}-{cfg['attention_activation']}-{pos}-trunc{cfg['truncation']}"


@pytest.mark.parametrize("cfg", SPADE_CONFIGS, ids=[_spade_id(c) for c in SPADE_CONFIGS])
def test_spade_layer_decodes_as_the_parallel_forward(cfg):
    """The bottom (MD-EMA + window attention) and upper (window attention + FFN) SPADE layers:
    steps and prompt pieces equal the parallel forward; the state is the w + 1 slot ring (plus the
    MD-EMA's in the bottom layer), constant in size."""
    layer = make_spade_layer(**cfg)
    x = torch.randn(30, 3, D)
    y_par, activation = layer(x)
    assert activation.active.all()
    y_steps, _, _, sizes = step_all(layer, x)
    assert_close("steps vs parallel", y_steps, y_par, atol=ATOL)
    assert len(set(sizes)) == 1
    for sizes in [(9, 1, 6, 9, 1, 1, 3), (30,)]:
        y_chunks, _ = chunked(layer, x, sizes)
        assert_close(f"pieces {sizes}", y_chunks, y_steps, atol=ATOL)
    mutations = SPADE_MUTATIONS if cfg["global_branch"] else SPADE_MUTATIONS[:-1]
    assert_matters(_spade_id(cfg), layer, parallel(x), ATOL, mutations)


@pytest.mark.parametrize("variant", ["postnorm", "padded", "chunked"])
def test_spade_layer_variants_decode_as_the_parallel_forward(variant):
    kw = {"postnorm": dict(prenorm=False, norm_type="rmsnorm"), "padded": {},
          "chunked": dict(chunked=True, window=4)}[variant]
    layer = make_spade_layer(rel_pos="rotary", truncation=5, **kw)
    x = torch.randn(14, 2, D)
    pad = None
    if variant == "padded":
        pad = torch.zeros(2, 14, dtype=torch.bool)
        pad[1, :4] = True
    y_par, _ = layer(x, pad)
    y_inc, _, _, _ = step_all(layer, x, pad)
    real = slice(None) if pad is None else ~pad.t()
    assert_close(variant, y_inc[real], y_par[real], atol=ATOL)
    y_pieces = pieces(layer, x, (5, 1, 8), pad)
    assert_close(f"{variant} pieces", y_pieces[real], y_par[real], atol=ATOL)
    mutations = CHUNK_MUTATIONS if variant == "chunked" else SPADE_MUTATIONS
    assert_matters(variant, layer, lambda m: m(x, pad)[0][real], ATOL, mutations)


@pytest.mark.parametrize("kind", ["mega_chunk", "spade"])
def test_beam_reorder_follows_the_beams(kind):
    layer = make_mega_chunk_layer(rel_pos="rotary", truncation=4) if kind == "mega_chunk" else \
        make_spade_layer(rel_pos="rotary", truncation=4)
    x = torch.randn(10, 3, D)
    y_inc, new_x = decode_reordered_beams(layer, x, torch.tensor([2, 0, 0]), prefix=6)
    assert_close("after reorder", y_inc, layer(new_x)[0][6:], atol=ATOL)
    assert (y_inc[:, 0] - layer(x)[0][6:, 0]).abs().max() > 100 * ATOL


@pytest.mark.parametrize("kind", ["mega_chunk", "spade_global", "spade_local"])
def test_decoding_step_has_no_host_sync(kind):
    layer = {"mega_chunk": lambda: make_mega_chunk_layer(truncation=6, rel_pos="rotary"),
             "spade_global": lambda: make_spade_layer(truncation=6, local_pos=True, attention_activation="relu2"),
             "spade_local": lambda: make_spade_layer(global_branch=False)}[kind]()
    state = layer.init_state(3)
    x = torch.randn(12, 3, D)
    pad = torch.zeros(3, 12, dtype=torch.bool)
    pad[1, 10:] = True
    with torch.no_grad():
        layer.forward_chunk(x[:5], state, pad[:, :5])
        with no_host_sync():
            for t in range(5, 12):
                y, activation, state = layer.step(x[t], state, pad[:, t])
    assert y.shape == (3, D) and activation.active.shape == (3, 1)


# --------------------------------------------------------------------------- whole models
def strong_model_weights_(model):
    for i, layer in enumerate(gau_layers(model)):
        (strong_weights_ if isinstance(layer, SeqBoatLayer) else strong_spade_weights_)(layer, seed=i)
    return model.eval()


@pytest.mark.parametrize("arch,extra", [
    ("mega_chunk_lm_tiny", []),
    ("mega_chunk_lm_tiny", ["--rel-pos-bias", "simple", "--local-pos", "--attention-activation-fn", "laplace"]),
    ("spade_lm_tiny", []),
    ("spade_lm_tiny", ["--rel-pos-bias", "simple", "--truncation-length", "7", "--attention-activation-fn", "relu2"]),
], ids=["mega_chunk", "mega_chunk-localpos-laplace", "spade", "spade-simple-trunc-relu2"])
def test_lm_decoder_incremental_equals_full_forward(lm_dir, arch, extra):
    """fairseq's convention (the whole prefix at every step): a 5-token prompt, then single steps,
    give the full forward's logits at every position, across many chunks / windows of 4."""
    atol = 1e-4
    model, _, _ = build_lm(lm_dir, "--arch", arch, "--decoder-chunk-size", "4", "--max-target-positions", "40",
                           "--tokens-per-sample", "40", *extra)
    strong_model_weights_(model)
    tokens = torch.randint(4, 260, (2, 40))
    full, extra_out = model(tokens)
    assert full.shape == (2, 40, 260)
    assert all(a.active.all() for a in extra_out["activations"]), "baselines run every token"
    incremental_state = {}
    logits, _ = model(tokens[:, :5], incremental_state=incremental_state)
    steps = [logits]
    for t in range(6, 41):
        logits, _ = model(tokens[:, :t], incremental_state=incremental_state)
        steps.append(logits)
    assert_close("incremental logits", torch.cat(steps, dim=1), full, atol=atol, rtol=RTOL)
    mutations = CHUNK_MUTATIONS if arch.startswith("mega") else SPADE_MUTATIONS
    assert_matters(arch, model, lambda m: m(tokens)[0], atol, mutations)


def test_mega_chunk_simple_bias_runs_past_max_target_positions(lm_dir):
    """MEGA-chunk with the learned ``simple`` bias: a chunk of c consecutive tokens needs offsets up
    to c - 1 only, so --max-target-positions 12 (a table of 23 offsets) runs 40 tokens. The output
    equals that of a model whose table covers all 40 positions (the same entries for |offset| < 12,
    random beyond: never read), and chunk-by-chunk decoding (c tokens per call) equals the full
    forward. A SeqBoat router with chunked attention keeps the limit (its chunks of activated tokens
    may span the sequence)."""
    c, limit, length, atol = 4, 12, 40, 1e-4
    common = ["--arch", "mega_chunk_lm_tiny", "--rel-pos-bias", "simple", "--decoder-chunk-size", str(c)]
    model = strong_model_weights_(build_lm(lm_dir, *common, "--max-target-positions", str(limit),
                                           "--tokens-per-sample", str(length))[0])
    assert model.decoder.position_limit is None and length > limit
    wide = build_lm(lm_dir, *common, "--max-target-positions", str(length), "--tokens-per-sample", str(length))[0]
    with torch.no_grad():
        for (name, param), ours in zip(wide.named_parameters(), model.parameters()):
            if name.endswith("rel_pos.table"):
                param.normal_(0.0, 5.0)  # entries the short table does not have: must not matter
                param[length - limit: length + limit - 1] = ours  # centres: length - 1 and limit - 1
            else:
                param.copy_(ours)
    wide.eval()
    offsets = []
    hook = RelativePositionalBias.forward

    def recording(self, offset):
        offsets.append(offset.abs().max().item())
        return hook(self, offset)

    RelativePositionalBias.forward = recording
    spade = strong_model_weights_(build_lm(lm_dir, "--arch", "spade_lm_tiny", "--chunked-attention", *common[2:],
                                           "--max-target-positions", str(limit), "--tokens-per-sample", str(length))[0])
    assert spade.decoder.position_limit is None  # chunked SPADE: no router either
    try:
        tokens = torch.randint(4, 260, (2, length))
        spade(tokens)
        assert offsets and max(offsets) == c - 1
        offsets.clear()
        full, _ = model(tokens)
    finally:
        RelativePositionalBias.forward = hook
    assert offsets and max(offsets) == c - 1  # the table is read at offsets inside a chunk only
    assert_close("table of 12 vs 40 positions", full, wide(tokens)[0], atol=atol, rtol=RTOL)
    incremental_state, steps = {}, []
    for end in range(c, length + 1, c):
        steps.append(model(tokens[:, :end], incremental_state=incremental_state)[0])
    assert_close("chunk by chunk vs full forward", torch.cat(steps, dim=1), full, atol=atol, rtol=RTOL)
    assert_matters("mega_chunk simple, 40 > 12 positions", model, lambda m: m(tokens)[0], atol, CHUNK_MUTATIONS)

    router = build_lm(lm_dir, "--arch", "seqboat_lm_tiny", "--chunked-attention", *common[2:],
                      "--max-target-positions", str(limit), "--tokens-per-sample", str(limit))[0]
    assert router.decoder.position_limit == limit
    with pytest.raises(ValueError, match=r"--decoder-chunk-size 16 exceeds --max-target-positions 12: the learned "
                                         r"relative-position bias .* covers offsets up to 12 - 1"):
        build_lm(lm_dir, *common[:-1], "16", "--max-target-positions", str(limit), "--tokens-per-sample", "40")


def _report(name, seqboat, baseline):
    ratio = baseline / seqboat
    print(f"{name:28s} baseline {baseline:>12,d}  seqboat {seqboat:>12,d}  ratio {ratio:.5f}")
    return ratio


@pytest.mark.parametrize("size", ["tiny", "enwik8_base"])
def test_lm_parameter_counts_match_seqboat(lm_dir, size):
    """Both baselines within 1 % of the SeqBoat LM preset they are compared with (printed; in fact
    MEGA-chunk is 0.3 % / 0.04 % smaller, its missing router, and SPADE within 0.01 %)."""
    def build(arch):
        with torch.device("meta"):
            return build_lm(lm_dir, "--arch", arch, "--tokens-per-sample", "1024")[0]

    seqboat = build(f"seqboat_lm_{size}")
    mega, spade = build(f"mega_chunk_lm_{size}"), build(f"spade_lm_{size}")
    for name, model in (("mega_chunk", mega), ("spade", spade)):
        assert abs(_report(f"{name}_lm_{size}", n_params(seqboat), n_params(model)) - 1) < 0.01
    layers = seqboat.decoder.layers
    assert len(mega.decoder.layers) == len(spade.decoder.layers) == len(layers)
    for ours, theirs in zip(mega.decoder.layers, layers):
        assert ours.router is None and ours.gau.chunked and ours.window == theirs.window
        assert n_params(theirs) - n_params(ours) == 2 * (layers[0].embed_dim + 1) + 1  # the router
    assert [layer.global_branch for layer in spade.decoder.layers] == [True] + [False] * (len(layers) - 1)
    assert all(layer.window == layers[0].window and layer.ffn is not None for layer in spade.decoder.layers)


LRA_TASKS = ["listop", "imdb", "aan", "cifar10", "pf32", "pf128"]


def _lra_build(lra_dirs, task, arch, *extra):
    image = task in ("cifar10", "pf32", "pf128")
    directory = lra_dirs["image" if image else ("aan" if task == "aan" else "text")]
    return build_lra(directory, "lra-image" if image else "lra-text", "--arch", arch, *extra)[0]


@pytest.mark.parametrize("task", LRA_TASKS)
def test_lra_parameter_counts_match_seqboat(lra_dirs, task):
    """Each LRA baseline within 1 % of the SeqBoat preset of its task (printed; in fact MEGA-chunk is
    0.15-0.25 % smaller, its missing router, and SPADE within 0.04 %); same depth, width and span
    (c = w), bidirectional."""
    with torch.device("meta"):
        seqboat, mega, spade = (_lra_build(lra_dirs, task, f"{kind}_lra_{task}")
                                for kind in ("seqboat", "mega_chunk", "spade"))
    for name, model in (("mega_chunk", mega), ("spade", spade)):
        assert abs(_report(f"{name}_lra_{task}", n_params(seqboat), n_params(model)) - 1) < 0.01
    w = seqboat.encoder.layers[0].window
    assert all(l.router is None and l.gau.chunked and l.window == w and not l.gau.causal for l in mega.encoder.layers)
    assert [l.global_branch for l in spade.encoder.layers] == [True] + [False] * (len(spade.encoder.layers) - 1)
    assert all(l.window == w and not l.gau.causal for l in spade.encoder.layers)


@pytest.mark.parametrize("arch", ["mega_chunk_lra_listop", "spade_lra_listop", "mega_chunk_lra_imdb",
                                  "spade_lra_imdb"])
def test_lra_baselines_classify_padded_batches(lra_dirs, arch):
    """Full-size presets on short padded documents: logits of the task's classes, every real token
    active, and a row's logits independent of its batch mates' padding."""
    task = arch.rsplit("_", 1)[1]
    model = _lra_build(lra_dirs, task, arch, "--chunk-size", "8").eval()  # several chunks / windows in 40 tokens
    tokens = torch.randint(4, 19, (3, 40))
    tokens[1, 30:] = 1  # pad
    lengths = torch.tensor([40, 30, 40])
    with torch.no_grad():
        logits, extra = model(tokens, lengths)
        alone, _ = model(tokens[1:2, :30], lengths[1:2])
    assert logits.shape == (3, 10 if task == "listop" else 2)
    assert all(torch.equal(a.active, tokens.ne(1)) for a in extra["activations"][0])
    assert_close("row alone vs padded in a batch", alone[0], logits[1], atol=1e-5)


def test_option_errors_name_the_flag(lm_dir, lra_dirs):
    with pytest.raises(ValueError, match=r"--chunked-attention .* positive --decoder-chunk-size, not -1"):
        build_lm(lm_dir, "--arch", "mega_chunk_lm_tiny", "--decoder-chunk-size", "-1")
    with pytest.raises(ValueError, match=r"--chunked-attention .* positive --chunk-size, not -1"):
        _lra_build(lra_dirs, "listop", "mega_chunk_lra_listop", "--chunk-size", "-1")
    with pytest.raises(ValueError, match=r"--arch spade_lra_cifar10 is a preset for image input"):
        _lra_build(lra_dirs, "listop", "spade_lra_cifar10")


# --------------------------------------------------------------------------- the stock tools (slow)
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mega_chunk_lm_tiny", "spade_lm_tiny"])
def test_fairseq_train_eval_lm_and_interactive(pydoc_data_bin, tmp_path, arch):
    """A few updates through fairseq-train (activation rates logged: 1, every token runs the
    attention), then fairseq-eval-lm (better than uniform) and fairseq-interactive (beam search
    through the incremental decoder) on the checkpoint."""
    save = tmp_path / "checkpoints"
    log = run_module("fairseq_cli.train", pydoc_data_bin, "--user-dir", PLUGIN_DIR, "--task", "language_modeling",
                     "--arch", arch, "--criterion", "seqboat_cross_entropy", "--tokens-per-sample", "64",
                     "--batch-size", "4", "--optimizer", "adam", "--lr", "3e-3", "--max-update", "12",
                     "--log-interval", "1", "--log-format", "simple", "--disable-validation", "--no-epoch-checkpoints",
                     "--save-dir", save, "--cpu", "--num-workers", "0")
    log = log.stdout + log.stderr
    assert re.search(r"num_updates[= ]12", log) or "done training" in log, log[-2000:]
    assert re.search(r"act_rate=1(\.0+)?\b", log), log[-2000:]
    ckpt = save / "checkpoint_last.pt"
    out = run_module("fairseq_cli.eval_lm", pydoc_data_bin, "--user-dir", PLUGIN_DIR, "--path", ckpt,
                     "--gen-subset", "valid", "--tokens-per-sample", "64", "--batch-size", "4", "--cpu")
    out = out.stdout + out.stderr
    # uniform over the 260 symbols is 8.02 bits; the untrained SPADE (a residual stack with tied embeddings,
    # predicting its input byte) starts near 10 and is below 8 after about ten updates
    assert 0.0 < float(re.search(r"Loss \(base 2\): ([\d.]+)", out).group(1)) < 8.0, out[-2000:]
    out = run_module("fairseq_cli.interactive", pydoc_data_bin, "--user-dir", PLUGIN_DIR, "--task",
                     "language_modeling", "--path", ckpt, "--bpe", "enwik8_bytes", "--max-len-b", "20",
                     "--beam", "2", "--cpu", stdin="The function\n")
    out = out.stdout + out.stderr
    assert re.search(r"^D-0\t\S+\tThe function", out, flags=re.M), out[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mega_chunk_lra_pf32", "spade_lra_pf32"])
def test_lra_baseline_trains_and_tests_through_the_lra_tools(tmp_path, arch):
    """data_prep/lra.py -> fairseq-train (6 updates, small widths) -> examples/lra/test.sh, as for SeqBoat."""
    from test_data_prep_lra import make_pathfinder
    from test_lra_cli import _train_and_test, run

    make_pathfinder(tmp_path / "raw", resolution=32, per_file=(8, 8, 8, 8, 8, 8))
    data = tmp_path / "pf32"
    run([os.path.join(os.path.dirname(PLUGIN_DIR), "data_prep", "lra.py"), "pathfinder", "--input-dir",
         tmp_path / "raw", "--resolution", "32", "--destdir", data])
    log = _train_and_test(data, tmp_path / "ckpt", "lra-image", arch, ["--pixel-normalization", "0.5", "0.5"])
    assert re.search(r"valid on 'valid' subset \|.*\| act_rate 1(\.0+)? ", log), log[-3000:]
