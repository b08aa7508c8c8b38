"""SeqBoat sentence classifier for Long Range Arena (``--arch seqboat_lra*``; upstream ``lra`` with
``layer_type slag`` and the ``slag_lra_*`` architectures; presets: ``lra_presets.py``).

    tokens (text) or pixels (image) -> embedding [+ scaled sinusoidal positions]
    -> N bidirectional SeqBoat layers -> [final norm if prenorm]
    -> sentence representation (masked mean ``mp`` or first token ``cls``)
    -> [two-tower Retrieval: concat(r1, r0[, r0 * r1, r0 - r1])]
    -> Linear -> dropout -> GELU -> Linear (no bias) -> class logits
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.dataclass import ChoiceEnum
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture
from fairseq.modules.fairseq_dropout import FairseqDropout
from torch import Tensor, nn

from ..modules.gau import REL_POS_TYPES
from ..modules.local_attention import ATTENTION_ACTIVATIONS
from ..modules.norms import NORM_TYPES, SequenceNorm
from ..modules.seqboat_layer import LayerActivation, upgrade_upstream_layer_keys
from .baselines import LAYER_TYPES, check_baseline_options, chunked_attention_field, layer_type_field
from .checkpoint_activations import CheckpointActivationsConfig
from .layer_options import LayerFields, build_layers, check_layer_options, task_name
from .presets import PRESET_INPUT_TYPES, fill_base_defaults, preset_field, presets_for_input
from .task_fit import SPEECH_PRESETS, check_class_count, check_speech_preset, preset_task

# what an LRA model can read: token ids or real numbers (pixels, audio samples)
LRA_INPUT_TYPES = ("text", "image")
# the classifier's hidden activation (ClassificationHead): exact gelu in fp32, relu or silu
CLASSIFIER_ACTIVATIONS = ("gelu", "relu", "silu")


@dataclass
class SeqBoatLRAConfig(CheckpointActivationsConfig):
    """Defaults = the SeqBoat parser defaults of upstream's LRA model, except that no FFN is
    built (every recipe passes ``--encoder-ffn-embed-dim -1``); the presets (``lra_presets.py``)
    carry the paper's per-task values. Architecture fields are ``None`` until a preset or their base
    default fills them (see ``presets.py``: this is what makes presets work under
    ``fairseq-hydra-train``). ``--checkpoint-activations`` / ``--offload-activations`` /
    ``--recompute-gau`` come from :class:`CheckpointActivationsConfig`."""

    # the LRA tasks' options, mirrored; null under any other task (build_model then says which to use)
    input_type: Optional[ChoiceEnum(list(LRA_INPUT_TYPES))] = "${oc.select:task.input_type,null}"
    encoder_layers: Optional[int] = preset_field(6, "number of SeqBoat layers")
    encoder_embed_dim: Optional[int] = preset_field(128, "model dimension D")
    encoder_hidden_dim: Optional[int] = preset_field(256, "GAU value dimension H")
    z_dim: Optional[int] = preset_field(64, "GAU shared query/key dimension Z")
    n_dim: Optional[int] = preset_field(16, "MD-EMA expansion dimension N")
    encoder_ffn_embed_dim: Optional[int] = preset_field(-1, "FFN size after each layer; <= 0: none")
    chunk_size: Optional[int] = preset_field(
        -1, "working memory w: each token attends to w activated tokens on each side; -1: SeqBoat-full")
    truncation_length: Optional[int] = preset_field(1024, "MD-EMA kernel truncation (0: none)")
    max_positions: Optional[int] = "${oc.select:task.max_positions,null}"
    norm_type: Optional[ChoiceEnum(list(NORM_TYPES))] = preset_field("layernorm", "normalisation")
    encoder_normalize_before: Optional[bool] = preset_field(False, "prenorm (adds a final norm)")
    attention_activation_fn: Optional[ChoiceEnum(list(ATTENTION_ACTIVATIONS))] = preset_field(
        "relu2", "attention activation")
    activation_fn: Optional[ChoiceEnum(["silu"])] = preset_field("silu", "SeqBoat uses SiLU")
    dropout: Optional[float] = preset_field(0.1, "dropout")
    attention_dropout: Optional[float] = preset_field(0.0, "dropout on attention weights")
    act_dropout: Optional[float] = preset_field(0.0, "dropout on the GAU values (and inside the FFN)")
    rel_pos_bias: Optional[ChoiceEnum(list(REL_POS_TYPES))] = preset_field("simple", "positions")
    local_pos: Optional[bool] = preset_field(False, "simple bias over working-memory slot offsets")
    init_temp_scale: Optional[float] = preset_field(0.3, "router tau_0 = scale * sqrt(D)")
    act_bias: Optional[float] = preset_field(0.0, "added to the router's skip logit (> 0: sparser)")
    always_act: Optional[bool] = preset_field(False, "no router: every token runs the GAU")
    chunked_attention: Optional[bool] = chunked_attention_field("--chunk-size", "lra")
    layer_type: Optional[ChoiceEnum(list(LAYER_TYPES))] = layer_type_field(
        "--chunk-size on each side", "--encoder-ffn-embed-dim", "lra")
    add_apos: Optional[bool] = preset_field(False, "add scaled sinusoidal absolute positions")
    sen_rep_type: Optional[ChoiceEnum(["mp", "cls"])] = "${oc.select:task.sen_rep_type,null}"
    use_nli: Optional[bool] = preset_field(False, "Retrieval: also feed r0 * r1 and r0 - r1")
    classifier_layers: Optional[int] = preset_field(1, "classifier hidden layers")
    classifier_out_dim: Optional[int] = preset_field(256, "classifier hidden size")
    classifier_activation_fn: Optional[ChoiceEnum(list(CLASSIFIER_ACTIVATIONS))] = preset_field(
        "gelu", "classifier activation")
    sentence_class_num: Optional[int] = preset_field(2, "number of classes")


# the config fields of the layer options whose names are the LRA model's own (layer_options.build_layers)
LRA_LAYER_FIELDS = LayerFields(
    layers="encoder_layers", embed_dim="encoder_embed_dim", z_dim="z_dim", hidden_dim="encoder_hidden_dim",
    n_dim="n_dim", chunk_size="chunk_size", ffn_dim="encoder_ffn_embed_dim", norm_type="norm_type",
    prenorm="encoder_normalize_before", max_positions="max_positions", hidden_dropout="act_dropout",
    activation_dropout="act_dropout")


class RealNumberEmbedding(nn.Module):
    """A pixel value p becomes ``p * weight + bias`` (weight ~ N(0, 1), bias ~ N(0, 0.1^2))."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(embed_dim))
        self.bias = nn.Parameter(torch.randn(embed_dim) * 0.1)

    def forward(self, pixels: Tensor) -> Tensor:
        """pixels ``(B, L)`` float -> ``(B, L, D)``."""
        return pixels.unsqueeze(-1) * self.weight + self.bias


