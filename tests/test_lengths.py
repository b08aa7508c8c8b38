"""Every tool scores / generates every token asked for, at any length the configuration supports,
and refuses, naming the limit and the flag, where a learned position table sets one.

(fairseq drops inputs longer than ``model.max_positions()`` silently in ``fairseq-eval-lm`` and
caps generation at it; a model trained at 64 tokens used to evaluate 0 tokens at 256.)"""

import re

import pytest

from conftest import PLUGIN_DIR, run_module, train_tiny_lm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoints(pydoc_data_bin, tmp_path_factory):
    root = tmp_path_factory.mktemp("lengths")
    return {
        "rotary": train_tiny_lm(pydoc_data_bin, root / "rotary"),
        "simple": train_tiny_lm(pydoc_data_bin, root / "simple", "--rel-pos-bias", "simple",
                                "--max-target-positions", "64"),
    }


def _test_tokens(data):
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(data / "dict.txt"))
    dataset = data_utils.load_indexed_dataset(str(data / "test"), dictionary)
    return int(dataset.sizes.sum())  # (sizes is a view of the dataset's memory map: keep the dataset alive)


@pytest.mark.parametrize("tokens_per_sample,context", [(256, 128), (600, 0), (64, 32)])
def test_eval_lm_scores_every_test_token_beyond_the_training_length(pydoc_data_bin, checkpoints,
                                                                    tokens_per_sample, context):
    out = run_module("fairseq_cli.eval_lm", pydoc_data_bin, "--user-dir", PLUGIN_DIR, "--path",
                     checkpoints["rotary"], "--gen-subset", "test", "--tokens-per-sample", tokens_per_sample,
                     "--context-window", context, "--batch-size", "4", "--cpu")
    log = out.stdout + out.stderr
    evaluated = int(re.search(r"Evaluated ([\d,]+) tokens", log).group(1).replace(",", ""))
    assert evaluated == _test_tokens(pydoc_data_bin) > 1000


def test_eval_lm_refuses_beyond_a_learned_bias_table(pydoc_data_bin, checkpoints):
    out = run_module("fairseq_cli.eval_lm", pydoc_data_bin, "--user-dir", PLUGIN_DIR, "--path",
                     checkpoints["simple"], "--gen-subset", "test", "--tokens-per-sample", "128",
                     "--context-window", "32", "--batch-size", "4", "--cpu", check=False)
    log = out.stdout + out.stderr
    assert out.returncode != 0 and "Evaluated" not in log
    assert re.search(r"128 tokens exceeds this model's limit of 64 positions.*--max-target-positions 64", log)
    ok = run_module("fairseq_cli.eval_lm", pydoc_data_bin, "--user-dir", PLUGIN_DIR, "--path",
                    checkpoints["simple"], "--gen-subset", "test", "--tokens-per-sample", "64",
                    "--context-window", "32", "--batch-size", "4", "--cpu")
    evaluated = int(re.search(r"Evaluated ([\d,]+) tokens", ok.stdout + ok.stderr).group(1).replace(",", ""))
    assert evaluated == _test_tokens(pydoc_data_bin)


def _hub(checkpoint, data):
    import os

    from seqboat_fairseq.models.seqboat_lm import SeqBoatLanguageModel

    lm = SeqBoatLanguageModel.from_pretrained(os.path.dirname(checkpoint), os.path.basename(checkpoint),
                                              data_name_or_path=str(data), bpe="enwik8_bytes")
    return lm.eval()


def test_hub_long_prompt_and_long_output_are_not_capped(pydoc_data_bin, checkpoints):
    lm = _hub(checkpoints["rotary"], pydoc_data_bin)
    prompt = ("The return statement " * 100)[:2001]  # 2,001 bytes, a model trained on 64
    scored = lm.score(prompt)
    assert scored["positional_scores"].numel() == 2001
    tokens = lm.encode("The return statement")
    hypo = lm.generate([tokens], beam=1, min_len=700, max_len_b=700)[0][0]["tokens"]
    assert hypo.numel() >= 700  # not capped at the training length (or 511)


def test_hub_refuses_beyond_a_learned_bias_table(pydoc_data_bin, checkpoints):
    lm = _hub(checkpoints["simple"], pydoc_data_bin)
    with pytest.raises(ValueError, match=r"exceeds this model's limit of 64 positions"):
        lm.score("x" * 100)
    with pytest.raises(ValueError, match=r"exceeds this model's limit of 64 positions"):
        lm.generate([lm.encode("The")], beam=1, min_len=100, max_len_b=100)
    assert lm.generate([lm.encode("The")], beam=1, max_len_b=30)[0][0]["tokens"].numel() <= 64
