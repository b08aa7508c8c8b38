"""Quality race at equal parameters and equal wall time: SeqBoat vs MEGA-chunk vs SPADE vs a Transformer.

Every model is trained by fairseq's own training loop in a fresh subprocess (``python -m fairseq_cli.train
DATA --user-dir seqboat_fairseq ...``, what ``fairseq-train`` runs), one model at a time, for the same
wall-clock budget (``--stop-time-hours``, i.e. ``--minutes``), with ``--num-workers 0``, a fixed number of
threads (``OMP_NUM_THREADS`` = ``--threads``), the same recipe and seed, no validation during training
(``--disable-validation``: validation would eat the budget) and one checkpoint when the time is up
(``checkpoint_last.pt``). Then the checkpoint is evaluated on the test split:

``lm``       the demo byte corpus of ``examples/demo.sh`` (``data_prep/enwik8.py --pydoc-demo``, Python's
             pydoc text, ``--lm-bytes`` bytes); ``seqboat_lm_tiny``, ``mega_chunk_lm_tiny``, ``spade_lm_tiny``
             and fairseq's ``transformer_lm`` (D=64, 2 layers, 4 heads, pre-norm, tied embeddings, its FFN
             size solved so that its parameter count is SeqBoat's within 5 %); test bits per byte-token
             (= per character of this byte corpus) from ``fairseq-eval-lm`` (``--context-window 256``),
             checked by ``seqboat_fairseq.bits_per_byte`` (eval-lm must have scored every token of the split).
``listops``  a generated ListOps (``data_prep/listops_generate.py`` -> ``data_prep/lra.py listops``, the
             shapes of tests/test_learning_listops.py: depth <= 3, <= 5 arguments, 11..149 tokens);
             ``seqboat_lra_listop`` / ``mega_chunk_lra_listop`` / ``spade_lra_listop`` shrunk alike to 2
             layers, D=64, H=128, Z=32, w=16 (SPADE's FFN re-solved for the parameter count), and
             ``transformer_lra``, a full-attention encoder registered by this file (torch
             ``nn.TransformerEncoder``, pre-norm, GELU, masked-mean pooling, the plugin's classification
             head), trained through ``fairseq_cli.train`` too (this file's ``--fairseq-train`` wrapper
             registers the model, then calls ``fairseq_cli.train.cli_main``); test accuracy from fairseq's
             ``task.valid_step`` over every example of the test split (counted: the script fails when a
             single example is missing).

A number is printed only when it is what it claims: a run that failed, did not stop on the time limit,
evaluated fewer tokens/examples than the split, or whose parameter count is more than 5 % off SeqBoat's is
reported as FAILED (no number) and the script exits with status 1.

    python bench/quality_race.py                       # 5 minutes per model, 8 runs (~45 min)
    python bench/quality_race.py --minutes 20 --tasks lm
    python bench/quality_race.py --quick               # smoke run, ~10 s of training per model

Output: a results table and one ``BENCH {json}`` line per run (``"bench": "quality_race"``).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (PLUGIN_DIR, REPO_ROOT, code_revision, count_parameters, cpu_model, emit,  # noqa: E402
                    exit_status_for_failures, format_table, quiet_fairseq_logging)

MODELS = ("seqboat", "mega_chunk", "spade", "transformer")
TASKS = ("lm", "listops")
PARAM_TOLERANCE = 0.05
EVAL_PREFIX = "EVAL "

# --------------------------------------------------------------------------- transformer_lra
# A full-attention Transformer sentence classifier for the plugin's lra-text / lra-image tasks (the plugin
# has none): registered under --arch transformer_lra when this module is imported.
_TRANSFORMER_LRA = "transformer_lra"


def register_transformer_lra() -> None:
    """Registers ``--arch transformer_lra`` with fairseq (once per process)."""
    from dataclasses import dataclass as fairseq_dataclass

    import torch
    from fairseq.dataclass import ChoiceEnum, FairseqDataclass
    from fairseq.models import MODEL_REGISTRY, BaseFairseqModel, register_model
    from torch import nn

    if _TRANSFORMER_LRA in MODEL_REGISTRY:
        return
    from seqboat_fairseq.models.seqboat_lra import ClassificationHead, RealNumberEmbedding, ScaledSinusoidalEmbedding

    @fairseq_dataclass
    class TransformerLRAConfig(FairseqDataclass):
        input_type: Optional[ChoiceEnum(["text", "image"])] = "${oc.select:task.input_type,null}"
        max_positions: Optional[int] = "${oc.select:task.max_positions,null}"
        encoder_embed_dim: int = 64
        encoder_layers: int = 2
        encoder_attention_heads: int = 4
        encoder_ffn_embed_dim: int = 128
        dropout: float = 0.1
        attention_dropout: float = 0.0
        classifier_out_dim: int = 128
        sentence_class_num: int = 10

    class TransformerLRAModel(BaseFairseqModel):
        """tokens (``nn.Embedding``) or samples (the plugin's ``RealNumberEmbedding``) + the plugin's scaled
        sinusoidal positions -> ``nn.TransformerEncoder`` (pre-norm, GELU, key padding mask; attention through
        ``scaled_dot_product_attention``) -> LayerNorm -> masked mean -> the plugin's ``ClassificationHead``."""

        def __init__(self, cfg, dictionary):
            super().__init__()
            dim = cfg.encoder_embed_dim
            self.is_image = cfg.input_type == "image"
            self.max_input_positions = cfg.max_positions
            self.padding_idx = None if self.is_image else dictionary.pad()
            self.embed = RealNumberEmbedding(dim) if self.is_image else nn.Embedding(len(dictionary), dim,
                                                                                      self.padding_idx)
            if not self.is_image:
                nn.init.normal_(self.embed.weight, mean=0.0, std=dim ** -0.5)
            self.positions = ScaledSinusoidalEmbedding(dim)
            layer = nn.TransformerEncoderLayer(dim, cfg.encoder_attention_heads, cfg.encoder_ffn_embed_dim,
                                               dropout=cfg.dropout, activation="gelu", batch_first=True,
                                               norm_first=True)
            layer.self_attn.dropout = cfg.attention_dropout
            self.layers = nn.TransformerEncoder(layer, cfg.encoder_layers, enable_nested_tensor=False)
            self.final_norm = nn.LayerNorm(dim)
            self.classifier = ClassificationHead(dim, cfg.classifier_out_dim, cfg.sentence_class_num, 1, "gelu",
                                                 cfg.dropout)

        @classmethod
        def build_model(cls, cfg, task):
            dictionary = None if cfg.input_type == "image" else task.source_dictionary
            return cls(cfg, dictionary)

        def forward(self, src_tokens, src_lengths, **unused):
            if self.is_image:
                steps = torch.arange(src_tokens.size(1), device=src_tokens.device)
                padding_mask = steps.unsqueeze(0) >= src_lengths.unsqueeze(1)
            else:
                padding_mask = src_tokens.eq(self.padding_idx)
            x = self.embed(src_tokens) + self.positions(src_tokens.size(1)).to(src_tokens.device)
            x = self.layers(x, src_key_padding_mask=padding_mask if padding_mask.any() else None)
            x = self.final_norm(x).masked_fill(padding_mask.unsqueeze(-1), 0.0)
            rep = x.sum(dim=1) / src_lengths.to(x.dtype).unsqueeze(-1)
            return self.classifier(rep), {"activations": [], "padding_mask": padding_mask}

        def max_positions(self):
            return self.max_input_positions

    register_model(_TRANSFORMER_LRA, dataclass=TransformerLRAConfig)(TransformerLRAModel)


# --------------------------------------------------------------------------- model sizing
def parameter_count(data_dir: str, task: str, cli: List[str]) -> int:
    """Parameters of the model fairseq-train would build from ``cli`` over ``data_dir``."""
    from seqboat_fairseq.testing import build_from_cli

    quiet_fairseq_logging()
    register_transformer_lra()
    model, _, _ = build_from_cli(data_dir, task, *cli)
    return count_parameters(model)


def solve_width(count, target: int, flag: str, lo: int = 8, hi: int = 16) -> int:
    """The size ``f`` of ``flag`` (an FFN size: the count is affine in it) whose ``count(f)`` is closest to
    ``target``. ``count(f)`` builds the model with ``flag f``."""
    c_lo, c_hi = count(lo), count(hi)
    slope = (c_hi - c_lo) / (hi - lo)
    if slope <= 0:
        raise ValueError(f"{flag} does not change the parameter count")
    return max(1, round(lo + (target - c_lo) / slope))


def param_ratio_ok(params: int, reference: int) -> bool:
    return abs(params - reference) <= PARAM_TOLERANCE * reference


# --------------------------------------------------------------------------- the runs
@dataclass
class Run:
    task: str
    model: str
    arch: str
    train_args: List[str]
    params: int = 0
    via_wrapper: bool = False   # transformer_lra: trained through this file's --fairseq-train wrapper


LM_SHAPE = ["--tokens-per-sample", "512", "--batch-size", "8"]
LM_RECIPE = ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--weight-decay", "0.01", "--clip-norm", "0.25",
             "--lr", "0.002", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "60", "--warmup-init-lr", "1e-4"]
