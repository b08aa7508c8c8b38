"""End to end through fairseq's own command-line tools, on CPU, on a small real-text corpus:
data prep -> fairseq-train -> fairseq-eval-lm -> resume from checkpoint -> generation."""

import os
import re
import subprocess
import sys

import pytest
import torch

import seqboat_fairseq  # noqa: F401  (registers the model for in-process checkpoint loading)
from conftest import PLUGIN_DIR, REPO_ROOT, assert_close

pytestmark = pytest.mark.slow

TINY = ["--user-dir", PLUGIN_DIR, "--task", "language_modeling", "--arch", "seqboat_lm_tiny"]
TRAIN_CRITERION = ["--criterion", "seqboat_cross_entropy"]  # cross_entropy + activation rates


def run(module, *args, stdin=None):
    """Runs ``python -m <module> args`` (fairseq's console scripts), returns stdout+stderr."""
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO_ROOT, input=stdin,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{module} failed ({proc.returncode}):\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = root / "data-bin"
    run_script = [sys.executable, os.path.join(REPO_ROOT, "data_prep", "enwik8.py"),
                  "--pydoc-demo", "--max-bytes", "120000", "--destdir", str(data)]
    subprocess.run(run_script, check=True, capture_output=True, timeout=300)
    save = root / "checkpoints"
    train_args = [data, *TINY, *TRAIN_CRITERION, "--tokens-per-sample", "128", "--batch-size", "4", "--optimizer", "adam",
                  "--lr", "3e-3", "--log-format", "simple", "--log-interval", "5", "--save-dir", save,
                  "--no-epoch-checkpoints", "--cpu", "--num-workers", "0", "--seed", "1",
                  "--validate-interval-updates", "20", "--tensorboard-logdir", root / "tb"]
    log = run("fairseq_cli.train", *train_args, "--max-update", "20")
    return {"root": root, "data": data, "save": save, "log": log, "train_args": train_args}


def test_training_logs_loss_and_per_layer_activation_rates(trained):
    log = trained["log"]
    # loss first, then the rates (summed counts, so every worker's tokens count)
    assert re.search(r"train_inner \| epoch [\d:/ ]+ loss=[\d.]+, .*act_rate=[\d.]+, act_rate_l0=[\d.]+, act_rate_l1=[\d.]+",
                     log), log[-2000:]
    assert re.search(r"valid on 'valid' subset \| loss [\d.]+ \| .*\| act_rate [\d.]+ \| act_rate_l0 [\d.]+", log)
    events = [os.path.join(d, f) for d, _, fs in os.walk(trained["root"] / "tb") for f in fs]
    assert any(b"act_rate_l1" in open(e, "rb").read() for e in events), "tensorboard has the rates"


def test_eval_lm_reports_bits_per_character(trained):
    out = run("fairseq_cli.eval_lm", trained["data"], "--user-dir", PLUGIN_DIR, "--path",
              trained["save"] / "checkpoint_best.pt", "--gen-subset", "test", "--tokens-per-sample", "128",
              "--context-window", "64", "--batch-size", "4", "--cpu")
    bpc = float(re.search(r"Loss \(base 2\): ([\d.]+)", out).group(1))
    assert 1.0 < bpc < 8.0  # a barely trained byte model: better than uniform (8 bits) already


def test_resume_from_checkpoint_last(trained):
    log = run("fairseq_cli.train", *trained["train_args"], "--max-update", "25")
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 20 updates\)", log), log[-3000:]
    assert "num_updates=25" in log or "num_updates 25" in log


def test_interactive_generation_greedy_beam_and_sampling(trained):
    ckpt = trained["save"] / "checkpoint_best.pt"
    common = [trained["data"], "--user-dir", PLUGIN_DIR, "--task", "language_modeling", "--path", ckpt,
              "--bpe", "enwik8_bytes", "--max-len-b", "30", "--cpu"]
    for extra in (["--beam", "1"], ["--beam", "4", "--nbest", "2"],
                  ["--beam", "1", "--sampling", "--sampling-topk", "10", "--seed", "3"],
                  ["--beam", "1", "--sampling", "--sampling-topp", "0.9", "--seed", "3"]):
        out = run("fairseq_cli.interactive", *common, *extra, stdin="The function\nA\n")
        hyps = re.findall(r"^D-(\d+)\t(\S+)\t(.*)$", out, flags=re.M)
        assert {h[0] for h in hyps} == {"0", "1"}, out[-2000:]
        assert all(h[2].startswith(("The function", "A")) for h in hyps)
        assert all(float(h[1]) < 0 for h in hyps)


