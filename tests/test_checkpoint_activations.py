"""``--checkpoint-activations`` / ``--offload-activations``: each SeqBoat layer
of the LM and of the LRA classifier is checkpointed with fairseq's ``checkpoint_wrapper`` and the
loss, every parameter's gradient, the routing and the BatchNorm running statistics equal those of
the same model without it (dropout on, fixed seed); only the layers' inputs are kept for backward;
incremental decoding, no-grad forwards, autocast and ``copy.deepcopy`` (fairseq's ``--ema``) work."""

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close, build_lm, build_lra, train_tiny_lm

from seqboat_fairseq.models.checkpoint_activations import is_checkpointed

DROPOUT = ["--dropout", "0.1", "--attention-dropout", "0.1"]


def twins(build, *cli, flag="--checkpoint-activations"):
    """The same model (same parameters and buffers) built without and with ``flag``."""
    plain = build(*cli)[0]
    checkpointed, task, cfg = build(*cli, flag)
    checkpointed.load_state_dict(plain.state_dict())
    return plain, checkpointed, task


class SavedBytes:
    """Bytes autograd saves for backward while any of ``layers`` runs (saved_tensors_hooks): their
    forward, and a GAU's ``forward_compressed``, which a SeqBoat layer's fused pass calls directly."""

    def __init__(self, layers):
        self.layers, self.total, self._inside = layers, 0, 0

    def __enter__(self):
        def enter(*_):
            self._inside += 1

        def leave(*_):
            self._inside -= 1

        def pack(t):
            if self._inside:
                self.total += t.numel() * t.element_size()
            return t

        self._handles = [h for layer in self.layers
                         for h in (layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave))]
        self._patched = []
        for layer in self.layers:
            if hasattr(layer, "forward_compressed"):
                def counted(*args, _run=layer.forward_compressed, **kwargs):
                    enter()
                    try:
                        return _run(*args, **kwargs)
                    finally:
                        leave()

                layer.forward_compressed = counted
                self._patched.append(layer)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        for h in self._handles:
            h.remove()
        for layer in self._patched:
            del layer.forward_compressed


