"""Bad options give a clear error that names the flag and what was expected."""

import pytest

from conftest import build_lm, build_lra, write_byte_dictionary, write_lra_dictionaries


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return write_byte_dictionary(tmp_path_factory.mktemp("bytes"))


@pytest.mark.parametrize("args,message", [
    (["--decoder-chunk-size", "0"], r"--decoder-chunk-size 0: give the working-memory size w > 0, or -1"),
    (["--decoder-chunk-size", "4096", "--max-target-positions", "1024"],
     r"--decoder-chunk-size 4096 exceeds --max-target-positions 1024"),
    (["--local-pos"], r"--local-pos .* needs --rel-pos-bias simple"),
    (["--rel-pos-bias", "simple", "--local-pos", "--decoder-chunk-size", "-1"], r"--local-pos .* positive"),
    (["--decoder-z-dim", "33"], r"--rel-pos-bias rotary needs an even z dim"),
    (["--decoder-input-dim", "32"], r"--share-decoder-input-output-embed needs --decoder-input-dim"),
    (["--init-temp-scale", "0"], r"--init-temp-scale must be positive"),
], ids=["chunk0", "chunk-too-long", "local-pos-rotary", "local-pos-full", "odd-z-rotary", "tied-dims", "temp"])
def test_lm_option_errors(lm_dir, args, message):
    with pytest.raises(ValueError, match=message):
        build_lm(lm_dir, "--arch", "seqboat_lm_tiny", "--tokens-per-sample", "1024", *args)


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
