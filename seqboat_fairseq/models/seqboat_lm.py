"""SeqBoat language model (``--arch seqboat_lm*``; upstream ``slag_lm*``).

Decoder-only: token embedding (scaled by sqrt(D)) -> N causal SeqBoat layers -> final norm
(prenorm only) -> output projection (optionally tied to the embedding). The forward returns
every layer's routing decisions; ``--criterion seqboat_cross_entropy`` turns them into the
metrics ``act_rate_l{i}`` / ``act_rate`` (``activation_stats.py``).
"""

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from fairseq.dataclass import ChoiceEnum
from fairseq.models import (
    FairseqIncrementalDecoder,
    FairseqLanguageModel,
    register_model,
    register_model_architecture,
)
from torch import Tensor, nn

from ..modules.gau import REL_POS_TYPES
from ..modules.local_attention import ATTENTION_ACTIVATIONS
from ..modules.norms import NORM_TYPES, SequenceNorm
from ..modules.seqboat_layer import LayerActivation, upgrade_upstream_layer_keys
from .baselines import (LAYER_TYPES, baseline_preset, check_baseline_options, chunked_attention_field,
                        layer_type_field, offsets_within_chunk)
from .checkpoint_activations import CheckpointActivationsConfig
from .layer_options import LayerFields, build_layers, check_layer_options, task_name
from .presets import apply_preset, fill_base_defaults, preset_field

# upstream's default size M of the learned ("simple") relative-position bias table
DEFAULT_MAX_TARGET_POSITIONS = 1024
# what max_positions() reports for "no limit" (fairseq takes the min with other limits)
UNBOUNDED_POSITIONS = sys.maxsize
# the config fields of the layer options whose names are the LM's own (layer_options.build_layers)
LM_LAYER_FIELDS = LayerFields(
    layers="decoder_layers", embed_dim="decoder_embed_dim", z_dim="decoder_z_dim", hidden_dim="decoder_hidden_dim",
    n_dim="decoder_n_dim", chunk_size="decoder_chunk_size", ffn_dim="decoder_ffn_embed_dim",
    norm_type="normalization_type", prenorm="normalize_before", max_positions="max_target_positions",
    hidden_dropout="hidden_dropout", activation_dropout="activation_dropout")