def train_step(model, loss_fn, layers, seed, autocast=False):
    """zero_grad + forward (under ``seed``) + loss + backward, as fairseq's trainer does it
    (backward outside the autocast region). Returns loss, gradients, activations, saved bytes."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with SavedBytes(layers) as saved, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, activations = loss_fn(model)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, activations, saved.total


def assert_same_step(plain, checkpointed, loss_fn, layers_of, seed=1, autocast=False):
    """Checkpointing on: same loss, gradients and routing, and it really is on (layers wrapped,
    far fewer bytes saved inside the layers: only their inputs)."""
    assert not any(map(is_checkpointed, layers_of(plain)))
    assert all(map(is_checkpointed, layers_of(checkpointed)))
    loss_a, grads_a, act_a, saved_a = train_step(plain, loss_fn, layers_of(plain), seed, autocast)
    loss_b, grads_b, act_b, saved_b = train_step(checkpointed, loss_fn, layers_of(checkpointed), seed, autocast)
    # the dropout draws matter (another seed: another loss), so equality means they were replayed
    control = copy.deepcopy(plain)  # (a copy: the BatchNorm statistics of `plain` stay one step ahead)
    loss_c, *_ = train_step(control, loss_fn, layers_of(control), seed + 1, autocast)
    assert loss_c != loss_a
    assert torch.equal(loss_b, loss_a), (loss_b.item(), loss_a.item())
    assert set(grads_b) == set(grads_a) == {n for n, p in plain.named_parameters() if p.grad is not None}
    assert len(grads_a) > 0.9 * len(list(plain.parameters()))
    for name in grads_a:
        assert_close(name, grads_b[name], grads_a[name], atol=1e-7, rtol=1e-6)
    for a, b in zip(act_a, act_b):
        assert torch.equal(a.active, b.active) and torch.equal(a.confidence, b.confidence)
    assert saved_b * 8 < saved_a, f"checkpointed layers saved {saved_b} bytes, plain ones {saved_a}"
    return saved_a, saved_b


# --------------------------------------------------------------------------- language model
LM = ["--arch", "seqboat_lm_tiny", "--tokens-per-sample", "64", "--hidden-dropout", "0.1", *DROPOUT]


def lm_loss(tokens, pad):
    def loss_fn(model):
        logits, extra = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1),
                               ignore_index=pad)
        return loss, extra["activations"]
    return loss_fn


def lm_tokens(task, batch=3, length=64):
    pad = task.target_dictionary.pad()
    tokens = torch.randint(4, len(task.target_dictionary), (batch, length + 1))
    tokens[1, 40:] = pad  # a padded row
    return tokens, pad


@pytest.mark.parametrize("extra,flag", [
    (["--decoder-chunk-size", "8"], "--checkpoint-activations"),
    (["--decoder-chunk-size", "-1", "--rel-pos-bias", "simple", "--truncation-length", "16",
      "--normalization-type", "scalenorm"], "--checkpoint-activations"),
    (["--decoder-chunk-size", "8", "--decoder-ffn-embed-dim", "64"], "--offload-activations"),
], ids=["w8-rotary", "full-simple-trunc16", "w8-ffn-offload"])
def test_lm_loss_and_gradients_equal_without_checkpointing(lm_dir, extra, flag):
    plain, checkpointed, task = twins(lambda *a: build_lm(lm_dir, *a), *LM, *extra, flag=flag)
    tokens, pad = lm_tokens(task)
    saved_plain, saved_checkpointed = assert_same_step(
        plain, checkpointed, lm_loss(tokens, pad), lambda m: m.decoder.layers)
    # exactly each layer's input kept: x (L, B, D) in fp32 and the (B, L) padding mask
    layers, (batch, length), dim = len(plain.decoder.layers), tokens[:, :-1].shape, 64
    assert saved_checkpointed == layers * (length * batch * dim * 4 + batch * length)
    # a second step (fresh graph, RNG advanced by the first) still matches
    assert_same_step(plain, checkpointed, lm_loss(tokens, pad), lambda m: m.decoder.layers, seed=7)


@pytest.mark.parametrize("extra", [
    ["--decoder-chunk-size", "8"],
    ["--decoder-chunk-size", "8", "--checkpoint-activations"],
    ["--decoder-chunk-size", "-1", "--rel-pos-bias", "simple"],
], ids=["w8", "w8-with-checkpoint-activations", "full-simple"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_lm_recompute_gau_equals_the_plain_step_and_keeps_less(lm_dir, extra, autocast):
    """--recompute-gau: every GAU keeps only its compressed input; the recomputation replays the
    dropout masks (hidden, attention) and the autocast state, so loss, gradients and routing equal
    the run without it."""
    plain, recomputing, task = twins(lambda *a: build_lm(lm_dir, *a), *LM, *extra, flag="--recompute-gau")
    gaus = [layer.gau for layer in recomputing.decoder.layers]
    assert all(g.recompute for g in gaus) and not any(layer.gau.recompute for layer in plain.decoder.layers)
    tokens, pad = lm_tokens(task)
    gaus_of = lambda m: [layer.gau for layer in m.decoder.layers]  # noqa: E731
    loss_a, grads_a, act_a, saved_a = train_step(plain, lm_loss(tokens, pad), gaus_of(plain), 1, autocast)
    loss_b, grads_b, act_b, saved_b = train_step(recomputing, lm_loss(tokens, pad), gaus_of(recomputing), 1, autocast)
    loss_c, *_ = train_step(copy.deepcopy(plain), lm_loss(tokens, pad), gaus_of(plain), 2, autocast)
    assert loss_c != loss_a  # the dropout draws matter, so equality below means they were replayed
    assert torch.equal(loss_b, loss_a), (loss_b.item(), loss_a.item())
    assert set(grads_b) == set(grads_a)
    for name in grads_a:
        assert_close(name, grads_b[name], grads_a[name], atol=1e-7, rtol=1e-6)
    for a, b in zip(act_a, act_b):
        assert torch.equal(a.active, b.active) and torch.equal(a.confidence, b.confidence)
    if "--checkpoint-activations" not in extra:  # (inside a checkpointed layer the GAU's first run keeps nothing)
        assert saved_b * 3 < saved_a, f"recomputing GAUs saved {saved_b} bytes, plain ones {saved_a}"


def test_lm_under_autocast_recomputes_in_the_forward_precision(lm_dir):
    """fairseq's --amp runs the forward under autocast and backward outside it: the recomputation
    must run under the first run's autocast state, or the gradients differ."""
    plain, checkpointed, task = twins(lambda *a: build_lm(lm_dir, *a), *LM, "--decoder-chunk-size", "8")
    tokens, pad = lm_tokens(task)
    assert_same_step(plain, checkpointed, lm_loss(tokens, pad), lambda m: m.decoder.layers, autocast=True)


def test_lm_no_grad_forward_and_incremental_decoding_with_the_option_set(lm_dir):
    plain, checkpointed, task = twins(lambda *a: build_lm(lm_dir, *a), "--arch", "seqboat_lm_tiny",
                                      "--decoder-chunk-size", "4", "--tokens-per-sample", "40")
    tokens = torch.randint(4, 260, (2, 40))
    for model in (plain, checkpointed):
        model.eval()
    with torch.no_grad():
        full, _ = plain(tokens)
        assert torch.equal(checkpointed(tokens)[0], full)
    for grad in (False, True):  # decoding never checkpoints, with or without autograd
        with torch.set_grad_enabled(grad):
            incremental_state = {}
            steps = [checkpointed(tokens[:, :5], incremental_state=incremental_state)[0]]
            for t in range(6, 41):
                steps.append(checkpointed(tokens[:, :t], incremental_state=incremental_state)[0])
            assert_close(f"incremental logits (grad {grad})", torch.cat(steps, dim=1).detach(), full, atol=1e-4)
    with pytest.raises(ValueError, match="full prefix"):
        checkpointed(tokens[:, :3], incremental_state=incremental_state)


