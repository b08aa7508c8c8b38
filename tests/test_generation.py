"""``--task multiline_language_modeling``: generation continues across ``</s>`` (a newline in
byte-level corpora) up to the requested length, with the model's own scores (in process, fast)."""

import argparse

import pytest
import torch

from conftest import PLUGIN_DIR, assert_close, write_byte_dictionary
from seqboat_fairseq.encoders.enwik8_bytes import Enwik8Bytes

LENGTH = 40  # --max-len-b: tokens of text in all, prompt included


@pytest.fixture(scope="module")
def multiline(tmp_path_factory):
    """A random tiny SeqBoat LM under the multiline task whose every prediction gives ``</s>`` half
    the probability mass. (Under --task language_modeling every text below would end at the
    prompt's own line break: 3 tokens.)"""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    data = write_byte_dictionary(tmp_path_factory.mktemp("gen") / "data-bin")
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data, "--user-dir", PLUGIN_DIR, "--task", "multiline_language_modeling",
                                                "--arch", "seqboat_lm_tiny", "--tokens-per-sample", "64"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model).eval()
    eos = task.target_dictionary.eos()
    projection = model.decoder.output_layer

    def half_newlines(features, **kwargs):  # p(</s>) = 1/2 at every position
        logits = projection(features)
        others = torch.cat([logits[..., :eos], logits[..., eos + 1:]], dim=-1)
        return torch.cat([logits[..., :eos], others.logsumexp(-1, keepdim=True), logits[..., eos + 1:]], dim=-1)

    model.decoder.output_layer = half_newlines
    return task, model


def generate(task, model, prompt, **options):
    gen_args = argparse.Namespace(**{"max_len_b": LENGTH, **options})
    generator = task.build_generator([model], gen_args)
    dataset = task.build_dataset_for_inference([prompt], [len(prompt)])
    batch = dataset.collater([dataset[0]])
    with torch.no_grad():
        return task.inference_step(generator, [model], batch)[0]


def teacher_forced_log_probs(task, model, tokens):
    """The model's parallel (non-incremental) log-probability of each token given ``</s>`` + the
    tokens before it: what every positional score must equal."""
    inputs = torch.cat([tokens.new_tensor([task.target_dictionary.eos()]), tokens[:-1]]).unsqueeze(0)
    with torch.no_grad():
        logits, _ = model(inputs)
    return torch.log_softmax(logits.float(), -1)[0].gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("options", [dict(beam=1), dict(beam=4, nbest=4), dict(beam=1, sampling=True, sampling_topk=10),
                                     dict(beam=1, sampling=True, sampling_topp=0.9)],
                         ids=["greedy", "beam4", "topk", "topp"])
def test_generation_continues_past_line_ends_to_the_requested_length(multiline, options):
    task, model = multiline
    dictionary = task.target_dictionary
    eos = dictionary.eos()
    # the prompt "Hi\nOk" spans a line break: 72 105 </s> 79 107
    prompt = torch.tensor([dictionary.index(str(b)) for b in b"Hi"] + [eos]
                          + [dictionary.index(str(b)) for b in b"Ok"])
    torch.manual_seed(1)
    hypos = generate(task, model, prompt, **options)
    assert len(hypos) == options["beam"]
    for hypo in hypos:
        tokens = hypo["tokens"]
        assert len(tokens) == LENGTH, "every text runs to --max-len-b tokens"
        assert torch.equal(tokens[:len(prompt)], prompt)
        assert int(tokens[len(prompt):].eq(eos).sum()) > 0, "the model's own </s> did not end the text"
        if options.get("sampling"):
            assert tokens[len(prompt):].ne(eos).any(), "text after the sampled line ends"
        assert_close("positional scores", hypo["positional_scores"], teacher_forced_log_probs(task, model, tokens),
                     atol=1e-4)
        assert_close("score", hypo["score"].view(1), hypo["positional_scores"].mean().view(1), atol=1e-5)
        text = Enwik8Bytes.decode(dictionary.string(tokens))
        assert text.startswith("Hi\nOk")
        assert text.count("\n") == int(tokens.eq(eos).sum())
    if options["beam"] > 1:
        scores = [float(h["score"]) for h in hypos]
        assert scores == sorted(scores, reverse=True)


def test_length_below_one_is_refused_naming_the_flag(multiline):
    task, model = multiline
    with pytest.raises(ValueError, match=r"--max-len-b 0 ask for 0 tokens: expected a length of at least 1"):
        generate(task, model, torch.tensor([task.target_dictionary.index("65")]), beam=1, max_len_b=0, min_len=0)


def test_prompt_as_long_as_the_length_is_refused_naming_the_flag(multiline):
    """A prompt of --max-len-b tokens or more would come back cut, with nothing generated."""
    task, model = multiline
    prompt = torch.tensor([task.target_dictionary.index("65")] * LENGTH)
    with pytest.raises(ValueError, match=rf"--max-len-b {LENGTH} ask for {LENGTH} tokens in all, prompt included, but "
                                         rf"a prompt has {LENGTH}: expected a length of more than {LENGTH}"):
        generate(task, model, prompt, beam=1)


def test_hub_task_override_names_a_registered_task():
    from seqboat_fairseq.generation import hub_task_override

    assert hub_task_override({"task": "multiline_language_modeling", "bpe": "enwik8_bytes"}) == {
        "task": {"_name": "multiline_language_modeling"}, "bpe": "enwik8_bytes"}
    with pytest.raises(ValueError, match=r"from_pretrained\(task='multiline_lm'\): expected the name of a registered"):
        hub_task_override({"task": "multiline_lm"})
