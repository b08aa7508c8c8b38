"""Streaming evaluation (``--task language_modeling_stream``, docs/streaming.md): every token of a
split scored once, with all of its history, by fairseq-eval-lm's own scoring loop.

The equivalence tests run fairseq_cli.eval_lm.eval_lm (the loop of ``fairseq-eval-lm``:
SequenceScorer over the task's batch iterator) and compare with one parallel forward per stream,
at weights where the GAU matters, with blocks shorter than the working memory (so attention reads
memory carried from earlier blocks), a ragged last block and streams of unequal lengths (padded).
Each asserts that what it checks is exercised: dropping the state at every block, or the GAU's
output, moves the loss by far more than the tolerance."""

import copy
import logging
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import PLUGIN_DIR, build_from_cli, strong_gau_weights_, strong_norm_weight_, strong_weights_
from conftest import weight_drawer, write_byte_dictionary

TOLERANCE = 1e-5  # bits per token
BLOCK = 16  # < the tiny models' window / chunk of 32

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread (on a busy machine, torch's thread pool waits on every small op)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FAMILIES = {
    "seqboat": ("--arch", "seqboat_lm_tiny"),
    "seqboat_truncated_ema": ("--arch", "seqboat_lm_tiny", "--truncation-length", "24"),
    "seqboat_full": ("--arch", "seqboat_lm_tiny", "--decoder-chunk-size", "-1"),
    "mega_chunk": ("--arch", "mega_chunk_lm_tiny"),
    "spade": ("--arch", "spade_lm_tiny"),
}


def write_split(directory, seed=0, lines=16, split="test"):
    """A byte data-bin (dict.txt of 256 symbols) whose ``split`` holds ``lines`` random lines of 1-24
    tokens, each ending in </s>. Returns (directory, the split as one int64 tensor)."""
    from fairseq.data import Dictionary, indexed_dataset

    write_byte_dictionary(directory)
    dictionary = Dictionary.load(os.path.join(directory, "dict.txt"))
    rng = np.random.default_rng(seed)
    builder = indexed_dataset.make_builder(os.path.join(directory, f"{split}.bin"), impl="mmap",
                                           vocab_size=len(dictionary))
    pieces = []
    for _ in range(lines):
        line = torch.from_numpy(rng.integers(dictionary.nspecial, len(dictionary), rng.integers(1, 25)))
        line = torch.cat([line, torch.tensor([dictionary.eos()])])
        builder.add_item(line.int())
        pieces.append(line.long())
    builder.finalize(os.path.join(directory, f"{split}.idx"))
    return str(directory), torch.cat(pieces)


def strong_model_(model, seed=0):
    """Every layer at weights where its GAU matters (conftest.strong_weights_; SPADE layers: their
    GAU and norms)."""
    for index, layer in enumerate(model.decoder.layers):
        if hasattr(layer, "hx_proj"):
            strong_weights_(layer, seed + index)
        else:
            normal_ = weight_drawer(seed + index)
            with torch.no_grad():
                strong_gau_weights_(normal_, layer.gau)
                for name, p in layer.norm.named_parameters():
                    strong_norm_weight_(normal_, name, p)
    return model.eval()


def build(data, family, *extra):
    """(model, task) under --task language_modeling_stream, as fairseq-eval-lm builds them."""
    model, task, _ = build_from_cli(data, "language_modeling_stream", *FAMILIES[family],
                                    "--tokens-per-sample", str(BLOCK), *extra)
    return strong_model_(model), task


def stream_eval(model, task, batch_size=1, split="test"):
    """fairseq-eval-lm's scoring loop over the task's streaming iterator: (loss in bits, tokens scored)."""
    from fairseq_cli.eval_lm import eval_lm

    task.load_dataset(split)
    batches = task.eval_lm_dataloader(task.dataset(split), batch_size=batch_size)
    scored = []

    class Counting:  # what eval_lm reports as "Evaluated N tokens" is the samples' ntokens
        def __iter__(self):
            for sample in batches:
                scored.append(sample["ntokens"])
                yield sample

    result = eval_lm([model], task.source_dictionary, Counting(), target_dictionary=task.target_dictionary)
    return float(result["loss"]), sum(scored)


