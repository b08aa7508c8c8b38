"""Options no model can be built with end in one ValueError that names the flag (no
ZeroDivisionError, no omegaconf InterpolationKeyError, and nothing accepted silently)."""

import os

import pytest

from conftest import build_lm, build_lra, write_byte_dictionary, write_lra_dictionaries


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return write_byte_dictionary(tmp_path_factory.mktemp("bytes"))


@pytest.fixture(scope="module")
def lra_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lra")
    os.makedirs(root / "image" / "input")
    return {"text": write_lra_dictionaries(root / "text"), "image": str(root / "image")}


@pytest.mark.parametrize("args,message", [
    (["--decoder-n-dim", "0"], r"--decoder-n-dim 0: every dimension"),
    (["--decoder-z-dim", "0"], r"--decoder-z-dim 0: every dimension"),
    (["--decoder-hidden-dim", "0"], r"--decoder-hidden-dim 0: every dimension"),
    (["--decoder-embed-dim", "0"], r"--decoder-embed-dim 0: every dimension"),
    (["--decoder-layers", "0"], r"--decoder-layers 0: a model needs at least one SeqBoat layer"),
    (["--decoder-chunk-size", "-2"], r"--decoder-chunk-size -2: give the working-memory size w > 0, or -1"),
    (["--truncation-length", "-5"], r"--truncation-length -5: .* positive length, or 0 for none"),
    (["--max-target-positions", "0", "--rel-pos-bias", "simple"], r"--max-target-positions 0: must be a positive number"),
], ids=["n0", "z0", "h0", "d0", "layers0", "chunk-2", "trunc-5", "maxpos0"])
def test_lm_options(lm_dir, args, message):
    with pytest.raises(ValueError, match=message):
        build_lm(lm_dir, "--arch", "seqboat_lm_tiny", "--tokens-per-sample", "64", *args)


@pytest.mark.parametrize("args,message", [
    (["--n-dim", "0"], r"--n-dim 0: every dimension"),
    (["--z-dim", "0"], r"--z-dim 0: every dimension"),
    (["--encoder-hidden-dim", "0"], r"--encoder-hidden-dim 0: every dimension"),
    (["--encoder-layers", "0"], r"--encoder-layers 0: a model needs at least one"),
    (["--chunk-size", "-3"], r"--chunk-size -3: give the working-memory size w > 0, or -1"),
    (["--truncation-length", "-1"], r"--truncation-length -1: .* positive length, or 0 for none"),
    (["--sentence-class-num", "0"], r"--sentence-class-num 0: every dimension"),
], ids=["n0", "z0", "h0", "layers0", "chunk-3", "trunc-1", "classes0"])
def test_lra_options(lra_dirs, args, message):
    with pytest.raises(ValueError, match=message):
        build_lra(lra_dirs["text"], "lra-text", "--arch", "seqboat_lra_listop", *args)


def test_models_on_the_wrong_kind_of_task(lm_dir, lra_dirs):
    with pytest.raises(ValueError, match=r"--arch seqboat_lra_listop is a Long Range Arena classifier: use it "
                                         r"with --task lra-text or --task lra-image, not --task language_modeling"):
        build_lm(lm_dir, "--arch", "seqboat_lra_listop")
    with pytest.raises(ValueError, match=r"--arch seqboat_lm_tiny is a language model: use it with --task "
                                         r"language_modeling, not --task lra-text"):
        build_lra(lra_dirs["text"], "lra-text", "--arch", "seqboat_lm_tiny")
    with pytest.raises(ValueError, match=r"--arch seqboat_lra_cifar10 is a preset for image input"):
        build_lra(lra_dirs["text"], "lra-text", "--arch", "seqboat_lra_cifar10")
