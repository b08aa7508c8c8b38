"""Bad options give a clear error that names the flag and what was expected (the model options'
one-line cases: test_option_errors.py)."""

import os
import re

import pytest

from conftest import build_lm, build_lra, write_byte_dictionary, write_lra_dictionaries


def test_lra_option_errors(tmp_path):
    text = write_lra_dictionaries(tmp_path / "text")
    with pytest.raises(ValueError, match=r"--chunk-size 4096 exceeds --max-positions 2002"):
        build_lra(text, "lra-text", "--arch", "seqboat_lra_listop", "--chunk-size", "4096")
    with pytest.raises(ValueError, match=r"--input-type image does not match --task lra-text"):
        build_lra(text, "lra-text", "--arch", "seqboat_lra_listop", "--input-type", "image")
    with pytest.raises(FileNotFoundError, match=r"source dictionary not found: .*src-bin/dict.txt"):
        build_lra(tmp_path / "missing", "lra-text", "--arch", "seqboat_lra_listop")
    with pytest.raises(FileNotFoundError, match=r"pixel input directory not found"):
        build_lra(tmp_path / "missing", "lra-image", "--arch", "seqboat_lra_pf32")


def test_bad_pixel_file_names_file_and_line(tmp_path):
    from seqboat_fairseq.tasks.lra import read_pixel_file

    path = tmp_path / "train.src"
    path.write_text("1 2 3\n4 5 6\n7 8\n")
    with pytest.raises(ValueError, match=r"train.src:3: 2 pixels, but line 1 has 3"):
        read_pixel_file(str(path))
    path.write_text("1 2 300\n")
    with pytest.raises(ValueError, match=r"train.src:1: expected space-separated integers 0..255"):
        read_pixel_file(str(path))
    path.write_text("")
    with pytest.raises(ValueError, match=r"train.src: no images"):
        read_pixel_file(str(path))


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_corrupt_checkpoint_gives_a_clear_error(tmp_path, damage):
    import torch
    from fairseq import checkpoint_utils

    import seqboat_fairseq  # noqa: F401  (wraps fairseq's checkpoint loader)

    path = tmp_path / "checkpoint_last.pt"
    torch.save({"model": {"w": torch.randn(1000)}, "cfg": None}, path)
    blob = path.read_bytes()
    path.write_bytes({"truncated": blob[: len(blob) // 2], "empty": b"", "garbage": b"\x00\x01not a checkpoint"}[damage])
    with pytest.raises(RuntimeError, match=r"cannot read checkpoint .*checkpoint_last.pt: the file is truncated or corrupt"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))


def test_dictionary_model_mismatch_names_both_sizes(tmp_path):
    from fairseq import checkpoint_utils
    from omegaconf import OmegaConf
    import torch

    from conftest import build_lm

    model, _, cfg = build_lm(write_byte_dictionary(tmp_path / "a", symbols=256), "--arch", "seqboat_lm_tiny")
    path = tmp_path / "model.pt"
    torch.save({"cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "model": model.state_dict(),
                "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                                       "lr_scheduler_state": {"best": 1.0}, "num_updates": 0}], "extra_state": {}},
               path)
    other = write_byte_dictionary(tmp_path / "b", symbols=100)
    with pytest.raises(ValueError, match=r"dictionary of 260 symbols, but the data directory's dict.txt gives 104"):
        checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides={"data": other})


def test_missing_lm_data_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dict.txt"):
        build_lm(tmp_path / "does-not-exist", "--arch", "seqboat_lm_tiny")


def test_lra_text_empty_split(tmp_path):
    from fairseq.data import indexed_dataset

    from conftest import build_lra

    data = write_lra_dictionaries(tmp_path / "text")
    for sub in ("src-bin", "label-bin"):
        builder = indexed_dataset.make_builder(str(tmp_path / "text" / sub / "valid.bin"), impl="mmap",
                                               vocab_size=20)
        builder.finalize(str(tmp_path / "text" / sub / "valid.idx"))
    _, task, _ = build_lra(data, "lra-text", "--arch", "seqboat_lra_listop")
    with pytest.raises(ValueError, match=r"split 'valid' is empty"):
        task.load_dataset("valid")


def test_length_limit_only_where_a_bias_table_is_learned(tmp_path):
    """Rotary and --local-pos extend to any length (max_positions() is unbounded, so fairseq's
    tools never drop or cap anything); the simple bias table of --max-target-positions entries
    is a hard limit that the decoder refuses to exceed, in a parallel pass and while decoding."""
    import torch

    for pos in (["--rel-pos-bias", "rotary"], ["--rel-pos-bias", "simple", "--local-pos"]):
        model, _, _ = build_lm(write_byte_dictionary(tmp_path / pos[1]), "--arch", "seqboat_lm_tiny",
                               "--max-target-positions", "32", "--tokens-per-sample", "32", *pos)
        assert model.max_positions() >= 2 ** 31 and model.decoder.position_limit is None
        logits, _ = model.eval()(torch.randint(4, 260, (1, 100)))
        assert logits.shape == (1, 100, 260) and torch.isfinite(logits).all()

    model, _, _ = build_lm(write_byte_dictionary(tmp_path / "table"), "--arch", "seqboat_lm_tiny",
                           "--max-target-positions", "32", "--tokens-per-sample", "32", "--rel-pos-bias", "simple")
    assert model.decoder.position_limit == 32 and model.max_positions() >= 2 ** 31  # refused, never filtered
    model.eval()(torch.randint(4, 260, (1, 32)))
    with pytest.raises(ValueError, match=r"33 tokens exceeds this model's limit of 32 positions.*"
                                         r"--max-target-positions 32"):
        model(torch.randint(4, 260, (1, 33)))
    state = {}
    tokens = torch.randint(4, 260, (1, 33))
    model(tokens[:, :30], incremental_state=state)
    model(tokens[:, :31], incremental_state=state)
    model(tokens[:, :32], incremental_state=state)
    with pytest.raises(ValueError, match=r"33 tokens exceeds .* limit of 32"):
        model(tokens, incremental_state=state)
    with pytest.raises(ValueError, match=r"--tokens-per-sample 64 exceeds --max-target-positions 32"):
        build_lm(write_byte_dictionary(tmp_path / "t2"), "--arch", "seqboat_lm_tiny", "--rel-pos-bias", "simple",
                 "--max-target-positions", "32", "--tokens-per-sample", "64")


# --------------------------------------------------------------------------- one line, not a traceback
def _refusal(call):
    """The exception ``call()`` raises, asserted to be one the command-line tools print as one
    ``error:`` line (``quiet.is_refusal``: raised by the plugin's own code, or a CheckpointError)."""
    from seqboat_fairseq.quiet import is_refusal

    with pytest.raises(Exception) as info:
        call()
    assert is_refusal(info.value), f"{type(info.value).__name__} would print a traceback: {info.value}"
    return str(info.value)


def test_build_time_option_errors_are_one_line_refusals(lm_dir, lra_dirs):
    assert "--decoder-embed-dim 0" in _refusal(lambda: build_lm(lm_dir, "--arch", "seqboat_lm_tiny",
                                                                "--decoder-embed-dim", "0"))
    assert "--decoder-chunk-size 0" in _refusal(lambda: build_lm(lm_dir, "--arch", "seqboat_lm_tiny",
                                                                 "--decoder-chunk-size", "0"))
    assert "--task language_modeling" in _refusal(lambda: build_lm(lm_dir, "--arch", "seqboat_lra_listop"))
    from seqboat_fairseq.quiet import is_refusal

    assert not is_refusal(ValueError("raised outside the plugin"))  # a bug or fairseq's own: traceback kept
    try:
        int("x")
    except ValueError as error:  # raised here, in the tests: not plugin code
        assert not is_refusal(error)


def test_speech_recipe_option_errors_are_one_line_refusals(tmp_path):
    from test_speech_commands import make_release, speech_task
    from data_prep import speech_commands as sc

    make_release(tmp_path / "release", per_class=3)
    assert sc.main(["--input-dir", str(tmp_path / "release"), "--destdir", str(tmp_path / "sc10")]) == 0
    data = tmp_path / "sc10"
    assert "--max-positions 8000" in _refusal(lambda: speech_task(data, max_positions=8000).load_dataset("valid"))
    assert "--sentence-class-num 12" in _refusal(lambda: build_lra(
        data, "speech_commands", "--arch", "seqboat_sc_raw", "--encoder-layers", "1", "--sentence-class-num", "12"))


def test_a_save_dir_that_cannot_be_written_is_one_line(tmp_path):
    from fairseq import checkpoint_utils

    import seqboat_fairseq  # noqa: F401  (wraps verify_checkpoint_directory)

    (tmp_path / "file").write_text("")
    message = _refusal(lambda: checkpoint_utils.verify_checkpoint_directory(str(tmp_path / "file" / "ckpt")))
    assert message.startswith(f"--save-dir {tmp_path / 'file' / 'ckpt'}: cannot write checkpoints there")


@pytest.mark.parametrize("flags,expected", [
    ((256, 256, None), r"--context-window 256 must be smaller than --tokens-per-sample 256"),
    ((128, 256, None), r"--context-window 256 must be smaller than --tokens-per-sample 128"),
    ((200000, 0, None), r"--tokens-per-sample 200000 gives blocks of 200,000 tokens, more than --max-tokens "
                        r"\(unset: fairseq-eval-lm uses 36,000\).*give --max-tokens 200000 or more"),
    ((600, 100, 400), r"--tokens-per-sample 600 minus --context-window 100 gives blocks of 500 tokens.*"
                      r"--max-tokens 400"),
])
def test_eval_lm_block_flags_that_fairseq_fails_on_are_refused(flags, expected):
    from seqboat_fairseq.eval_lm_flags import eval_lm_problem

    assert re.search(expected, eval_lm_problem(*flags))
    assert eval_lm_problem(512, 256, None) is None and eval_lm_problem(200000, 0, 200000) is None


@pytest.mark.slow
def test_eval_lm_refuses_its_block_flags_in_one_line(tmp_path):
    """The real tool: the refusal comes before fairseq's ZeroDivisionError, in one line, exit 1."""
    from conftest import PLUGIN_DIR, run_module, train_tiny_lm

    data = write_byte_dictionary(tmp_path / "data-bin")
    out = run_module("fairseq_cli.eval_lm", data, "--user-dir", PLUGIN_DIR, "--path", tmp_path / "none.pt",
                     "--tokens-per-sample", "256", "--context-window", "256", "--cpu", check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith("error: --context-window 256 must be smaller than "
                                                          "--tokens-per-sample 256")


def test_a_prompt_longer_than_a_learned_bias_table_is_refused_with_its_length(tmp_path):
    import torch
    from fairseq.sequence_generator import SequenceGenerator

    import seqboat_fairseq.generation  # noqa: F401  (checks the prompt before decoding)

    model, task, _ = build_lm(write_byte_dictionary(tmp_path / "d"), "--arch", "seqboat_lm_tiny",
                              "--max-target-positions", "64", "--tokens-per-sample", "64", "--rel-pos-bias", "simple")
    generator = SequenceGenerator([model.eval()], task.target_dictionary, beam_size=1, max_len_b=20)
    prompt = torch.randint(4, 260, (1, 101))
    sample = {"net_input": {"src_tokens": prompt, "src_lengths": torch.tensor([101])}}
    message = _refusal(lambda: generator.generate([model], sample, prefix_tokens=prompt))
    assert message.startswith("a prompt of 101 tokens (plus the start symbol: 102 positions) exceeds this model's "
                              "limit of 64 positions")
    short = torch.randint(4, 260, (1, 10))
    generator.generate([model], {"net_input": {"src_tokens": short, "src_lengths": torch.tensor([10])}},
                       prefix_tokens=short)  # within the limit: decodes


def test_analysis_refuses_before_it_runs(tmp_path, capsys):
    """--max-samples past the split, an --out-dir that cannot be written, another task's data,
    LM blocks past a learned bias table: one line, exit 1, nothing written."""
    import numpy as np

    from seqboat_fairseq.analysis import measure
    from test_analysis import TINY_LRA, run_main, save_checkpoint, write_token_split

    data = tmp_path / "img"
    for sub in ("input", "label"):
        (data / sub).mkdir(parents=True)
    np.save(data / "input" / "valid.npy", np.zeros((6, 1024), dtype=np.uint8))
    np.save(data / "label" / "valid.npy", np.arange(6, dtype=np.int64) % 2)
    model, _, cfg = build_lra(data, "lra-image", "--arch", "seqboat_lra_pf32", *TINY_LRA)
    path = save_checkpoint(tmp_path / "pf32.pt", model, cfg, "LRACrossEntropyCriterion")
    ran = []
    original = measure.analyse
    measure.analyse = lambda *a, **k: ran.append(1) or original(*a, **k)
    try:
        def error(*args, out=tmp_path / "out"):
            assert run_main("--path", path, "--data", data, "--out-dir", out, "--cpu", *args) == 1
            lines = capsys.readouterr().err.strip().splitlines()
            assert lines[-1].startswith("error: ") and "Traceback" not in "\n".join(lines)
            return lines[-1]

        assert "--max-samples 1000: split 'valid' of" in error("--max-samples", "1000")
        (tmp_path / "file").write_text("")
        assert f"--out-dir {tmp_path / 'file' / 'out'}" in error(out=tmp_path / "file" / "out")
        speech = tmp_path / "speech"
        for sub in ("input", "label"):
            (speech / sub).mkdir(parents=True)
        np.save(speech / "input" / "valid.npy", np.zeros((3, 16000), dtype=np.int16))
        np.save(speech / "label" / "valid.npy", np.zeros(3, dtype=np.int64))
        message = error("--data", speech)
        assert "--task lra-image" in message and "valid.npy: holds int16" in message
        assert not ran and not (tmp_path / "out").exists()

        from fairseq.data import Dictionary

        lm_data = write_byte_dictionary(tmp_path / "lm")
        write_token_split(os.path.join(lm_data, "valid"), ["1 2 3"] * 4, Dictionary.load(os.path.join(lm_data,
                                                                                                       "dict.txt")))
        lm, _, lm_cfg = build_lm(lm_data, "--arch", "seqboat_lm_tiny", "--tokens-per-sample", "32",
                                 "--rel-pos-bias", "simple", "--max-target-positions", "32")
        lm_path = save_checkpoint(tmp_path / "lm.pt", lm, lm_cfg, "CrossEntropyCriterion")
        assert run_main("--path", lm_path, "--data", lm_data, "--out-dir", tmp_path / "out",
                        "--tokens-per-sample", "64") == 1
        assert "--tokens-per-sample 64" in capsys.readouterr().err and not ran
    finally:
        measure.analyse = original