class ScaledSinusoidalEmbedding(nn.Module):
    """``scale * [sin(t w_0) .. sin(t w_{D/2-1}), cos(t w_0) .. cos(t w_{D/2-1})]``, w_j = 10000^(-2j/D);
    ``scale`` is learned (init D^-1/2), ``inv_freq`` a persistent buffer (as upstream)."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([embed_dim ** -0.5]))
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, embed_dim, 2).float() / embed_dim))

    def forward(self, seq_len: int) -> Tensor:
        t = torch.arange(seq_len, device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        angles = t.unsqueeze(1) * self.inv_freq
        return torch.cat([angles.sin(), angles.cos()], dim=-1) * self.scale


class SeqBoatLRAEncoder(nn.Module):
    """Embedding + bidirectional SeqBoat layers + final norm. Batch-first in, ``(B, L, D)`` out."""

    def __init__(self, cfg, dictionary=None):
        super().__init__()
        dim = cfg.encoder_embed_dim
        if cfg.chunk_size > cfg.max_positions:
            raise ValueError(f"--chunk-size {cfg.chunk_size} exceeds --max-positions {cfg.max_positions}: the "
                             "working memory would be longer than any input")
        self.is_image = cfg.input_type == "image"
        if self.is_image:
            self.embed_pixels = RealNumberEmbedding(dim)
            self.padding_idx = None
        else:
            self.padding_idx = dictionary.pad()
            self.embed_tokens = nn.Embedding(len(dictionary), dim, self.padding_idx)
            nn.init.normal_(self.embed_tokens.weight, mean=0.0, std=dim ** -0.5)
        self.pos_emb = ScaledSinusoidalEmbedding(dim) if cfg.add_apos else None
        self.dropout = FairseqDropout(cfg.dropout, module_name=type(self).__name__)
        self.layers = build_layers(cfg, LRA_LAYER_FIELDS, bidirectional=True)
        self.final_norm = SequenceNorm(cfg.norm_type, dim) if cfg.encoder_normalize_before else None

    def forward(self, src_tokens: Tensor) -> Tuple[Tensor, Optional[Tensor], List[LayerActivation]]:
        """src_tokens: ``(B, L)`` token ids (text) or normalised pixel values (image).

        Returns ``(x (B, L, D) with pads zeroed, padding_mask (B, L) or None, activations)``."""
        if self.is_image:
            x, padding_mask = self.embed_pixels(src_tokens.to(self.embed_pixels.weight.dtype)), None
        else:
            padding_mask = src_tokens.eq(self.padding_idx)
            padding_mask = padding_mask if padding_mask.any() else None
            x = self.embed_tokens(src_tokens)
        if self.pos_emb is not None:
            x = x + self.pos_emb(x.size(1)).to(x.dtype)
        x = self.dropout(x)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x.transpose(0, 1)
        activations = []
        for layer in self.layers:
            x, activation = layer(x, padding_mask)
            activations.append(activation)
        if self.final_norm is not None:
            x = self.final_norm(x)
        x = x.transpose(0, 1)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        return x, padding_mask, activations


class ClassificationHead(nn.Module):
    """``Linear -> dropout -> activation`` (x classifier_layers), then a bias-free projection."""

    def __init__(self, in_dim: int, hidden_dim: int, num_classes: int, num_layers: int,
                 activation: str, dropout: float):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * num_layers
        self.hidden = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])
        self.out_proj = nn.Linear(dims[-1], num_classes, bias=False)
        for layer in [*self.hidden, self.out_proj]:
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        self.dropout = FairseqDropout(dropout, module_name=type(self).__name__)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.hidden:
            x = self.dropout(layer(x))
            if self.activation == "gelu":  # exact erf form, in fp32 (as upstream)
                x = F.gelu(x.float()).type_as(x)
            else:
                x = getattr(F, self.activation)(x)
        return self.out_proj(x)


@register_model("seqboat_lra", dataclass=SeqBoatLRAConfig)
class SeqBoatLRAModel(BaseFairseqModel):
    """Sequence classifier. ``forward(src_tokens, src_lengths[, src_tokens1, src_lengths1])``
    returns ``(logits (B, classes), extra)`` with ``extra["activations"]`` (per layer, per document)."""

    def __init__(self, cfg, encoder: SeqBoatLRAEncoder, two_tower: bool = False):
        super().__init__()
        self.encoder = encoder
        self.sen_rep_type = cfg.sen_rep_type
        self.use_nli = cfg.use_nli
        self.max_input_positions = cfg.max_positions
        self.two_tower = two_tower
        towers = (4 if cfg.use_nli else 2) if two_tower else 1
        self.classifier = ClassificationHead(towers * cfg.encoder_embed_dim, cfg.classifier_out_dim,
                                             cfg.sentence_class_num, cfg.classifier_layers,
                                             cfg.classifier_activation_fn, cfg.dropout)

    @classmethod
    def build_model(cls, cfg, task):
        seqboat_lra_base(cfg)
        check_lra_options(cfg, task)
        dictionary = None if cfg.input_type == "image" else task.source_dictionary
        return cls(cfg, SeqBoatLRAEncoder(cfg, dictionary), two_tower=getattr(task, "two_documents", False))

    def sentence_representation(self, src_tokens: Tensor, src_lengths: Tensor
                                ) -> Tuple[Tensor, List[LayerActivation], Optional[Tensor]]:
        x, padding_mask, activations = self.encoder(src_tokens)
        if self.sen_rep_type == "cls":
            rep = x[:, 0]
        else:  # masked mean: pads are zero, divide by the true length
            rep = x.sum(dim=1) / src_lengths.to(x.dtype).unsqueeze(-1)
        return rep, activations, padding_mask

    def forward(self, src_tokens: Tensor, src_lengths: Tensor, src_tokens1: Optional[Tensor] = None,
                src_lengths1: Optional[Tensor] = None, **unused) -> Tuple[Tensor, Dict]:
        rep0, activations, padding_mask = self.sentence_representation(src_tokens, src_lengths)
        extra = {"activations": [activations], "padding_mask": [padding_mask]}
        if self.two_tower:
            if src_tokens1 is None:
                raise ValueError("this model was built for two documents (Retrieval); src_tokens1 is missing")
            rep1, activations1, padding_mask1 = self.sentence_representation(src_tokens1, src_lengths1)
            extra["activations"].append(activations1)
            extra["padding_mask"].append(padding_mask1)
            features = [rep1, rep0] + ([rep0 * rep1, rep0 - rep1] if self.use_nli else [])
            rep0 = torch.cat(features, dim=-1)
        return self.classifier(rep0), extra

    def max_positions(self) -> int:
        return self.max_input_positions

    def upgrade_state_dict_named(self, state_dict: Dict[str, Tensor], name: str):
        """Loads upstream (``lra`` / ``slag_lra_*``) checkpoints: see ``UPSTREAM_LRA_KEYS``."""
        prefix = f"{name}." if name else ""
        old = f"{prefix}encoder.encoder."
        for i in range(len(self.encoder.layers)):
            upgrade_upstream_layer_keys(state_dict, f"{old}layers.{i}.mega_layer.", f"{prefix}encoder.layers.{i}.")
        for up, ours in UPSTREAM_LRA_KEYS.items():
            for key in [k for k in state_dict if k.startswith(prefix + up)]:
                state_dict[prefix + ours + key[len(prefix + up):]] = state_dict.pop(key)
        super().upgrade_state_dict_named(state_dict, name)
        return state_dict


# upstream LRA key prefix -> ours (the layers are handled by upgrade_upstream_layer_keys)
UPSTREAM_LRA_KEYS = {
    "encoder.encoder.embed_tokens.embed.": "encoder.embed_tokens.",
    "encoder.encoder.embed_tokens.": "encoder.embed_pixels.",
    "encoder.encoder.pos_emb.": "encoder.pos_emb.",
    "encoder.encoder.final_norm.": "encoder.final_norm.",
    "classifier.0.0.": "classifier.hidden.0.",
    "sentence_projection_layer.": "classifier.out_proj.",
}


# --------------------------------------------------------------------------- architectures
def seqboat_lra_base(cfg) -> None:
    """``--arch seqboat_lra`` (registered by ``register_model``): fills unset values with their
    base defaults (``presets.py``)."""
    if getattr(cfg, "max_positions", None) is None:  # shared with the task (truncation)
        cfg.max_positions = 1024
    fill_base_defaults(cfg, SeqBoatLRAConfig)


def check_lra_options(cfg, task) -> None:
    """Clear errors for options no model can be built with, or a preset built for the other
    kind of input than the task provides (each message names its flag)."""
    check_layer_options(
        layers={"--encoder-layers": cfg.encoder_layers},
        dims={"--encoder-embed-dim": cfg.encoder_embed_dim, "--encoder-hidden-dim": cfg.encoder_hidden_dim,
              "--z-dim": cfg.z_dim, "--n-dim": cfg.n_dim, "--sentence-class-num": cfg.sentence_class_num,
              "--classifier-out-dim": cfg.classifier_out_dim, "--max-positions": cfg.max_positions},
        chunk_size={"--chunk-size": cfg.chunk_size},
        truncation={"--truncation-length": cfg.truncation_length})
    check_baseline_options(chunked=getattr(cfg, "chunked_attention", False), chunk_flag="--chunk-size",
                           chunk_size=cfg.chunk_size)
    arch = getattr(cfg, "_name", None) or getattr(cfg, "arch", None)
    task_input = getattr(getattr(task, "cfg", None), "input_type", None)
    if task_input is None or cfg.input_type is None:
        uses = "--task speech_commands" if arch in SPEECH_PRESETS else "--task lra-text or --task lra-image"
        raise ValueError(f"--arch {arch} is a Long Range Arena classifier: use it with {uses}, "
                         f"not --task {task_name(task)}")
    check_speech_preset(arch, task_name(task))
    expected = PRESET_INPUT_TYPES.get(arch)  # declared by each preset (lra_presets.py)
    if expected is not None and expected != task_input:
        raise ValueError(f"--arch {arch} is a preset for {expected} input, but the task provides {task_input} "
                         f"input: use --task {preset_task(arch, expected)} with this preset, or a {task_input} preset "
                         f"({', '.join(presets_for_input(task_input))})")
    if cfg.input_type == "image" and cfg.sen_rep_type != "mp":
        raise ValueError("--sen-rep-type cls needs text input (no <CLS> pixel); use mp for images")
    if cfg.activation_fn != "silu":
        raise ValueError(f"--activation-fn {cfg.activation_fn} is not supported; SeqBoat uses silu")
    check_class_count(cfg.sentence_class_num, arch, task)

