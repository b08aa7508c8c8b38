"""Helpers for tests and benchmarks (as ``torch.testing``): build a model exactly as
``fairseq-train`` would from command-line arguments, over the small dictionaries a data
directory needs. Not imported by the plugin itself."""

import os
from typing import Sequence, Tuple

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
LISTOPS_SYMBOLS = ("[MAX", "[MIN", "[MED", "[SM", "]", *map(str, range(10)))


def write_byte_dictionary(directory, symbols: int = 256) -> str:
    """A fairseq dict.txt over byte tokens "0".."255" (what data_prep/enwik8.py produces)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "dict.txt"), "w") as f:
        for i in range(symbols):
            f.write(f"{i} {1000 - i}\n")
    return str(directory)


def write_lra_dictionaries(directory, symbols: Sequence[str] = LISTOPS_SYMBOLS,
                           labels: Sequence[str] = tuple(map(str, range(10))), two_documents: bool = False) -> str:
    """The dict.txt files an lra-text data directory needs (``src-bin``, ``label-bin``)."""
    for sub, entries in (("src-bin", symbols), ("label-bin", labels)):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
        with open(os.path.join(directory, sub, "dict.txt"), "w") as f:
            f.writelines(f"{s} {1000 - i}\n" for i, s in enumerate(entries))
    if two_documents:
        os.makedirs(os.path.join(directory, "src1-bin"), exist_ok=True)
    return str(directory)


def build_from_cli(data_dir, task: str, *cli_args: str) -> Tuple[object, object, object]:
    """Builds ``(model, task, cfg)`` as ``fairseq-train DATA --user-dir <plugin> --task TASK ARGS``."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [str(data_dir), "--user-dir", PLUGIN_DIR, "--task", task, *map(str, cli_args)])
    cfg = convert_namespace_to_omegaconf(args)
    task_obj = tasks.setup_task(cfg.task)
    return task_obj.build_model(cfg.model), task_obj, cfg