@dataclass
class SeqBoatLMConfig(CheckpointActivationsConfig):
    """Defaults = upstream ``slag_lm`` base, except that no FFN is built (no SeqBoat recipe
    uses one; pass ``--decoder-ffn-embed-dim`` > 0 to add it). Architecture fields are ``None``
    until a preset or their base default fills them (see ``presets.py``: this is what makes
    presets work under ``fairseq-hydra-train``). ``--checkpoint-activations`` /
    ``--offload-activations`` / ``--recompute-gau`` come from :class:`CheckpointActivationsConfig`."""

    decoder_layers: Optional[int] = preset_field(6, "number of SeqBoat layers")
    decoder_embed_dim: Optional[int] = preset_field(512, "model dimension D")
    decoder_input_dim: Optional[int] = field(
        default=None, metadata={"help": "token embedding dimension (default: D; projected to D if different)"})
    decoder_hidden_dim: Optional[int] = preset_field(1664, "GAU value dimension H")
    decoder_z_dim: Optional[int] = preset_field(128, "GAU shared query/key dimension Z")
    decoder_n_dim: Optional[int] = preset_field(16, "MD-EMA expansion dimension N")
    decoder_ffn_embed_dim: Optional[int] = preset_field(-1, "normalised FFN size after each layer; <= 0: no FFN")
    decoder_chunk_size: Optional[int] = preset_field(
        -1, "working-memory size w (local attention over w activated tokens); "
            "-1: SeqBoat-full (unbounded attention over the compressed sequence)")
    truncation_length: Optional[int] = preset_field(
        2048, "MD-EMA kernel truncation in the parallel form (0: none)")
    dropout: Optional[float] = preset_field(0.1, "dropout probability")
    attention_dropout: Optional[float] = preset_field(0.0, "dropout on attention weights")
    hidden_dropout: Optional[float] = preset_field(0.0, "dropout on the GAU values v")
    activation_dropout: Optional[float] = preset_field(0.0, "dropout inside the FFN (if any)")
    activation_fn: Optional[ChoiceEnum(["silu"])] = preset_field(
        "silu", "activation (SeqBoat uses SiLU throughout)")
    attention_activation_fn: Optional[ChoiceEnum(list(ATTENTION_ACTIVATIONS))] = preset_field(
        "softmax", "attention activation")
    normalization_type: Optional[ChoiceEnum(list(NORM_TYPES))] = preset_field(
        "layernorm", "normalisation layer type")
    normalize_before: Optional[bool] = preset_field(False, "prenorm (adds a final norm)")
    no_affine_final_norm: Optional[bool] = preset_field(False, "final norm without parameters")
    rel_pos_bias: Optional[ChoiceEnum(list(REL_POS_TYPES))] = preset_field(
        "simple", "relative positions: learned bias table of 2 x --max-target-positions - 1 offsets "
                  "(simple; limits the sequence length) or rotary (no limit)")
    local_pos: Optional[bool] = preset_field(
        False, "with simple bias and w > 0: bias over working-memory slot offsets (no length limit)")
    init_temp_scale: Optional[float] = preset_field(0.3, "router temperature init: tau_0 = scale * sqrt(D)")
    always_act: Optional[bool] = preset_field(
        False, "no router: every token runs the GAU (static MEGA-style hybrid)")
    chunked_attention: Optional[bool] = chunked_attention_field("--decoder-chunk-size", "lm")
    layer_type: Optional[ChoiceEnum(list(LAYER_TYPES))] = layer_type_field(
        "window --decoder-chunk-size", "--decoder-ffn-embed-dim", "lm")
    share_decoder_input_output_embed: Optional[bool] = preset_field(
        False, "tie the input embedding and the output projection")
    no_scale_embedding: Optional[bool] = preset_field(False, "do not scale embeddings by sqrt(D)")
    slag_local: Optional[bool] = preset_field(
        False, "no-op, accepted so upstream recipes parse (fairseq 0.12's language_modeling task "
               "already uses plain token blocks)")
    # the language_modeling task's options, mirrored; null under any other task (build_model refuses)
    tokens_per_sample: Optional[int] = "${oc.select:task.tokens_per_sample,null}"
    max_target_positions: Optional[int] = "${oc.select:task.max_target_positions,null}"


@register_model("seqboat_lm", dataclass=SeqBoatLMConfig)
class SeqBoatLanguageModel(FairseqLanguageModel):
    """Thin wrapper: all the logic lives in :class:`SeqBoatDecoder`."""

    @classmethod
    def build_model(cls, args, task):
        seqboat_lm_base(args)
        if getattr(args, "tokens_per_sample", None) is None:  # not a language_modeling-style task
            raise ValueError(f"--arch {getattr(args, '_name', None) or getattr(args, 'arch', 'seqboat_lm')} is a "
                             f"language model: use it with --task language_modeling, not --task {task_name(task)}")
        check_lm_options(args)
        dictionary = task.target_dictionary
        input_dim = args.decoder_input_dim or args.decoder_embed_dim
        embed_tokens = nn.Embedding(len(dictionary), input_dim, dictionary.pad())
        nn.init.normal_(embed_tokens.weight, mean=0.0, std=input_dim ** -0.5)
        nn.init.constant_(embed_tokens.weight[dictionary.pad()], 0.0)
        return cls(SeqBoatDecoder(args, dictionary, embed_tokens))

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt", data_name_or_path=".", **kwargs):
        """fairseq's hub loader; ``task="multiline_language_modeling"`` (any registered task name)
        loads the checkpoint under that task (fairseq itself would silently ignore a string). Logs
        one summary line instead of fairseq's config dump (``seqboat_fairseq/quiet.py``)."""
        from ..generation import hub_task_override
        from ..quiet import hub_loading, log_model_summary

        with hub_loading():
            hub = super().from_pretrained(model_name_or_path, checkpoint_file, data_name_or_path,
                                          **hub_task_override(kwargs))
        log_model_summary(hub, model_name_or_path, checkpoint_file)
        return hub


