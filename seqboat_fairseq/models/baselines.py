"""The layer stacks of the two baselines SeqBoat's paper argues against, as options of the SeqBoat
models (docs/design.md, 'Baselines'), so that they train, evaluate and generate through the same
tools, tasks and criteria:

* **MEGA-chunk** (``--always-act --chunked-attention``, presets ``mega_chunk_*``): SeqBoat layers
  with no router, every token runs MD-EMA and the GAU, attention inside fixed non-overlapping
  chunks of c tokens (``--chunk-size`` / ``--decoder-chunk-size``). The GAU applies MEGA's reset
  gate as MEGA does (``out_proj(O * r)``, r = SiLU of a projection of the MD-EMA output); MEGA's
  update gate u and output mix ``x + u * (h - x)`` are SeqBoat's ``SiLU(hx + G + x)`` here, and
  the values come from the MD-EMA output (MEGA's: from the un-smoothed input). ``--rel-pos-bias
  rotary`` is RoPE on q and k here, not MEGA's learned rotary bias (``modules/positions.py``).
  With the learned ``simple`` bias a chunk needs offsets up to c - 1 only, so the sequence
  length is not limited (:func:`offsets_within_chunk`);
* **SPADE** (``--layer-type spade``, presets ``spade_*``): :class:`~seqboat_fairseq.modules.spade_layer.SpadeLayer`
  layers, MD-EMA beside sliding-window attention in the bottom layer, sliding-window attention
  and an FFN in the layers above.
"""

from typing import Optional

from .presets import preset_field

LAYER_TYPES = ("seqboat", "spade")  # --layer-type; layer_options.build_layer builds them


def chunked_attention_field(chunk_flag: str, family: str):
    """The ``chunked_attention`` field of a model config; ``chunk_flag``: the model's chunk-size
    flag, ``family``: its preset names' middle part (``lm`` / ``lra``)."""
    return preset_field(
        False, f"MEGA's chunked attention: tokens attend only inside fixed, non-overlapping chunks of {chunk_flag} "
               f"tokens (with --always-act: the MEGA-chunk baseline, --arch mega_chunk_{family}_*)")


def layer_type_field(window: str, ffn_flag: str, family: str):
    """The ``layer_type`` field of a model config; ``window``: how the model's flags set the window,
    ``ffn_flag``: its FFN-size flag, ``family`` as in :func:`chunked_attention_field`."""
    return preset_field(
        "seqboat", f"seqboat layers, or spade: the SPADE baseline (--arch spade_{family}_*): MD-EMA beside "
                   f"sliding-window attention ({window}) in the bottom layer, sliding-window attention and an FFN "
                   f"({ffn_flag}) in the others; router options are ignored")


def baseline_preset(args, seqboat_preset, **values) -> None:
    """A baseline's architecture preset: sets the baseline's ``values`` the user left unset, then
    applies ``seqboat_preset``, the SeqBoat preset it is compared with (which fills the rest)."""
    for name, value in values.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    seqboat_preset(args)


def check_baseline_options(*, chunked: Optional[bool], chunk_flag: str, chunk_size: Optional[int]) -> None:
    """Clear errors (naming the flag) for baseline options no model can be built with."""
    if chunked and (chunk_size is None or chunk_size <= 0):
        raise ValueError(f"--chunked-attention cuts the sequence into chunks of {chunk_flag} tokens: give a "
                         f"positive {chunk_flag}, not {chunk_size}")


def offsets_within_chunk(*, chunked: Optional[bool], always_active: Optional[bool],
                         layer_type: Optional[str]) -> bool:
    """Whether every attention offset ``pos_key - pos_query`` is at most ``c - 1`` in magnitude
    (c: the chunk size): chunked attention over *every* token, i.e. MEGA-chunk (``--always-act
    --chunked-attention``) or chunked SPADE layers (no router). A chunk is then c consecutive
    positions, so a learned ``simple`` bias of ``2M - 1`` offsets serves sequences of any length
    once ``c <= M`` (MEGA sizes its table by the chunk for the same reason). With a router, a chunk
    holds c *activated* tokens, which may lie anywhere in the sequence: offsets reach L - 1."""
    return bool(chunked) and (bool(always_active) or layer_type == "spade")

