"""ListOps: the generator ``data_prep/listops_generate.py`` (fast unit tests) and a learning check
(``slow``): generated data -> ``data_prep/lra.py listops`` -> ``fairseq_cli.train`` with a small
``seqboat_lra_listop`` model -> accuracy clearly above the majority-class rate."""

import os
import random
import re
import subprocess
import sys
import time
from collections import Counter

import pytest

from conftest import PLUGIN_DIR, REPO_ROOT
from data_prep import listops_generate as lg

GENERATOR = os.path.join(REPO_ROOT, "data_prep", "listops_generate.py")
LRA_PREP = os.path.join(REPO_ROOT, "data_prep", "lra.py")


# --------------------------------------------------------------------------- evaluator


@pytest.mark.parametrize("source, value", [
    ("[SM 7 8 ]", 5),
    ("[SM 9 9 9 ]", 7),
    ("[SM 0 0 ]", 0),
    ("[MED 1 9 3 ]", 3),
    ("[MED 1 2 ]", 1),            # int(np.median([1, 2])) = int(1.5)
    ("[MED 2 9 4 7 ]", 5),        # (4 + 7) / 2 = 5.5 -> 5
    ("[MED 5 5 1 1 ]", 3),
    ("[MIN 4 2 8 ]", 2),
    ("[MAX 4 2 8 ]", 8),
    ("7", 7),
    ("[MAX 2 [MIN 4 7 ] 0 ]", 4),
    ("[SM [MAX 9 1 ] [MIN 8 3 ] ]", 2),                  # 9 + 3 = 12
    ("[MED [SM 5 6 ] [MAX 0 0 ] [MIN 9 8 7 ] ]", 1),     # median(1, 0, 7) = 1
    ("[MIN [MAX [SM 3 4 ] 2 ] [MED 9 8 7 6 5 ] ]", 7),   # min(max(7, 2), 7)
])
def test_evaluate_hand_checked(source, value):
    assert lg.evaluate(source) == value


def test_to_value_of_hand_built_trees():
    # the original's tuple encoding: ((((op, a1), a2), ...), ']')
    sm = (((lg.SUM_MOD, 7), 8), lg.END)
    med = ((((lg.MED, 1), 9), 3), lg.END)
    nested = ((((lg.MAX, 2), ((((lg.MIN, 4), 7), lg.END))), 0), lg.END)
    assert lg.to_value(sm) == 5
    assert lg.to_value(med) == 3
    assert lg.to_value(nested) == 4
    assert lg.to_value(6) == 6
    assert lg.to_string(sm) == "( ( ( [SM 7 ) 8 ) ] )"
    assert lg.to_string(((((lg.MAX, 2), 9), lg.END))) == "( ( ( [MAX 2 ) 9 ) ] )"
    assert lg.to_string(nested) == "( ( ( ( [MAX 2 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )"
    assert lg.evaluate(lg.to_string(nested)) == 4


@pytest.mark.parametrize("source", ["[SM 1 2", "[MAX 1 ] ]", "[FOO 1 2 ]", "12", "[MIN 1 2 ] 3", ""])
def test_evaluate_rejects_malformed(source):
    with pytest.raises(ValueError):
        lg.evaluate(source)


def test_random_trees_value_length_and_string_agree():
    rng = random.Random(123)
    for _ in range(2000):
        tree, length = lg.generate_tree(1, 6, 5, rng)
        source = lg.to_string(tree)
        value = lg.to_value(tree)
        assert 0 <= value <= 9
        assert lg.evaluate(source) == value          # tuple evaluation == token-stream evaluation
        assert len(lg.tokenize(source)) == length    # the original's length = tokens without ( )
        assert lg.tree_length(tree) == length
        assert source.count("(") == source.count(")")