LISTOPS_SHRINK = ["--encoder-layers", "2", "--encoder-embed-dim", "64", "--encoder-hidden-dim", "128", "--z-dim", "32",
                  "--n-dim", "16", "--chunk-size", "16", "--classifier-out-dim", "128", "--dropout", "0.1"]
LISTOPS_TASK = ["--task", "lra-text", "--input-type", "text", "--criterion", "lra_cross_entropy", "--sentence-avg",
                "--sen-rep-type", "mp"]
LISTOPS_RECIPE = ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--adam-eps", "1e-8", "--clip-norm", "1.0",
                  "--lr", "0.004", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "40", "--warmup-init-lr",
                  "1e-7", "--batch-size", "128", "--required-batch-size-multiple", "1"]
TRANSFORMER_LM = ["--arch", "transformer_lm", "--decoder-embed-dim", "64", "--decoder-input-dim", "64",
                  "--decoder-output-dim", "64", "--decoder-layers", "2",
                  "--decoder-attention-heads", "4", "--decoder-normalize-before", "--share-decoder-input-output-embed",
                  "--dropout", "0.0", "--attention-dropout", "0.0", "--activation-dropout", "0.0"]
# raw speech (bench/tradeoff.py): --task speech_commands, batch 32
SPEECH_TASK = ["--task", "speech_commands", "--criterion", "lra_cross_entropy", "--sentence-avg"]
SPEECH_RECIPE = ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--adam-eps", "1e-8", "--clip-norm", "1.0",
                 "--lr", "0.004", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "40", "--warmup-init-lr",
                 "1e-7", "--batch-size", "32", "--required-batch-size-multiple", "1"]
