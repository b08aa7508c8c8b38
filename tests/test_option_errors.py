"""Options no model can be built with end in one ValueError that names the flag and what was
expected (no ZeroDivisionError, no omegaconf InterpolationKeyError, and nothing accepted silently)."""

import pytest

from conftest import build_lm, build_lra


def lm(case, args, message):
    """An option error of ``seqboat_lm_tiny`` (``--tokens-per-sample 1024``)."""
    return pytest.param("lm", args, message, id=f"lm-{case}")


def lra(case, args, message):
    """An option error of ``seqboat_lra_listop`` under ``--task lra-text``."""
    return pytest.param("lra", args, message, id=f"lra-{case}")


# every size flag at 0 names itself: "<flag> 0: every dimension of a SeqBoat layer must be a positive integer"
ZERO_SIZES = {"lm": ("--decoder-n-dim", "--decoder-z-dim", "--decoder-hidden-dim", "--decoder-embed-dim"),
              "lra": ("--n-dim", "--z-dim", "--encoder-hidden-dim", "--sentence-class-num")}


@pytest.mark.parametrize("model,args,message", [
    pytest.param(model, [flag, "0"], rf"{flag} 0: every dimension", id=f"{model}{flag}-0")
    for model, flags in ZERO_SIZES.items() for flag in flags
] + [
    lm("layers0", ["--decoder-layers", "0"], r"--decoder-layers 0: a model needs at least one SeqBoat layer"),
    lm("chunk-2", ["--decoder-chunk-size", "-2"], r"--decoder-chunk-size -2: give the working-memory size w > 0, or -1"),
    lm("trunc-5", ["--truncation-length", "-5"], r"--truncation-length -5: .* positive length, or 0 for none"),
    lm("maxpos0", ["--max-target-positions", "0", "--rel-pos-bias", "simple"],
       r"--max-target-positions 0: must be a positive number"),
    lm("chunk0", ["--decoder-chunk-size", "0"], r"--decoder-chunk-size 0: give the working-memory size w > 0, or -1"),
    lm("chunk-too-long", ["--decoder-chunk-size", "4096", "--max-target-positions", "1024", "--rel-pos-bias", "simple"],
       r"--decoder-chunk-size 4096 exceeds --max-target-positions 1024"),
    lm("local-pos-rotary", ["--local-pos"], r"--local-pos .* needs --rel-pos-bias simple"),
    lm("local-pos-full", ["--rel-pos-bias", "simple", "--local-pos", "--decoder-chunk-size", "-1"],
       r"--local-pos .* positive"),
    lm("odd-z-rotary", ["--decoder-z-dim", "33"], r"--rel-pos-bias rotary needs an even z dim"),
    lm("tied-dims", ["--decoder-input-dim", "32"], r"--share-decoder-input-output-embed needs --decoder-input-dim"),
    lm("temp", ["--init-temp-scale", "0"], r"--init-temp-scale must be positive"),
    lra("layers0", ["--encoder-layers", "0"], r"--encoder-layers 0: a model needs at least one"),
    lra("chunk-3", ["--chunk-size", "-3"], r"--chunk-size -3: give the working-memory size w > 0, or -1"),
    lra("trunc-1", ["--truncation-length", "-1"], r"--truncation-length -1: .* positive length, or 0 for none"),
])
def test_option_errors_name_the_flag(lm_dir, lra_dirs, model, args, message):
    with pytest.raises(ValueError, match=message):
        if model == "lm":
            build_lm(lm_dir, "--arch", "seqboat_lm_tiny", "--tokens-per-sample", "1024", *args)
        else:
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


def test_hints_name_the_right_task_and_layer(lm_dir, lra_dirs):
    """The speech preset names --task speech_commands; SPADE's window message speaks of SPADE."""
    for build in (lambda: build_lra(lra_dirs["text"], "lra-text", "--arch", "seqboat_sc_raw"),
                  lambda: build_lm(lm_dir, "--arch", "seqboat_sc_raw")):
        with pytest.raises(ValueError, match=r"--arch seqboat_sc_raw .*use it with --task speech_commands"):
            build()
    with pytest.raises(ValueError, match=r"--chunk-size 0: SPADE's window attention needs a window of w > 0") as info:
        build_lra(lra_dirs["text"], "lra-text", "--arch", "spade_lra_listop", "--chunk-size", "0")
    assert "SeqBoat-full" not in str(info.value)


def test_class_count_is_checked_against_the_labels_when_the_model_is_built(tmp_path):
    import numpy as np

    data = tmp_path / "cifar"
    for sub in ("input", "label"):
        (data / sub).mkdir(parents=True)
    np.save(data / "input" / "train.npy", np.zeros((10, 1024), dtype=np.uint8))
    np.save(data / "label" / "train.npy", np.arange(10, dtype=np.int64))  # 10 classes
    with pytest.raises(ValueError, match=r"--sentence-class-num 2 \(--arch seqboat_lra_pf32\) is fewer than the 10 "
                                         r"classes of the data \(.*label/train.npy\)"):
        build_lra(data, "lra-image", "--arch", "seqboat_lra_pf32", "--encoder-layers", "1")
    build_lra(data, "lra-image", "--arch", "seqboat_lra_cifar10", "--encoder-layers", "1")  # 10 classes: fits
