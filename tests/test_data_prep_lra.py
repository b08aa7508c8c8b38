"""data_prep/lra.py: LRA inputs in their distributed formats -> the plugin's LRA data layout."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_prep_error
from data_prep import common, lra

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "data_prep", "lra.py")
ERROR_PREFIX = "lra.py: error: "
SPLITS = ("train", "valid", "test")


def run_script(*args, env=None):
    """Run the script as a subprocess with this interpreter; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def assert_cli_error(result, *fragments):
    """The run failed with exit code 2 and a last stderr line `lra.py: error: ...` containing fragments."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(ERROR_PREFIX), result.stderr
    for fragment in fragments:
        assert str(fragment) in last_line, (fragment, last_line)


def assert_main_error(capsys, argv, *fragments):
    """``lra.main(argv)`` returns 2 and prints one `lra.py: error: ...` line containing fragments."""
    return assert_prep_error(capsys, lra.main, ERROR_PREFIX, argv, *fragments)


def leftovers(parent):
    """Temporary directories the script may have left in ``parent``."""
    return [name for name in os.listdir(parent) if name.startswith((".tmp-lra-", ".old-"))]


def torch_perm(n, seed=42):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def torch_random_split(n, lengths, seed=42):
    """Index lists from torch's own random_split (the upstream S4/MEGA split)."""
    subsets = torch.utils.data.random_split(range(n), lengths, generator=torch.Generator().manual_seed(seed))
    return [list(s.indices) for s in subsets]


def read_bin(bin_dir, split):
    """Token symbols per line of a fairseq data-bin split (eos removed)."""
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(os.path.join(bin_dir, "dict.txt"))
    dataset = data_utils.load_indexed_dataset(os.path.join(bin_dir, split), dictionary)
    assert dataset is not None, (bin_dir, split)
    lines = []
    for i in range(len(dataset)):
        ids = dataset[i].tolist()
        assert ids[-1] == dictionary.eos()
        lines.append([dictionary[j] for j in ids[:-1]])
    return lines


def read_images(dest, split):
    """``(pixels, labels)`` of an image split as the task maps them: uint8 (N, L), int64 (N,)."""
    pixels = np.load(dest / "input" / f"{split}.npy", mmap_mode="r", allow_pickle=False)
    labels = np.load(dest / "label" / f"{split}.npy", mmap_mode="r", allow_pickle=False)
    assert pixels.dtype == np.uint8 and pixels.ndim == 2, (pixels.dtype, pixels.shape)
    assert labels.dtype == np.int64 and labels.shape == (len(pixels),), (labels.dtype, labels.shape)
    return np.array(pixels), labels.tolist()


def read_lines(path):
    with open(path, encoding="ascii") as f:
        return f.read().split("\n")[:-1]


def byte_symbols(data, known=None):
    """Byte tokens of ``data``; with ``known``, the ones missing from it become ``<unk>``."""
    return [str(b) if known is None or str(b) in known else "<unk>" for b in data]


def train_symbols(lines):
    return {symbol for line in lines for symbol in line}


@pytest.fixture
def fake_preprocess(monkeypatch):
    """Replace fairseq-preprocess by a recorder (the token text is then checked with --keep-text)."""
    calls = []

    def fake(raw_dir, destdir, workers, srcdict=None):
        calls.append((os.path.basename(raw_dir), os.path.basename(destdir), srcdict is not None))
        os.makedirs(destdir)
        with open(os.path.join(destdir, "dict.txt"), "w") as f:
            f.write("1 1\n")

    monkeypatch.setattr(lra, "run_preprocess", fake)
    return calls


# --------------------------------------------------------------------------- input builders

LISTOPS_ROWS = {
    "train": [
        ("( ( ( [MAX 2 9 ( [MIN 4 7 ] 0 ) ] ) ) )", "9"),
        ("[MED 1 2 3 ]", "2"),
        ("( ( [SM 1 ( [MAX 3 4 ] ) 5 ] ) )", "0"),
        ("( [MIN 8 ( [SM 5 5 ] ) 9 ] )", "0"),
        ("[MAX 1 0 ]", "1"),
        ("( [MAX 8 6 ] )", "8"),
        ("( [MED 5 5 5 ] )", "5"),
    ],
    "valid": [("( [MAX 0 1 ] )", "1"), ("[SM 4 4 ]", "8")],
    "test": [("( ( [MIN 7 ( [MED 3 5 6 ] ) ] ) )", "5")],
}


def make_listops(folder, rows=LISTOPS_ROWS, header="Source\tTarget"):
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in lra.LISTOPS_FILES.items():
        text = header + "\n" + "".join(f"{src}\t{tgt}\n" for src, tgt in rows[split])
        (folder / name).write_text(text)
    return folder


def expected_listops(split, max_length):
    out = []
    for src, tgt in LISTOPS_ROWS[split]:
        tokens = [t for t in src.split() if t not in ("(", ")")]
        out.append((tokens[:max_length], tgt))
    return out


IMDB_REVIEWS = {
    "train": {
        "pos": {"0_9.txt": "Great film.<br /><br />Loved it", "10_7.txt": "Line one\nline two \u00e9\u00e8",
                "3_10.txt": "x" * 50, "7_8.txt": "good"},
        "neg": {"1_1.txt": "Bad.\r\nVery bad.", "12_2.txt": "Boring \u2603", "2_3.txt": "meh"},
    },
    "test": {
        "pos": {"5_10.txt": "Wonderful!", "6_8.txt": "nice\n"},
        "neg": {"4_2.txt": "Awful", "9_1.txt": "Dreadful\tacting"},
    },
}