TRANSFORMER_LRA = ["--arch", _TRANSFORMER_LRA, "--encoder-embed-dim", "64", "--encoder-layers", "2",
                   "--encoder-attention-heads", "4", "--classifier-out-dim", "128", "--sentence-class-num", "10",
                   "--dropout", "0.1"]


def lm_runs(data: str, models: List[str]) -> List[Run]:
    lm = lambda *a: parameter_count(data, "language_modeling", [*LM_SHAPE, *a])  # noqa: E731
    runs = {
        "seqboat": Run("lm", "seqboat", "seqboat_lm_tiny", ["--arch", "seqboat_lm_tiny"]),
        "mega_chunk": Run("lm", "mega_chunk", "mega_chunk_lm_tiny", ["--arch", "mega_chunk_lm_tiny"]),
        "spade": Run("lm", "spade", "spade_lm_tiny", ["--arch", "spade_lm_tiny"]),
    }
    reference = lm("--arch", "seqboat_lm_tiny")
    if "transformer" in models:
        ffn = solve_width(lambda f: lm(*TRANSFORMER_LM, "--decoder-ffn-embed-dim", str(f)), reference,
                          "--decoder-ffn-embed-dim")
        runs["transformer"] = Run("lm", "transformer", "transformer_lm",
                                  [*TRANSFORMER_LM, "--decoder-ffn-embed-dim", str(ffn)])
    out = [runs[m] for m in models]
    for run in out:
        run.params = lm(*run.train_args)
    return out


