"""``fairseq-eval-lm``'s block flags, refused before anything is loaded when fairseq would fail
on them with its own traceback.

fairseq-eval-lm scores blocks of ``--tokens-per-sample`` minus ``--context-window`` new tokens,
each after up to ``--context-window`` tokens of context, in batches of at most ``--max-tokens``
(36,000 when unset). fairseq itself fails deep inside its data pipeline on

* ``--context-window`` >= ``--tokens-per-sample`` (blocks of 0 tokens: ``ZeroDivisionError``;
  fewer than 0: ``negative dimensions are not allowed``);
* blocks longer than ``--max-tokens`` (``AssertionError`` in ``batch_by_size_vec``).

The plugin is a ``--user-dir``, imported by ``fairseq_cli.eval_lm.main`` before it sets up the
task: :func:`fairseq.tasks.setup_task` is wrapped, and when its caller is eval-lm's ``main`` the
wrapper checks that call's config (``cfg``) first. Every other caller is passed through.
"""

import functools
import os
import sys
from typing import Optional

from fairseq import tasks

from .patches import enabled

EVAL_LM_FILE = os.path.join("fairseq_cli", "eval_lm.py")  # also run as ``python -m fairseq_cli.eval_lm``
DEFAULT_MAX_TOKENS = 36000  # fairseq_cli/eval_lm.py: cfg.dataset.max_tokens or 36000


def eval_lm_problem(tokens_per_sample: int, context_window: int, max_tokens: Optional[int]) -> Optional[str]:
    """What is wrong with fairseq-eval-lm's ``--tokens-per-sample`` / ``--context-window`` /
    ``--max-tokens`` (as the user typed them), or None."""
    if context_window < 0:
        return f"--context-window {context_window}: expected 0 or more tokens of context"
    block = tokens_per_sample - context_window  # new tokens scored per block
    if block < 1:
        if context_window:
            return (f"--context-window {context_window} must be smaller than --tokens-per-sample {tokens_per_sample}: "
                    "fairseq-eval-lm scores blocks of --tokens-per-sample minus --context-window new tokens, each "
                    "after up to --context-window tokens of context")
        return f"--tokens-per-sample {tokens_per_sample}: expected a block length of at least 1 token"
    limit = max_tokens or DEFAULT_MAX_TOKENS
    if block > limit:
        given = f"--max-tokens {limit}" if max_tokens else f"--max-tokens (unset: fairseq-eval-lm uses {limit:,})"
        window = f" minus --context-window {context_window}" if context_window else ""
        return (f"--tokens-per-sample {tokens_per_sample}{window} gives blocks of {block:,} tokens, more than "
                f"{given} allows in one batch: give --max-tokens {block} or more, or a smaller --tokens-per-sample")
    return None


def check_eval_lm_cfg(cfg) -> None:
    """Raises ``ValueError`` for fairseq-eval-lm's config ``cfg`` after ``main`` subtracted the
    context window from ``cfg.task.tokens_per_sample`` (it does so before setting up the task)."""
    window = int(cfg.eval_lm.context_window or 0)
    reduced = cfg.task.get("tokens_per_sample", None)
    if reduced is None:  # not a language-modeling task
        return
    asked = int(reduced) + (window if window > 0 else 0)
    problem = eval_lm_problem(asked, window, cfg.dataset.max_tokens)
    if problem is not None:
        raise ValueError(problem)


def _checked(setup_task):
    @functools.wraps(setup_task)
    def wrapper(cfg, **kwargs):
        caller = sys._getframe(1)
        if caller.f_code.co_filename.endswith(EVAL_LM_FILE) and caller.f_code.co_name == "main":
            full = caller.f_locals.get("cfg")
            if full is not None and "eval_lm" in full:
                check_eval_lm_cfg(full)
        return setup_task(cfg, **kwargs)

    wrapper._seqboat_eval_lm_checked = True
    return wrapper


if enabled("setup_task") and not getattr(tasks.setup_task, "_seqboat_eval_lm_checked", False):
    tasks.setup_task = _checked(tasks.setup_task)
