"""data_prep/sentencepiece_lm.py (a sentencepiece data-bin), seqboat_fairseq/bits_per_byte.py, and,
marked slow, a subword SeqBoat LM end to end: prep -> fairseq-train -> fairseq-eval-lm + bits per
byte -> fairseq-interactive --bpe sentencepiece and the hub."""

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import PLUGIN_DIR, REPO_ROOT, run_module, train_tiny_lm
from data_prep import sentencepiece_lm as prep

SCRIPT = os.path.join(REPO_ROOT, "data_prep", "sentencepiece_lm.py")
EVAL_BPB = os.path.join(REPO_ROOT, "examples", "sentencepiece", "eval_bpb.sh")
HUB_EXAMPLE = os.path.join(REPO_ROOT, "examples", "sentencepiece", "hub_generate.py")
ERROR_PREFIX = "sentencepiece_lm.py: error: "

WORDS = ("the a of an model sequence token state gate memory attention layer sparse module activation "
         "router window language byte piece text line").split()
# runs of spaces, a tab, leading / trailing spaces, non-ASCII, an empty line: all must survive
SPECIAL_LINES = ["    indented  code  with   runs of spaces", "tab\tseparated\tcolumns", " leading space",
                 "trailing space ", "naïve café — ünïcode ✓", ""]


def make_lines(count, seed):
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(count)]
    return lines + SPECIAL_LINES


def write_corpus(directory):
    """train / valid / test text files; test has characters that never occur in train (byte fallback)."""
    texts = {"train": "\n".join(make_lines(600, 0)) + "\n",
             "valid": "\n".join(make_lines(40, 1)) + "\n",
             "test": "\n".join(make_lines(40, 2) + ["price: 5 € 😀 ∑"])}  # no final newline
    paths = {}
    for name, text in texts.items():
        paths[name] = directory / f"{name}.txt"
        paths[name].write_text(text, encoding="utf-8")
    return paths


def split_args(paths):
    return ["--train-text", paths["train"], "--valid-text", paths["valid"], "--test-text", paths["test"]]


def run_prep(*args):
    return prep.main([str(a) for a in args])


def load_dataset(data, split):
    from fairseq.data import data_utils
    from fairseq.data.dictionary import Dictionary

    dictionary = Dictionary.load(os.path.join(data, "dict.txt"))
    dataset = data_utils.load_indexed_dataset(os.path.join(data, split), dictionary, "mmap")
    return dictionary, [dataset[i].numpy() for i in range(len(dataset))]


def processor(data):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=os.path.join(data, "spm.model"))


def leftovers(parent):
    return [n for n in os.listdir(parent) if n.startswith((".tmp-", ".old-"))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("spm-corpus"))


@pytest.fixture(scope="module")
def data_bin(corpus, tmp_path_factory):
    data = tmp_path_factory.mktemp("spm-bin") / "data-bin"
    assert run_prep(*split_args(corpus), "--vocab-size", 300, "--workers", 1, "--destdir", data) == 0
    return data


# --------------------------------------------------------------------------- splitting


def test_split_at_line_ends_cuts_only_after_line_breaks():
    rng = random.Random(0)
    data = "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 9))) + "\n" for _ in range(500))
    data = data.encode("utf-8")
    train, valid, test = prep.split_at_line_ends(data, 0.1, 0.05)
    assert train + valid + test == data
    assert train.endswith(b"\n") and valid.endswith(b"\n")
    assert len(test) <= int(len(data) * 0.05) and len(valid) + len(test) <= int(len(data) * 0.15)
    assert len(test) > int(len(data) * 0.05) - 60  # moved forward by less than a line


@pytest.mark.parametrize("data", [b"one single long line without a break" * 20, b"a\nb"], ids=["one-line", "2-lines"])
def test_split_that_would_leave_a_split_empty_is_refused(data):
    with pytest.raises(prep.PrepError, match="too small for --valid-fraction 0.05 and --test-fraction 0.05"):
        prep.split_at_line_ends(data, 0.05, 0.05)


def test_trim_to_lines_keeps_complete_lines():
    assert prep.trim_to_lines(b"ab\ncd\nef\n", 7) == b"ab\ncd\n"
    assert prep.trim_to_lines(b"ab\ncd\n", 100) == b"ab\ncd\n"
    with pytest.raises(prep.PrepError, match="keeps no complete line"):
        prep.trim_to_lines(b"abcdef\n", 3)