def listops_runs(data: str, models: List[str]) -> List[Run]:
    lra = lambda *a: parameter_count(data, "lra-text", [*LISTOPS_TASK[2:], *a])  # noqa: E731
    seqboat = ["--arch", "seqboat_lra_listop", *LISTOPS_SHRINK, "--encoder-ffn-embed-dim", "-1"]
    runs = {
        "seqboat": Run("listops", "seqboat", "seqboat_lra_listop", seqboat),
        "mega_chunk": Run("listops", "mega_chunk", "mega_chunk_lra_listop",
                          ["--arch", "mega_chunk_lra_listop", *LISTOPS_SHRINK, "--encoder-ffn-embed-dim", "-1"]),
    }
    reference = lra(*seqboat)
    if "spade" in models:
        spade = ["--arch", "spade_lra_listop", *LISTOPS_SHRINK]
        ffn = solve_width(lambda f: lra(*spade, "--encoder-ffn-embed-dim", str(f)), reference, "--encoder-ffn-embed-dim")
        runs["spade"] = Run("listops", "spade", "spade_lra_listop", [*spade, "--encoder-ffn-embed-dim", str(ffn)])
    if "transformer" in models:
        ffn = solve_width(lambda f: lra(*TRANSFORMER_LRA, "--encoder-ffn-embed-dim", str(f)), reference,
                          "--encoder-ffn-embed-dim")
        runs["transformer"] = Run("listops", "transformer", _TRANSFORMER_LRA,
                                  [*TRANSFORMER_LRA, "--encoder-ffn-embed-dim", str(ffn)], via_wrapper=True)
    out = [runs[m] for m in models]
    for run in out:
        run.params = lra(*run.train_args)
    return out


class RunFailed(Exception):
    pass


def run_command(cmd: List[str], log_path: str, threads: int, timeout: float) -> str:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"timed out after {timeout:.0f} s: {' '.join(cmd[:4])} ...") from None
    out = proc.stdout + proc.stderr
    with open(log_path, "w") as f:
        f.write(out)
    if proc.returncode != 0:
        tail = " | ".join(out.strip().splitlines()[-3:])
        raise RunFailed(f"exit {proc.returncode} ({log_path}): {tail[-400:]}")
    return out


SAVE_DIR_MARKER = ".quality_race"  # in every checkpoint directory this script creates


def fresh_save_dir(save_dir: str) -> None:
    """An empty checkpoint directory for one run. One left by an earlier race must go: fairseq would
    resume from its checkpoint_last.pt, whose cumulative time stops training at once, and the old
    run's number would be reported as this one's. It is removed only if it carries this script's
    marker; anything else at that path is never touched (the run fails, naming it)."""
    if os.path.lexists(save_dir):
        if not os.path.isfile(os.path.join(save_dir, SAVE_DIR_MARKER)):
            raise RunFailed(f"{save_dir} exists but was not created by bench/quality_race.py (no "
                            f"{SAVE_DIR_MARKER}): it is never removed; choose another --work-dir or remove it yourself")
        print(f"# removing {save_dir} (left by an earlier run of this script)", flush=True)
        shutil.rmtree(save_dir)
    os.makedirs(save_dir)
    with open(os.path.join(save_dir, SAVE_DIR_MARKER), "w") as marker:
        marker.write("checkpoints of one bench/quality_race.py run; the next run in this work dir replaces them\n")