def make_imdb(parent):
    root = parent / "aclImdb"
    for split, classes in IMDB_REVIEWS.items():
        for name, files in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for file_name, text in files.items():
                (folder / file_name).write_bytes(text.encode("utf-8"))
    (root / "train" / "unsup").mkdir()  # the real archive has it; it must be ignored
    (root / "train" / "unsup" / "0_0.txt").write_text("unlabelled")
    (root / "imdb.vocab").write_text("the\n")
    return root


def expected_imdb_order(split):
    """neg then pos, sorted file names, permuted by randperm(seed 42): [(bytes, label)]."""
    items = []
    for name, label in (("neg", 0), ("pos", 1)):
        files = IMDB_REVIEWS[split][name]
        items += [(files[f].encode("utf-8"), label) for f in sorted(files)]
    return [items[i] for i in torch_perm(len(items))]


AAN_ROWS = {
    "train": [
        ("1.0", "paper_a", "paper_b", "b'Title A\\nWe study parsing.'", "b'Title B \\xc3\\xa9 results'"),
        ("0.0", "paper_c", "paper_d", "b'short'", "b'" + "long text " * 5 + "'"),
        ("1", "paper_e", "paper_f", "b'Z~{}'", "b'\u00fcber'"),
    ],
    "valid": [("0", "paper_g", "paper_h", "b'eval one'", "b'eval two'")],
    "test": [("1.0", "paper_i", "paper_j", "b'test one'", "b'test \u00e9'"),
             ("0.0", "paper_k", "paper_l", "b'abc'", "b'xyz'")],
}


def make_aan(folder, rows=AAN_ROWS):
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in lra.AAN_FILES.items():
        (folder / name).write_bytes("".join("\t".join(r) + "\n" for r in rows[split]).encode("utf-8"))
    return folder


def make_cifar(parent, per_batch=6, test_size=5, protocol=2, seed=0):
    """CIFAR-10 python batches like the real ones (dicts with bytes keys); returns (train, test) RGB data."""
    rng = np.random.default_rng(seed)
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_data, train_labels = [], []
    for i, name in enumerate(list(lra.CIFAR_TRAIN_BATCHES) + [lra.CIFAR_TEST_BATCH]):
        n = test_size if name == lra.CIFAR_TEST_BATCH else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, n)]
        batch = {b"batch_label": f"batch {i}".encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img_{i}_{k}.png".encode() for k in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        if name == lra.CIFAR_TEST_BATCH:
            test = (data, labels)
        else:
            train_data.append(data)
            train_labels += labels
    return folder, (np.concatenate(train_data), train_labels), test


def pil_gray_rows(data):
    """Pillow's own convert('L') of CIFAR rows, flattened row-major."""
    rgb = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return [np.asarray(Image.fromarray(np.ascontiguousarray(img), "RGB").convert("L")).reshape(-1) for img in rgb]


def make_pathfinder(parent, resolution=32, per_file=(3, 4, 2, 5, 3, 3), seed=0):
    """Release layout pathfinder{R}/curv_contour_length_14/{imgs,metadata}; returns [(png path, label)]."""
    rng = np.random.default_rng(seed)
    difficulty = parent / f"pathfinder{resolution}" / "curv_contour_length_14"
    samples = []
    # metadata files 0.npy .. 5.npy are written under the names of a shuffled order, and one is
    # named 10.npy, so that sorting by name rather than by number would give another order
    stems = [0, 1, 2, 10, 3, 4]
    for file_index, (stem, count) in enumerate(zip(stems, per_file)):
        img_dir = difficulty / "imgs" / str(stem)
        img_dir.mkdir(parents=True)
        lines = []
        for k in range(count):
            label = int(rng.integers(0, 2))
            name = f"sample_{k}.png"
            if (file_index + k) % 3 == 0:  # some RGB PNGs as well as grayscale ones
                img = Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8), "RGB")
            else:
                img = Image.fromarray(rng.integers(0, 256, (resolution, resolution), dtype=np.uint8), "L")
            img.save(img_dir / name)
            lines.append(f"imgs/{stem} {name} {k} {label} 14 1.5\n")
            samples.append((img_dir / name, label, stem))
        (difficulty / "metadata").mkdir(exist_ok=True)
        (difficulty / "metadata" / f"{stem}.npy").write_text("".join(lines))
    order = sorted(set(stems))
    samples.sort(key=lambda s: order.index(s[2]))  # stable: numeric file order, then line order
    return difficulty, [(path, label) for path, label, _ in samples]


# --------------------------------------------------------------------------- tokenisation and arithmetic


def test_byte_tokens_matches_reference():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes() + b"\n\n\r\n"
    assert lra.byte_tokens(data) == " ".join(str(b) for b in data)
    assert lra.byte_tokens(b"") == ""
    assert lra.byte_tokens(b"\n") == "10"  # a newline inside a document is the token 10, never a line break


def test_listops_tokens_drop_round_brackets_only():
    assert lra.listops_tokens("( ( ( [MAX 2 9 ( [MIN 4 7 ] 0 ) ] ) ) )") == [
        "[MAX", "2", "9", "[MIN", "4", "7", "]", "0", "]"]
    assert lra.listops_tokens("[SM 1 [MED 2 3 ] ]") == ["[SM", "1", "[MED", "2", "3", "]", "]"]


def test_grayscale_is_exactly_pillow_convert_L():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    corners = np.array([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)], dtype=np.uint8)
    rgb[0, 0, :8] = corners
    rows = np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)).reshape(64, 3072)  # CIFAR layout: R, G, B planes
    ours = lra.rgb_planes_to_gray(rows)
    assert ours.dtype == np.uint8 and ours.shape == (64, 1024)
    assert np.array_equal(ours, np.stack(pil_gray_rows(rows)))
    # not the float formula 0.299 R + 0.587 G + 0.114 B truncated
    weights = np.array([0.299, 0.587, 0.114])[None, :, None]
    naive = (rows.reshape(64, 3, -1) * weights).sum(1).astype(np.uint8)
    assert not np.array_equal(ours, naive)


