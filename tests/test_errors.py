"""Bad options give a clear error that names the flag and what was expected (the model options'
one-line cases: test_option_errors.py)."""

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
