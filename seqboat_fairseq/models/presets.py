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

:func:`register_preset` registers a preset with fairseq and records, once, the kind of input it
was built for (LRA presets: ``text`` or ``image``), which the model checks against the task's.
"""

from dataclasses import MISSING, field, fields
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional

from fairseq.models import register_model_architecture

# preset name -> the input it was built for; written only by register_preset, read through
# PRESET_INPUT_TYPES (a read-only view)
_input_types: Dict[str, str] = {}
PRESET_INPUT_TYPES: Mapping[str, str] = MappingProxyType(_input_types)


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


def register_preset(model: str, name: str, *, input_type: Optional[str] = None) -> Callable:
    """Decorator: ``register_model_architecture(model, name)`` for a preset function, recording
    ``input_type`` (the input the preset was built for; None: any) in ``PRESET_INPUT_TYPES``."""
    def register(preset: Callable) -> Callable:
        registered = register_model_architecture(model, name)(preset)  # refuses a name registered twice
        if input_type is not None:
            _input_types[name] = input_type
        return registered
    return register


def presets_for_input(input_type: str) -> List[str]:
    """The names of the presets registered for ``input_type`` input, sorted."""
    return sorted(name for name, kind in PRESET_INPUT_TYPES.items() if kind == input_type)