class SeqBoatDecoder(FairseqIncrementalDecoder):
    """Stack of causal SeqBoat layers over token embeddings. Batch-first in and out."""

    def __init__(self, args, dictionary, embed_tokens: nn.Embedding):
        super().__init__(dictionary)
        dim = args.decoder_embed_dim
        self.padding_idx = embed_tokens.padding_idx
        self.max_target_positions = args.max_target_positions
        # Only the learned "simple" bias of absolute offsets limits the length: MD-EMA, rotary and
        # the slot-offset bias of --local-pos extend to any position.
        self.position_limit: Optional[int] = position_limit(args)
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if args.no_scale_embedding else math.sqrt(dim)
        input_dim = embed_tokens.embedding_dim
        self.project_in_dim = nn.Linear(input_dim, dim, bias=False) if input_dim != dim else None
        if self.project_in_dim is not None:
            nn.init.xavier_uniform_(self.project_in_dim.weight)
        self.dropout_module = nn.Dropout(args.dropout)
        self.layers = build_layers(args, LM_LAYER_FIELDS, bidirectional=False)
        self.final_norm = (
            SequenceNorm(args.normalization_type, dim, affine=not args.no_affine_final_norm)
            if args.normalize_before else None
        )
        self.output_projection = nn.Linear(dim, len(dictionary), bias=False)
        if args.share_decoder_input_output_embed:
            if input_dim != dim:
                raise ValueError("--share-decoder-input-output-embed needs --decoder-input-dim == --decoder-embed-dim")
            self.output_projection.weight = self.embed_tokens.weight
        else:
            nn.init.normal_(self.output_projection.weight, mean=0.0, std=dim ** -0.5)

    def forward(self, prev_output_tokens: Tensor, encoder_out=None,
                incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
                features_only: bool = False, src_lengths=None, return_all_hiddens: bool = False,
                new_tokens_only: bool = False, **unused) -> Tuple[Tensor, Dict[str, Any]]:
        """prev_output_tokens: ``(B, T)``: with an ``incremental_state``, the whole prefix (as fairseq's
        generators pass it), or with ``new_tokens_only`` just the tokens after those the state has
        consumed (streaming evaluation, ``tasks/streaming_lm.py``). Returns ``(logits (B, T', V), extra)``
        for the T' new tokens; ``extra`` holds ``inner_states``, ``activations`` (one
        :class:`LayerActivation` per layer) and ``padding_mask``."""
        x, extra = self.extract_features(prev_output_tokens, incremental_state=incremental_state,
                                         new_tokens_only=new_tokens_only)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def extract_features(self, prev_output_tokens: Tensor, encoder_out=None,
                         incremental_state=None, new_tokens_only: bool = False, **unused
                         ) -> Tuple[Tensor, Dict[str, Any]]:
        consumed = 0
        if incremental_state is not None:
            consumed = self.layers[0].decoded_length(incremental_state) if len(self.layers) else 0
        if incremental_state is not None and not new_tokens_only:
            # fairseq's generators pass the whole prefix at every step; feed only the tokens
            # the layers' state has not consumed yet (one per step; the prompt at once).
            if consumed >= prev_output_tokens.size(1):
                raise ValueError(
                    f"incremental decoding expects the full prefix: got {prev_output_tokens.size(1)} tokens "
                    f"but the state has already consumed {consumed}")
            prev_output_tokens = prev_output_tokens[:, consumed:]
        self.check_length(consumed + prev_output_tokens.size(1))
        padding_mask = prev_output_tokens.eq(self.padding_idx)
        if incremental_state is None and not padding_mask.any():  # (decoding never reads a device value)
            padding_mask = None
        x = self.embed_tokens(prev_output_tokens) * self.embed_scale
        if self.project_in_dim is not None:
            x = self.project_in_dim(x)
        x = self.dropout_module(x)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x.transpose(0, 1)  # (T, B, D)

        inner_states: List[Tensor] = [x]
        activations: List[LayerActivation] = []
        for layer in self.layers:
            x, activation = layer(x, padding_mask, incremental_state=incremental_state)
            inner_states.append(x)
            activations.append(activation)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.t().unsqueeze(-1), 0.0)
        return x.transpose(0, 1), {"attn": [None], "inner_states": inner_states, "activations": activations,
                                   "padding_mask": padding_mask}

    def output_layer(self, features: Tensor, **kwargs) -> Tensor:
        return self.output_projection(features)

    def max_positions(self) -> int:
        """What fairseq filters inputs and caps generation by: unbounded. Even a model with a
        ``position_limit`` reports no limit here, because fairseq's tools would silently drop
        longer inputs (``fairseq-eval-lm`` scoring fewer tokens than asked) or silently cap the
        output; :meth:`check_length` refuses them instead, naming the limit and the flag."""
        return UNBOUNDED_POSITIONS

    def check_length(self, length: int) -> None:
        """Refuses sequences (prompt + generated tokens, when decoding) longer than the learned
        relative-position table covers."""
        if self.position_limit is not None and length > self.position_limit:
            raise ValueError(
                f"a sequence of {length} tokens exceeds this model's limit of {self.position_limit} positions: its "
                f"learned relative-position bias (--rel-pos-bias simple) covers offsets up to "
                f"--max-target-positions {self.position_limit} - 1 (set when the model was built). Use "
                f"--tokens-per-sample (plus --context-window, for fairseq-eval-lm) or prompt + --max-len-b of at "
                f"most {self.position_limit} tokens, or train with a larger --max-target-positions, rotary "
                "positions (--rel-pos-bias rotary) or --local-pos, which have no limit")

    def upgrade_state_dict_named(self, state_dict: Dict[str, Tensor], name: str) -> Dict[str, Tensor]:
        """Loads upstream (``slag_lm``) checkpoints: renames ``layers.{i}.slag_layer.*`` and
        ``layers.{i}.nffn.*`` to this decoder's names and drops the ``version`` buffer."""
        prefix = f"{name}." if name else ""
        for i in range(len(self.layers)):
            upgrade_upstream_layer_keys(state_dict, f"{prefix}layers.{i}.slag_layer.", f"{prefix}layers.{i}.")
        state_dict.pop(f"{prefix}version", None)
        saved = state_dict.get(f"{prefix}embed_tokens.weight")
        if saved is not None and saved.size(0) != self.embed_tokens.num_embeddings:
            raise ValueError(
                f"the checkpoint was trained with a dictionary of {saved.size(0)} symbols, but the data directory's "
                f"dict.txt gives {self.embed_tokens.num_embeddings}: point fairseq at the data-bin (or its dict.txt) "
                "the model was trained on")
        return state_dict