# --------------------------------------------------------------------------- the data-bin


def test_data_bin_files_and_split_statistics(data_bin, corpus):
    names = set(os.listdir(data_bin))
    assert names == {".seqboat-prep.json", "dict.txt", "spm.model", "splits.json",
                     *(f"{s}.{e}" for s in prep.SPLITS for e in ("bin", "idx"))}
    content = json.loads((data_bin / "splits.json").read_text())
    for split in prep.SPLITS:
        _, items = load_dataset(data_bin, split)
        stats = content["splits"][split]
        assert stats["bytes"] == os.path.getsize(corpus[split])
        assert stats["lines"] == len(items) == len(prep.split_lines(corpus[split].read_bytes()))
        assert stats["tokens"] == sum(len(item) for item in items)
        assert stats["unk_tokens"] == 0 and stats["lines_not_reproduced"] == 0
    assert content["model"]["normalization"] == "identity" and content["model"]["byte_fallback"] is True


def test_every_line_is_its_pieces_then_eos_and_decodes_to_the_original(data_bin, corpus):
    """Lossless, unseen characters (test's euro sign, emoji) included: they are spelled in UTF-8 byte pieces."""
    sp = processor(data_bin)
    for split in prep.SPLITS:
        dictionary, items = load_dataset(data_bin, split)
        lines = corpus[split].read_text(encoding="utf-8").split("\n")
        if lines[-1] == "":
            lines.pop()
        for line, item in zip(lines, items):
            assert item[-1] == dictionary.eos() and dictionary.eos() not in item[:-1]
            pieces = [dictionary[i] for i in item[:-1]]
            assert pieces == sp.encode(line, out_type=str)
            assert sp.decode_pieces(pieces) == line
    assert any(p.startswith("<0x") for p in sp.encode("5 € 😀", out_type=str))


def build_fairseq_bpe(data):
    """The object ``--bpe sentencepiece --sentencepiece-model DATA/spm.model`` builds (the plugin loaded)."""
    from argparse import Namespace

    import seqboat_fairseq  # noqa: F401
    from fairseq.data import encoders

    return encoders.build_bpe(Namespace(bpe="sentencepiece", sentencepiece_model=str(data / "spm.model")))


def test_stock_bpe_flag_decodes_byte_pieces_to_text(data_bin, corpus):
    """``--bpe sentencepiece`` decodes what it encodes, byte-fallback characters and runs of spaces
    included; fairseq's own decode of the same string shows byte pieces (what the flag printed)."""
    from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE

    bpe = build_fairseq_bpe(data_bin)
    lines = corpus["test"].read_text(encoding="utf-8").split("\n") + ["Größe ✓ 😀"]
    with_bytes = 0
    for line in lines:
        encoded = bpe.encode(line)
        assert bpe.decode(encoded) == line, encoded
        if "<0x" in encoded:
            with_bytes += 1
            assert "<0x" in SentencepieceBPE.decode(bpe, encoded)  # fairseq's decode: byte pieces as they are
    assert with_bytes >= 2
    # </s> (kept by --task multiline_language_modeling) is the line break; a non-piece stays as it is
    assert bpe.decode(bpe.encode("price: 5 €") + " </s> " + bpe.encode("  two") + " <pad>") == "price: 5 €\n  two<pad>"


def test_binary_equals_fairseqs_text_path(data_bin, corpus):
    """What fairseq-preprocess --srcdict dict.txt makes of the spm-encoded text: Dictionary.encode_line
    of the space-joined pieces (lines whose pieces hold white space, e.g. a tab, excepted: fairseq's
    text format splits them)."""
    sp = processor(data_bin)
    dictionary, items = load_dataset(data_bin, "train")
    checked = 0
    for line, item in zip(corpus["train"].read_text(encoding="utf-8").split("\n"), items):
        pieces = sp.encode(line, out_type=str)
        if any(ch.isspace() for p in pieces for ch in p):
            continue
        encoded = dictionary.encode_line(" ".join(pieces), add_if_not_exist=False, append_eos=True)
        assert encoded.tolist() == item.tolist()
        checked += 1
    assert checked >= 600