def task_arguments(run: Run) -> List[str]:
    """The task, criterion and recipe flags of a run's task (``lm``, ``listops``; bench/tradeoff.py adds
    ``speech``)."""
    if run.task == "lm":
        return ["--task", "language_modeling",
                "--criterion", "cross_entropy" if run.model == "transformer" else "seqboat_cross_entropy",
                *LM_SHAPE, *LM_RECIPE]
    if run.task == "listops":
        return [*LISTOPS_TASK, *LISTOPS_RECIPE]
    if run.task == "speech":
        return [*SPEECH_TASK, *SPEECH_RECIPE]
    raise ValueError(f"unknown task {run.task!r}")


def train(run: Run, data: str, save_dir: str, args) -> Dict:
    """Trains ``run`` for ``args.minutes`` of fairseq's cumulative training time."""
    task = task_arguments(run)
    entry = [os.path.abspath(__file__), "--fairseq-train"] if run.via_wrapper else ["-m", "fairseq_cli.train"]
    cmd = [sys.executable, *entry, data, "--user-dir", PLUGIN_DIR, *task, *run.train_args,
           "--stop-time-hours", repr(args.minutes / 60.0), "--max-epoch", "0", "--max-update", "0",
           "--disable-validation", "--save-dir", save_dir, "--no-epoch-checkpoints", "--save-interval", "1000000",
           "--log-format", "simple", "--log-interval", "50", "--cpu", "--num-workers", "0", "--seed", str(args.seed)]
    fresh_save_dir(save_dir)
    start = time.perf_counter()
    log = run_command(cmd, os.path.join(os.path.dirname(save_dir), "train.log"), args.threads, args.timeout)
    wall = time.perf_counter() - start
    if "Stopping training due to cumulative_training_time" not in log:
        raise RunFailed("training did not stop on the time limit (--stop-time-hours): not an equal-time run")
    updates = [int(u) for u in re.findall(r"num_updates (\d+)", log)]
    if not updates or updates[-1] <= 0:
        raise RunFailed("no update was made")
    checkpoint = os.path.join(save_dir, "checkpoint_last.pt")
    if not os.path.isfile(checkpoint):
        raise RunFailed(f"{checkpoint} was not written")
    return {"updates": updates[-1], "train_wall_s": round(wall, 1), "checkpoint": checkpoint}


def evaluate_lm(data: str, checkpoint: str, log_path: str, args) -> Dict:
    from seqboat_fairseq.bits_per_byte import BitsPerByteError, compute, split_token_count

    cmd = [sys.executable, "-m", "fairseq_cli.eval_lm", data, "--user-dir", PLUGIN_DIR, "--path", checkpoint,
           "--gen-subset", "test", "--tokens-per-sample", "512", "--context-window", "256", "--batch-size", "8",
           "--cpu", "--num-workers", "0"]
    log = run_command(cmd, log_path, args.threads, args.timeout)
    tokens = split_token_count(data, "test")
    try:  # a byte data-bin: one token per byte (a line break is </s>), so bits per token = per byte
        report = compute(log, data, "test", num_bytes=tokens)
    except BitsPerByteError as exc:
        raise RunFailed(f"eval-lm: {exc}") from None
    return {"metric": "test_bpc", "value": round(report.bits_per_byte, 4), "evaluated": report.tokens,
            "split_size": tokens}


def evaluate_listops(data: str, checkpoint: str, log_path: str, args) -> Dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--eval-listops", checkpoint, "--data", data]
    out = run_command(cmd, log_path, args.threads, args.timeout)
    line = next((x for x in out.splitlines() if x.startswith(EVAL_PREFIX)), None)
    if line is None:
        raise RunFailed(f"the evaluation printed no result ({log_path})")
    result = json.loads(line[len(EVAL_PREFIX):])
    if result["evaluated"] != result["split_size"]:
        raise RunFailed(f"evaluated {result['evaluated']} of the {result['split_size']} test examples")
    return {"metric": "test_acc", "value": round(100.0 * result["correct"] / result["evaluated"], 2),
            "evaluated": result["evaluated"], "split_size": result["split_size"]}


