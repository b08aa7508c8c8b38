"""Incremental decoding == the parallel causal forward: per layer and for the whole LM."""

import itertools

import pytest
import torch

from conftest import assert_close, build_lm, write_byte_dictionary
from seqboat_fairseq.modules import SeqBoatLayer

D, Z, H, N = 16, 8, 12, 4


def make_layer(**kw):
    opts = dict(window=3, truncation=None, attention_activation="softmax", rel_pos="simple", max_positions=8)
    opts.update(kw)
    layer = SeqBoatLayer(D, Z, H, N, bidirectional=False, **opts).eval()
    with torch.no_grad():
        layer.hx_proj.weight[:2].normal_(0, 1.0)  # about half the tokens active
    return layer


def step_all(layer, x, pad=None, state=None):
    """Feeds x (T, B, D) one token at a time; returns (outputs (T, B, D), state, activations)."""
    state = state if state is not None else layer.init_state(x.size(1))
    ys, acts = [], []
    for t in range(x.size(0)):
        y, act, state = layer.step(x[t], state, None if pad is None else pad[:, t])
        ys.append(y)
        acts.append(act.active)
    return torch.stack(ys), state, torch.cat(acts, dim=1)


def force_inactive_row(layer, row):
    route = layer.router.forward

    def routed(logits, padding_mask=None, act_bias=0.0):
        active, gate = route(logits, padding_mask, act_bias)
        active = active.clone()
        active[row] = False
        return active, gate * active

    layer.router.forward = routed


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
    layer = make_layer(**cfg)
    force_inactive_row(layer, 2)
    x = torch.randn(30, 3, D)
    y_par, act_par = layer(x)
    y_inc, state, active = step_all(layer, x)
    assert torch.equal(active, act_par.active)
    assert act_par.active[0].sum() > 2 * 3, "must exceed the working memory several times"
    assert not act_par.active[2].any()
    assert_close("incremental vs parallel", y_inc, y_par, atol=1e-5)
    if cfg["window"] is not None:
        assert state["memory_key"].shape == (3, 3, Z), "state size is constant"
        assert state["memory_fill"].tolist()[2] == 0


@pytest.mark.parametrize("variant", ["always_active", "postnorm", "padded"])
def test_steps_equal_parallel_variants(variant):
    kw = {"always_active": dict(always_active=True), "postnorm": dict(prenorm=False, norm_type="rmsnorm"),
          "padded": {}}[variant]
    layer = make_layer(rel_pos="rotary", **kw)
    x = torch.randn(14, 2, D)
    pad = None
    if variant == "padded":
        pad = torch.zeros(2, 14, dtype=torch.bool)
        pad[1, :4] = True  # a left-padded prompt
    y_par, _ = layer(x, pad)
    y_inc, _, _ = step_all(layer, x, pad)
    real = slice(None) if pad is None else ~pad.t()
    assert_close(variant, y_inc[real], y_par[real], atol=1e-5)


@pytest.mark.parametrize("window,truncation", [(3, None), (3, 5), (None, None)], ids=["w3", "w3-trunc5", "full"])
@pytest.mark.parametrize("rel_pos,local_pos", [("simple", False), ("simple", True), ("rotary", False)],
                         ids=["simple", "local_pos", "rotary"])
def test_prefill_leaves_the_same_state_as_stepping(window, truncation, rel_pos, local_pos):
    if local_pos and window is None:
        pytest.skip("local_pos needs a working memory")
    layer = make_layer(window=window, truncation=truncation, rel_pos=rel_pos, local_pos=local_pos)
    x = torch.randn(25, 3, D)
    y_steps, s_steps, _ = step_all(layer, x)
    state = layer.init_state(3)
    ys, start = [], 0
    for size in (9, 1, 6, 9):  # prefill, a step, then chunks continuing the state
        y, _, state = layer.forward_chunk(x[start:start + size], state) if size > 1 else \
            (lambda out: (out[0].unsqueeze(0), out[1], out[2]))(layer.step(x[start], state))
        ys.append(y)
        start += size
    assert_close("chunked outputs", torch.cat(ys), y_steps, atol=1e-5)
    assert set(state) == set(s_steps)
    for key in state:
        assert state[key].shape == s_steps[key].shape, key
        assert_close(key, state[key], s_steps[key], atol=1e-5)


def test_rows_fill_at_different_rates_and_skipped_tokens_leave_memory_unchanged():
    layer = make_layer(window=4)
    x = torch.randn(12, 2, D)
    state = layer.init_state(2)
    for t in range(12):
        before = {k: v.clone() for k, v in state.items()}
        _, act, state = layer.step(x[t], state)
        for b in range(2):
            if not act.active[b, 0]:
                for key in ("memory_key", "memory_value", "memory_position", "memory_fill"):
                    assert torch.equal(state[key][b], before[key][b]), key
            else:
                assert state["memory_position"][b, state["memory_fill"][b] - 1] == t
    assert state["memory_fill"].max() <= 4


def test_beam_reorder_follows_the_beams():
    """After reorder, beam i's state equals the state computed for its source row's prefix,
    and decoding continues exactly as the parallel forward of the reordered prefixes."""
    layer = make_layer(window=3, rel_pos="rotary", truncation=4)
    x = torch.randn(10, 3, D)
    _, state, _ = step_all(layer, x[:6])
    order = torch.tensor([2, 0, 0])
    incremental_state = {}
    layer.set_incremental_state(incremental_state, "seqboat_state", state)
    layer.reorder_incremental_state(incremental_state, order)
    reordered = layer.get_incremental_state(incremental_state, "seqboat_state")
    _, expected, _ = step_all(layer, x[:6, order])
    for key in expected:
        assert_close(key, reordered[key], expected[key], atol=0)
    new_x = torch.cat([x[:6, order], x[6:]], dim=0)
    y_inc, _, _ = step_all(layer, x[6:], state=reordered)
    y_par, _ = layer(new_x)
    assert_close("after reorder", y_inc, y_par[6:], atol=1e-5)


def test_bidirectional_layer_refuses_incremental_state():
    layer = SeqBoatLayer(D, Z, H, N, bidirectional=True, window=3)
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
    model, _, _ = build_lm(data_dir, "--arch", "seqboat_lm_tiny", "--decoder-chunk-size", "4",
                           "--max-target-positions", "40", "--tokens-per-sample", "40", *extra)
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
    assert_close("incremental logits", torch.cat(steps, dim=1), full, atol=1e-4)
    with pytest.raises(ValueError, match="full prefix"):
        model(tokens[:, :3], incremental_state=incremental_state)