# --------------------------------------------------------------------------- architectures
def seqboat_lm_base(args) -> None:
    """``--arch seqboat_lm`` (registered by ``register_model``): fills every value the user and
    the preset left unset with its base default (``presets.py``)."""
    fill_base_defaults(args, SeqBoatLMConfig)
    if getattr(args, "max_target_positions", None) is None:
        args.max_target_positions = DEFAULT_MAX_TARGET_POSITIONS


def _preset(args, **values) -> None:
    apply_preset(args, SeqBoatLMConfig, **values)
    seqboat_lm_base(args)


def position_limit(args) -> Optional[int]:
    """The longest sequence the configuration supports, or None when nothing is learned per
    absolute offset (rotary, ``--local-pos``) or every offset stays inside a chunk (MEGA-chunk:
    ``baselines.offsets_within_chunk``; its table covers the chunk, :func:`check_lm_options`)."""
    if args.rel_pos_bias == "simple" and not args.local_pos and not offsets_within_chunk(
            chunked=getattr(args, "chunked_attention", False), always_active=getattr(args, "always_act", False),
            layer_type=getattr(args, "layer_type", None)):
        return args.max_target_positions
    return None


def check_lm_options(args) -> None:
    """Clear errors for options no model can be built with (each names its flag)."""
    check_layer_options(
        layers={"--decoder-layers": args.decoder_layers},
        dims={"--decoder-embed-dim": args.decoder_embed_dim, "--decoder-hidden-dim": args.decoder_hidden_dim,
              "--decoder-z-dim": args.decoder_z_dim, "--decoder-n-dim": args.decoder_n_dim,
              "--decoder-input-dim": args.decoder_input_dim or args.decoder_embed_dim},
        chunk_size={"--decoder-chunk-size": args.decoder_chunk_size},
        truncation={"--truncation-length": args.truncation_length})
    check_baseline_options(chunked=getattr(args, "chunked_attention", False), chunk_flag="--decoder-chunk-size",
                           chunk_size=args.decoder_chunk_size)
    if args.activation_fn != "silu":
        raise ValueError(f"--activation-fn {args.activation_fn} is not supported; SeqBoat uses silu")
    limit = position_limit(args)
    table = args.max_target_positions if args.rel_pos_bias == "simple" and not args.local_pos else None
    if table is not None and table < 1:
        raise ValueError(f"--max-target-positions {table}: must be a positive number of positions")
    if limit is not None and args.decoder_chunk_size > limit:
        raise ValueError(f"--decoder-chunk-size {args.decoder_chunk_size} exceeds --max-target-positions {limit}: "
                         "the working memory would be longer than any input")
    if table is not None and args.decoder_chunk_size > table:  # MEGA-chunk: offsets up to c - 1
        raise ValueError(f"--decoder-chunk-size {args.decoder_chunk_size} exceeds --max-target-positions {table}: "
                         f"the learned relative-position bias (--rel-pos-bias simple) covers offsets up to {table} "
                         "- 1, a chunk needs them up to the chunk size - 1")
    tokens_per_sample = getattr(args, "tokens_per_sample", None)
    if limit is not None and isinstance(tokens_per_sample, int) and tokens_per_sample > limit:
        raise ValueError(
            f"--tokens-per-sample {tokens_per_sample} exceeds --max-target-positions {limit}, the size of the "
            "learned relative-position bias (--rel-pos-bias simple): raise --max-target-positions, or use "
            "--rel-pos-bias rotary or --local-pos, which have no length limit")