def eval_listops_worker(checkpoint: str, data: str) -> None:
    """Test accuracy with fairseq's own ``task.valid_step`` over every batch of the test split; prints the
    counts (correct, evaluated) and the split's size."""
    import torch
    from fairseq import checkpoint_utils, utils

    quiet_fairseq_logging()
    utils.import_user_module(argparse.Namespace(user_dir=PLUGIN_DIR))
    register_transformer_lra()
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides={"data": data})
    model = models[0].eval()
    criterion = task.build_criterion(cfg.criterion)
    task.load_dataset("test")
    dataset = task.dataset("test")
    iterator = task.get_batch_iterator(dataset=dataset, max_sentences=128, max_positions=task.max_positions(),
                                       ignore_invalid_inputs=False, required_batch_size_multiple=1, seed=1,
                                       num_workers=0).next_epoch_itr(shuffle=False)
    correct = evaluated = 0
    with torch.no_grad():
        for sample in iterator:
            _, _, logging_output = task.valid_step(sample, model, criterion)
            correct += int(logging_output["ncorrect"])
            evaluated += int(logging_output["nsentences"])
    print(EVAL_PREFIX + json.dumps({"correct": correct, "evaluated": evaluated, "split_size": len(dataset)}))


# --------------------------------------------------------------------------- data
def prepare_lm_data(root: str, num_bytes: int, threads: int, timeout: float) -> str:
    data = os.path.join(root, "data-bin")
    os.makedirs(root, exist_ok=True)
    run_command([sys.executable, "data_prep/enwik8.py", "--pydoc-demo", "--max-bytes", str(num_bytes),
                 "--destdir", data, "--force"], os.path.join(root, "prep.log"), threads, timeout)
    return data


def prepare_listops_data(root: str, sizes: Dict, seed: int, threads: int, timeout: float):
    from data_prep import listops_generate as lg

    raw, data = os.path.join(root, "listops-raw"), os.path.join(root, "data-bin")
    splits = lg.generate(raw, seed=seed, **sizes)
    run_command([sys.executable, "data_prep/lra.py", "listops", "--input-dir", raw, "--destdir", data,
                 "--workers", "1", "--force"], os.path.join(root, "prep.log"), threads, timeout)
    labels = [t for _, t in splits["test"]]
    majority = 100.0 * max(labels.count(c) for c in set(labels)) / len(labels)
    return data, majority


LISTOPS_SIZES = dict(num_train=10000, num_valid=200, num_test=1000, max_depth=3, max_args=5, min_length=10,
                     max_length=150)
LISTOPS_SIZES_QUICK = dict(LISTOPS_SIZES, num_train=1000, num_valid=50, num_test=200)