def test_dictionary_holds_every_piece_in_model_order_with_train_counts(data_bin):
    from fairseq.data import Dictionary

    sp = processor(data_bin)
    dictionary = Dictionary.load(str(data_bin / "dict.txt"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())
              if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))]
    assert dictionary.symbols[dictionary.nspecial:dictionary.nspecial + len(pieces)] == pieces
    assert len(dictionary) % 8 == 0
    assert all(s.startswith("madeupword") for s in dictionary.symbols[dictionary.nspecial + len(pieces):])
    _, items = load_dataset(data_bin, "train")
    counts = np.bincount(np.concatenate(items), minlength=len(dictionary))
    assert [dictionary.count[i] for i in range(dictionary.nspecial, len(dictionary))] == \
        counts[dictionary.nspecial:].tolist()


def test_existing_model_gives_the_same_data_bin(data_bin, corpus, tmp_path):
    model = tmp_path / "my.model"
    shutil.copy(data_bin / "spm.model", model)
    out = tmp_path / "reused"
    assert run_prep(*split_args(corpus), "--spm-model", model, "--destdir", out) == 0
    for name in ("dict.txt", "spm.model", *(f"{s}.{e}" for s in prep.SPLITS for e in ("bin", "idx"))):
        assert (out / name).read_bytes() == (data_bin / name).read_bytes(), name
    content = json.loads((out / "splits.json").read_text())
    assert content["model"]["source"] == str(model)
    assert content["splits"] == json.loads((data_bin / "splits.json").read_text())["splits"]


def test_lossy_model_is_reported_in_summary_and_statistics(corpus, tmp_path, capfd):
    """sentencepiece's default NFKC normalisation collapses runs of spaces: the prep says so."""
    import sentencepiece

    sentencepiece.SentencePieceTrainer.train(input=str(corpus["train"]), model_prefix=str(tmp_path / "nfkc"),
                                             vocab_size=60, minloglevel=2)
    out = tmp_path / "lossy"
    assert run_prep(*split_args(corpus), "--spm-model", tmp_path / "nfkc.model", "--destdir", out) == 0
    stats = json.loads((out / "splits.json").read_text())["splits"]["train"]
    assert stats["lines_not_reproduced"] >= 2  # the indented and the trailing-space lines
    err = capfd.readouterr().err
    assert "warning: train: the model does not reproduce" in err


def test_text_mode_cuts_one_corpus_at_line_ends(corpus, tmp_path):
    out = tmp_path / "cut"
    assert run_prep("--text", corpus["train"], corpus["valid"], "--valid-fraction", 0.1, "--test-fraction", 0.1,
                    "--vocab-size", 300, "--model-type", "bpe", "--workers", 1, "--destdir", out) == 0
    stats = json.loads((out / "splits.json").read_text())["splits"]
    total = os.path.getsize(corpus["train"]) + os.path.getsize(corpus["valid"])
    assert sum(s["bytes"] for s in stats.values()) == total
    assert all(s["lines_not_reproduced"] == 0 and s["unk_tokens"] == 0 for s in stats.values())


def test_crlf_line_ends_survive_as_byte_pieces(corpus, tmp_path):
    """sentencepiece keeps "\r" out of its pieces: with byte fallback a CRLF corpus stays lossless."""
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(corpus["train"].read_bytes().replace(b"\n", b"\r\n"))
    out = tmp_path / "crlf-bin"
    assert run_prep("--train-text", crlf, "--valid-text", crlf, "--test-text", crlf, "--vocab-size", 300,
                    "--workers", 1, "--destdir", out) == 0
    stats = json.loads((out / "splits.json").read_text())["splits"]["test"]
    assert stats["lines_not_reproduced"] == 0 and stats["unk_tokens"] == 0
    assert stats["bytes"] == os.path.getsize(crlf)
    assert processor(out).encode("a line\r", out_type=str)[-1] == "<0x0D>"


# --------------------------------------------------------------------------- errors


