#!/usr/bin/env python
"""Generate ListOps data in the format of the Long Range Arena (LRA) release (``listops-1000/``).

Source of truth: the LRA generator ``lra_benchmarks/data/listops.py`` of
https://github.com/google-research/long-range-arena (itself derived from the ListOps generator of
Nangia & Bowman 2018, https://github.com/nyu-mll/spinn/blob/listops-release/python/spinn/data/listops/make_data.py).
This is a re-implementation without TensorFlow / absl that follows it step by step:

* Operators ``[MIN``, ``[MAX``, ``[MED`` (``int(np.median(args))``, i.e. the mean of the two middle
  values truncated for an even count) and ``[SM`` (sum modulo 10) over the digits 0-9; an operator
  node is closed by ``]``.
* ``generate_tree(depth, max_depth, max_args)``, called with ``depth = 1``: below ``max_depth`` draw
  ``r = random()``; if ``r > VALUE_P`` (0.25) the node is a leaf ``choice(range(10))``, otherwise an
  operator node with ``randint(2, max_args)`` children, generated first (depth + 1), after which the
  operator is drawn with ``choice(OPERATORS)``.  At ``max_depth`` a node is always a leaf.  The random
  calls are made in the original's order, so with ``random.seed(s)`` the original draws the same trees
  as ``--seed s`` here.
* The tree is a left-nested binary tuple ``((((op, a1), a2), ...), ']')`` and its length is counted
  like the original: a leaf is 1, an operator node 2 (operator and ``]``) plus its children's lengths
  (= the number of tokens once the round brackets are removed).
* ``to_string`` prints each tuple ``(a, b)`` as ``( a b )``, e.g. ``[MAX 2 9 ]`` is written
  ``( ( ( [MAX 2 ) 9 ) ] )``; ``to_value`` evaluates the tuple tree the same way the original does.
* Sampling: trees are drawn until ``num_train + num_valid + num_test`` DISTINCT trees with
  ``min_length < length < max_length`` (strict, as in the original's
  ``if length > FLAGS.min_length and length < FLAGS.max_length``) have been collected; the original
  deduplicates by adding the trees to a ``set``.  The first ``num_train`` go to train, the next
  ``num_valid`` to val, the rest to test.
* Output: ``basic_train.tsv``, ``basic_val.tsv``, ``basic_test.tsv``, written with
  ``csv.writer(f, delimiter='\\t')``: header row ``Source<TAB>Target``, then one row per example
  (csv's default ``\\r\\n`` line ends, as the original's writer).

The one deliberate difference: the original iterates over its Python ``set`` of trees, whose order
depends on string hashing (``PYTHONHASHSEED``) and so is not reproducible; here the distinct trees
keep the order in which they were first drawn (an ordered dict), which makes the output a
deterministic function of ``--seed`` (the draws being i.i.d., the split is equally random).

Defaults are the original's (96,000 / 2,000 / 2,000 examples, max depth 10, max args 10, lengths
500..2000 exclusive).  Usage::

    python data_prep/listops_generate.py --output-dir lra_release/listops-1000
    python data_prep/listops_generate.py --output-dir /tmp/listops-small --num-train 4000 \\
        --num-valid 500 --num-test 500 --max-depth 3 --max-args 5 --min-length 10 --max-length 150 --seed 1

then ``python data_prep/lra.py listops --input-dir DIR --destdir data-bin/lra/listops``.
"""

import argparse
import csv
import os
import random
import sys

import numpy as np

MIN = "[MIN"
MAX = "[MAX"
MED = "[MED"
FIRST = "[FIRST"  # defined by the original but not used in LRA's OPERATORS
LAST = "[LAST"
SUM_MOD = "[SM"
END = "]"

OPERATORS = [MIN, MAX, MED, SUM_MOD]  # the original's list (FIRST and LAST commented out)
VALUES = range(10)
VALUE_P = 0.25

TASK = "basic"
SPLIT_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
HEADER = ["Source", "Target"]

DEFAULTS = dict(num_train=96000, num_valid=2000, num_test=2000, max_depth=10, max_args=10,
                min_length=500, max_length=2000, seed=0)