def _shape(tokens):
    """``(depth, arities)`` of a bracket-free expression: a leaf alone has depth 1."""
    depth, arities, stack = 1, [], []
    for tok in tokens:
        if tok == lg.END:
            arities.append(stack.pop())
            continue
        if stack:
            stack[-1] += 1  # one more argument of the innermost open operator
        if tok.startswith("["):
            stack.append(0)
        depth = max(depth, len(stack) + (0 if tok.startswith("[") else 1))
    return depth, arities


def test_tree_shape_follows_depth_and_args():
    assert _shape(lg.tokenize("[MAX 2 [MIN 4 7 ] 0 ]")) == (3, [2, 3])
    rng = random.Random(5)
    depths = set()
    for _ in range(500):
        tree, _ = lg.generate_tree(1, 3, 4, rng)
        depth, arities = _shape(lg.tokenize(lg.to_string(tree)))
        depths.add(depth)
        assert all(2 <= a <= 4 for a in arities)
    assert depths == {1, 2, 3}  # at max_depth (3) every node is a leaf


def test_same_random_stream_as_the_module_level_generator():
    """``random.seed(s)`` + the original's module-level calls draws the same trees as ``Random(s)``."""
    random.seed(7)
    module_level = [lg.generate_tree(1, 5, 4) for _ in range(50)]
    rng = random.Random(7)
    assert [lg.generate_tree(1, 5, 4, rng) for _ in range(50)] == module_level


# --------------------------------------------------------------------------- data set / format


SMALL = dict(num_train=300, num_valid=40, num_test=30, max_depth=4, max_args=4, min_length=8, max_length=40)


def test_written_tsv_parses_back(tmp_path):
    splits = lg.generate(tmp_path, seed=3, **SMALL)
    assert sorted(os.listdir(tmp_path)) == ["basic_test.tsv", "basic_train.tsv", "basic_val.tsv"]
    sizes = {"train": 300, "val": 40, "test": 30}
    sources = []
    for split, name in lg.SPLIT_FILES.items():
        path = tmp_path / name
        raw = path.read_bytes()
        assert raw.startswith(b"Source\tTarget\r\n")     # csv.writer's header row, as the release
        lines = raw.decode("ascii").split("\r\n")
        assert lines[-1] == "" and len(lines) == sizes[split] + 2
        rows = lg.read_tsv(path)
        assert rows == [(s, int(t)) for s, t in splits[split]]
        for source, target in rows:
            assert re.fullmatch(r"[()\[\]A-Z0-9 ]+", source)
            assert source.startswith("( ") and source.endswith(" )") or source.isdigit()
            tokens = lg.tokenize(source)
            assert SMALL["min_length"] < len(tokens) < SMALL["max_length"]   # strict, as the original
            assert set(tokens) <= set(lg.OPERATORS) | {lg.END} | set(map(str, range(10)))
            assert lg.evaluate(source) == target
        sources += [s for s, _ in rows]
    assert len(sources) == len(set(sources))    # deduplicated across all splits, like the original's set


def test_lra_prep_reads_the_generated_files(tmp_path):
    """``data_prep/lra.py``'s ListOps reader accepts the files (header, CRLF, tokens without brackets)."""
    lra = pytest.importorskip("data_prep.lra")
    splits = lg.generate(tmp_path, seed=4, **SMALL)
    examples = list(lra.read_listops(str(tmp_path / "basic_val.tsv")))
    assert [label for _, label, _ in examples] == [t for _, t in splits["val"]]
    assert [docs[0] for docs, _, _ in examples] == [lg.tokenize(s) for s, _ in splits["val"]]


def test_deterministic_by_seed(tmp_path):
    a = lg.generate(tmp_path / "a", seed=11, **SMALL)
    b = lg.generate(tmp_path / "b", seed=11, **SMALL)
    c = lg.generate(tmp_path / "c", seed=12, **SMALL)
    assert a == b
    assert a != c
    for name in lg.SPLIT_FILES.values():
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_regression_first_example():
    """Pins the random draw order (leaf test, arity, children, then operator) for seed 0."""
    examples = lg.generate_examples(3, max_depth=3, max_args=3, min_length=4, max_length=12, seed=0)
    assert examples == REGRESSION_SEED0


