"""What a user sees: fairseq's output conventions, minus the noise the plugin brings along.

Importing this module (``seqboat_fairseq/__init__.py`` does) installs :func:`install`:

* **Hydra's deprecation warnings.** fairseq 0.12 turns every command line into its config through
  ``hydra.experimental.initialize/compose`` (``convert_namespace_to_omegaconf``), which Hydra >= 1.1
  answers with six deprecation warnings (about 20 lines on stderr) before anything useful:
  ``experimental ... is no longer experimental`` (twice), ``version_base parameter is not
  specified``, the ``# @package _group_`` header, ``validated against ConfigStore schema`` and
  ``The strict flag``. None of them is actionable by a user of the tools. Each is ignored by a
  warnings filter that matches that message only (:data:`HYDRA_DEPRECATIONS`); every other warning,
  Hydra's included, is shown as before.
* **Hydra's debug lines.** Importing fairseq calls ``logging.basicConfig(level=DEBUG)`` (in
  ``fairseq/models/wav2vec/wav2vec2_classification.py``), so Hydra's
  ``DEBUG:hydra.core.utils:Setting JobRuntime...`` lines reach stderr; the ``hydra`` logger is set
  to INFO unless ``LOGLEVEL=DEBUG``.

* **One line per refusal.** When a ``ValueError`` or ``OSError`` (file not found, permission
  denied, ...) that the plugin's own code raised, or a :class:`~seqboat_fairseq.checkpoint_compat.
  CheckpointError`, reaches the top of a command-line tool (or of a hub script) uncaught, only
  ``error: <message>`` is printed to stderr and the process exits with status 1: every such message
  names the flag or file and what was expected, so fairseq's ~27-line traceback adds nothing.
  Every other exception (a bug, fairseq's own failures) keeps Python's traceback, and so does
  everything with ``LOGLEVEL=DEBUG``. :func:`is_refusal` decides.

For the hub (``SeqBoatLanguageModel.from_pretrained``), :func:`hub_loading` lowers, for the duration
of the load only, the loggers that echo the 7 KB config dict (``fairseq.models.fairseq_model``) and
the archive paths (``fairseq.file_utils``) to WARNING, and :func:`log_model_summary` logs one line
instead: architecture, parameters, layers, width, working memory w and the activation rate saved
in the checkpoint's training metrics (when there is one). fairseq's command-line tools keep their
own conventions (their ``cfg`` line, ``num. model params``, ...).
"""

import contextlib
import logging
import os
import sys
import warnings
from typing import Iterable, Iterator, Optional, Sequence, Tuple

logger = logging.getLogger("seqboat_fairseq")

# message regexes (warnings.filterwarnings matches them at the start of the message, ignoring case)
HYDRA_DEPRECATIONS: Tuple[str, ...] = (
    r"hydra\.experimental\.(initialize|compose)\(\) is no longer experimental",
    r"\s*The version_base parameter is not specified",
    r"In '[^']*': Usage of deprecated keyword in package header '# @package _group_'",
    r"\s*'[^']*' is validated against ConfigStore schema with the same name",
    r"\s*The strict flag in the compose API is deprecated",
    # fairseq's hydra_train relies on Hydra 1.1's default (run in hydra.run.dir); nothing to act on
    r"Future Hydra versions will no longer change working directory at job runtime by default",
)

# loggers that print the config dict / archive paths during fairseq's hub loading
HUB_NOISE_LOGGERS: Tuple[str, ...] = ("fairseq.models.fairseq_model", "fairseq.file_utils")

# the training metrics fairseq saves in ``extra_state["metrics"]``, most relevant first
_METRIC_AGGREGATORS = ("valid", "train", "default")


def silence_hydra_deprecations() -> None:
    """Ignores exactly the Hydra deprecation warnings of :data:`HYDRA_DEPRECATIONS` (idempotent:
    ``warnings.filterwarnings`` replaces an identical filter)."""
    for message in HYDRA_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


# --------------------------------------------------------------------------- one-line errors
PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

# what the plugin raises for bad input (options, files, lengths); anything else is a bug
REFUSAL_TYPES = (ValueError, OSError)