# --------------------------------------------------------------------------- driver
def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per model (fairseq's "
                   "cumulative training time, --stop-time-hours)")
    p.add_argument("--quick", action="store_true", help="smoke run: ~10 s of training per model, small data")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--work-dir", default="work/quality_race", help="data, checkpoints and logs go here")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every training/evaluation process")
    p.add_argument("--seed", type=int, default=1, help="training seed (and the ListOps generator's)")
    p.add_argument("--lm-bytes", type=int, default=400000, help="bytes of the demo corpus (examples/demo.sh: 400000)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per subprocess (default 3 x budget + 600)")
    # internal entry points (subprocesses)
    p.add_argument("--eval-listops", default=None, metavar="CHECKPOINT", help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--fairseq-train":  # fairseq_cli.train with transformer_lra registered
        from fairseq_cli import train as fairseq_train

        register_transformer_lra()
        sys.argv = [sys.argv[0], *argv[1:]]
        fairseq_train.cli_main()
        return 0
    args = get_parser().parse_args(argv)
    if args.eval_listops:
        eval_listops_worker(args.eval_listops, args.data)
        return 0
    if args.quick:
        args.minutes = 10.0 / 60.0
        args.lm_bytes = min(args.lm_bytes, 100000)
    args.timeout = args.timeout or 3 * 60 * args.minutes + 600
    tasks = [t for t in args.tasks.split(",") if t]
    models = [m for m in args.models.split(",") if m]
    for name, given, allowed in (("--tasks", tasks, TASKS), ("--models", models, MODELS)):
        if not given or any(x not in allowed for x in given):
            raise SystemExit(f"error: {name}: expected a subset of {','.join(allowed)}, got {','.join(given)}")
    if "seqboat" not in models:
        models = ["seqboat", *models]  # the reference of the parameter counts and of the race
    work = os.path.abspath(args.work_dir)
    rev = code_revision()
    print(f"# quality_race: {args.minutes:g} min of training per model (fairseq --stop-time-hours), one model at a "
          f"time, {args.threads} thread(s) per process, seed {args.seed}; tasks {tasks}; work dir {work}; "
          f"code {rev}; CPU: {cpu_model()} ({os.cpu_count()} cores)", flush=True)

    records, failures = [], []
    for task in tasks:
        root = os.path.join(work, task)
        majority = None
        try:
            if task == "lm":
                data = prepare_lm_data(root, args.lm_bytes, args.threads, args.timeout)
                runs = lm_runs(data, models)
            else:
                sizes = LISTOPS_SIZES_QUICK if args.quick else LISTOPS_SIZES
                data, majority = prepare_listops_data(root, sizes, args.seed, args.threads, args.timeout)
                runs = listops_runs(data, models)
        except RunFailed as exc:
            failures.append(f"{task}: data preparation failed: {exc}")
            print(f"FAILED {task} data: {exc}", flush=True)
            continue
        reference = next(r.params for r in runs if r.model == "seqboat")
        for run in runs:
            print(f"# {task} {run.model}: --arch {run.arch}, {run.params:,} parameters "
                  f"({100.0 * (run.params / reference - 1):+.1f} % vs seqboat)", flush=True)
        for run in runs:
            record = {"bench": "quality_race", "task": task, "model": run.model, "arch": run.arch,
                      "params": run.params, "params_vs_seqboat": round(run.params / reference, 4),
                      "minutes": args.minutes, "threads": args.threads, "seed": args.seed, "rev": rev,
                      "train_args": " ".join(run.train_args)}
            if majority is not None:
                record["majority_acc"] = round(majority, 2)
            run_dir = os.path.join(root, run.model)
            try:
                if not param_ratio_ok(run.params, reference):
                    raise RunFailed(f"{run.params:,} parameters, more than {PARAM_TOLERANCE:.0%} off seqboat's "
                                    f"{reference:,}: not an equal-parameter race")
                os.makedirs(run_dir, exist_ok=True)
                record.update(train(run, data, os.path.join(run_dir, "checkpoints"), args))
                evaluate = evaluate_lm if task == "lm" else evaluate_listops
                record.update(evaluate(data, record["checkpoint"], os.path.join(run_dir, "eval.log"), args))
            except RunFailed as exc:
                record["error"] = str(exc)
                failures.append(f"{task} {run.model}: {exc}")
            records.append(record)
            emit(record)

    rows = []
    for r in records:
        ok = "error" not in r
        rows.append([r["task"], r["model"], r["arch"], r["params"], r["params_vs_seqboat"],
                     r.get("updates") if ok else None, r.get("train_wall_s") if ok else None,
                     r.get("metric") if ok else None, r.get("value") if ok else None,
                     f"{r['evaluated']}/{r['split_size']}" if ok else None, r.get("majority_acc"),
                     "" if ok else "FAILED (no number)"])
    print()
    print(format_table(["task", "model", "arch", "params", "vs seqboat", "updates", "wall_s", "metric", "value",
                        "evaluated", "majority", "note"], rows,
                       title=f"Quality race: {args.minutes:g} min of training per model "
                             f"(test_bpc: lower is better; test_acc: %, higher is better)"))
    return exit_status_for_failures("quality_race", failures)


if __name__ == "__main__":
    sys.exit(main())
