"""The seqboat_lm model: architectures, activation metrics, upstream checkpoint loading."""

import argparse
import pickle
import sys
import types

import pytest
import torch

from conftest import (assert_branches_matter, assert_close, assert_partially_active, build_lm,
                      write_byte_dictionary)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_byte_dictionary(tmp_path_factory.mktemp("bytes"), symbols=204)  # 4 specials -> V=208


def test_tiny_forward_shapes_and_padding(data_dir):
    model, task, _ = build_lm(data_dir, "--arch", "seqboat_lm_tiny", "--tokens-per-sample", "64")
    model.eval()
    tokens = torch.randint(4, 208, (3, 20))
    tokens[1, 15:] = task.dictionary.pad()
    logits, extra = model(tokens)
    assert logits.shape == (3, 20, 208)
    assert len(extra["activations"]) == 2 and extra["activations"][0].active.shape == (3, 20)
    assert not extra["activations"][0].active[1, 15:].any(), "pads are never activated"
    # a row's logits do not depend on padding added after it
    alone, _ = model(tokens[1:2, :15])
    assert_close("padded row", logits[1, :15], alone[0], atol=1e-5)


def test_enwik8_base_matches_paper_size(data_dir):
    model, _, cfg = build_lm(data_dir, "--arch", "seqboat_lm_enwik8_base", "--tokens-per-sample", "8192")
    dec = model.decoder
    assert len(dec.layers) == 14 and dec.layers[0].window == 1024 and dec.layers[0].gau.rotary
    assert dec.output_projection.weight is dec.embed_tokens.weight
    assert dec.final_norm is not None and not any(True for _ in dec.final_norm.parameters())
    per_layer = sum(p.numel() for p in dec.layers[0].parameters())
    assert per_layer == 2_781_883
    total = sum(p.numel() for p in model.parameters())
    assert total == 14 * 2_781_883 + 208 * 616  # ~39.07M, the paper's "39M"
    assert cfg.model.max_target_positions == 10384 and cfg.model.dropout == 0.15


def test_cli_overrides_win_over_presets(data_dir):
    model, _, cfg = build_lm(data_dir, "--arch", "seqboat_lm_tiny", "--decoder-layers", "3",
                             "--decoder-chunk-size", "-1", "--always-act")
    assert len(model.decoder.layers) == 3
    assert model.decoder.layers[0].window is None and model.decoder.layers[0].router is None


@pytest.mark.parametrize("arch", ["slag_lm", "slag_lm_big", "slag_lm_enwik8_base",
                                  "slag_lm_enwik8_base_v2", "slag_lm_enwik8_large"])
def test_upstream_architecture_names_resolve(arch):
    from fairseq.models import ARCH_MODEL_NAME_REGISTRY, ARCH_CONFIG_REGISTRY

    import seqboat_fairseq  # noqa: F401

    assert ARCH_MODEL_NAME_REGISTRY[arch] == "seqboat_lm"
    args = argparse.Namespace()
    ARCH_CONFIG_REGISTRY[arch](args)
    assert args.decoder_ffn_embed_dim == args.decoder_hidden_dim  # upstream default FFN = H
    assert args.activation_dropout == 0.0  # upstream left it unset and crashed (H18)


def _criterion_logging_output(model, task, tokens):
    from seqboat_fairseq.criterions.seqboat_cross_entropy import SeqBoatCrossEntropyCriterion

    criterion = SeqBoatCrossEntropyCriterion(task, sentence_avg=False)
    sample = {"net_input": {"src_tokens": tokens[:, :-1]}, "target": tokens[:, 1:],
              "ntokens": int(tokens[:, 1:].ne(task.dictionary.pad()).sum())}
    return criterion(model, sample)[2]


def test_activation_rates_are_summed_counts_over_workers(data_dir):
    """seqboat_cross_entropy logs counts; reduce_metrics turns the sum over logging outputs (two
    workers, or two accumulation steps) into the token-weighted rate of the whole batch."""
    from fairseq.logging import metrics

    from seqboat_fairseq.criterions.seqboat_cross_entropy import SeqBoatCrossEntropyCriterion

    model, task, _ = build_lm(data_dir, "--arch", "seqboat_lm_tiny")
    model.eval()
    for layer in model.decoder.layers:  # two rows with very different rates, and padding
        layer.router.log_temperature.data.fill_(-3.0)
    tokens = torch.randint(4, 208, (2, 31))
    tokens[1, 20:] = task.dictionary.pad()
    _, extra = model(tokens[:, :-1])
    real = tokens[:, :-1].ne(task.dictionary.pad())
    expected = [a.active[real].float().mean().item() for a in extra["activations"]]

    halves = [_criterion_logging_output(model, task, tokens[i:i + 1]) for i in range(2)]
    rates_per_half = [h["act_count_l0"].item() / float(h["act_tokens"]) for h in halves]
    assert abs(rates_per_half[0] - rates_per_half[1]) > 0.05, "the test needs rows with different rates"
    with metrics.aggregate(new_root=True) as agg:
        SeqBoatCrossEntropyCriterion.reduce_metrics(halves)
    stats = agg.get_smoothed_values()
    assert stats["act_rate_l0"] == pytest.approx(expected[0], abs=1e-3)
    assert stats["act_rate_l1"] == pytest.approx(expected[1], abs=1e-3)
    assert stats["act_rate"] == pytest.approx(sum(expected) / 2, abs=1e-3)
    # rank 0's rate alone (the old behaviour) would be off by far more than the rounding
    assert abs(rates_per_half[0] - expected[0]) > 0.02
    # loss first in progress bars: the rates are logged after the criterion's own metrics
    assert list(stats)[0] == "loss"
    # the model's forward itself logs nothing (a forward runs on one worker only)
    with metrics.aggregate(new_root=True) as agg:
        model(tokens)
    assert not agg.get_smoothed_values()