# What the SeqBoat LM presets share: prenorm with a final norm without parameters, rotary
# positions, router temperature tau_0 = sqrt(D), tied input / output embeddings.
_SEQBOAT_LM = dict(rel_pos_bias="rotary", normalize_before=True, no_affine_final_norm=True, init_temp_scale=1.0,
                   share_decoder_input_output_embed=True)


@register_model_architecture("seqboat_lm", "seqboat_lm_tiny")
def seqboat_lm_tiny(args):
    """Tiny model for tests and the demo (83,910 parameters with the 260-symbol byte dictionary,
    16,640 of them the tied embedding)."""
    _preset(args, **_SEQBOAT_LM, decoder_layers=2, decoder_embed_dim=64, decoder_hidden_dim=128, decoder_z_dim=32,
            decoder_n_dim=8, decoder_chunk_size=32, truncation_length=0, dropout=0.0)


@register_model_architecture("seqboat_lm", "seqboat_lm_enwik8_base")
def seqboat_lm_enwik8_base(args):
    """The paper's enwik8 model (``slag_lm_enwik8_base_v2`` + recipe flags): 14 layers,
    D=616, H=1232, Z=128, N=16, w=1024, rotary, softmax, prenorm (LayerNorm), no FFN, dropout 0.15
    (attention and hidden: 0). 2,781,883 params per layer, ~39.07M in total with a byte dictionary."""
    _preset(args, **_SEQBOAT_LM, decoder_layers=14, decoder_embed_dim=616, decoder_hidden_dim=1232,
            decoder_z_dim=128, decoder_n_dim=16, decoder_ffn_embed_dim=-1, decoder_chunk_size=1024,
            truncation_length=2048, dropout=0.15, attention_dropout=0.0, hidden_dropout=0.0,
            attention_activation_fn="softmax", normalization_type="layernorm", max_target_positions=10384)