def test_hub_interface_sample_and_score(trained):
    from seqboat_fairseq.models.seqboat_lm import SeqBoatLanguageModel

    lm = SeqBoatLanguageModel.from_pretrained(str(trained["save"]), "checkpoint_best.pt",
                                              data_name_or_path=str(trained["data"]), bpe="enwik8_bytes")
    lm.eval()
    text = lm.sample("The ", beam=1, sampling=True, sampling_topk=5, max_len_b=20)
    assert isinstance(text, str) and text.startswith("The")
    scored = lm.score("The function")
    text_tokens = lm.encode("The function")[:-1]  # the 12 bytes (encode appends </s>)
    assert scored["positional_scores"].shape == text_tokens.shape
    # the hub scores byte i given </s> + bytes < i: the model's parallel log-probs
    inputs = torch.cat([text_tokens.new_tensor([lm.task.dictionary.eos()]), text_tokens[:-1]])
    with torch.no_grad():
        logits, _ = lm.models[0](inputs.unsqueeze(0))
    logp = torch.log_softmax(logits.float(), -1)[0].gather(-1, text_tokens.unsqueeze(-1)).squeeze(-1)
    assert_close("hub score", scored["positional_scores"], logp, atol=1e-4)


def test_eval_lm_context_window_bpc_equals_incremental_scoring(trained):
    """fairseq-eval-lm --context-window scores block i (b = tokens_per_sample - context new
    tokens) from one parallel pass over [up to `context` previous tokens; block]. Scoring the
    same stream incrementally (prefill the context, then one token at a time through the
    decoding state) must give the same bits per character."""
    from fairseq import checkpoint_utils
    from fairseq.data import data_utils

    tps, context = 128, 48
    out = run("fairseq_cli.eval_lm", trained["data"], "--user-dir", PLUGIN_DIR, "--path",
              trained["save"] / "checkpoint_best.pt", "--gen-subset", "valid", "--tokens-per-sample", tps,
              "--context-window", context, "--batch-size", "4", "--cpu")
    cli_bits = float(re.search(r"Loss \(base 2\): ([\d.]+)", out).group(1))

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(trained["save"] / "checkpoint_best.pt")], arg_overrides={"data": str(trained["data"])})
    model = models[0].eval()
    dataset = data_utils.load_indexed_dataset(str(trained["data"] / "valid"), task.dictionary)
    stream = torch.cat([dataset[i] for i in range(len(dataset))])  # every line ends with </s>
    inputs = torch.cat([stream.new_tensor([task.dictionary.eos()]), stream[:-1]])  # predict stream[t]
    block = tps - context
    total_nll = 0.0
    with torch.no_grad():
        for start in range(0, len(stream), block):
            end = min(start + block, len(stream))
            first = max(0, start - context)
            state = {}
            logits, _ = model(inputs[first:start + 1].unsqueeze(0), incremental_state=state)  # prefill
            step_logits = [logits[:, -1:]]
            for t in range(start + 1, end):
                logits, _ = model(inputs[first:t + 1].unsqueeze(0), incremental_state=state)
                step_logits.append(logits)
            logp = torch.log_softmax(torch.cat(step_logits, dim=1)[0].float(), dim=-1)
            total_nll -= logp.gather(-1, stream[start:end].unsqueeze(-1)).sum().item()
    incremental_bits = total_nll / len(stream) / torch.log(torch.tensor(2.0)).item()
    assert incremental_bits == pytest.approx(cli_bits, abs=1e-4)  # eval-lm prints 4 decimals


@pytest.mark.parametrize("extra", [["--beam", "1"], ["--beam", "1", "--sampling", "--sampling-topk", "5"]],
                         ids=["greedy", "sampling"])
def test_fairseq_generate_continues_test_blocks(trained, extra):
    """fairseq-generate on language_modeling runs over the test blocks. (Under this task a block's
    hypothesis ends at the block's first </s>, and beam > 1 trips fairseq's own `step < max_len`
    assertion, stock transformer_lm included, when some blocks of a batch start with </s>:
    --task multiline_language_modeling below does both.)"""
    out = run("fairseq_cli.generate", trained["data"], "--user-dir", PLUGIN_DIR, "--task", "language_modeling",
              "--path", trained["save"] / "checkpoint_best.pt", "--gen-subset", "test", "--tokens-per-sample", 32,
              "--batch-size", 8, "--max-len-b", 48, "--bpe", "enwik8_bytes", "--cpu",
              "--num-shards", 10, "--shard-id", 0, *extra)  # a tenth of the test blocks
    hyps = re.findall(r"^H-\d+\t(\S+)\t", out, flags=re.M)
    assert len(hyps) > 10 and all(float(h) < 0 for h in hyps)