def generate_tree(depth, max_depth, max_args, rng=random):
    """Return ``(tree, length)``: a random equation tree and its token count without brackets.

    ``rng`` is a ``random.Random`` (or the ``random`` module, like the original).
    """
    if depth < max_depth:
        r = rng.random()
    else:
        r = 1

    if r > VALUE_P:
        value = rng.choice(VALUES)
        return value, 1
    length = 2
    num_values = rng.randint(2, max_args)
    values = []
    for _ in range(num_values):
        sub_t, sub_l = generate_tree(depth + 1, max_depth, max_args, rng)
        values.append(sub_t)
        length += sub_l

    op = rng.choice(OPERATORS)
    t = (op, values[0])
    for value in values[1:]:
        t = (t, value)
    t = (t, END)
    return t, length


def to_string(t):
    """The original's ``to_string(t, parens=True)``: a tuple ``(a, b)`` becomes ``( a b )``."""
    if isinstance(t, str):
        return t
    if isinstance(t, (int, np.integer)):
        return str(t)
    return "( " + to_string(t[0]) + " " + to_string(t[1]) + " )"


def _apply(op, args):
    if op == MIN:
        return min(args)
    if op == MAX:
        return max(args)
    if op == FIRST:
        return args[0]
    if op == LAST:
        return args[-1]
    if op == MED:
        return int(np.median(args))
    if op == SUM_MOD:
        return int(np.sum(args) % 10)
    raise ValueError(f"unknown operator {op!r}")


def to_value(t):
    """The result (an int 0-9) of the tuple tree ``t``, evaluated as the original's ``to_value``.

    An operator node is folded left to right: ``(op, a)`` is an unsaturated function
    ``(op, [a])``, each further ``(f, b)`` appends ``b``, and ``(f, ']')`` applies it.
    """
    if not isinstance(t, tuple):
        return t
    left = to_value(t[0])
    right = to_value(t[1])
    if isinstance(left, str) and left in OPERATORS + [FIRST, LAST]:  # an unsaturated function
        return (left, [right])
    if right == END:  # left must be an unsaturated function
        return _apply(left[0], left[1])
    if isinstance(left, tuple):  # an unsaturated function and one more argument
        return (left[0], left[1] + [right])
    raise ValueError(f"malformed ListOps tree: {t!r}")


def tree_length(t):
    """Token count of ``t`` without brackets, as ``generate_tree`` counts it (leaf 1, node 2 + children)."""
    return len(tokenize(to_string(t)))


# ----------------------------------------------------------------------- parsing a written Source


def tokenize(source):
    """The tokens of a Source string without the round brackets (what LRA/S4 feed to the model)."""
    return [tok for tok in source.split() if tok not in ("(", ")")]


def evaluate_tokens(tokens):
    """Evaluate a bracket-free ListOps token sequence such as ``[MAX 2 [MIN 4 7 ] 0 ]``."""
    stack = [[]]  # stack[-1] holds the arguments of the innermost open operator (stack[0]: the result)
    ops = []
    for tok in tokens:
        if tok == END:
            if not ops:
                raise ValueError("unbalanced ']'")
            value = _apply(ops.pop(), stack.pop())
            stack[-1].append(value)
        elif tok.startswith("["):
            if tok not in OPERATORS + [FIRST, LAST]:
                raise ValueError(f"unknown operator {tok!r}")
            ops.append(tok)
            stack.append([])
        else:
            value = int(tok)
            if not 0 <= value <= 9:
                raise ValueError(f"not a digit: {tok!r}")
            stack[-1].append(value)
    if ops or len(stack[0]) != 1:
        raise ValueError("not a single complete expression")
    return stack[0][0]


def evaluate(source):
    """Evaluate a Source string (with or without the round brackets), e.g. ``[SM 7 8 ]`` -> 5."""
    return evaluate_tokens(tokenize(source))


# ----------------------------------------------------------------------- data set


def generate_examples(num_samples, max_depth, max_args, min_length, max_length, seed):
    """``num_samples`` distinct trees with ``min_length < length < max_length``, as ``[(source, target)]``.

    Raises RuntimeError if the length window is (practically) unreachable.
    """
    rng = random.Random(seed)
    data = {}  # distinct trees in order of first appearance (the original uses a set)
    draws, max_draws = 0, max(1000000, 1000 * num_samples)
    while len(data) < num_samples:
        tree, length = generate_tree(1, max_depth, max_args, rng)
        draws += 1
        if min_length < length < max_length:
            data.setdefault(tree, None)
        elif draws >= max_draws:
            raise RuntimeError(
                f"only {len(data)} of {num_samples} distinct trees with {min_length} < length < "
                f"{max_length} after {draws} draws (max depth {max_depth}, max args {max_args}); "
                "widen the length window or raise --max-depth / --max-args")
    return [(to_string(tree), to_value(tree)) for tree in data]


