"""Loading a SeqBoat checkpoint and one split of its task's data, with one-line errors."""

import os
from dataclasses import dataclass
from typing import Dict, Optional

import torch


class AnalysisError(RuntimeError):
    """A problem with the inputs (checkpoint, data, split) or an incomplete measurement:
    reported as one line without a traceback, exit status 1."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    task: object
    cfg: object
    kind: str  # "lra" or "lm"
    arch: str


def seqboat_kind(arch: str) -> Optional[str]:
    """``"lra"`` / ``"lm"`` for SeqBoat architectures (or model names), else None."""
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY

    from ..models.seqboat_lm import SeqBoatLanguageModel
    from ..models.seqboat_lra import SeqBoatLRAModel

    cls = ARCH_MODEL_REGISTRY.get(arch) or MODEL_REGISTRY.get(arch)
    if isinstance(cls, type) and issubclass(cls, SeqBoatLRAModel):
        return "lra"
    if isinstance(cls, type) and issubclass(cls, SeqBoatLanguageModel):
        return "lm"
    return None


def _checkpoint_arch(state: Dict) -> Optional[str]:
    cfg = state.get("cfg")
    if cfg is not None and cfg.get("model") is not None:
        return cfg["model"].get("_name") or cfg["model"].get("arch")
    args = state.get("args")
    return getattr(args, "arch", None) if args is not None else None


def _is_fairseq_state(state) -> bool:
    return isinstance(state, dict) and "model" in state and (state.get("cfg") is not None or
                                                              state.get("args") is not None)


def _is_plain_torch_file(path: str) -> bool:
    """Whether ``path`` loads with ``torch.load`` but is not laid out like a fairseq checkpoint
    (called only after fairseq's loader failed, to tell the two errors apart)."""
    try:
        state = torch.load(path, map_location="cpu")
    except Exception:
        return False
    return not _is_fairseq_state(state)


def load_seqboat_checkpoint(path: str, data: str, overrides: Optional[Dict] = None) -> LoadedModel:
    """Loads a fairseq checkpoint of a SeqBoat model, with its task set up on ``data``."""
    import seqboat_fairseq  # noqa: F401  (registers the models and tasks)
    from fairseq import checkpoint_utils

    if not os.path.isfile(path):
        raise AnalysisError(f"checkpoint not found: {path}")
    if not os.path.isdir(data):
        raise AnalysisError(f"data directory not found: {data}")
    arg_overrides = {"data": data, **(overrides or {})}
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path, arg_overrides)
    except Exception as e:  # not a torch file, truncated, not fairseq's layout, unknown pickled objects
        if _is_plain_torch_file(path):
            raise AnalysisError(f"{path} is not a fairseq checkpoint (it needs 'model' and 'cfg' or 'args' "
                                f"entries)") from e
        raise AnalysisError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not _is_fairseq_state(state):
        raise AnalysisError(f"{path} is not a fairseq checkpoint (it needs 'model' and 'cfg' or 'args' entries)")
    arch = _checkpoint_arch(state)
    kind = seqboat_kind(arch) if arch else None
    if kind is None:
        raise AnalysisError(
            f"{path} is not a SeqBoat checkpoint: its architecture is {arch!r}; expected a seqboat_lra* / "
            f"slag_lra_* classifier or a seqboat_lm* / slag_lm* language model")
    try:
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides, state=state)
    except FileNotFoundError as e:
        raise AnalysisError(f"cannot set up the checkpoint's task on {data}: {e}") from e
    return LoadedModel(models[0], task, cfg, kind, arch)


def load_split(task, split: str):
    """Loads ``split`` into ``task`` and returns the dataset."""
    from ..models.layer_options import task_name

    try:
        task.load_dataset(split)
    except FileNotFoundError as e:
        raise AnalysisError(f"split {split!r} not found: {e}") from e
    except ValueError as e:  # e.g. another task's data: the task's loader names the file and what it expected
        raise AnalysisError(f"cannot load split {split!r} as the checkpoint's task (--task {task_name(task)}) "
                            f"reads it: {e}") from e
    dataset = task.dataset(split)
    if len(dataset) == 0:
        raise AnalysisError(f"split {split!r} is empty")
    return dataset
