"""The seqboat_lra classifier: presets (paper sizes, real lengths), two towers, checkpoints.

The equivalence tests re-draw every layer's weights so that each branch matters
(``conftest.strong_weights_``) and assert it (``conftest.assert_branches_matter``)."""

import os

import pytest
import torch

from conftest import (assert_branches_matter, assert_close, assert_partially_active, build_lra, strong_weights_,
                      write_lra_dictionaries)

# the paper's parameter counts: (per layer, encoder without token embedding, head, total without token embedding)
PAPER_SIZES = {
    "seqboat_lra_listop": ("lra-text", 2000, 65_366, 392_196, 14_560, 406_756),
    "seqboat_lra_imdb": ("lra-text", 4000, 141_507, 566_028, 33_536, 599_564),
    "seqboat_lra_aan": ("lra-text", 4000, 148_743, 892_458, 131_840, 1_024_298),
    "seqboat_lra_cifar10": ("lra-image", 1024, 219_330, 1_755_281, 54_720, 1_810_001),
    "seqboat_lra_pf32": ("lra-image", 1024, 143_042, 858_765, 33_536, 892_301),
    "seqboat_lra_pf128": ("lra-image", 16384, 173_762, 695_561, 33_536, 729_097),
}


@pytest.fixture
def text_dir(tmp_path):
    return write_lra_dictionaries(tmp_path / "text")


@pytest.fixture
def aan_dir(tmp_path):
    return write_lra_dictionaries(tmp_path / "aan", labels=("0", "1"), two_documents=True)


@pytest.fixture
def image_dir(tmp_path):
    os.makedirs(tmp_path / "image" / "input")
    return str(tmp_path / "image")


def strengthen(model):
    """Every branch of every layer matters (see conftest.strong_weights_); embeddings N(0, 1)
    (at their D^-1/2 initialisation a post-norm first layer sees inputs so small that its
    queries and keys are nearly constant, and attention is a plain average)."""
    g = torch.Generator().manual_seed(1234)
    encoder = model.encoder
    with torch.no_grad():
        embedding = encoder.embed_pixels if encoder.is_image else encoder.embed_tokens
        embedding.weight.copy_(torch.randn(embedding.weight.shape, generator=g))
        if not encoder.is_image:
            embedding.weight[encoder.padding_idx] = 0.0
    for i, layer in enumerate(encoder.layers):
        strong_weights_(layer, seed=i)
    return model


def _dir(task, arch, text_dir, aan_dir, image_dir):
    return image_dir if task == "lra-image" else (aan_dir if arch.endswith("aan") else text_dir)


@pytest.mark.parametrize("arch", list(PAPER_SIZES))
def test_preset_sizes_match_the_paper_and_run_at_full_length(arch, text_dir, aan_dir, image_dir):
    """Every preset builds with the paper's parameter counts and runs forward + backward at its
    real sequence length (Path-X: 16,384) on CPU, batch 1 (no L x L tensors anywhere)."""
    task, length, per_layer, encoder, head, total = PAPER_SIZES[arch]
    model, task_obj, cfg = build_lra(_dir(task, arch, text_dir, aan_dir, image_dir), task, "--arch", arch)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    token_embedding = count(model.encoder.embed_tokens) if task == "lra-text" else 0
    assert count(model.encoder.layers[0]) == per_layer
    assert count(model.encoder) - token_embedding == encoder
    assert count(model.classifier) == head
    assert count(model) - token_embedding == total

    model.train()
    if task == "lra-image":
        src = torch.randn(1, length)
    else:
        src = torch.randint(4, len(task_obj.source_dictionary) - 1, (1, length))
    inputs = {"src_tokens": src, "src_lengths": torch.tensor([length])}
    if arch.endswith("aan"):
        inputs.update(src_tokens1=src.flip(1), src_lengths1=torch.tensor([length]))
    logits, extra = model(**inputs)
    assert logits.shape == (1, cfg.model.sentence_class_num)
    logits.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "rel_pos" not in n or
               not cfg.model.local_pos)


def test_two_tower_retrieval_concatenates_r1_r0_and_nli_features(aan_dir):
    model, _, _ = build_lra(aan_dir, "lra-text", "--arch", "seqboat_lra_aan", "--encoder-layers", "1")
    strengthen(model).eval()
    a, b = torch.randint(4, 10, (2, 30)), torch.randint(4, 10, (2, 25))
    lengths_a, lengths_b = torch.tensor([30, 30]), torch.tensor([25, 25])
    r0, _, _ = model.sentence_representation(a, lengths_a)
    r1, _, _ = model.sentence_representation(b, lengths_b)
    expected = model.classifier(torch.cat([r1, r0, r0 * r1, r0 - r1], dim=-1))
    logits, extra = model(a, lengths_a, b, lengths_b)
    atol = 1e-6
    assert_close("two towers", logits, expected, atol=atol)
    assert len(extra["activations"]) == 2, "both documents report their activations"
    for document, padding_mask in zip(extra["activations"], extra["padding_mask"]):
        for layer_activation in document:
            assert_partially_active(layer_activation.active, padding_mask)
    assert_branches_matter("two towers", model, lambda m: m(a, lengths_a, b, lengths_b)[0], atol)
    # the features are ordered: swapping the documents gives other logits
    assert (model(b, lengths_b, a, lengths_a)[0] - logits).abs().max() >= 100 * atol
    with pytest.raises(ValueError, match="src_tokens1"):
        model(a, lengths_a)