def split_examples(examples, num_train, num_valid):
    """The original's split: ``train[:num_train]``, then ``num_valid`` for val, the rest for test."""
    rest = examples[num_train:]
    return {"train": examples[:num_train], "val": rest[:num_valid], "test": rest[num_valid:]}


def write_tsv(rows, path):
    """Write ``rows`` under the header ``Source<TAB>Target`` like the original (csv, tab-delimited)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(HEADER)
        writer.writerows(rows)


def read_tsv(path):
    """Read back a ListOps tsv: ``[(source, target)]`` (checks the header)."""
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader)
        if header != HEADER:
            raise ValueError(f"{path}: expected header {HEADER}, got {header}")
        return [(source, int(target)) for source, target in reader]


def generate(output_dir, num_train=DEFAULTS["num_train"], num_valid=DEFAULTS["num_valid"],
             num_test=DEFAULTS["num_test"], max_depth=DEFAULTS["max_depth"], max_args=DEFAULTS["max_args"],
             min_length=DEFAULTS["min_length"], max_length=DEFAULTS["max_length"], seed=DEFAULTS["seed"]):
    """Generate the three splits into ``output_dir``; returns ``{split: [(source, target)]}``."""
    total = num_train + num_valid + num_test
    examples = generate_examples(total, max_depth, max_args, min_length, max_length, seed)
    splits = split_examples(examples, num_train, num_valid)
    os.makedirs(output_dir, exist_ok=True)
    for split, rows in splits.items():
        write_tsv(rows, os.path.join(output_dir, SPLIT_FILES[split]))
    return splits


def build_parser():
    p = argparse.ArgumentParser(
        prog="listops_generate.py",
        description="Generate ListOps data like the LRA release (basic_{train,val,test}.tsv).")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="where to write the tsv files")
    p.add_argument("--num-train", type=int, default=DEFAULTS["num_train"], metavar="N")
    p.add_argument("--num-valid", type=int, default=DEFAULTS["num_valid"], metavar="N")
    p.add_argument("--num-test", type=int, default=DEFAULTS["num_test"], metavar="N")
    p.add_argument("--max-depth", type=int, default=DEFAULTS["max_depth"], metavar="D",
                   help="maximum tree depth (the root is depth 1)")
    p.add_argument("--max-args", type=int, default=DEFAULTS["max_args"], metavar="A",
                   help="maximum number of arguments per operator (at least 2)")
    p.add_argument("--min-length", type=int, default=DEFAULTS["min_length"], metavar="a",
                   help="keep trees longer than a tokens (exclusive, as the original)")
    p.add_argument("--max-length", type=int, default=DEFAULTS["max_length"], metavar="b",
                   help="keep trees shorter than b tokens (exclusive, as the original)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="random seed (default 0)")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("num_train", "num_valid", "num_test"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.max_depth < 1:
        parser.error("--max-depth must be >= 1")
    if args.max_args < 2:
        parser.error("--max-args must be >= 2")
    if args.max_length - args.min_length < 2:
        parser.error("--max-length must exceed --min-length by at least 2 (both bounds are exclusive)")
    try:
        splits = generate(args.output_dir, args.num_train, args.num_valid, args.num_test, args.max_depth,
                          args.max_args, args.min_length, args.max_length, args.seed)
    except RuntimeError as exc:
        print(f"listops_generate.py: error: {exc}", file=sys.stderr)
        return 2
    for split, rows in splits.items():
        counts = np.bincount([t for _, t in rows], minlength=10) if rows else np.zeros(10, int)
        lengths = [len(tokenize(s)) for s, _ in rows]
        span = f"lengths {min(lengths)}..{max(lengths)}, mean {np.mean(lengths):.1f}" if rows else "empty"
        print(f"{os.path.join(args.output_dir, SPLIT_FILES[split])}: {len(rows)} examples, {span}, "
              f"labels {counts.tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
