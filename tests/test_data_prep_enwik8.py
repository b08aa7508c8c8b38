"""data_prep/enwik8.py: byte-token format, enwik8 split and input checks, atomic fairseq data-bin output."""

import errno
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from data_prep import common, enwik8

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "data_prep", "enwik8.py")
ERROR_PREFIX = "enwik8.py: error: "


def run_script(*args, env=None):
    """Run the script as a subprocess with this interpreter; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )


def assert_cli_error(result, *fragments):
    """The run failed with exit code 2 and a last stderr line `enwik8.py: error: ...` containing fragments."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(ERROR_PREFIX), result.stderr
    for fragment in fragments:
        assert str(fragment) in last_line, (fragment, last_line)


def reference_tokens(data):
    """transformer-xl prep_enwik8.py's byte-token text (the slow reference)."""
    return " ".join(str(c) if c != ord("\n") else "\n" for c in data)


def leftovers(parent):
    """Temporary directories the script may have left in ``parent``."""
    return [name for name in os.listdir(parent) if name.startswith((".tmp-enwik8-", ".old-enwik8-"))]


# --------------------------------------------------------------------------- byte-token text


@pytest.mark.parametrize("chunk_bytes", [None, 777], ids=["default-chunk", "tiny-chunk"])
def test_write_byte_tokens_matches_reference(tmp_path, monkeypatch, chunk_bytes):
    if chunk_bytes is not None:  # many chunk boundaries, some of them next to newlines
        monkeypatch.setattr(enwik8, "_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(0)
    values = rng.integers(0, 256, 20_000, dtype=np.uint8)
    values[rng.random(values.size) < 0.15] = ord("\n")
    data = b"\n\n" + values.tobytes() + b"\n"  # leading, consecutive and trailing newlines
    path = tmp_path / "tokens.txt"
    enwik8.write_byte_tokens(data, path)
    assert path.read_bytes() == reference_tokens(data).encode("ascii")


@pytest.mark.parametrize("data", [b"", b"\n", b"A", b"\x00\xff\n\n9"], ids=repr)
def test_write_byte_tokens_edge_cases(tmp_path, data):
    path = tmp_path / "tokens.txt"
    enwik8.write_byte_tokens(data, path)
    assert path.read_bytes() == reference_tokens(data).encode("ascii")


# --------------------------------------------------------------------------- enwik8 input and split

# offset -> marker byte at both sides of each split boundary
_MARKERS = {0: 1, 89_999_999: 2, 90_000_000: 3, 94_999_999: 4, 95_000_000: 5, 99_999_999: 6}


def _write_markers(f):
    for offset, value in _MARKERS.items():
        f.seek(offset)
        f.write(bytes([value]))


def _check_enwik8_split(data):
    train, valid, test = enwik8.split_enwik8(data)
    assert (len(train), len(valid), len(test)) == (90_000_000, 5_000_000, 5_000_000)
    assert (train[0], train[-1]) == (1, 2)
    assert (valid[0], valid[-1]) == (3, 4)
    assert (test[0], test[-1]) == (5, 6)


def test_enwik8_sparse_file_passes_size_check_and_splits_exactly(tmp_path):
    path = tmp_path / "enwik8"
    with open(path, "wb") as f:
        f.truncate(10**8)
        _write_markers(f)
    data = enwik8.read_enwik8(str(path))
    assert len(data) == 10**8
    _check_enwik8_split(data)


def test_split_enwik8_small_constant():
    data = bytes(range(30))
    train, valid, test = enwik8.split_enwik8(data, num_test_bytes=7)
    assert (train, valid, test) == (data[:16], data[16:23], data[23:])
    with pytest.raises(ValueError):
        enwik8.split_enwik8(bytes(14), num_test_bytes=7)


@pytest.mark.parametrize("size", [10**8 - 1, 10**8 + 1])
def test_enwik8_wrong_size_file(tmp_path, size):
    path = tmp_path / "enwik8"
    with open(path, "wb") as f:
        f.truncate(size)
    with pytest.raises(enwik8.PrepError, match="expected exactly 100000000 bytes, got %d" % size):
        enwik8.read_enwik8(str(path))
    result = run_script("--enwik8", path, "--destdir", tmp_path / "out")
    assert_cli_error(result, path, "100000000", size)
    assert not (tmp_path / "out").exists()


def test_enwik8_stored_zip_reads_and_detects_crc_error(tmp_path):
    data = bytearray(10**8)
    for offset, value in _MARKERS.items():
        data[offset] = value
    path = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("enwik8", bytes(data))
    _check_enwik8_split(enwik8.read_enwik8(str(path)))

    with open(path, "r+b") as f:  # flip one stored content byte
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(enwik8.PrepError, match="corrupt.*CRC"):
        enwik8.read_enwik8(str(path))


def test_zip_with_wrong_member_size(tmp_path):
    path = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("enwik8", b"<mediawiki>" * 100)
    result = run_script("--enwik8", path, "--destdir", tmp_path / "out")
    assert_cli_error(result, path, "expected exactly 100000000 bytes, got 1100")


def test_truncated_zip(tmp_path):
    path = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("enwik8", os.urandom(50_000))
    path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    result = run_script("--enwik8", path, "--destdir", tmp_path / "out")
    assert_cli_error(result, path, "not a valid zip archive (truncated download?)")


def test_zip_without_enwik8_member(tmp_path):
    path = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("enwik9", b"x")
    result = run_script("--enwik8", path, "--destdir", tmp_path / "out")
    assert_cli_error(result, path, "no member 'enwik8'", "'enwik9'")


def test_missing_input_files(tmp_path):
    missing = tmp_path / "nowhere" / "enwik8.zip"
    assert_cli_error(run_script("--enwik8", missing, "--destdir", tmp_path / "out"), missing, "no such file")
    assert_cli_error(run_script("--text", missing, "--destdir", tmp_path / "out"), missing, "no such file")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- text input


def test_non_utf8_text_names_file_and_offset(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("fine text\n", encoding="utf-8")
    bad = tmp_path / "bad.txt"
    bad.write_bytes("héllo\n".encode("utf-8") + b"ok \xff rest")
    result = run_script("--text", good, bad, "--destdir", tmp_path / "out")
    assert_cli_error(result, bad, "not valid UTF-8", "0xff", "byte offset 10")
    assert str(good) not in result.stderr


def test_empty_text_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert_cli_error(run_script("--text", empty, "--destdir", tmp_path / "out"), empty, "empty")


def test_read_text_corpus_concatenates_in_order(tmp_path):
    paths = []
    for i, text in enumerate(["ab\n", "ü", "c"]):
        paths.append(tmp_path / f"{i}.txt")
        paths[-1].write_text(text, encoding="utf-8")
    assert enwik8.read_text_corpus(paths) == "ab\nüc".encode("utf-8")


@pytest.mark.parametrize(
    "options, message",
    [
        (["--valid-fraction", "0.6", "--test-fraction", "0.5"], "sum to less than 1"),
        (["--max-bytes", "10"], "a split would be empty"),
        (["--max-bytes", "0"], "--max-bytes must be positive"),
        (["--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_bad_options(tmp_path, options, message):
    result = run_script("--pydoc-demo", "--destdir", tmp_path / "out", *options)
    assert_cli_error(result, message)
    assert os.listdir(tmp_path) == []


def test_enwik8_rejects_text_only_options(tmp_path):
    result = run_script("--enwik8", tmp_path / "enwik8.zip", "--max-bytes", "100", "--destdir", tmp_path / "out")
    assert_cli_error(result, "--max-bytes only applies to --text/--pydoc-demo")


def test_unseen_byte_values():
    assert enwik8.unseen_byte_values(b"abc", [b"ab\n", b"\xffa"]) == [0xFF]  # newline is never a token
    assert enwik8.unseen_byte_values(b"abc\n", [b"cab", b"\n"]) == []


# --------------------------------------------------------------------------- end to end


def _decode_split(destdir, split):
    """Decode a binarised split back to its lines of bytes (one line per fairseq sentence)."""
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(os.path.join(destdir, "dict.txt"))
    dataset = data_utils.load_indexed_dataset(os.path.join(destdir, split), dictionary)
    assert dataset is not None, f"no {split} dataset in {destdir}"
    lines = []
    for i in range(len(dataset)):
        ids = dataset[i].tolist()
        assert ids[-1] == dictionary.eos(), "fairseq appends </s> to every line"
        assert dictionary.unk() not in ids
        lines.append(bytes(int(dictionary[t]) for t in ids[:-1]))
    return lines


def _expected_lines(part):
    """Lines fairseq sees in the byte-token text of ``part``: one per newline-separated segment."""
    lines = part.split(b"\n")
    if part.endswith(b"\n"):  # the text file then simply ends with a line break
        lines.pop()
    return lines


@pytest.mark.slow
def test_text_end_to_end_round_trip(tmp_path):
    corpus_file = tmp_path / "pydoc.txt"
    corpus_file.write_bytes(enwik8.pydoc_demo_corpus())
    corpus = corpus_file.read_bytes()[:200_000]
    expected = {"train": corpus[:180_000], "valid": corpus[180_000:190_000], "test": corpus[190_000:]}
    destdir = tmp_path / "bin" / "pydoc"

    result = run_script("--text", corpus_file, "--max-bytes", 200_000, "--destdir", destdir,
                        "--workers", 2, "--keep-text")
    assert result.returncode == 0, result.stderr

    for name in ["dict.txt"] + [f"{s}.{ext}" for s in ("train", "valid", "test") for ext in ("bin", "idx")]:
        assert (destdir / name).is_file(), name
    for split, part in expected.items():
        assert (destdir / "raw" / f"{split}.txt").read_bytes() == reference_tokens(part).encode("ascii")
        decoded = _decode_split(str(destdir), split)
        assert decoded == _expected_lines(part), split
    assert not expected["valid"].endswith(b"\n")  # so the valid bytes come back exactly
    assert b"\n".join(_decode_split(str(destdir), "valid")) == expected["valid"]
    assert "valid:        10,000 bytes" in result.stdout
    assert "vocabulary:" in result.stdout and str(destdir) in result.stdout
    assert leftovers(tmp_path / "bin") == []


@pytest.mark.slow
def test_existing_destdir_requires_force(tmp_path):
    destdir = tmp_path / "out"
    destdir.mkdir()
    (destdir / "keep.me").write_text("old")

    # a directory no prep wrote is never replaced, with or without --force
    for force in ([], ["--force"]):
        result = run_script("--pydoc-demo", "--max-bytes", 20_000, "--destdir", destdir, *force)
        assert_cli_error(result, destdir, "not written by a data prep", "never replaced")
        assert os.listdir(destdir) == ["keep.me"]
    os.remove(destdir / "keep.me")
    os.rmdir(destdir)

    assert run_script("--pydoc-demo", "--max-bytes", 30_000, "--destdir", destdir).returncode == 0
    result = run_script("--pydoc-demo", "--max-bytes", 20_000, "--destdir", destdir)
    assert_cli_error(result, destdir, "already exists", "--force")
    assert "valid:" not in result.stdout

    result = run_script("--pydoc-demo", "--max-bytes", 20_000, "--destdir", destdir, "--force")
    assert result.returncode == 0, result.stderr
    assert "valid:         1,000 bytes" in result.stdout  # the new data-bin replaced the old one
    assert sorted(os.listdir(destdir)) == sorted(  # no raw/ without --keep-text
        [common.MARKER, "dict.txt"] + [f"{s}.{e}" for s in ("train", "valid", "test") for e in ("bin", "idx")]
    )
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- in-process binarisation


def _fairseq_preprocess(raw_dir, destdir):
    """The old path: fairseq-preprocess --only-source on the byte-token text files."""
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--only-source", "--destdir", str(destdir),
           "--workers", "1"]
    for split in ("train", "valid", "test"):
        cmd += [f"--{split}pref", os.path.join(raw_dir, f"{split}.txt")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)


def test_binarisation_is_byte_for_byte_fairseq_preprocess(tmp_path):
    """The numpy writer gives exactly fairseq-preprocess's dict.txt, .bin and .idx (ids, sizes, dtype)."""
    rng = np.random.default_rng(3)
    train = rng.integers(0, 200, 30_000, dtype=np.uint8)  # bytes 200-255 unseen in train -> <unk>
    train[rng.random(train.size) < 0.02] = ord("\n")
    splits = (
        b"\n\n" + train.tobytes() + b"\n\nend",  # leading, consecutive newlines, no final newline
        bytes(range(256)) + b"\n",  # every byte value, ends with a newline
        b"x\n\n\xff\xfe",
    )
    new = tmp_path / "new"
    new.mkdir()
    enwik8.binarize_splits(splits, str(new))

    raw, old = tmp_path / "raw", tmp_path / "old"
    raw.mkdir()
    for name, part in zip(("train", "valid", "test"), splits):
        enwik8.write_byte_tokens(part, raw / f"{name}.txt")
    _fairseq_preprocess(raw, old)
    for name in ["dict.txt"] + [f"{s}.{e}" for s in ("train", "valid", "test") for e in ("bin", "idx")]:
        assert (new / name).read_bytes() == (old / name).read_bytes(), name

    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(new / "dict.txt"))
    valid = data_utils.load_indexed_dataset(str(new / "valid"), dictionary)
    assert len(valid) == 2  # byte 10 breaks the line
    assert sum(valid[i].tolist().count(dictionary.unk()) for i in range(2)) == 56  # 200..255


def test_no_child_process_and_the_language_modeling_task_loads_the_result(tmp_path, monkeypatch):
    """The prep binarises in-process (nothing to orphan when it is killed); fairseq-train's LM task reads it."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    def no_child(*args, **kwargs):
        raise AssertionError("the enwik8 prep must not start a child process")

    destdir = tmp_path / "bin"
    with monkeypatch.context() as patch:
        patch.setattr(subprocess, "Popen", no_child)
        patch.setattr(os, "fork", no_child)
        assert enwik8.main(["--pydoc-demo", "--max-bytes", "20000", "--destdir", str(destdir)]) == 0

    args = options.parse_args_and_arch(options.get_training_parser(), [  # as fairseq-train sets it up
        str(destdir), "--task", "language_modeling", "--arch", "transformer_lm", "--tokens-per-sample", "64"])
    task = tasks.setup_task(convert_namespace_to_omegaconf(args).task)
    task.load_dataset("valid")
    dataset, dictionary = task.dataset("valid"), task.source_dictionary
    stream = [t for i in range(len(dataset)) for t in dataset[i]["target"].tolist()]  # blocks of 64 tokens
    valid = enwik8.pydoc_demo_corpus()[:20_000][18_000:19_000]
    assert dictionary.unk() not in stream
    assert [ord("\n") if t == dictionary.eos() else int(dictionary[t]) for t in stream] == (
        list(valid) + ([] if valid.endswith(b"\n") else [ord("\n")]))


# --------------------------------------------------------------------------- failures leave nothing behind


def _prep_written(destdir):
    """A directory as a prep leaves it: a file and the marker."""
    destdir.mkdir()
    (destdir / "keep.me").write_text("old")
    common.write_marker(str(destdir), "enwik8.py")


@pytest.mark.parametrize("force", [False, True], ids=["new", "force-over-existing"])
def test_disk_full_while_binarising_leaves_nothing(tmp_path, monkeypatch, capsys, force):
    real = enwik8.write_indexed_bytes

    def disk_full(data, dictionary, prefix, progress=None):
        if prefix.endswith("valid"):
            with open(prefix + ".bin", "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), prefix + ".bin")
        return real(data, dictionary, prefix, progress)

    monkeypatch.setattr(enwik8, "write_indexed_bytes", disk_full)
    parent = tmp_path / "bin"
    parent.mkdir()
    destdir = parent / "out"
    if force:
        _prep_written(destdir)
    code = enwik8.main(["--pydoc-demo", "--max-bytes", "20000", "--destdir", str(destdir),
                        *(["--force"] if force else [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(ERROR_PREFIX) and "valid.bin: No space left on device" in err[0], err
    assert leftovers(parent) == []
    if force:
        assert sorted(os.listdir(destdir)) == [common.MARKER, "keep.me"]
        assert (destdir / "keep.me").read_text() == "old"
    else:
        assert os.listdir(parent) == []


def test_interrupt_during_binarisation_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(splits, outdir):
        with open(os.path.join(outdir, "dict.txt"), "w") as f:
            f.write("32 1\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(enwik8, "binarize_splits", interrupted)
    parent = tmp_path / "bin"
    code = enwik8.main(["--pydoc-demo", "--max-bytes", "5000", "--destdir", str(parent / "out")])
    assert code == 130
    assert os.listdir(parent) == []