# Upstream names, with upstream's architecture defaults, so upstream recipes and
# checkpoints resolve. Differences: activation_dropout defaults to 0.0 instead of crashing (H18).
def _slag_preset(args, layers=6, dim=512, hidden=1664, zdim=128, dropout=0.1, attention_dropout=0.0,
                 hidden_dropout=0.0, activation_dropout=0.0):
    hidden = getattr(args, "decoder_hidden_dim", None) or hidden
    _preset(args, decoder_layers=layers, decoder_embed_dim=dim, decoder_hidden_dim=hidden,
            decoder_ffn_embed_dim=hidden, decoder_z_dim=zdim, dropout=dropout,
            attention_dropout=attention_dropout, hidden_dropout=hidden_dropout,
            activation_dropout=activation_dropout)


@register_model_architecture("seqboat_lm", "slag_lm")
def slag_lm(args):
    _slag_preset(args)


@register_model_architecture("seqboat_lm", "slag_lm_big")
def slag_lm_big(args):
    _slag_preset(args, 16, 1024, 2048, 256)


@register_model_architecture("seqboat_lm", "slag_lm_enwik8_base")
def slag_lm_enwik8_base(args):
    _slag_preset(args, 12, 512, 1024, 128)


@register_model_architecture("seqboat_lm", "slag_lm_enwik8_base_v2")
def slag_lm_enwik8_base_v2(args):
    """The architecture the paper's enwik8 recipe names; the recipe adds -1 FFN, w=1024, rotary..."""
    _slag_preset(args, 14, 616, 1232, 128)


@register_model_architecture("seqboat_lm", "slag_lm_enwik8_large")
def slag_lm_enwik8_large(args):
    _slag_preset(args, 20, 512, 1024, 128)


# --------------------------------------------------------------------------- baselines
# The two hybrids SeqBoat's paper argues against, built from the same modules and trained,
# scored and decoded by the same tools (docs/design.md, 'Baselines'). Each preset is the SeqBoat
# preset it is compared with, plus the baseline's options; everything else (width, depth, MD-EMA,
# positions, dropout, the span c = w of the attention) is the same, and the user's flags still win.
@register_model_architecture("seqboat_lm", "mega_chunk_lm_tiny")
def mega_chunk_lm_tiny(args):
    """MEGA-chunk beside ``seqboat_lm_tiny``: no router, every token through MD-EMA and the GAU,
    attention inside fixed chunks of c = 32 tokens."""
    baseline_preset(args, seqboat_lm_tiny, always_act=True, chunked_attention=True)


@register_model_architecture("seqboat_lm", "mega_chunk_lm_enwik8_base")
def mega_chunk_lm_enwik8_base(args):
    """MEGA-chunk beside ``seqboat_lm_enwik8_base``: 14 x D616, chunks of c = 1024 tokens (SeqBoat's
    working memory w): 2,780,648 parameters per layer, SeqBoat's less its router's 1,235."""
    baseline_preset(args, seqboat_lm_enwik8_base, always_act=True, chunked_attention=True)


@register_model_architecture("seqboat_lm", "spade_lm_tiny")
def spade_lm_tiny(args):
    """SPADE beside ``seqboat_lm_tiny``: MD-EMA beside a sliding window of w = 32 tokens in the bottom
    layer, window attention + an FFN of 8 in both layers (parameter count matched)."""
    baseline_preset(args, seqboat_lm_tiny, layer_type="spade", decoder_ffn_embed_dim=8)


@register_model_architecture("seqboat_lm", "spade_lm_enwik8_base")
def spade_lm_enwik8_base(args):
    """SPADE beside ``seqboat_lm_enwik8_base``: 14 x D616, MD-EMA beside a sliding window of
    w = 1024 tokens in the bottom layer, window attention + an FFN of 294 in every layer
    (parameter count matched)."""
    baseline_preset(args, seqboat_lm_enwik8_base, layer_type="spade", decoder_ffn_embed_dim=294)