def test_seeded_split_is_torch_random_split():
    assert lra.random_split_indices(50_000, [45_000, 5_000], 42) == torch_random_split(50_000, [45_000, 5_000])
    assert lra.random_split_indices(23, [19, 2, 2], 42) == torch_random_split(23, [19, 2, 2])
    assert lra.random_split_indices(23, [19, 2, 2], 42) == lra.random_split_indices(23, [19, 2, 2], 42)
    assert lra.random_split_indices(23, [19, 2, 2], 7) != lra.random_split_indices(23, [19, 2, 2], 42)
    assert lra.pathfinder_split_sizes(200_000) == (160_000, 20_000, 20_000)
    assert lra.pathfinder_split_sizes(23) == (19, 2, 2)


@pytest.mark.parametrize("text,expected", [("1", 1), (" 0 ", 0), ("1.0", 1), ("0.0", 0)])
def test_parse_label_accepts_floats_when_asked(text, expected):
    assert lra.parse_label(text, 2, "f:1", allow_float=True) == expected


# --------------------------------------------------------------------------- image tasks


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL], ids=["protocol2", "highest"])
def test_cifar10_output(tmp_path, capsys, protocol):
    folder, (train_rgb, train_labels), (test_rgb, test_labels) = make_cifar(tmp_path / "in", protocol=protocol)
    dest = tmp_path / "out" / "cifar"
    assert lra.main(["cifar10", "--input-dir", str(tmp_path / "in"), "--destdir", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "train:" in out and "valid:" in out and "1,024 pixels each" in out

    train_idx, valid_idx = torch_random_split(30, [27, 3])  # a tenth of the 30 train images is valid
    gray_train, gray_test = pil_gray_rows(train_rgb), pil_gray_rows(test_rgb)
    expected = {
        "train": ([gray_train[i] for i in train_idx], [train_labels[i] for i in train_idx]),
        "valid": ([gray_train[i] for i in valid_idx], [train_labels[i] for i in valid_idx]),
        "test": (gray_test, test_labels),
    }
    for split, (images, labels) in expected.items():
        pixels, written_labels = read_images(dest, split)
        assert np.array_equal(pixels, np.stack(images)), split
        assert written_labels == labels, split
    assert sorted(os.listdir(dest)) == [common.MARKER, "input", "label"]
    assert sorted(os.listdir(dest / "input")) == sorted(os.listdir(dest / "label")) == [f"{s}.npy" for s in
                                                                                         sorted(SPLITS)]
    assert leftovers(tmp_path / "out") == []


def test_cifar10_cli_deterministic_and_force(tmp_path, capsys):
    make_cifar(tmp_path / "in")
    dest = tmp_path / "out"
    result = run_script("cifar10", "--input-dir", tmp_path / "in" / "cifar-10-batches-py", "--destdir", dest)
    assert result.returncode == 0, result.stderr
    first = (dest / "input" / "train.npy").read_bytes()
    assert len(read_images(dest, "train")[0]) == 27 and len(read_images(dest, "valid")[0]) == 3

    argv = ["cifar10", "--input-dir", str(tmp_path / "in"), "--destdir", str(dest)]
    assert_main_error(capsys, argv, dest, "already exists", "--force")
    assert lra.main(argv + ["--force"]) == 0
    assert (dest / "input" / "train.npy").read_bytes() == first  # same seed, same split
    assert lra.main(["cifar10", "--input-dir", str(tmp_path / "in"), "--destdir", str(tmp_path / "other"),
                     "--seed", "1"]) == 0
    assert (tmp_path / "other" / "input" / "train.npy").read_bytes() != first
    assert leftovers(tmp_path) == []


def _rewrite_batch(path, mutate):
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    mutate(batch)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def test_cifar10_errors(tmp_path, capsys):
    folder, _, _ = make_cifar(tmp_path / "in")
    dest = tmp_path / "out" / "c"
    argv = ["cifar10", "--input-dir", tmp_path / "in", "--destdir", dest]

    assert_main_error(capsys, ["cifar10", "--input-dir", tmp_path / "nope", "--destdir", dest],
                      tmp_path / "nope", "no such directory")

    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    assert_main_error(capsys, argv, "data_batch_3", "truncated or corrupt pickle")
    (folder / "data_batch_3").write_bytes(raw)

    _rewrite_batch(folder / "data_batch_2", lambda b: b[b"labels"].__setitem__(4, 10))
    assert_main_error(capsys, argv, "data_batch_2", "image 4", "10 is outside the expected set 0-9")
    _rewrite_batch(folder / "data_batch_2", lambda b: b[b"labels"].__setitem__(4, 3))

    _rewrite_batch(folder / "test_batch", lambda b: b.__setitem__(b"data", b[b"data"][:, :1024]))
    assert_main_error(capsys, argv, "test_batch", "shape (N, 3072)", "(5, 1024)")

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": os.system}, protocol=2))  # not a plain array
    assert_main_error(capsys, argv, "test_batch", "refusing to load")

    os.remove(folder / "data_batch_5")
    assert_main_error(capsys, argv, "data_batch_5", "no such file")
    assert not os.path.exists(tmp_path / "out") or os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("batch", ["test_batch", "data_batch_2"])
def test_cifar10_batch_with_no_images(tmp_path, capsys, batch):
    folder, _, _ = make_cifar(tmp_path / "in")
    _rewrite_batch(folder / batch, lambda b: (b.__setitem__(b"data", b[b"data"][:0]),
                                              b.__setitem__(b"labels", [])))
    dest = tmp_path / "out" / "c"
    assert_main_error(capsys, ["cifar10", "--input-dir", tmp_path / "in", "--destdir", dest],
                      folder / batch, "0 images", "expected at least one row of 3072 bytes")
    assert not os.path.exists(dest) and leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("resolution", [32, 128])
def test_pathfinder_output(tmp_path, capsys, resolution):
    _, samples = make_pathfinder(tmp_path / "release", resolution)
    n = len(samples)  # 20 -> 16 / 2 / 2
    dest = tmp_path / "out" / f"pf{resolution}"
    argv = ["pathfinder", "--input-dir", tmp_path / "release", "--resolution", resolution, "--destdir", dest]
    assert lra.main([str(a) for a in argv]) == 0
    assert f"{resolution * resolution:,} pixels each" in capsys.readouterr().out
    pieces = torch_random_split(n, [n - 2 * (n // 10), n // 10, n // 10])
    for split, indices in zip(SPLITS, pieces):
        pixels, labels = read_images(dest, split)
        expected = [np.asarray(Image.open(samples[i][0]).convert("L")).reshape(-1) for i in indices]
        assert pixels.shape == (len(indices), resolution * resolution), split
        assert np.array_equal(pixels, np.stack(expected)), split
        assert labels == [samples[i][1] for i in indices]
    assert [len(p) for p in pieces] == [16, 2, 2]


def test_pathfinder_errors(tmp_path, capsys):
    difficulty, samples = make_pathfinder(tmp_path / "release", 32)
    dest = tmp_path / "out" / "pf"
    argv = ["pathfinder", "--input-dir", tmp_path / "release", "--resolution", 32, "--destdir", dest]

    assert_main_error(capsys, [*argv[:4], 128, *argv[5:]], "pathfinder128", "no such directory")

    meta = difficulty / "metadata" / "10.npy"
    original = meta.read_text()
    meta.write_text(original + "imgs/10 sample_9.png 9\n")
    assert_main_error(capsys, argv, f"{meta}:{len(original.splitlines()) + 1}", "at least 4", "got 3")
    meta.write_text(original.replace("sample_1.png 1 0", "sample_1.png 1 x").replace("sample_1.png 1 1", "sample_1.png 1 x"))
    assert_main_error(capsys, argv, f"{meta}:2", "label 'x' is not an integer")
    meta.write_text(original.replace("sample_0.png 0 0", "sample_0.png 0 2").replace("sample_0.png 0 1", "sample_0.png 0 2"))
    assert_main_error(capsys, argv, f"{meta}:1", "label 2 is outside the expected set 0 or 1")
    meta.write_text(original)

    np.save(difficulty / "metadata" / "7.npy", np.zeros(3))  # a real binary .npy is not the release's format
    assert_main_error(capsys, argv, "7.npy", "binary NumPy file")
    os.remove(difficulty / "metadata" / "7.npy")

    big = samples[5][0]
    saved = big.read_bytes()
    Image.fromarray(np.zeros((32, 31), dtype=np.uint8), "L").save(big)
    assert_main_error(capsys, argv, big, "expected a 32x32 image, got 31x32")
    big.write_bytes(saved)

    os.rename(samples[2][0], str(samples[2][0]) + ".moved")
    assert_main_error(capsys, argv, samples[2][0], "no such file", "listed in")
    os.rename(str(samples[2][0]) + ".moved", samples[2][0])

    assert not os.path.exists(dest) and leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("damage,force", [("truncated", False), ("garbage", True)],
                         ids=["truncated-new", "garbage-force-over-existing"])
def test_corrupt_png_in_the_middle_leaves_nothing(tmp_path, capsys, damage, force):
    _, samples = make_pathfinder(tmp_path / "release", 32)
    perm = torch_perm(len(samples))
    victim = samples[perm[10]][0]  # written after the first ten train images
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) // 2] if damage == "truncated" else b"not a png at all")
    parent = tmp_path / "out"
    parent.mkdir()
    dest = parent / "pf"
    if force:  # an earlier prep's output
        dest.mkdir()
        (dest / "keep.me").write_text("old")
        common.write_marker(str(dest), "lra.py")
    assert_main_error(capsys, ["pathfinder", "--input-dir", tmp_path / "release", "--resolution", 32,
                               "--destdir", dest, *(["--force"] if force else [])],
                      victim, "cannot read image (truncated or corrupt PNG?)")
    assert leftovers(parent) == []
    if force:
        assert sorted(os.listdir(dest)) == [common.MARKER, "keep.me"]
    else:
        assert os.listdir(parent) == []


def test_interrupt_leaves_nothing(tmp_path, monkeypatch, capsys):
    make_pathfinder(tmp_path / "release", 32)
    real, calls = lra.read_gray_image, []

    def interrupted(*args):
        calls.append(args)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(lra, "read_gray_image", interrupted)
    parent = tmp_path / "out"
    code = lra.main(["pathfinder", "--input-dir", str(tmp_path / "release"), "--resolution", "32",
                     "--destdir", str(parent / "pf")])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert os.listdir(parent) == []


# --------------------------------------------------------------------------- the lra-image task reads the prep's output


def image_task(data, max_positions=1024):
    from seqboat_fairseq.tasks.lra import LRAImageConfig, LRAImageTask

    cfg = LRAImageConfig(data=str(data), max_positions=max_positions, seed=1)
    return LRAImageTask.setup_task(cfg)


def pixel_rows(dataset):
    """The rows of pixels (``MemmapArray``, or the parsed text layout) a task's dataset reads."""
    return dataset.dataset.defn["net_input.src_tokens"].rows


def test_image_task_memory_maps_the_prep_output(tmp_path):
    from seqboat_fairseq.tasks.lra import MemmapArray

    _, samples = make_pathfinder(tmp_path / "release", 32)
    dest = tmp_path / "pf"
    assert lra.main(["pathfinder", "--input-dir", str(tmp_path / "release"), "--resolution", "32",
                     "--destdir", str(dest)]) == 0
    task = image_task(dest)
    pieces = torch_random_split(len(samples), [16, 2, 2])
    for split, indices in zip(SPLITS, pieces):
        task.load_dataset(split)
        dataset = task.datasets[split]
        images = pixel_rows(dataset)
        assert isinstance(images, MemmapArray) and isinstance(images.array, np.memmap)
        assert len(dataset) == len(indices) and dataset.sizes[0].tolist() == [1024] * len(indices)
        for k, i in enumerate(indices):
            pixels = np.asarray(Image.open(samples[i][0]).convert("L"), dtype=np.float32).reshape(-1)
            item = dataset[k]
            assert torch.equal(item["net_input.src_tokens"], torch.from_numpy((pixels / 255.0 - 0.5) / 0.5)), (split, k)
            assert item["target"] == samples[i][1]
    # a spawned data-loader worker gets the path, not the pixels, and maps the file itself
    train = task.datasets["train"]
    blob = pickle.dumps(train)
    assert pixel_rows(train).array.nbytes == 16 * 1024 and len(blob) < 4 * 1024, len(blob)
    copy = pickle.loads(blob)
    assert torch.equal(copy[3]["net_input.src_tokens"], train[3]["net_input.src_tokens"])
    assert isinstance(pixel_rows(copy).array, np.memmap)
    batch = train.collater([train[i] for i in range(4)])
    assert batch["net_input"]["src_tokens"].shape == (4, 1024) and batch["target"].dtype == torch.int64
    # under fairseq-hydra-train the task's max_positions stays unset (the model's preset has it): no truncation
    unset = image_task(dest, max_positions=None)
    unset.load_dataset("valid")
    assert unset.datasets["valid"].sizes[0].tolist() == [1024, 1024]
    assert unset.datasets["valid"][1]["net_input.src_tokens"].shape == (1024,)


def test_image_task_reads_the_earlier_text_layout_with_a_warning(tmp_path, caplog):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 64), dtype=np.uint8), [1, 0, 1, 1, 0]
    old, new = tmp_path / "old", tmp_path / "new"
    for folder in (old, new):
        (folder / "input").mkdir(parents=True)
        (folder / "label").mkdir()
    (old / "input" / "valid.src").write_text("".join(lra.pixel_line(img) + "\n" for img in images))
    (old / "label" / "valid.label").write_text("".join(f"{y}\n" for y in labels))
    np.save(new / "input" / "valid.npy", images)
    np.save(new / "label" / "valid.npy", np.array(labels, dtype=np.int64))
    loaded = {}
    for name, folder in (("old", old), ("new", new)):
        caplog.clear()
        task = image_task(folder)
        with caplog.at_level("WARNING"):
            task.load_dataset("valid")
        loaded[name] = task.datasets["valid"]
        warned = [r.getMessage() for r in caplog.records if "earlier text format" in r.getMessage()]
        if name == "old":
            assert len(warned) == 1 and str(old / "input" / "valid.src") in warned[0], caplog.text
            assert "re-run data_prep/lra.py" in warned[0]
        else:
            assert warned == [], caplog.text
    for i in range(5):
        assert torch.equal(loaded["old"][i]["net_input.src_tokens"], loaded["new"][i]["net_input.src_tokens"])
        assert loaded["old"][i]["target"] == loaded["new"][i]["target"] == labels[i]


def test_image_task_errors_name_the_file_and_what_was_expected(tmp_path):
    data = tmp_path / "data"
    (data / "input").mkdir(parents=True)
    (data / "label").mkdir()
    pixels, labels = data / "input" / "train.npy", data / "label" / "train.npy"
    task = image_task(data)

    with pytest.raises(FileNotFoundError, match=r"split 'train' not found: .*input/train.npy .*data_prep/lra.py"):
        task.load_dataset("train")
    np.save(pixels, np.zeros((3, 16), dtype=np.uint8))
    with pytest.raises(FileNotFoundError, match=r"label/train.npy: no such file \(expected class labels: a NumPy "
                                                r".npy file of int64"):
        task.load_dataset("train")
    np.save(labels, np.array([0, 1], dtype=np.int64))
    with pytest.raises(ValueError, match=r"label/train.npy: 2 labels for the 3 inputs of .*input/train.npy"):
        task.load_dataset("train")
    np.save(labels, np.array([0, -1, 1], dtype=np.int64))
    with pytest.raises(ValueError, match=r"label/train.npy: label -1 of example 1; expected class ids non-negative"):
        task.load_dataset("train")
    np.save(labels, np.array([0, 1, 1], dtype=np.int32))
    with pytest.raises(ValueError, match=r"label/train.npy: holds int32 of shape \(3,\); expected class labels: "
                                         r"a NumPy .npy file of int64"):
        task.load_dataset("train")
    np.save(labels, np.array([0, 1, 1], dtype=np.int64))
    task.load_dataset("train")  # now complete

    np.save(pixels, np.zeros((3, 16), dtype=np.float32))
    with pytest.raises(ValueError, match=r"input/train.npy: holds float32 of shape \(3, 16\); expected images, one "
                                         r"row of pixels 0..255 each: a NumPy .npy file of uint8 with 2 dimensions"):
        task.load_dataset("train")
    np.save(pixels, np.zeros((3, 16), dtype=np.uint8))
    raw = pixels.read_bytes()
    pixels.write_bytes(raw[: len(raw) - 20])  # a copy that was cut short
    with pytest.raises(ValueError, match=r"input/train.npy: cannot be memory-mapped \(.*\); expected images.* re-run"):
        task.load_dataset("train")
    pixels.write_bytes(b"1 2 3\n")  # text where the binary should be
    with pytest.raises(ValueError, match=r"input/train.npy: cannot be memory-mapped"):
        task.load_dataset("train")
    np.save(pixels, np.array([None, 1], dtype=object))
    with pytest.raises(ValueError, match=r"input/train.npy: cannot be memory-mapped"):
        task.load_dataset("train")
    np.save(pixels, np.zeros((0, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"input/train.npy: holds no rows"):
        task.load_dataset("train")


# --------------------------------------------------------------------------- text tasks: token text (fast)


def test_listops_text(tmp_path, capsys, fake_preprocess):
    make_listops(tmp_path / "listops-1000")
    dest = tmp_path / "out"
    assert lra.main(["listops", "--input-dir", str(tmp_path / "listops-1000"), "--destdir", str(dest),
                     "--max-length", "6", "--keep-text"]) == 0
    out = capsys.readouterr().out
    assert fake_preprocess == [("src", "src-bin", False), ("label", "label-bin", False)]
    for split in SPLITS:
        expected = expected_listops(split, 6)
        assert read_lines(dest / "raw" / "src" / f"{split}.txt") == [" ".join(t) for t, _ in expected]
        assert read_lines(dest / "raw" / "label" / f"{split}.txt") == [label for _, label in expected]
    assert "train: 7 examples | labels 0: 2, 1: 1, 2: 1, 5: 1, 8: 1, 9: 1 | tokens max 6 mean 5.1 (3 truncated)" in out


def test_listops_unknown_tokens_are_reported(tmp_path, capsys, fake_preprocess):
    rows = {
        "train": LISTOPS_ROWS["train"] + [("( [MAX 1 foo ] )", "1")],  # not a ListOps token
        "valid": LISTOPS_ROWS["valid"] + [("( [FIRST 3 4 ] )", "3"), ("( [FIRST 2 [FIRST 1 ] ] )", "2")],
        "test": LISTOPS_ROWS["test"] + [("[MAX 7 bar bar ]", "7")],
    }
    clean = make_listops(tmp_path / "clean")
    assert lra.main(["listops", "--input-dir", str(clean), "--destdir", str(tmp_path / "o")]) == 0
    assert "warning" not in capsys.readouterr().err
    folder = make_listops(tmp_path / "listops-1000", rows=rows)
    dest = tmp_path / "out"
    assert lra.main(["listops", "--input-dir", str(folder), "--destdir", str(dest)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lra.py: warning:")]
    assert len(warnings) == 2, warnings
    foreign, unk = warnings
    assert "3 tokens (2 distinct) are not ListOps tokens" in foreign
    assert f"'foo' at {folder / 'basic_train.tsv'}:9" in foreign
    assert f"'bar' at {folder / 'basic_test.tsv'}:3" in foreign
    # [FIRST (3 times in valid) and bar (twice in test) never occur in train: fairseq maps them to <unk>
    assert "5 tokens of valid/test (2 distinct) never occur in train and are mapped to <unk>" in unk
    assert f"'[FIRST' at {folder / 'basic_val.tsv'}:4" in unk and f"'bar' at {folder / 'basic_test.tsv'}:3" in unk
    assert (dest / "src-bin" / "dict.txt").exists()  # a warning: the prep still succeeds


def test_imdb_text(tmp_path, capsys, fake_preprocess):
    make_imdb(tmp_path)
    dest = tmp_path / "out"
    # the folder holding aclImdb and aclImdb itself are both accepted
    assert lra.main(["imdb", "--input-dir", str(tmp_path / "aclImdb"), "--destdir", str(dest),
                     "--max-length", "20", "--keep-text"]) == 0
    out = capsys.readouterr().out
    for split, source in (("train", "train"), ("valid", "test"), ("test", "test")):
        expected = expected_imdb_order(source)
        assert read_lines(dest / "raw" / "src" / f"{split}.txt") == [lra.byte_tokens(t[:20]) for t, _ in expected]
        assert read_lines(dest / "raw" / "label" / f"{split}.txt") == [str(label) for _, label in expected]
    text = (dest / "raw" / "src" / "train.txt").read_text()
    assert " 10 " in text and text.count("\n") == 7  # newline bytes are tokens, one review per line
    assert "valid: 4 examples | labels 0: 2, 1: 2 | bytes max 15 mean 8.8" in out

    dest2 = tmp_path / "out2"
    assert lra.main(["imdb", "--input-dir", str(tmp_path), "--destdir", str(dest2), "--keep-text",
                     "--valid-from-train", "2"]) == 0
    train = expected_imdb_order("train")
    assert read_lines(dest2 / "raw" / "src" / "valid.txt") == [lra.byte_tokens(t) for t, _ in train[:2]]
    assert read_lines(dest2 / "raw" / "src" / "train.txt") == [lra.byte_tokens(t) for t, _ in train[2:]]
    assert read_lines(dest2 / "raw" / "label" / "train.txt") == [str(label) for _, label in train[2:]]


def test_aan_text_and_shared_dictionary(tmp_path, capsys, fake_preprocess):
    make_aan(tmp_path / "tsv_data")
    dest = tmp_path / "out"
    assert lra.main(["aan", "--input-dir", str(tmp_path / "tsv_data"), "--destdir", str(dest),
                     "--max-length", "30", "--keep-text"]) == 0
    assert fake_preprocess == [("src", "src-bin", True), ("src1", "src1-bin", True), ("label", "label-bin", False)]
    for split in SPLITS:
        rows = AAN_ROWS[split]
        for column, name in ((3, "src"), (4, "src1")):
            assert read_lines(dest / "raw" / name / f"{split}.txt") == [
                lra.byte_tokens(r[column].encode("utf-8")[:30]) for r in rows]
        assert read_lines(dest / "raw" / "label" / f"{split}.txt") == [str(int(float(r[0]))) for r in rows]
    counts = {}
    for r in AAN_ROWS["train"]:
        for text in r[3:]:
            for b in text.encode("utf-8")[:30]:
                counts[b] = counts.get(b, 0) + 1
    entries = [line.split() for line in read_lines(dest / "raw" / "dict.txt")]
    assert {int(s): int(c) for s, c in entries} == counts  # both train texts feed the shared dictionary
    assert [int(c) for _, c in entries] == sorted(counts.values(), reverse=True)


def test_aan_header_line_is_skipped(tmp_path, fake_preprocess):
    folder = make_aan(tmp_path / "tsv_data")
    path = folder / lra.AAN_FILES["test"]
    path.write_bytes(b"label\tid1\tid2\ttext1\ttext2\n" + path.read_bytes())
    assert lra.main(["aan", "--input-dir", str(folder), "--destdir", str(tmp_path / "o"), "--keep-text"]) == 0
    assert len(read_lines(tmp_path / "o" / "raw" / "label" / "test.txt")) == 2


# --------------------------------------------------------------------------- text tasks: errors (fast)


def test_listops_errors(tmp_path, capsys):
    folder = make_listops(tmp_path / "listops-1000")
    dest = tmp_path / "out" / "l"
    argv = ["listops", "--input-dir", folder, "--destdir", dest]
    val = folder / "basic_val.tsv"

    assert_main_error(capsys, ["listops", "--input-dir", tmp_path / "missing", "--destdir", dest],
                      tmp_path / "missing", "no such directory")
    val.write_text("Source\tTarget\n( [MAX 1 2 ] )\t2\n[MIN 3 4 ]\t3\textra\n")
    assert_main_error(capsys, argv, f"{val}:3", "expected 2 tab-separated columns (Source, Target), got 3")
    val.write_text("Source\tTarget\n( [MAX 1 2 ] )\ttwo\n")
    assert_main_error(capsys, argv, f"{val}:2", "label 'two' is not an integer")
    val.write_text("Source\tTarget\n( [MAX 1 2 ] )\t10\n")
    assert_main_error(capsys, argv, f"{val}:2", "label 10 is outside the expected set 0-9")
    val.write_text("( [MAX 1 2 ] )\t2\n")
    assert_main_error(capsys, argv, f"{val}:1", "expected the header 'Source<TAB>Target'")
    val.write_text("Source\tTarget\n")
    assert_main_error(capsys, argv, val, "no examples")
    os.remove(val)
    assert_main_error(capsys, argv, val, "no such file", "basic_val.tsv")
    assert_main_error(capsys, [*argv, "--max-length", 0], "--max-length must be positive")
    assert not os.path.exists(dest) and leftovers(tmp_path / "out") == []


def test_imdb_errors(tmp_path, capsys):
    dest = tmp_path / "out" / "i"
    assert_main_error(capsys, ["imdb", "--input-dir", tmp_path, "--destdir", dest], tmp_path, "aclImdb")
    root = make_imdb(tmp_path)
    argv = ["imdb", "--input-dir", tmp_path, "--destdir", dest]
    assert_main_error(capsys, [*argv, "--valid-from-train", 7], "--valid-from-train must be between 1 and 6")
    for f in os.listdir(root / "test" / "pos"):
        os.remove(root / "test" / "pos" / f)
    assert_main_error(capsys, argv, root / "test" / "pos", "no reviews")
    os.rmdir(root / "test" / "pos")
    assert_main_error(capsys, argv, root / "test" / "pos", "no such directory")


def test_aan_errors(tmp_path, capsys):
    folder = make_aan(tmp_path / "tsv_data")
    dest = tmp_path / "out" / "a"
    argv = ["aan", "--input-dir", folder, "--destdir", dest]
    test = folder / lra.AAN_FILES["test"]
    good = "1.0\tp1\tp2\tb'one'\tb'two'\n"

    test.write_text(good + "1.0\tp1\tp2\tb'only four columns'\n")
    assert_main_error(capsys, argv, f"{test}:2", "expected 5 tab-separated columns", "got 4")
    test.write_text(good + good + "yes\tp1\tp2\tt1\tt2\n")
    assert_main_error(capsys, argv, f"{test}:3", "label 'yes' is not an integer")
    test.write_text("0.5\tp1\tp2\tt1\tt2\n")
    assert_main_error(capsys, argv, f"{test}:1", "label '0.5' is not an integer")
    test.write_text("2\tp1\tp2\tt1\tt2\n")
    assert_main_error(capsys, argv, f"{test}:1", "label 2 is outside the expected set 0 or 1")
    os.remove(test)
    assert_main_error(capsys, argv, test, "no such file", "new_aan_pairs")
    assert not os.path.exists(dest) and leftovers(tmp_path / "out") == []


_FAILING_PREPROCESS = '''
import os, sys
destdir = sys.argv[sys.argv.index("--destdir") + 1]
os.makedirs(destdir, exist_ok=True)
open(os.path.join(destdir, "dict.txt"), "w").write("1 1\\n")
sys.exit(3)
'''


def test_failing_preprocess_leaves_nothing(tmp_path):
    fake = tmp_path / "fake" / "fairseq_cli"  # shadows the real fairseq_cli via PYTHONPATH
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "preprocess.py").write_text(_FAILING_PREPROCESS)
    make_aan(tmp_path / "tsv_data")
    parent = tmp_path / "bin"
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "fake"))
    result = run_script("aan", "--input-dir", tmp_path / "tsv_data", "--destdir", parent / "aan", env=env)
    assert_cli_error(result, "fairseq-preprocess failed with exit code 3")
    assert os.listdir(parent) == []


# --------------------------------------------------------------------------- text tasks: fairseq round trip


@pytest.mark.slow
def test_listops_binarised_round_trip(tmp_path):
    make_listops(tmp_path / "listops-1000")
    dest = tmp_path / "bin" / "listops"
    result = run_script("listops", "--input-dir", tmp_path / "listops-1000", "--destdir", dest,
                        "--max-length", 8, "--workers", 1)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(dest)) == [common.MARKER, "label-bin", "src-bin"]
    for split in SPLITS:
        expected = expected_listops(split, 8)
        assert read_bin(dest / "src-bin", split) == [tokens for tokens, _ in expected]
        assert read_bin(dest / "label-bin", split) == [[label] for _, label in expected]
    assert "vocabulary:" in result.stdout and "(1 truncated)" in result.stdout
    assert "note:" not in result.stdout  # train covers every token and label of valid/test
    assert leftovers(tmp_path / "bin") == []


@pytest.mark.slow
def test_aan_binarised_round_trip(tmp_path):
    make_aan(tmp_path / "tsv_data")
    dest = tmp_path / "bin" / "aan"
    result = run_script("aan", "--input-dir", tmp_path / "tsv_data", "--destdir", dest, "--workers", 1)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(dest)) == [common.MARKER, "label-bin", "src-bin", "src1-bin"]
    assert (dest / "src1-bin" / "dict.txt").read_text() == (dest / "src-bin" / "dict.txt").read_text()
    train_bytes = {str(b) for r in AAN_ROWS["train"] for text in r[3:] for b in text.encode("utf-8")}
    for split in SPLITS:
        rows = AAN_ROWS[split]
        text1 = read_bin(dest / "src-bin", split)
        text2 = read_bin(dest / "src1-bin", split)
        assert text1 == [byte_symbols(r[3].encode("utf-8"), train_bytes) for r in rows], split
        assert text2 == [byte_symbols(r[4].encode("utf-8"), train_bytes) for r in rows], split
        assert read_bin(dest / "label-bin", split) == [[str(int(float(r[0])))] for r in rows]
    assert "labels 0: 1, 1: 2" in result.stdout


# --------------------------------------------------------------------------- training recipes


def test_every_recipe_passes_required_batch_size_multiple_1(tmp_path):
    """Without it fairseq rounds batches down to multiples of 8: a split of < 8 examples is "empty"."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("fairseq-train", "fairseq-validate"):  # record the arguments instead of training
        (bin_dir / tool).write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n')
        (bin_dir / tool).chmod(0o755)
    folder = os.path.join(REPO_ROOT, "examples", "lra")
    recipes = sorted(n for n in os.listdir(folder) if n.endswith(".sh") and n != "common.sh")
    assert len(recipes) == 7, recipes
    lacking = []
    for recipe in recipes:
        args = ["lra-image", "DATA", "CKPT"] if recipe == "test.sh" else ["DATA", "SAVE"]
        env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", ARGS_FILE=str(tmp_path / recipe))
        result = subprocess.run(["bash", os.path.join(folder, recipe), *args], capture_output=True, text=True,
                                env=env, timeout=60)
        assert result.returncode == 0, (recipe, result.stderr)
        argv = (tmp_path / recipe).read_text().splitlines()
        positions = [i for i, a in enumerate(argv) if a == "--required-batch-size-multiple"]
        if not positions or any(argv[i + 1] != "1" for i in positions):
            lacking.append(recipe)
    assert lacking == [], f"recipes without --required-batch-size-multiple 1: {lacking}"


# --------------------------------------------------------------------------- bench/data_formats.py


def test_data_formats_bench_reports_both_formats_and_refuses_too_few_examples(tmp_path):
    import json

    script = os.path.join(REPO_ROOT, "bench", "data_formats.py")
    result = subprocess.run([sys.executable, script, "--images", "40", "--pixels", "256", "--read", "8",
                             "--repeats", "1", "--target-images", "400", "--workdir", str(tmp_path / "w")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line[len("BENCH "):]) for line in result.stdout.splitlines() if line.startswith("BENCH ")]
    by = {r.get("format", r["bench"]): r for r in rows}
    assert sorted(by) == ["data_formats_ratio", "npy", "text"], result.stdout
    text, npy = by["text"], by["npy"]
    assert npy["size_bytes"] == 40 * 256 + 40 * 8 + 2 * 128  # pixels, labels, two 128-byte .npy headers
    assert text["size_bytes"] > 3 * npy["size_bytes"] and text["checksum"] == npy["checksum"]
    assert text["size_gb_target"] == pytest.approx(text["size_bytes"] * 10 / 1024 ** 3, abs=0.006)  # 400 / 40
    assert text["load_target_scaled"] and not npy["load_target_scaled"] and npy["load_s_target"] == npy["load_s"]
    assert "extrapolated linearly to 400 images" in result.stdout and not os.path.exists(tmp_path / "w")
    refused = subprocess.run([sys.executable, script, "--images", "5", "--read", "6"], capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and "--read 6 exceeds --images 5" in refused.stderr
    assert "BENCH" not in refused.stdout