def hypotheses(out):
    """(id, score, tokens, decoded text) of every hypothesis of fairseq-interactive/-generate
    output; a decoded text with newlines spans several lines (up to its P- line)."""
    found = re.findall(r"^H-(\d+)\t(\S+)\t([^\n]*)\nD-\1\t\S+\t(.*?)\nP-\1\t", out, flags=re.M | re.S)
    return [(int(i), float(score), tokens.split(), text) for i, score, tokens, text in found]


def test_interactive_multiline_generation_runs_to_max_len_b_across_lines(trained):
    """--task multiline_language_modeling: </s> is a line break, every text has --max-len-b bytes
    (prompt included), the D- text shows "\n" for each </s>; sampling and beam search."""
    common = [trained["data"], "--user-dir", PLUGIN_DIR, "--task", "multiline_language_modeling", "--path",
              trained["save"] / "checkpoint_best.pt", "--bpe", "enwik8_bytes", "--max-len-b", 64, "--cpu"]
    prompts = ["The function", "A", "Help on", "def", "class", "Return the"]  # interactive strips each line
    line_breaks = 0
    for extra, count, nbest in ((["--beam", "1", "--sampling", "--seed", "3"], 6, 1),
                                (["--beam", "4", "--nbest", "2"], 2, 2)):
        out = run("fairseq_cli.interactive", *common, *extra, stdin="".join(p + "\n" for p in prompts[:count]))
        hyps = hypotheses(out)
        assert sorted(h[0] for h in hyps) == sorted(list(range(count)) * nbest), out[-3000:]
        for i, score, tokens, text in hyps:
            assert len(tokens) == 64 and score < 0
            assert text.startswith(prompts[i])
            assert text.count("\n") == tokens.count("</s>")
            line_breaks += tokens.count("</s>")
    assert line_breaks > 0, "no text crossed a line end"  # the sampled ones have ~5 in all


def test_fairseq_generate_beam_search_multiline(trained):
    """fairseq-generate --beam 4 on the language-modeling test blocks (their prefixes contain
    </s>): every hypothesis continues its block to --max-len-b tokens."""
    out = run("fairseq_cli.generate", trained["data"], "--user-dir", PLUGIN_DIR, "--task", "multiline_language_modeling",
              "--path", trained["save"] / "checkpoint_best.pt", "--gen-subset", "test", "--tokens-per-sample", 32,
              "--batch-size", 8, "--max-len-b", 48, "--cpu", "--num-shards", 10, "--shard-id", 0,
              "--beam", 4, "--nbest", 2)
    sources = dict(re.findall(r"^S-(\d+)\t(.*)$", out, flags=re.M))
    hyps = re.findall(r"^H-(\d+)\t(\S+)\t(.*)$", out, flags=re.M)
    assert len(sources) > 10 and len(hyps) == 2 * len(sources), out[-3000:]
    for i, score, tokens in hyps:
        source = sources[i].split()
        # the prefix is the block, less its leading </s> when every block of the batch has one
        prefix = source[1:] if source[0] == "</s>" and not tokens.startswith("</s>") else source
        assert len(tokens.split()) == 48 and tokens.split()[:len(prefix)] == prefix and float(score) < 0
    assert sum("</s>" in tokens.split()[1:] for _, _, tokens in hyps) > len(hyps) // 2  # most cross a line end


def test_hub_sample_multiline(trained):
    from seqboat_fairseq.models.seqboat_lm import SeqBoatLanguageModel

    lm = SeqBoatLanguageModel.from_pretrained(str(trained["save"]), "checkpoint_best.pt",
                                              data_name_or_path=str(trained["data"]), bpe="enwik8_bytes",
                                              task="multiline_language_modeling")
    lm.eval()
    eos = lm.task.dictionary.eos()
    torch.manual_seed(3)
    prompts = ["The ", "A", "def "]
    texts = lm.sample(prompts, beam=1, sampling=True, max_len_b=80)
    assert [t[:len(p)] for t, p in zip(texts, prompts)] == prompts
    assert any("\n" in t[1:] for t in texts), texts
    hypos = lm.generate([lm.encode(p)[:-1] for p in prompts], beam=2, sampling=True, max_len_b=80)
    for hypo in (h for hs in hypos for h in hs):
        tokens = hypo["tokens"]
        assert len(tokens) == 80
        assert lm.decode(tokens).count("\n") == int(tokens.eq(eos).sum())
        assert_close("score", hypo["score"].view(1), hypo["positional_scores"].mean().view(1), atol=1e-5)
    with pytest.raises(ValueError, match=r"task='multiline_lm'\): expected the name of a registered fairseq task"):
        SeqBoatLanguageModel.from_pretrained(str(trained["save"]), "checkpoint_best.pt",
                                             data_name_or_path=str(trained["data"]), task="multiline_lm")