def test_masked_mean_ignores_padding_and_rows_are_batch_independent(text_dir):
    model, task, _ = build_lra(text_dir, "lra-text", "--arch", "seqboat_lra_listop", "--encoder-layers", "2",
                               "--chunk-size", "4")
    strengthen(model).eval()
    pad = task.source_dictionary.pad()
    x = torch.randint(4, 15, (2, 40))
    x[1, 30:] = pad
    logits, extra = model(x, torch.tensor([40, 30]))
    for layer_activation in extra["activations"][0]:
        assert_partially_active(layer_activation.active, extra["padding_mask"][0], window=4)
    alone, _ = model(x[1:, :30], torch.tensor([30]))
    atol = 1e-5
    assert_close("padded row vs alone", logits[1], alone[0], atol=atol)
    assert_branches_matter("padded row", model, lambda m: m(x, torch.tensor([40, 30]))[0][1], atol)


def test_cls_representation_and_image_constraints(text_dir, image_dir):
    model, task, _ = build_lra(text_dir, "lra-text", "--arch", "seqboat_lra_listop", "--encoder-layers", "1",
                               "--sen-rep-type", "cls")
    model.eval()
    x = torch.randint(4, 15, (2, 12))
    feats, _, _ = model.encoder(x)
    rep, _, _ = model.sentence_representation(x, torch.tensor([12, 12]))
    assert_close("cls = first position", rep, feats[:, 0], atol=0)
    with pytest.raises(ValueError, match="mp for images"):
        build_lra(image_dir, "lra-image", "--arch", "seqboat_lra_pf32", "--sen-rep-type", "cls")


def upstream_cifar_state_dict(model):
    """Our model's tensors renamed to upstream's LRA layout, by role."""
    ours = model.state_dict()
    up = {}
    roles = {"gau.qk_gamma": "gamma", "gau.qk_beta": "beta", "gau.rel_pos.table": "rel_pos_bias.rel_pos_bias",
             "router.log_temperature": "q_router.temp"}
    for key, value in ours.items():
        if key.startswith("encoder.layers."):
            i, rest = key[len("encoder.layers."):].split(".", 1)
            rest = roles.get(rest, rest)
            rest = rest.replace("ema.", "move.").replace("gau.in_proj.", "mx_proj.").replace("gau.out_proj.", "h_proj.")
            up[f"encoder.encoder.layers.{i}.mega_layer.{rest}"] = value.clone()
        elif key.startswith("encoder.embed_pixels."):
            up["encoder.encoder.embed_tokens." + key.split(".")[-1]] = value.clone()
        elif key.startswith("encoder."):
            up["encoder.encoder." + key[len("encoder."):]] = value.clone()
        elif key.startswith("classifier.hidden.0."):
            up["classifier.0.0." + key.split(".")[-1]] = value.clone()
        elif key.startswith("classifier.out_proj."):
            up["sentence_projection_layer.weight"] = value.clone()
    return up


def test_upstream_lra_state_dict_loads(image_dir):
    model, _, _ = build_lra(image_dir, "lra-image", "--arch", "seqboat_lra_cifar10", "--encoder-layers", "2")
    strengthen(model)
    upstream = upstream_cifar_state_dict(model)
    # the exact upstream key set of one CIFAR layer
    layer = {k.split("mega_layer.")[1] for k in upstream if k.startswith("encoder.encoder.layers.0.")}
    assert layer == {"gamma", "beta", "norm.norm.weight", "norm.norm.bias", "norm.norm.running_mean",
                     "norm.norm.running_var", "norm.norm.num_batches_tracked", "move.delta", "move.alpha",
                     "move.beta", "move.gamma", "move.omega", "rel_pos_bias.rel_pos_bias", "q_router.temp",
                     "mx_proj.weight", "mx_proj.bias", "hx_proj.weight", "hx_proj.bias", "h_proj.weight",
                     "h_proj.bias"}
    assert {"encoder.encoder.embed_tokens.weight", "encoder.encoder.pos_emb.scale", "encoder.encoder.pos_emb.inv_freq",
            "encoder.encoder.final_norm.norm.weight", "classifier.0.0.weight",
            "sentence_projection_layer.weight"} <= set(upstream)
    fresh, _, _ = build_lra(image_dir, "lra-image", "--arch", "seqboat_lra_cifar10", "--encoder-layers", "2")
    fresh.upgrade_state_dict(upstream)
    fresh.load_state_dict(upstream, strict=True)
    model.eval(), fresh.eval()
    x = torch.randn(2, 64)
    assert_close("upstream layout", fresh(x, torch.tensor([64, 64]))[0], model(x, torch.tensor([64, 64]))[0], atol=0)
    # exact equality, and every branch moves the logits far beyond fp32 rounding (as if atol were 1e-6)
    assert_branches_matter("upstream layout", fresh, lambda m: m(x, torch.tensor([64, 64]))[0], atol=1e-6)