def _error_cases(corpus, tmp):
    bad = tmp / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    empty = tmp / "empty.txt"
    empty.write_bytes(b"")
    blank = tmp / "blank.txt"
    blank.write_text("\n  \n\n")
    not_model = tmp / "not.model"
    not_model.write_text("hello")
    one_line = tmp / "one_line.txt"
    one_line.write_text("a single line\n")
    args = split_args(corpus)
    valid_test = args[2:]
    return {
        "missing file": (["--train-text", tmp / "nope.txt", *valid_test], "nope.txt: no such file"),
        "empty file": (["--train-text", empty, *valid_test], "empty.txt: file is empty"),
        "not UTF-8": (["--train-text", bad, *valid_test], "not valid UTF-8: invalid byte 0xe9 at byte offset 3"),
        "blank train text": (["--train-text", blank, *valid_test], "nothing to train on"),
        "train without valid/test": (["--train-text", corpus["train"]],
                                     "--train-text needs --valid-text and --test-text"),
        "valid without train": (["--text", corpus["train"], "--valid-text", corpus["valid"]],
                                "--valid-text and --test-text go with --train-text"),
        "fraction with --train-text": ([*args, "--valid-fraction", "0.1"], "--valid-fraction only applies to --text"),
        "bad fraction": (["--text", corpus["train"], "--test-fraction", "0.6", "--valid-fraction", "0.5"],
                         "must be in (0, 1) and sum to less than 1"),
        "vocab too large": ([*args, "--vocab-size", "20000"],
                            "--vocab-size 20000 is too large for this train text: sentencepiece finds at most"),
        "vocab too small": ([*args, "--vocab-size", "100"], "--vocab-size 100 is too small for this train text"),
        "training option with --spm-model": ([*args, "--spm-model", not_model, "--vocab-size", "100"],
                                             "--vocab-size only applies when training a model"),
        "spm model missing": ([*args, "--spm-model", tmp / "none.model"], "none.model: no such file"),
        "not a spm model": ([*args, "--spm-model", not_model], "not.model: not a sentencepiece model"),
        "too small to split": (["--text", one_line], "is too small for --valid-fraction"),
    }


ERROR_CASES = ["missing file", "empty file", "not UTF-8", "blank train text", "train without valid/test",
               "valid without train", "fraction with --train-text", "bad fraction", "vocab too large",
               "vocab too small", "training option with --spm-model", "spm model missing", "not a spm model",
               "too small to split"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_bad_input_is_one_error_line_and_leaves_nothing(case, corpus, tmp_path, capfd):
    args, fragment = _error_cases(corpus, tmp_path)[case]
    dest = tmp_path / "out" / "data-bin"
    assert run_prep(*args, "--workers", 1, "--destdir", dest) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), lines
    assert fragment in lines[0], (fragment, lines[0])
    assert not dest.exists()
    assert not (dest.parent.exists() and leftovers(dest.parent))


def test_existing_destdir_needs_force(data_bin, corpus, tmp_path, capfd):
    dest = tmp_path / "again"
    shutil.copytree(data_bin, dest)
    assert run_prep(*split_args(corpus), "--vocab-size", 300, "--destdir", dest) == 2
    assert "already exists; pass --force" in capfd.readouterr().err
    assert run_prep(*split_args(corpus), "--vocab-size", 320, "--workers", 1, "--destdir", dest, "--force") == 0
    assert json.loads((dest / "splits.json").read_text())["model"]["pieces"] == 320