def test_deepcopy_of_a_checkpointed_model_uses_its_own_parameters(lm_dir):
    """fairseq's --ema deep-copies the model: the copy's wrapped layers must run the copy."""
    plain, checkpointed, task = twins(lambda *a: build_lm(lm_dir, *a), *LM, "--decoder-chunk-size", "8")
    copied = copy.deepcopy(checkpointed)
    tokens, pad = lm_tokens(task)
    assert_same_step(plain, copied, lm_loss(tokens, pad), lambda m: m.decoder.layers)
    assert all(p.grad is None for p in checkpointed.parameters())
    with torch.no_grad():
        for p in copied.parameters():
            p.zero_()
    checkpointed.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.equal(checkpointed(tokens)[0], plain(tokens)[0])


# --------------------------------------------------------------------------- LRA classifier
LRA_SMALL = ["--encoder-layers", "3", "--encoder-embed-dim", "32", "--encoder-hidden-dim", "64", "--z-dim", "16",
             "--n-dim", "4", "--chunk-size", "16", "--act-dropout", "0.1", *DROPOUT]


def lra_loss(src, lengths, targets):
    def loss_fn(model):
        logits, extra = model(src, lengths)
        return F.cross_entropy(logits.float(), targets), extra["activations"][0]
    return loss_fn


def test_lra_text_with_padding(lra_dirs):
    plain, checkpointed, task = twins(lambda *a: build_lra(lra_dirs["text"], "lra-text", *a),
                                      "--arch", "seqboat_lra_listop", *LRA_SMALL)
    d = task.source_dictionary
    src = torch.randint(d.nspecial, len(d), (3, 96))
    src[2, 70:] = d.pad()
    lengths = torch.tensor([96, 96, 70])
    assert_same_step(plain, checkpointed, lra_loss(src, lengths, torch.tensor([1, 4, 7])),
                     lambda m: m.encoder.layers)


def batch_norm_stats(model):
    return {n: b.clone() for n, b in model.named_buffers() if "running" in n or "num_batches" in n}


def test_lra_image_batchnorm_running_stats_updated_once(lra_dirs):
    """Pre-BatchNorm layers: the recomputation in backward would apply the running-statistics
    update a second time (fairseq's plain checkpoint_wrapper does); they equal the plain run's."""
    build = lambda *a: build_lra(lra_dirs["image"], "lra-image", *a)  # noqa: E731
    cli = ["--arch", "seqboat_lra_pf32", *LRA_SMALL]
    plain, checkpointed, _ = twins(build, *cli)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in checkpointed.encoder.layers.modules())
    src, lengths, targets = torch.randn(4, 100), torch.full((4,), 100), torch.tensor([0, 1, 1, 0])
    initial = batch_norm_stats(plain)
    for seed in (1, 2):
        assert_same_step(plain, checkpointed, lra_loss(src, lengths, targets), lambda m: m.encoder.layers,
                         seed=seed)
        stats_plain, stats_checkpointed = batch_norm_stats(plain), batch_norm_stats(checkpointed)
        assert stats_plain.keys() == stats_checkpointed.keys() and len(stats_plain) >= 3 * 3
        for name in stats_plain:
            assert torch.equal(stats_checkpointed[name], stats_plain[name]), name
    assert not torch.equal(stats_plain["encoder.layers.0.norm.norm.running_mean"],
                           initial["encoder.layers.0.norm.norm.running_mean"])
    assert stats_plain["encoder.layers.0.norm.norm.num_batches_tracked"].item() == 2  # one per step

    # what the extra care avoids: fairseq's checkpoint_wrapper alone updates the statistics twice
    from fairseq.modules.checkpoint_activations import checkpoint_wrapper

    naive = build(*cli)[0]
    naive.load_state_dict(plain.state_dict())
    for layer in naive.encoder.layers:
        checkpoint_wrapper(layer)
    before = batch_norm_stats(naive)
    train_step(naive, lra_loss(src, lengths, targets), naive.encoder.layers, seed=1)
    tracked = naive.encoder.layers[0].norm.norm.num_batches_tracked.item()
    assert tracked == before["encoder.layers.0.norm.norm.num_batches_tracked"].item() + 2


# --------------------------------------------------------------------------- fairseq-train
@pytest.mark.slow
def test_fairseq_train_with_checkpoint_activations_trains_the_same_weights(pydoc_data_bin, tmp_path):
    """The flag reaches the model through fairseq-train, and 3 updates with dropout give the same
    weights as without it."""
    weights = {}
    for name, flags in (("plain", []), ("checkpointed", ["--checkpoint-activations"])):
        path = train_tiny_lm(pydoc_data_bin, tmp_path / name, "--dropout", "0.1", "--seed", "3", *flags, updates=3)
        state = torch.load(path, map_location="cpu", weights_only=False)
        assert state["cfg"]["model"]["checkpoint_activations"] == bool(flags)
        weights[name] = state["model"]
    assert weights["plain"].keys() == weights["checkpointed"].keys()
    for key, value in weights["plain"].items():
        assert_close(key, weights["checkpointed"][key], value, atol=1e-7, rtol=1e-6)