# --------------------------------------------------------------------------- upstream checkpoints
D, H, Z, N, V, LAYERS = 16, 24, 8, 4, 208, 2


def upstream_state_dict():
    """A state dict in upstream's layout (``decoder.layers.{i}.slag_layer.*``), rotary + affine final
    LayerNorm; the router rows of ``hx_proj`` and q/k gamma are drawn large so that every row is
    partially active and attention is far from uniform (the test asserts both)."""
    g = torch.Generator().manual_seed(1)
    rnd = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    sd = {"decoder.version": torch.tensor([3.0]), "decoder.embed_tokens.weight": rnd(V, D)}
    for i in range(LAYERS):
        p = f"decoder.layers.{i}.slag_layer."
        sd.update({
            p + "gamma": rnd(2, Z), p + "beta": rnd(2, Z),
            p + "norm.norm.weight": 1 + rnd(D), p + "norm.norm.bias": rnd(D),
            p + "move.delta": rnd(D, N, 1), p + "move.alpha": rnd(D, N, 1),
            p + "move.beta": rnd(D, N, 1), p + "move.gamma": rnd(D, N), p + "move.omega": rnd(D),
            p + "q_router.temp": torch.tensor([0.5]),
            p + "mx_proj.weight": rnd(Z + 2 * H, D), p + "mx_proj.bias": rnd(Z + 2 * H),
            p + "hx_proj.weight": rnd(2 + D, D), p + "hx_proj.bias": rnd(2 + D),
            p + "h_proj.weight": rnd(D, H), p + "h_proj.bias": rnd(D),
        })
        sd[p + "hx_proj.weight"][:2] = torch.randn(2, D, generator=g) * 2.0  # router logits
        sd[p + "gamma"] = torch.randn(2, Z, generator=g) * 1.5
    sd["decoder.final_norm.norm.weight"] = 1 + rnd(D)
    sd["decoder.final_norm.norm.bias"] = rnd(D)
    sd["decoder.output_projection.weight"] = sd["decoder.embed_tokens.weight"]
    return sd


# semantic role of each upstream unit tensor in our layer (docs/design.md, "Models")
ROLES = {
    "gamma": lambda l: l.gau.qk_gamma, "beta": lambda l: l.gau.qk_beta,
    "norm.norm.weight": lambda l: l.norm.norm.weight, "norm.norm.bias": lambda l: l.norm.norm.bias,
    "move.delta": lambda l: l.ema.delta, "move.alpha": lambda l: l.ema.alpha,
    "move.beta": lambda l: l.ema.beta, "move.gamma": lambda l: l.ema.gamma, "move.omega": lambda l: l.ema.omega,
    "q_router.temp": lambda l: l.router.log_temperature,
    "mx_proj.weight": lambda l: l.gau.in_proj.weight, "mx_proj.bias": lambda l: l.gau.in_proj.bias,
    "hx_proj.weight": lambda l: l.hx_proj.weight, "hx_proj.bias": lambda l: l.hx_proj.bias,
    "h_proj.weight": lambda l: l.gau.out_proj.weight, "h_proj.bias": lambda l: l.gau.out_proj.bias,
}


OPTIMIZER_HISTORY = [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                      "lr_scheduler_state": {"best": 1.0}, "num_updates": 10}]