def test_script_reports_one_error_line_as_a_subprocess(corpus):
    result = subprocess.run([sys.executable, SCRIPT, *map(str, split_args(corpus)), "--vocab-size", "20000",
                             "--destdir", str(corpus["train"].parent / "never")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(ERROR_PREFIX + "--vocab-size 20000 is too large")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# --------------------------------------------------------------------------- bits per byte


def eval_log(tokens, loss, subset="test", data="DATA", fmt="fairseq"):
    messages = [f"{data} {subset} 12 examples", f"Evaluated {tokens:,} tokens in 0.2s (11718.41 tokens/s)",
                f"Loss (base 2): {loss}, Perplexity: 322.63"]
    if fmt == "fairseq":
        return "".join(f"2026-01-01 00:00:00 | INFO | fairseq_cli.eval_lm | {m}\n" for m in messages)
    return "".join(f"INFO:fairseq_cli.eval_lm:{m}\n" for m in messages)


def split_numbers(data_bin, split="test"):
    stats = json.loads((data_bin / "splits.json").read_text())["splits"][split]
    return stats["tokens"], stats["bytes"]


@pytest.mark.parametrize("fmt", ["fairseq", "logging"])
def test_bits_per_byte_is_loss_times_tokens_over_bytes(data_bin, fmt):
    from seqboat_fairseq import bits_per_byte as bpb

    tokens, num_bytes = split_numbers(data_bin)
    report = bpb.compute(eval_log(tokens, "8.3337", data=str(data_bin), fmt=fmt), str(data_bin), "test")
    assert (report.tokens, report.bytes, report.loss) == (tokens, num_bytes, 8.3337)
    assert report.bits_per_byte == pytest.approx(8.3337 * tokens / num_bytes, rel=1e-12)
    assert bpb.bits_per_byte(2.0, 10, 40) == 0.5
    assert report.decimals == 4  # tokens are longer than a byte: the 4-decimal loss leaves 4 exact decimals


def test_bits_per_byte_prints_fewer_decimals_when_tokens_are_shorter_than_bytes(data_bin, tmp_path, capsys):
    from seqboat_fairseq import bits_per_byte as bpb

    tokens, _ = split_numbers(data_bin)
    log = tmp_path / "eval.log"
    log.write_text(eval_log(tokens, "8.3337"))
    assert bpb.main(["--eval-log", str(log), "--data", str(data_bin), "--bytes", str(tokens // 50)]) == 0
    value = re.search(r"bits per byte \(test\): (\S+)", capsys.readouterr().out).group(1)
    assert len(value.split(".")[1]) == 2  # error bound 0.5e-4 x 50 = 2.5e-3


def _bpb_refusals(data_bin, tmp):
    tokens, _ = split_numbers(data_bin)
    no_stats = tmp / "no-stats"
    no_stats.mkdir()
    for name in ("test.idx", "test.bin", "dict.txt"):
        shutil.copy(data_bin / name, no_stats / name)
    changed = tmp / "changed"
    shutil.copytree(data_bin, changed)
    content = json.loads((changed / "splits.json").read_text())
    content["splits"]["test"]["tokens"] += 1
    (changed / "splits.json").write_text(json.dumps(content))
    good = eval_log(tokens, "8.3337")
    inf = good + "--- Logging error ---\nMessage: 'skipping tokens with inf scores:'\n"
    return {
        "fewer tokens (a shard)": (good.replace(f"Evaluated {tokens:,}", f"Evaluated {tokens // 2:,}"), data_bin,
                                   f"eval-lm evaluated {tokens // 2:,} tokens but split 'test'"),
        "two runs in one log": (good + good, data_bin, "the log holds 2 evaluations"),
        "unfinished run": (good.split("Loss")[0], data_bin, "no 'Loss (base 2)' line"),
        "not a log": ("hello\n", data_bin, "no 'Evaluated N tokens' line"),
        "inf scores skipped": (inf, data_bin, "skipped tokens with infinite scores"),
        "nan loss": (eval_log(tokens, "nan"), data_bin, "no finite bits per byte"),
        "other subset": (eval_log(tokens, "8.3337", subset="valid"), data_bin, "evaluates subset 'valid'"),
        "no splits.json": (good, no_stats, "has no splits.json"),
        "changed data-bin": (good, changed, "the data-bin was changed after its prep"),
    }


@pytest.mark.parametrize("case", ["fewer tokens (a shard)", "two runs in one log", "unfinished run", "not a log",
                                  "inf scores skipped", "nan loss", "other subset", "no splits.json",
                                  "changed data-bin"])
def test_bits_per_byte_refuses_and_prints_no_number(case, data_bin, tmp_path, capsys):
    from seqboat_fairseq import bits_per_byte as bpb

    text, data, fragment = _bpb_refusals(data_bin, tmp_path)[case]
    log = tmp_path / "eval.log"
    log.write_text(text)
    assert bpb.main(["--eval-log", str(log), "--data", str(data), "--split", "test"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bits_per_byte: error: ") and fragment in lines[0], lines


def test_bits_per_byte_of_a_byte_data_bin_needs_its_byte_count(data_bin, tmp_path, capsys):
    from seqboat_fairseq import bits_per_byte as bpb

    no_stats = tmp_path / "bytes"
    no_stats.mkdir()
    shutil.copy(data_bin / "test.idx", no_stats / "test.idx")
    tokens, _ = split_numbers(data_bin)
    log = tmp_path / "eval.log"
    log.write_text(eval_log(tokens, "1.2500"))
    assert bpb.main(["--eval-log", str(log), "--data", str(no_stats), "--bytes", str(tokens - 1), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bits_per_byte"] == pytest.approx(1.25 * tokens / (tokens - 1))


# --------------------------------------------------------------------------- end to end (slow)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 500-piece sentencepiece data-bin of Python's pydoc text (train/valid/test files the test
    writes, cut at line ends) and seqboat_lm_tiny trained on it for 40 updates."""
    from data_prep.enwik8 import pydoc_demo_corpus

    root = tmp_path_factory.mktemp("spm-e2e")
    text = pydoc_demo_corpus()[:90_000]
    text = text[: text.rfind(b"\n") + 1]
    train, valid, test = prep.split_at_line_ends(text, 0.1, 0.1)
    paths = {}
    for name, part in zip(prep.SPLITS, (train, valid, test)):
        paths[name] = root / f"{name}.txt"
        paths[name].write_bytes(part)
    data = root / "data-bin"
    subprocess.run([sys.executable, SCRIPT, *map(str, split_args(paths)), "--vocab-size", "500", "--workers", "1",
                    "--destdir", str(data)], check=True, capture_output=True, timeout=600)
    save = root / "checkpoints"
    checkpoint = train_tiny_lm(data, save, "--seed", "1", updates=40)
    return {"root": root, "data": data, "save": save, "checkpoint": checkpoint, "text": paths}


@pytest.mark.slow
def test_fairseq_preprocess_of_the_encoded_text_gives_the_same_binary(trained, tmp_path):
    """The data-bin is byte for byte what fairseq-preprocess --only-source --srcdict dict.txt makes of
    the spm-encoded text (the pydoc text has no tab or other white space inside a piece)."""
    data = trained["data"]
    sp = processor(data)
    prefixes = {}
    for split in prep.SPLITS:
        lines = trained["text"][split].read_text(encoding="utf-8").split("\n")
        lines = lines[:-1] if lines[-1] == "" else lines
        encoded = tmp_path / f"{split}.spm"
        encoded.write_text("".join(" ".join(sp.encode(line, out_type=str)) + "\n" for line in lines),
                           encoding="utf-8")
        prefixes[split] = str(tmp_path / split)
    out = tmp_path / "preprocessed"
    run_module("fairseq_cli.preprocess", "--only-source", "--srcdict", data / "dict.txt", "--trainpref",
               prefixes["train"] + ".spm", "--validpref", prefixes["valid"] + ".spm", "--testpref",
               prefixes["test"] + ".spm", "--destdir", out, "--workers", "1", "--dataset-impl", "mmap")
    for split in prep.SPLITS:
        for ext in ("bin", "idx"):
            assert (out / f"{split}.{ext}").read_bytes() == (data / f"{split}.{ext}").read_bytes(), (split, ext)


def run_eval_bpb(trained, *extra):
    return subprocess.run(["bash", EVAL_BPB, str(trained["data"]), trained["checkpoint"], "test",
                           "--tokens-per-sample", "64", "--context-window", "32", "--cpu", *extra],
                          capture_output=True, text=True, timeout=900, cwd=str(trained["root"]),
                          env=dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1",
                                   LOG=str(trained["root"] / "eval.log")))


@pytest.mark.slow
def test_eval_lm_reports_loss_per_token_and_bits_per_byte(trained):
    result = run_eval_bpb(trained)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    loss = float(re.search(r"Loss \(base 2\): ([\d.]+)", out).group(1))
    evaluated = int(re.search(r"Evaluated ([\d,]+) tokens", out).group(1).replace(",", ""))
    bpb = float(re.search(r"bits per byte \(test\): ([\d.]+)", out).group(1))
    tokens, num_bytes = split_numbers(trained["data"])
    assert num_bytes == os.path.getsize(trained["text"]["test"])
    assert evaluated == tokens
    assert bpb == pytest.approx(loss * tokens / num_bytes, abs=1e-4)
    vocab = sum(1 for _ in open(trained["data"] / "dict.txt")) + 4
    assert bpb < math.log2(vocab) * tokens / num_bytes  # better than a uniform guess over the dictionary
    print(f"\nsentencepiece tiny run: {loss:.4f} bits/token, {bpb:.4f} bits per byte "
          f"({num_bytes / tokens:.2f} bytes/token)")


@pytest.mark.slow
def test_bits_per_byte_of_a_partial_evaluation_is_refused(trained):
    result = run_eval_bpb(trained, "--num-shards", "2", "--shard-id", "0")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "bits per byte" not in result.stdout
    assert "bits_per_byte: error: eval-lm evaluated" in result.stderr


BYTE_PROMPT = "Größe ✓ of the"  # ö, ß and ✓ are outside the pydoc model's pieces: byte fallback
INTERACTIVE = ["--user-dir", PLUGIN_DIR, "--bpe", "sentencepiece", "--beam", "1", "--sampling",
               "--sampling-topk", "10", "--seed", "3", "--cpu"]


@pytest.mark.slow
def test_interactive_generates_text_with_fairseqs_sentencepiece_bpe(trained):
    data = trained["data"]
    common = [data, *INTERACTIVE, "--path", trained["checkpoint"], "--sentencepiece-model", data / "spm.model"]
    prompts = ["The return statement", "A class", BYTE_PROMPT]
    # --min-len counts the prompt's tokens too: 22 makes every prompt (the byte prompt has 14) go on
    # for at least 8 sampled pieces, whatever the sampling draws
    out = run_module("fairseq_cli.interactive", *common, "--task", "language_modeling", "--min-len", "22",
                     "--max-len-b", "26", stdin="".join(p + "\n" for p in prompts)).stdout
    hyps = re.findall(r"^D-(\d+)\t(\S+)\t(.*)$", out, flags=re.M)
    assert [int(h[0]) for h in hyps] == [0, 1, 2], out[-2000:]
    for (_, score, text), prompt in zip(hyps, prompts):
        assert text.startswith(prompt) and len(text) > len(prompt) + 5 and float(score) < 0, text
        assert "<0x" not in text, text  # byte-fallback pieces are decoded to UTF-8 text
    assert "<0x" in re.search(r"^H-2\t\S+\t(.*)$", out, flags=re.M).group(1)  # the prompt has byte pieces
    # --task multiline_language_modeling continues across line ends (</s>) to exactly --max-len-b tokens
    out = run_module("fairseq_cli.interactive", *common, "--task", "multiline_language_modeling",
                     "--max-len-b", "30", stdin="The return statement\n").stdout
    tokens = re.search(r"^H-0\t\S+\t(.*)$", out, flags=re.M).group(1).split(" ")
    assert len(tokens) == 30 and tokens[:3] == ["▁The", "▁return", "▁statement"], tokens


@pytest.mark.slow
def test_hub_generates_and_scores_text(trained):
    import torch

    from seqboat_fairseq.models.seqboat_lm import SeqBoatLanguageModel

    data = trained["data"]
    lm = SeqBoatLanguageModel.from_pretrained(str(trained["save"]), "checkpoint_last.pt",
                                              data_name_or_path=str(data), bpe="sentencepiece",
                                              sentencepiece_model=str(data / "spm.model"))
    lm.eval()
    torch.manual_seed(3)
    text = lm.sample("The return statement", beam=1, sampling=True, sampling_topk=10, min_len=12, max_len_b=20)
    assert isinstance(text, str) and text.startswith("The return statement") and len(text) > 25, text
    scored = lm.score("The return statement")
    assert scored["positional_scores"].shape == (3,) and bool((scored["positional_scores"] < 0).all())
    out = subprocess.run([sys.executable, HUB_EXAMPLE, "--checkpoint-dir", str(trained["save"]),
                          "--checkpoint-file", "checkpoint_last.pt", "--data", str(data), "--prompt", "A class",
                          "--multiline", "--max-len", "30"], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    sample = out.stdout.split("hub sample:\n", 1)[1].split("\n\nhub score:", 1)[0]
    assert sample.startswith("A class") and len(sample) > len("A class") + 5, out.stdout
    assert re.search(r"hub score:  'A class' costs [\d.]+ bits in 2 tokens \([\d.]+ bits per byte", out.stdout)
    # without --multiline (language_modeling, fairseq's own sample()): the text, not byte pieces
    out = subprocess.run([sys.executable, HUB_EXAMPLE, "--checkpoint-dir", str(trained["save"]),
                          "--checkpoint-file", "checkpoint_last.pt", "--data", str(data), "--prompt", BYTE_PROMPT,
                          "--max-len", "20"], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    sample = out.stdout.split("hub sample:\n", 1)[1].split("\n\nhub score:", 1)[0]
    assert sample.startswith(BYTE_PROMPT) and "<0x" not in sample, out.stdout
    assert "<0x" in lm.bpe.encode(BYTE_PROMPT)
