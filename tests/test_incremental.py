"""Incremental decoding == the parallel causal forward: per layer and for the whole LM.

Only the public decoding API is used (``init_state`` / ``step`` / ``forward_chunk`` /
``incremental_state`` / ``reorder_incremental_state``); the state is opaque here (its layout
belongs to the layer), and a state is never reused after it was passed on (decoding may
update it in place). Every equivalence runs at weights where each branch matters and asserts
it (``conftest.assert_branches_matter``).
"""

import itertools

import pytest
import torch

from conftest import (LAYER_DIMS, assert_branches_matter, assert_close, assert_partially_active, build_lm,
                      decode_reordered_beams, make_layer, strong_weights_, write_byte_dictionary)
from seqboat_fairseq.modules import SeqBoatLayer
from seqboat_fairseq.modules.sma import forced_activation

D = LAYER_DIMS[0]
ATOL = 1e-5


def causal_layer(**kw):
    return make_layer(**dict(dict(bidirectional=False, window=3, max_positions=8), **kw))


def state_numel(state):
    """Elements held by a decoding state of any layout (tensors in nested containers)."""
    if torch.is_tensor(state):
        return state.numel()
    if isinstance(state, dict):
        return sum(state_numel(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_numel(v) for v in state)
    if hasattr(state, "__dict__"):
        return sum(state_numel(v) for v in vars(state).values())
    return 0


def step_all(layer, x, pad=None, state=None):
    """Feeds x (T, B, D) one token at a time through ``layer.step``, from ``state`` (consumed)
    or a fresh one. Returns (outputs (T, B, D), final state, active (B, T), state size per step)."""
    state = state if state is not None else layer.init_state(x.size(1))
    ys, acts, sizes = [], [], []
    for t in range(x.size(0)):
        y, act, state = layer.step(x[t], state, None if pad is None else pad[:, t])
        ys.append(y)
        acts.append(act.active)
        sizes.append(state_numel(state))
    return torch.stack(ys), state, torch.cat(acts, dim=1), sizes


def parallel(x, pad=None, decide=None):
    """run(layer) for ``assert_branches_matter``: the parallel forward's output, with the routing
    decisions overridden by ``decide`` if given."""
    def run(layer):
        if decide is None:
            return layer(x, pad)[0]
        with forced_activation(layer, decide):
            return layer(x, pad)[0]
    return run


def row_2_skips_everything(active):
    active[2] = False
    return active


CONFIGS = [
    dict(attention_activation=a, rel_pos=p, local_pos=lp, window=w, truncation=tr)
    for a, (p, lp), w, tr in itertools.product(
        ["softmax", "relu2", "laplace"], [("simple", False), ("rotary", False), ("simple", True)],
        [3, None], [None, 6])
    if not (lp and w is None)  # local_pos needs a working memory
]


def _id(c):
    pos = "local_pos" if c["local_pos"] else c["rel_pos"]
    return f"{c['attention_activation']}-{pos}-w{c['window']}-trunc{c['truncation']}"


@pytest.mark.parametrize("cfg", CONFIGS, ids=[_id(c) for c in CONFIGS])
def test_steps_equal_parallel_forward(cfg):
    """Every step equals the parallel forward, after more than w activations, beyond
    max_positions (8 < 30 tokens), with a row that activates nothing."""
    layer = causal_layer(**cfg)
    x = torch.randn(30, 3, D)
    with forced_activation(layer, row_2_skips_everything):
        y_par, act_par = layer(x)
        y_inc, _, active, sizes = step_all(layer, x)
    assert torch.equal(active, act_par.active)
    assert_partially_active(act_par.active[:2], window=2 * 3)  # exceeds the working memory several times
    assert not act_par.active[2].any()
    assert_close("incremental vs parallel", y_inc, y_par, atol=ATOL)
    assert_branches_matter(_id(cfg), layer, parallel(x, decide=row_2_skips_everything), ATOL)
    if cfg["window"] is not None:
        assert len(set(sizes[10:])) == 1, f"a working memory of w slots: constant state size, got {sizes}"


@pytest.mark.parametrize("variant", ["always_active", "postnorm", "padded"])
def test_steps_equal_parallel_variants(variant):
    kw = {"always_active": dict(always_active=True), "postnorm": dict(prenorm=False, norm_type="rmsnorm"),
          "padded": {}}[variant]
    layer = causal_layer(rel_pos="rotary", **kw)
    x = torch.randn(14, 2, D)
    pad = None
    if variant == "padded":
        pad = torch.zeros(2, 14, dtype=torch.bool)
        pad[1, :4] = True  # a left-padded prompt
    y_par, _ = layer(x, pad)
    y_inc, _, _, _ = step_all(layer, x, pad)
    real = slice(None) if pad is None else ~pad.t()
    assert_close(variant, y_inc[real], y_par[real], atol=ATOL)
    assert_branches_matter(variant, layer, lambda m: parallel(x, pad)(m)[real], ATOL)


def chunked(layer, x, sizes):
    """Decodes x (T, B, D) in pieces of the given sizes from a fresh state: a size-1 piece
    through ``step``, larger ones through ``forward_chunk``. Returns (outputs, final state)."""
    state = layer.init_state(x.size(1))
    ys, start = [], 0
    for size in sizes:
        if size == 1:
            y, _, state = layer.step(x[start], state)
            y = y.unsqueeze(0)
        else:
            y, _, state = layer.forward_chunk(x[start:start + size], state)
        ys.append(y)
        start += size
    assert start == x.size(0)
    return torch.cat(ys), state


@pytest.mark.parametrize("window,truncation", [(3, None), (3, 5), (None, None)], ids=["w3", "w3-trunc5", "full"])
@pytest.mark.parametrize("rel_pos,local_pos", [("simple", False), ("simple", True), ("rotary", False)],
                         ids=["simple", "local_pos", "rotary"])
def test_prefill_leaves_the_same_state_as_stepping(window, truncation, rel_pos, local_pos):
    """Prefill (forward_chunk), then steps and more chunks, == token by token == the parallel
    forward. The states are compared by what they do: decoding continues from the chunked
    state exactly as from the stepped one (same outputs for 10 more tokens)."""
    if local_pos and window is None:
        pytest.skip("local_pos needs a working memory")
    layer = causal_layer(window=window, truncation=truncation, rel_pos=rel_pos, local_pos=local_pos)
    x = torch.randn(35, 3, D)
    y_par, act = layer(x)
    assert_partially_active(act.active, window=window)
    y_steps, _, _, _ = step_all(layer, x)
    assert_close("steps vs parallel", y_steps, y_par, atol=ATOL)
    for sizes in [(9, 1, 6, 9, 1, 1, 8), (25, 10), (35,)]:  # prefill; a step; chunks continuing the state
        y_chunks, _ = chunked(layer, x, sizes)
        assert_close(f"chunks {sizes}", y_chunks, y_steps, atol=ATOL)
    assert_branches_matter("prefill", layer, parallel(x), ATOL)


def test_rows_at_different_rates_decode_as_if_alone():
    """Rows that fill their working memory at different rates (row 0 activates every token,
    row 1 what its router picks, row 2 nothing): each row's stepped outputs equal the parallel
    forward and its own decoding alone, so one row's activity never moves another's memory."""
    layer = causal_layer(window=3, attention_activation="relu2")
    x = torch.randn(20, 3, D)

    def rules(rows):
        def decide(active):
            for i, b in enumerate(rows):
                if b != 1:
                    active[i] = b == 0
            return active
        return decide

    with forced_activation(layer, rules([0, 1, 2])):
        y_par, act = layer(x)
        y_inc, _, _, _ = step_all(layer, x)
    assert act.active[0].all() and not act.active[2].any()
    assert_partially_active(act.active[1:2], window=3)
    assert_close("batch steps vs parallel", y_inc, y_par, atol=ATOL)
    for b in range(3):
        with forced_activation(layer, rules([b])):
            alone, _, _, _ = step_all(layer, x[:, b:b + 1])
        assert_close(f"row {b} alone vs in the batch", alone[:, 0], y_inc[:, b], atol=ATOL)
    assert_branches_matter("rates", layer, parallel(x, decide=rules([0, 1, 2])), ATOL)


def test_beam_reorder_follows_the_beams():
    """fairseq's path: decode 6 tokens through ``incremental_state``, reorder the beams, decode
    on: the outputs equal the parallel forward of the reordered prefixes + continuation."""
    layer = causal_layer(window=3, rel_pos="rotary", truncation=4)
    x = torch.randn(10, 3, D)
    y_inc, new_x = decode_reordered_beams(layer, x, torch.tensor([2, 0, 0]), prefix=6)
    y_par, _ = layer(new_x)
    assert_close("after reorder", y_inc, y_par[6:], atol=ATOL)
    assert_branches_matter("beams", layer, lambda m: m(new_x)[0][6:], ATOL)
    # without the reorder, beam 0 would continue row 0's prefix: a different output
    assert (y_inc[:, 0] - layer(x)[0][6:, 0]).abs().max() > 100 * ATOL


def test_bidirectional_layer_refuses_incremental_state():
    layer = SeqBoatLayer(*LAYER_DIMS, bidirectional=True, window=3)
    with pytest.raises(RuntimeError, match="causal"):
        layer.init_state(2)


# --------------------------------------------------------------------------- whole LM
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_byte_dictionary(tmp_path_factory.mktemp("bytes"))


@pytest.mark.parametrize("extra", [[], ["--truncation-length", "7", "--attention-activation-fn", "relu2"],
                                   ["--decoder-chunk-size", "-1", "--rel-pos-bias", "simple"],
                                   ["--rel-pos-bias", "simple", "--local-pos"]],
                         ids=["rotary-w4", "relu2-trunc7", "full-simple", "local-pos"])
def test_decoder_incremental_equals_full_forward(data_dir, extra):
    """fairseq convention: the whole prefix is passed at every step; the decoder feeds only
    the new token. Teacher-forced logits equal the full forward's, position by position."""
    atol = 1e-4
    model, _, _ = build_lm(data_dir, "--arch", "seqboat_lm_tiny", "--decoder-chunk-size", "4",
                           "--max-target-positions", "40", "--tokens-per-sample", "40", *extra)
    for i, layer in enumerate(model.decoder.layers):
        strong_weights_(layer, seed=i)
    model.eval()
    tokens = torch.randint(4, 260, (2, 40))
    full, _ = model(tokens)
    incremental_state = {}
    prompt = 5  # a multi-token prompt first (one parallel prefill), then single steps
    logits, _ = model(tokens[:, :prompt], incremental_state=incremental_state)
    steps = [logits]
    for t in range(prompt + 1, 41):
        logits, _ = model(tokens[:, :t], incremental_state=incremental_state)
        assert logits.shape == (2, 1, 260)
        steps.append(logits)
    assert_close("incremental logits", torch.cat(steps, dim=1), full, atol=atol)
    assert_branches_matter("LM", model, lambda m: m(tokens)[0], atol)
    with pytest.raises(ValueError, match="full prefix"):
        model(tokens[:, :3], incremental_state=incremental_state)


@pytest.mark.parametrize("part", ["layer", "ema"])
def test_reorder_refuses_a_state_entry_without_a_rule(part):
    """Each part of the decoding state says how it follows the beams (``reorder_state``); an
    entry without a rule is refused instead of being kept for the wrong rows."""
    layer = causal_layer(window=3, truncation=4)
    incremental_state = {}
    layer(torch.randn(2, 3, D), incremental_state=incremental_state)
    layer.reorder_incremental_state(incremental_state, torch.tensor([2, 0, 0]))  # the known entries
    state = layer.get_incremental_state(incremental_state, "seqboat_state")
    (state if part == "layer" else state["ema"])["unlisted"] = torch.zeros(3)
    with pytest.raises(KeyError, match="unlisted"):
        layer.reorder_incremental_state(incremental_state, torch.tensor([2, 0, 0]))