def _save_upstream_checkpoint(path):
    """Pickles the checkpoint as fairseq 0.9 (upstream) did: argparse args, 0.9 meters."""
    args = argparse.Namespace(
        arch="slag_lm_enwik8_base_v2", task="language_modeling", criterion="cross_entropy",
        optimizer="adam", lr=[0.005], decoder_layers=LAYERS, decoder_embed_dim=D, decoder_hidden_dim=H,
        decoder_z_dim=Z, decoder_n_dim=N, decoder_ffn_embed_dim=-1, decoder_chunk_size=4,
        truncation_length=2048, rel_pos_bias="rotary", normalize_before=True, no_affine_final_norm=False,
        normalization_type="layernorm", attention_activation_fn="softmax", activation_fn="silu",
        share_decoder_input_output_embed=True, init_temp_scale=1.0, local_pos=False, slag_local=True,
        tokens_per_sample=64, max_target_positions=128, dropout=0.15, attention_dropout=0.0,
        hidden_dropout=0.0, seed=1, sample_break_mode="none", self_target=False, future_target=False,
        past_target=False, output_dictionary_size=-1,
    )
    fake = types.ModuleType("fairseq.meters")

    class AverageMeter:  # what fairseq 0.9 pickled into extra_state["train_meters"]
        def __init__(self):
            self.val, self.avg, self.sum, self.count = 0, 0.0, 0.0, 0

    AverageMeter.__module__, AverageMeter.__qualname__ = "fairseq.meters", "AverageMeter"
    fake.AverageMeter = AverageMeter
    sys.modules["fairseq.meters"] = fake
    try:
        torch.save({"args": args, "model": upstream_state_dict(), "optimizer_history": OPTIMIZER_HISTORY,
            "extra_state": {"train_meters": {"loss": AverageMeter()}, "val_loss": 1.0},
            "last_optimizer_state": {}}, path)
    finally:
        del sys.modules["fairseq.meters"]


def test_upstream_checkpoint_loads_and_maps_every_tensor(tmp_path, data_dir):
    from fairseq import checkpoint_utils

    import seqboat_fairseq  # noqa: F401  (registers the slag_* names and the torch.load allow-list)

    path = str(tmp_path / "upstream.pt")
    _save_upstream_checkpoint(path)
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data_dir})
    model = models[0]
    upstream = upstream_state_dict()
    for i, layer in enumerate(model.decoder.layers):
        for key, role in ROLES.items():
            assert torch.equal(role(layer), upstream[f"decoder.layers.{i}.slag_layer.{key}"]), key
    assert torch.equal(model.decoder.final_norm.norm.weight, upstream["decoder.final_norm.norm.weight"])
    assert model.decoder.output_projection.weight is model.decoder.embed_tokens.weight
    assert model.decoder.layers[0].window == 4 and model.decoder.layers[0].gau.rotary

    # Same outputs as our own layout: re-save the loaded model through fairseq and reload.
    tokens = torch.randint(4, V, (2, 24))
    model.eval()
    logits, _ = model(tokens)
    own = str(tmp_path / "own.pt")
    from omegaconf import OmegaConf

    # what fairseq's trainer writes: the config as a plain container
    torch.save({"cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
                "model": model.state_dict(), "optimizer_history": OPTIMIZER_HISTORY,
                "extra_state": {}}, own)
    reloaded, _, _ = checkpoint_utils.load_model_ensemble_and_task([own], arg_overrides={"data": data_dir})
    logits2, _ = reloaded[0].eval()(tokens)
    assert_close("upstream vs own layout", logits2, logits, atol=0)
    assert torch.isfinite(logits).all()
    # the loaded GAUs and position handling decide the logits (the comparison above is exact)
    _, extra = model(tokens)
    for activation in extra["activations"]:
        assert_partially_active(activation.active, what="upstream LM layer")
    assert_branches_matter("upstream LM", model, lambda m: m(tokens)[0], atol=1e-6)


def test_unknown_pickled_object_is_still_refused(tmp_path):
    """The allow-list is narrow: torch's safe loader still rejects arbitrary classes."""
    import seqboat_fairseq  # noqa: F401

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": pickle.PickleError()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        torch.load(path)


def _to_upstream_layout(state_dict, unit, ours):
    """Our keys -> upstream's: ``{ours}{i}.X`` -> ``{ours}{i}.{unit}.<upstream X>``, FFN beside the unit."""
    from seqboat_fairseq.modules.seqboat_layer import UPSTREAM_KEY_MAP

    inverse = {new: old for old, new in UPSTREAM_KEY_MAP.items()}
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(ours):
            out[key] = value
            continue
        index, rest = key[len(ours):].split(".", 1)
        if rest.startswith("ffn."):
            out[f"{ours}{index}.nffn.{rest[4:]}"] = value
            continue
        for new, old in inverse.items():
            if rest == new or (new.endswith(".") and rest.startswith(new)):
                rest = old + rest[len(new):]
                break
        out[f"{ours}{index}.{unit}.{rest}"] = value
    return out


def test_upstream_layout_with_ffn_round_trips(data_dir):
    """Upstream keeps each unit's FFN beside it (``layers.{i}.nffn.``): it maps to ``layers.{i}.ffn.``."""
    model, _, _ = build_lm(data_dir, "--arch", "seqboat_lm_tiny", "--decoder-ffn-embed-dim", "24")
    ours = model.state_dict()
    upstream = _to_upstream_layout(ours, "slag_layer", "decoder.layers.")
    assert any(".nffn." in k for k in upstream) and any(".slag_layer.mx_proj." in k for k in upstream)
    model.upgrade_state_dict_named(upstream, "")
    assert sorted(upstream) == sorted(ours)
    assert all(torch.equal(upstream[k], ours[k]) for k in ours)