REGRESSION_SEED0 = [
    ("( ( ( ( [MAX 4 ) 5 ) 3 ) ] )", 5),
    ("( ( ( ( [MAX 9 ) 5 ) 4 ) ] )", 9),
    ("( ( ( [MIN ( ( ( ( [MAX 7 ) 1 ) 1 ) ] ) ) 0 ) ] )", 0),
]


def test_unreachable_length_window_fails():
    with pytest.raises(RuntimeError, match="distinct trees"):
        # depth 2, 2 args: at most 4 tokens, so nothing is longer than 10
        lg.generate_examples(1, max_depth=2, max_args=2, min_length=10, max_length=20, seed=0)


def test_defaults_are_the_originals():
    args = lg.build_parser().parse_args(["--output-dir", "x"])
    assert (args.num_train, args.num_valid, args.num_test) == (96000, 2000, 2000)
    assert (args.max_depth, args.max_args, args.min_length, args.max_length) == (10, 10, 500, 2000)
    assert lg.OPERATORS == ["[MIN", "[MAX", "[MED", "[SM"] and lg.VALUE_P == 0.25


def test_cli(tmp_path):
    out = tmp_path / "listops"
    cmd = [sys.executable, GENERATOR, "--output-dir", str(out), "--num-train", "50", "--num-valid", "5",
           "--num-test", "5", "--max-depth", "3", "--max-args", "4", "--min-length", "5",
           "--max-length", "30", "--seed", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [len(lg.read_tsv(out / n)) for n in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv")] == [50, 5, 5]
    assert lg.read_tsv(out / "basic_train.tsv") == lg.generate_examples(60, 3, 4, 5, 30, 2)[:50]
    bad = subprocess.run(cmd[:2] + ["--output-dir", str(tmp_path / "bad"), "--max-args", "1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--max-args" in bad.stderr


# --------------------------------------------------------------------------- learning check

# The data: short ListOps (depth <= 3, <= 5 arguments; with min length 10 that gives 11..37 tokens,
# mean ~14), 10,000 train / 500 valid / 500 test examples.
DATA = dict(num_train=10000, num_valid=500, num_test=500, max_depth=3, max_args=5, min_length=10,
            max_length=150)
# A seqboat_lra_listop-shaped model (post-LayerNorm, softmax, simple bias, masked-mean pooling) shrunk
# to 2 layers, D=64, w=16; the recipe's optimiser (adam 0.9/0.98, clip 1, linear decay with warmup).
TRAIN = ["--task", "lra-text", "--input-type", "text", "--arch", "seqboat_lra_listop",
         "--criterion", "lra_cross_entropy", "--sentence-avg",
         "--encoder-layers", "2", "--encoder-embed-dim", "64", "--encoder-hidden-dim", "128", "--z-dim", "32",
         "--n-dim", "16", "--chunk-size", "16", "--classifier-out-dim", "128", "--encoder-ffn-embed-dim", "-1",
         "--dropout", "0.1", "--sen-rep-type", "mp",
         "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--adam-eps", "1e-8", "--clip-norm", "1.0",
         "--lr", "0.004", "--lr-scheduler", "linear_decay", "--warmup-updates", "40", "--warmup-init-lr", "1e-7",
         "--end-learning-rate", "0", "--total-num-update", "500", "--max-update", "500",
         "--batch-size", "128", "--required-batch-size-multiple", "1",
         "--validate-interval", "1000", "--save-interval", "1000", "--no-epoch-checkpoints",
         "--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric",
         "--log-format", "simple", "--log-interval", "100", "--num-workers", "0", "--cpu"]
MARGIN = 20.0  # required accuracy above the majority-class rate, in points


def _run(cmd, timeout):
    # One intra-op thread: on a shared 2-core machine two threads per process were ~10x slower
    # (oversubscription) for these tiny batches.
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, *map(str, cmd)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{cmd[:3]} failed ({proc.returncode}):\n{out[-4000:]}"
    return out


def _accuracies(log, subset):
    return [float(m) for m in re.findall(rf"valid on '{subset}' subset .*?\| accuracy ([0-9.]+)", log)]


def run_learning_check(root, seed):
    """Generate -> lra.py listops -> train -> validate; returns a dict of the numbers."""
    start = time.time()
    raw, data, save = root / "listops-1000", root / "data-bin", root / "checkpoints"
    splits = lg.generate(raw, seed=seed, **DATA)
    _run([LRA_PREP, "listops", "--input-dir", raw, "--destdir", data, "--workers", "1"], timeout=300)
    log = _run(["-m", "fairseq_cli.train", data, "--user-dir", PLUGIN_DIR, *TRAIN, "--seed", seed,
                "--save-dir", save], timeout=600)
    valid = _accuracies(log, "valid")
    assert valid, f"no validation accuracy in the training log:\n{log[-3000:]}"
    out = _run(["-m", "fairseq_cli.validate", data, "--user-dir", PLUGIN_DIR, "--task", "lra-text",
                "--criterion", "lra_cross_entropy", "--path", save / "checkpoint_last.pt", "--valid-subset", "test",
                # without --required-batch-size-multiple 1 fairseq's batch_by_size drops the last
                # 500 % 8 = 4 examples (fairseq issue #5036)
                "--batch-size", "128", "--required-batch-size-multiple", "1", "--cpu", "--num-workers", "0"],
               timeout=300)
    test = _accuracies(out, "test")
    assert test, f"no test accuracy in the fairseq_cli.validate output:\n{out[-3000:]}"
    majority = {split: 100.0 * Counter(t for _, t in rows).most_common(1)[0][1] / len(rows)
                for split, rows in splits.items()}
    for acc, n in ((valid[-1], DATA["num_valid"]), (test[-1], DATA["num_test"])):
        correct = acc * n / 100  # every example evaluated: an integer count out of n
        assert abs(correct - round(correct)) < 0.02, f"accuracy {acc} is no count out of {n} examples"
    return {"majority_valid": majority["val"], "valid": valid[-1], "majority_test": majority["test"],
            "test": test[-1], "seconds": time.time() - start}


@pytest.mark.slow
@pytest.mark.learning
def test_listops_learns(tmp_path):
    """A small SeqBoat learns short ListOps well above the majority class within ~500 updates.

    Observed (2 shared CPU cores, one thread per process; generator seed = training seed):

        seed  majority valid  valid acc  majority test  test acc  wall (whole check)
        1     13.6            51.2       14.0           56.0      74-82 s   <- the test's seed
        2     11.4            51.2       12.4           50.8      71-90 s
        3     12.2            53.2       12.4           49.6      74-91 s
        4     13.0            50.0       12.6           52.0      83 s

    i.e. ~37-42 points above the majority class; the test asks for MARGIN (20) points on both the
    valid split (final validation of fairseq_cli.train) and the test split (fairseq_cli.validate).
    Training itself (500 updates of 128 sentences, ~6.4 epochs) takes ~50-60 s of that; data
    generation < 1 s, data_prep/lra.py ~10-15 s, validate ~5 s.  Results are identical across
    reruns with the same seed (one thread).  Other seeds: ``python tests/test_learning_listops.py 2 3``.
    """
    r = run_learning_check(tmp_path, seed=1)
    print(r)
    assert r["valid"] >= r["majority_valid"] + MARGIN, r
    assert r["test"] >= r["majority_test"] + MARGIN, r


if __name__ == "__main__":  # robustness check over seeds: python tests/test_learning_listops.py 1 2 3
    import pathlib
    import tempfile

    for s in map(int, sys.argv[1:] or ["1"]):
        with tempfile.TemporaryDirectory() as d:
            print(s, run_learning_check(pathlib.Path(d), s), flush=True)