def parallel_loss(model, split, eos, batch_size=1):
    """One parallel forward per stream (the split cut into ``batch_size`` contiguous streams as the
    task cuts it; input = the preceding token, </s> at the split's start, then the stream but its
    last token). Returns the mean loss in bits over the split's tokens."""
    base, extra = divmod(len(split), batch_size)
    lengths = [base + (row < extra) for row in range(batch_size)]
    nll, start = 0.0, 0
    with torch.no_grad():
        for length in lengths:
            previous = split.new_tensor([eos]) if start == 0 else split[start - 1:start]
            inputs = torch.cat([previous, split[start:start + length - 1]])
            logits, _ = model(inputs.unsqueeze(0))
            logp = torch.log_softmax(logits[0].double(), dim=-1)
            nll -= logp.gather(-1, split[start:start + length].unsqueeze(-1)).sum().item()
            start += length
    return nll / len(split) / math.log(2)


def gau_zeroed(model):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        for layer in broken.decoder.layers:
            layer.gau.out_proj.weight.zero_()
            layer.gau.out_proj.bias.zero_()
    return broken


CASES = [(family, 1) for family in FAMILIES] + [("seqboat", 3), ("spade", 3)]


@pytest.mark.parametrize("family,batch_size", CASES)
def test_streaming_equals_one_parallel_pass(tmp_path, family, batch_size):
    data, split = write_split(tmp_path)
    model, task = build(data, family)
    eos = task.source_dictionary.eos()
    loss, tokens = stream_eval(model, task, batch_size)
    expected = parallel_loss(model, split, eos, batch_size)
    assert tokens == len(split)  # every token once, no pad
    assert abs(loss - expected) <= TOLERANCE, (family, loss, expected)

    # what is checked is exercised: several blocks, a ragged last one, unequal (padded) streams,
    # a history that matters beyond the block, and a GAU that matters
    longest = -(-len(split) // batch_size)
    assert longest > 3 * BLOCK and longest % BLOCK != 0
    assert batch_size == 1 or len(split) % batch_size != 0
    task.args.reset_every = BLOCK  # the state dropped at every block
    blockwise, _ = stream_eval(model, task, batch_size)
    assert abs(blockwise - loss) > 100 * TOLERANCE, "the state carried across blocks does not matter"
    no_gau = parallel_loss(gau_zeroed(model), split, eos, batch_size)
    assert abs(no_gau - expected) > 100 * TOLERANCE, "the GAU does not matter at these weights"
    if family == "seqboat":
        _, extra = model(torch.cat([split.new_tensor([eos]), split[:-1]]).unsqueeze(0))
        active = extra["activations"][0].active
        assert 32 + 1 < int(active.sum()) < active.numel()  # partial activation; the window binds


def test_reset_every_equals_fairseq_blocks(tmp_path):
    """--reset-every T equals stock fairseq-eval-lm (--task language_modeling, blocks of T, no
    context window), which starts every block from nothing: the same tokens, the same history."""
    from fairseq.tasks.language_modeling import LanguageModelingTask
    from fairseq_cli.eval_lm import eval_lm

    data, split = write_split(tmp_path)
    model, task = build(data, "seqboat", "--reset-every", str(BLOCK))
    loss, tokens = stream_eval(model, task)
    stock = LanguageModelingTask.setup_task(task.args)  # the same options, fairseq's blocks
    stock.load_dataset("test")
    batches = stock.eval_lm_dataloader(stock.dataset("test"), max_tokens=4 * BLOCK, batch_size=4)
    expected = float(eval_lm([model], stock.source_dictionary, batches)["loss"])
    assert tokens == len(split) and abs(loss - expected) <= TOLERANCE, (loss, expected)


def test_every_token_once_and_padding_never_scored(tmp_path):
    """The batches of B = 3 streams (blocks of 5, state dropped every 12 tokens) hold every token
    of the split exactly once as a target, each input is the token before its target, and pads
    only follow a stream's last token (inputs and targets alike)."""
    from seqboat_fairseq.tasks.streaming_lm import StreamState

    data, split = write_split(tmp_path, lines=6)
    _, task = build(data, "seqboat", "--tokens-per-sample", "5", "--reset-every", "12")
    task.load_dataset("test")
    batches = list(task.eval_lm_dataloader(task.dataset("test"), batch_size=3))
    pad, eos = task.source_dictionary.pad(), task.source_dictionary.eos()
    rows = [[] for _ in range(3)]
    sources = [[] for _ in range(3)]
    states = []
    for sample in batches:
        target, source = sample["target"], sample["net_input"]["src_tokens"]
        assert sample["ntokens"] == int(target.ne(pad).sum())
        assert torch.equal(target.eq(pad), source.eq(pad))
        assert sample["net_input"]["new_tokens_only"] is True
        states.append(sample["net_input"]["incremental_state"])
        for row in range(3):
            real = target[row][target[row].ne(pad)]
            assert torch.equal(target[row, :len(real)], real)  # pads only at the end
            rows[row].append(real)
            sources[row].append(source[row, :len(real)])
    assert all(isinstance(state, StreamState) for state in states)
    assert len(batches) == len(task.eval_lm_dataloader(task.dataset("test"), batch_size=3))
    # a new state exactly at the multiples of 12 tokens
    assert [i for i in range(len(states)) if i == 0 or states[i] is not states[i - 1]] == [0, 3, 6, 9, 12, 15][
        :len({id(s) for s in states})]
    targets = torch.cat([torch.cat(r) for r in rows])
    assert torch.equal(targets, split)
    inputs = torch.cat([torch.cat(r) for r in sources])
    assert torch.equal(inputs, torch.cat([split.new_tensor([eos]), split[:-1]]))
    assert len(split) % 3 != 0 and (len(split) // 3) % 5 != 0  # unequal streams, ragged last block


def test_models_without_a_decoding_state_are_refused(tmp_path):
    from seqboat_fairseq.tasks.streaming_lm import StreamingError

    data, _ = write_split(tmp_path)
    with pytest.raises(StreamingError, match=r"--task language_modeling_stream carries each layer's decoding state "
                                             r"from block to block, but this checkpoint's model \(--arch "
                                             r"transformer_lm\) cannot: it is a TransformerLanguageModel"):
        build_from_cli(data, "language_modeling_stream", "--arch", "transformer_lm", "--decoder-layers", "1",
                       "--decoder-embed-dim", "16", "--decoder-ffn-embed-dim", "16", "--decoder-attention-heads", "2")


def test_option_refusals(tmp_path):
    from seqboat_fairseq.tasks.streaming_lm import StreamingError

    data, _ = write_split(tmp_path)
    with pytest.raises(StreamingError, match=r"--reset-every -1: expected R > 0 tokens, or 0"):
        build(data, "seqboat", "--reset-every", "-1")
    with pytest.raises(StreamingError, match=r"--sample-break-mode eos: .* reads the split as one token sequence"):
        build(data, "seqboat", "--sample-break-mode", "eos")
    _, task = build(data, "seqboat")
    task.load_dataset("test")
    with pytest.raises(StreamingError, match=r"--context-window 8: .* carries the whole history"):
        task.eval_lm_dataloader(task.dataset("test"), context_window=8)
    with pytest.raises(StreamingError, match=r"--num-shards / distributed world size 2"):
        task.eval_lm_dataloader(task.dataset("test"), num_shards=2)
    _, task = build(data, "seqboat", "--rel-pos-bias", "simple", "--max-target-positions", "64")
    task.load_dataset("test")
    with pytest.raises(StreamingError, match=r"streams of \d+ tokens exceed this model's limit of 64 positions"):
        task.eval_lm_dataloader(task.dataset("test"))
    task.args.reset_every = 64  # within the learned bias table: accepted
    task.eval_lm_dataloader(task.dataset("test"))


def brute_force_reach(active, positions, window, chunked):
    """Reach of every active token of one sequence from the definition: its memory is the ranks
    [k - w, k] (window), [c floor(k / c), k] (chunks) or [0, k] (unbounded)."""
    where = positions[active]
    ranks = np.arange(len(where))
    if window is None:
        oldest = np.zeros_like(ranks)
    elif chunked:
        oldest = ranks // window * window
    else:
        oldest = np.maximum(ranks - window, 0)
    return where - where[oldest]


@pytest.mark.parametrize("family", ["seqboat", "mega_chunk"])
def test_reach_matches_its_definition(tmp_path, family):
    """--reach over B = 2 streams in blocks of 16, state dropped every 64 tokens: the distance
    histogram of each layer equals the one computed from one parallel forward per stream segment."""
    from seqboat_fairseq.analysis.reach import nearest_rank

    data, split = write_split(tmp_path, lines=30)
    model, task = build(data, family, "--reset-every", "64", "--reach")
    stream_eval(model, task, batch_size=2)
    eos = task.source_dictionary.eos()
    base, extra = divmod(len(split), 2)
    expected = [[] for _ in model.decoder.layers]
    start = 0
    for length in (base + (extra > 0), base):
        for seg in range(0, length, 64):
            first, last = start + seg, start + min(seg + 64, length)
            previous = split.new_tensor([eos]) if first == 0 else split[first - 1:first]
            with torch.no_grad():
                _, out = model(torch.cat([previous, split[first:last - 1]]).unsqueeze(0))
            for layer, (activation, memory) in enumerate(zip(out["activations"], task.tracker.memories)):
                expected[layer].append(brute_force_reach(activation.active[0].numpy(), np.arange(last - first),
                                                         memory.window, memory.chunked))
        start += length
    for layer, summary in enumerate(task.tracker.summary()):
        distances = np.concatenate(expected[layer])
        histogram = np.bincount(distances)
        assert np.array_equal(np.trim_zeros(task.tracker.histograms[layer], "b"), histogram), layer
        assert summary["active_tokens"] == len(distances)
        assert summary["median"] == int(np.percentile(distances, 50, method="inverted_cdf"))
        assert summary["p90"] == int(np.percentile(distances, 90, method="inverted_cdf"))
        assert summary["max"] == distances.max() and nearest_rank(histogram, 1.0) == distances.max()
        if family == "seqboat":  # skipped tokens stretch the memory beyond w
            assert summary["max"] > 32
        else:
            assert summary["max"] == 31


# --------------------------------------------------------------------------- the command line (slow)
def save_checkpoint(model, cfg, path):
    from omegaconf import OmegaConf

    torch.save({"cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "model": model.state_dict(),
                "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                                       "lr_scheduler_state": {"best": 1.0}, "num_updates": 0}], "extra_state": {}},
               path)
    return str(path)


def eval_lm_cli(data, checkpoint, *flags):
    return subprocess.run([sys.executable, "-m", "fairseq_cli.eval_lm", data, "--user-dir", PLUGIN_DIR, "--path",
                           checkpoint, "--gen-subset", "test", "--cpu", "--num-workers", "0", *map(str, flags)],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_fairseq_eval_lm_command(tmp_path):
    """The documented command: fairseq-eval-lm --task language_modeling_stream on a checkpoint
    trained under --task language_modeling prints eval-lm's lines (every token of the split, the
    loss of one parallel pass per stream), the reach per layer, and bits_per_byte reads its log."""
    data, split = write_split(tmp_path)
    model, _, cfg = build_from_cli(data, "language_modeling", *FAMILIES["seqboat"], "--tokens-per-sample", "64")
    strong_model_(model)
    checkpoint = save_checkpoint(model, cfg, tmp_path / "model.pt")
    proc = eval_lm_cli(data, checkpoint, "--task", "language_modeling_stream", "--tokens-per-sample", BLOCK,
                       "--batch-size", 3, "--reach")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert re.search(rf"Evaluated {len(split):,} tokens in ", out), out[-2000:]
    loss = float(re.search(r"Loss \(base 2\): ([\d.]+)", out).group(1))
    assert abs(loss - parallel_loss(model, split, 2, 3)) <= 5e-5 + TOLERANCE  # printed to 4 decimals
    assert len(re.findall(r"reach layer \d \(w=32\): median \d+, p90 \d+, max \d+ tokens", out)) == 2
    log = tmp_path / "eval.log"
    log.write_text(out)
    bpb = subprocess.run([sys.executable, "-m", "seqboat_fairseq.bits_per_byte", "--eval-log", str(log), "--data",
                          data, "--split", "test", "--bytes", str(len(split))], capture_output=True, text=True)
    assert bpb.returncode == 0, bpb.stderr


@pytest.mark.slow
def test_fairseq_eval_lm_refuses_a_transformer_in_one_line(tmp_path):
    data, _ = write_split(tmp_path)
    model, _, cfg = build_from_cli(data, "language_modeling", "--arch", "transformer_lm", "--decoder-layers", "1",
                                   "--decoder-embed-dim", "16", "--decoder-ffn-embed-dim", "16",
                                   "--decoder-attention-heads", "2")
    checkpoint = save_checkpoint(model, cfg, tmp_path / "transformer.pt")
    proc = eval_lm_cli(data, checkpoint, "--task", "language_modeling_stream")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "(--arch transformer_lm) cannot: it is a TransformerLanguageModel" in errors[0]


@pytest.mark.slow
def test_bench_quick(tmp_path):
    """bench/streaming.py --quick: every part prints its BENCH records, every token counted."""
    proc = subprocess.run([sys.executable, "bench/streaming.py", "--quick", "--work-dir", str(tmp_path)],
                          cwd=os.path.dirname(PLUGIN_DIR), capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    import json

    records = [json.loads(line[len("BENCH "):]) for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    kinds = [r["bench"] for r in records]
    assert kinds.count("streaming_memory") == 3 and kinds.count("streaming_speed") == 3
    assert kinds.count("streaming_curve") == 6
    for r in records:
        assert "error" not in r, r
    memory = [r for r in records if r["bench"] == "streaming_memory"]
    assert all(r["small_tokens"] == 20_000 and r["large_tokens"] == 60_000 for r in memory)
    assert os.path.isfile(tmp_path / "streaming_curve.png")