def _raised_in_plugin(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback (where it was raised) is plugin code."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(PLUGIN_DIR)


def is_refusal(error: BaseException) -> bool:
    """Whether ``error`` is a refusal written for the user (printed as one ``error:`` line): a
    CheckpointError anywhere, or a ValueError / OSError raised by the plugin's own code."""
    from .checkpoint_compat import CheckpointError

    if isinstance(error, CheckpointError):
        return True
    return isinstance(error, REFUSAL_TYPES) and _raised_in_plugin(error)


def refusal_line(error: BaseException) -> str:
    """``error: <message>`` on one line."""
    return "error: " + " ".join(str(error).split())


def _one_line_excepthook(previous):
    def hook(kind, error, traceback):
        if os.environ.get("LOGLEVEL", "").upper() != "DEBUG" and is_refusal(error):
            print(refusal_line(error), file=sys.stderr, flush=True)
        else:
            previous(kind, error, traceback)

    hook._seqboat_one_line_errors = True
    return hook


def install_excepthook() -> None:
    """Wraps ``sys.excepthook`` once (idempotent)."""
    if not getattr(sys.excepthook, "_seqboat_one_line_errors", False):
        sys.excepthook = _one_line_excepthook(sys.excepthook)


def install() -> None:
    """Runs at import: the Hydra deprecation filters, the ``hydra`` logger at INFO (unless
    ``LOGLEVEL=DEBUG`` or someone set its level already) and the one-line excepthook."""
    from .patches import enabled

    if enabled("excepthook"):
        install_excepthook()
    if not enabled("hydra_quiet"):
        return
    silence_hydra_deprecations()
    if os.environ.get("LOGLEVEL", "").upper() != "DEBUG":
        hydra = logging.getLogger("hydra")
        if hydra.level == logging.NOTSET:
            hydra.setLevel(logging.INFO)


@contextlib.contextmanager
def quiet_loggers(names: Iterable[str], level: int = logging.WARNING) -> Iterator[None]:
    """Raises the threshold of the loggers ``names`` to ``level`` inside the block (never lowers
    it), then restores each one's own level."""
    saved = []
    for name in names:
        log = logging.getLogger(name)
        saved.append((log, log.level))
        if log.getEffectiveLevel() < level:
            log.setLevel(level)
    try:
        yield
    finally:
        for log, old in saved:
            log.setLevel(old)


@contextlib.contextmanager
def ignore_warnings(*messages: str, category=UserWarning) -> Iterator[None]:
    """Ignores the warnings whose message starts with one of the regexes ``messages`` inside the block."""
    with warnings.catch_warnings():
        for message in messages:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def hub_loading():
    """The block around fairseq's ``from_pretrained``: no config dump, no archive paths."""
    return quiet_loggers(HUB_NOISE_LOGGERS)


# --------------------------------------------------------------------------- one-line summary
def saved_activation_rate(path: str) -> Optional[Tuple[float, str]]:
    """``(act_rate, aggregator)`` from the metrics fairseq-train saved in checkpoint ``path``
    (``extra_state["metrics"]``: token-weighted mean over the layers, as logged), or None.

    The file is memory-mapped (``torch.load(mmap=True)``, the safe loader): the weights are not
    read. Any failure (an older file format, no metrics, a path that is not a file) gives None."""
    import torch

    if not os.path.isfile(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", mmap=True)
    except Exception:
        return None
    if not isinstance(state, dict) or not isinstance(state.get("extra_state"), dict):
        return None
    metrics = state["extra_state"].get("metrics") or {}
    for aggregator in _METRIC_AGGREGATORS:
        for entry in metrics.get(aggregator) or []:
            try:
                _, name, _, meter = entry
                if name == "act_rate" and float(meter["count"]) > 0:
                    return float(meter["sum"]) / float(meter["count"]), aggregator
            except (TypeError, ValueError, KeyError):
                continue
    return None


def model_summary(model, model_cfg, rate: Optional[Tuple[float, str]] = None, ensemble: int = 1) -> str:
    """``seqboat_lm_tiny: 73,926 parameters (0.07M), 2 layers, D=64, w=32, activation rate 32.6% (train metrics
    saved in the checkpoint)``."""

    def get(*names):
        for name in names:
            value = getattr(model_cfg, name, None)
            if value is not None:
                return value
        return None

    arch = get("_name", "arch") or type(model).__name__
    params = sum(p.numel() for p in model.parameters())
    parts = [f"{params:,} parameters ({params / 1e6:.2f}M)"]
    layers, dim = get("decoder_layers", "encoder_layers"), get("decoder_embed_dim", "encoder_embed_dim")
    if layers is not None:
        parts.append(f"{layers} layers")
    if dim is not None:
        parts.append(f"D={dim}")
    window = get("decoder_chunk_size", "chunk_size")
    if window is not None:
        parts.append("w=full (SeqBoat-full)" if int(window) < 0 else f"w={window}")
    if get("always_act"):
        parts.append("always active (no router)")
    elif rate is not None:
        parts.append(f"activation rate {100 * rate[0]:.1f}% ({rate[1]} metrics saved in the checkpoint)")
    else:
        parts.append("activation rate unknown")
    prefix = f"{arch}" + (f" (ensemble of {ensemble}, first shown)" if ensemble > 1 else "")
    return f"{prefix}: {', '.join(parts)}"


def log_model_summary(hub, model_dir: str, checkpoint_files: str) -> str:
    """Logs (INFO, logger ``seqboat_fairseq``) and returns :func:`model_summary` of a hub
    interface's first model; the rate comes from the first of the ``os.pathsep``-separated
    ``checkpoint_files`` under ``model_dir`` (a local directory; None for a remote archive)."""
    models: Sequence = getattr(hub, "models", [])
    first = checkpoint_files.split(os.pathsep)[0]
    rate = saved_activation_rate(os.path.join(model_dir, first)) if isinstance(model_dir, str) else None
    line = model_summary(models[0], hub.cfg.model, rate, ensemble=len(models))
    logger.info(line)
    return line


install()
