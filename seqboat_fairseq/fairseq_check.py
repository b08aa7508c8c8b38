"""The one check the plugin makes on import: a fairseq with the 0.12 API is importable.

No fairseq distribution is an install requirement of ``seqboat-fairseq`` (``setup.py`` says why):
several PyPI distributions provide the module ``fairseq`` (``fairseq``, ``ve-fairseq``,
``fairseq-fixed``) and researchers often build their own from source, so the plugin only asks for
the module. When it is missing, fails to import or is not 0.12, importing the plugin raises one
``ImportError`` that says how to install one.
"""

import importlib
import re

SUPPORTED = "0.12"
INSTALL_HINT = (
    "Install exactly one fairseq with the 0.12 API (all of these provide the module `fairseq`):\n"
    "  pip install 've-fairseq>=0.12.3,<0.13'  # prebuilt wheel for Python 3.11 (= the extra\n"
    "                                          # of a checkout: pip install -e '.[fairseq]')\n"
    "  pip install fairseq-fixed==0.12.3.1      # source build (~5 min on 2 cores)\n"
    "  pip install fairseq==0.12.2              # the official release: Python <= 3.10 only\n"
    "or a fairseq 0.12 built from source (https://github.com/facebookresearch/fairseq).\n"
    "fairseq 0.12 needs numpy<2."
)

# what the plugin uses of fairseq's 0.12 (hydra/dataclass) API
_API = (
    ("fairseq.dataclass", "FairseqDataclass"),
    ("fairseq.dataclass.utils", "convert_namespace_to_omegaconf"),
    ("fairseq.models", "register_model_architecture"),
    ("fairseq.optim", "FairseqOptimizer"),
    ("fairseq.optim.lr_scheduler", "FairseqLRScheduler"),
    ("fairseq.tasks", "register_task"),
)


def _fail(reason, cause=None):
    error = ImportError(f"seqboat-fairseq needs fairseq {SUPPORTED}.x, but {reason}.\n{INSTALL_HINT}")
    error.__cause__ = cause
    return error


def require_fairseq():
    """Import ``fairseq`` and check its API; returns the module or raises one ``ImportError``."""
    try:
        fairseq = importlib.import_module("fairseq")
    except ModuleNotFoundError as e:
        if e.name == "fairseq":
            raise _fail("the module `fairseq` is not installed", e) from e
        raise _fail(f"`import fairseq` failed: {type(e).__name__}: {e}", e) from e
    except Exception as e:  # e.g. the official 0.12.2 on Python 3.11, or fairseq under numpy 2
        raise _fail(f"`import fairseq` failed: {type(e).__name__}: {e}", e) from e

    version = str(getattr(fairseq, "__version__", "unknown"))
    if not re.match(r"0\.12(\.|$)", version):
        where = getattr(fairseq, "__file__", None) or "an unknown location"
        raise _fail(f"the installed fairseq is {version} (at {where})")
    for module, name in _API:
        try:
            found = hasattr(importlib.import_module(module), name)
        except Exception as e:
            raise _fail(f"fairseq {version} has no importable `{module}` ({type(e).__name__}: {e})", e) from e
        if not found:
            raise _fail(f"fairseq {version} lacks `{module}.{name}`")
    return fairseq
