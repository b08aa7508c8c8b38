"""Architecture presets that work the same from the command line and from Hydra configs.

fairseq applies an architecture preset (``--arch seqboat_lm_tiny``, or ``model: {_name:
seqboat_lm_tiny}`` under ``fairseq-hydra-train``) by calling its function on the model config,
and a preset may only fill what the user left unset. On the command line fairseq leaves unset
options as ``None``; under Hydra, though, ``add_defaults`` first merges the model's dataclass
into the config, so with ordinary dataclass defaults every field looks set and the preset
changes nothing (the tiny preset silently trained the 17.7M base model).

So every architecture field of our model dataclasses defaults to ``None`` ("unset") and
carries its real default in ``metadata["base"]`` (:func:`preset_field`). A preset sets the
fields the user left ``None`` (:func:`apply_preset`) and then :func:`fill_base_defaults` sets
the rest from ``metadata["base"]``. Both paths thus give the same model for the same preset
and overrides (tested for every registered preset in ``tests/test_presets.py``).
"""

from dataclasses import MISSING, field, fields
from typing import Any


def preset_field(base: Any, help: str):
    """A dataclass field that is ``None`` until a preset or the base default fills it."""
    return field(default=None, metadata={"help": f"{help} (default: {base})", "base": base})


def fill_base_defaults(cfg, config_class) -> None:
    """Sets every field of ``config_class`` that is still ``None`` on ``cfg`` to its base default
    (``metadata["base"]``, or the plain dataclass default for fields without one)."""
    for f in fields(config_class):
        if getattr(cfg, f.name, None) is not None:
            continue
        if "base" in f.metadata:
            setattr(cfg, f.name, f.metadata["base"])
        elif f.default is not MISSING and not (isinstance(f.default, str) and f.default.startswith("${")):
            setattr(cfg, f.name, f.default)


def apply_preset(cfg, config_class, **values) -> None:
    """Sets each of ``values`` that the user left unset (``None``), then the base defaults."""
    for name, value in values.items():
        if getattr(cfg, name, None) is None:
            setattr(cfg, name, value)
    fill_base_defaults(cfg, config_class)
